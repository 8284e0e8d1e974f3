"""Reptile (Nichol, Achiam, Schulman 2018): move the initialisation towards the adapted weights.

For each task, run ``inner_steps`` plain SGD steps from ``theta`` to ``phi_i`` (no graph, no
second derivatives), then::

    theta <- theta + epsilon * mean_i (phi_i - theta)

Written as a gradient for an ordinary optimizer: ``.grad = theta - mean_i phi_i`` (so SGD with
learning rate epsilon is exactly the update above). With one inner step this pseudo-gradient is
``inner_lr * grad mean_i L_i(theta)``: joint training on the tasks; with more steps it picks up
the same "generalise within a task" term as first-order MAML (the paper's Taylor expansion).
"""
from __future__ import annotations

import torch
from torch import Tensor

from mtl.algorithms.base import MetaLearner, metrics
from mtl.inner import adapt_batch


class Reptile(MetaLearner):
    """``Reptile(model, inner_steps=5, inner_lr=0.01)``: inner loop on the support set only."""

    def meta_gradient(self, batch) -> dict[str, float]:
        params = dict(self.model.named_parameters())
        start = {n: p.detach() for n, p in params.items()}
        with torch.no_grad():
            adapted, outputs = adapt_batch(
                self.model, start, batch[0], batch[1], steps=self.inner_steps, lr=self.inner_lr,
                loss_fn=self.loss_fn, first_order=True, query_x=batch[2], strategy=self.strategy,
                chunk_size=self.chunk_size)
            for name, p in params.items():
                pseudo_grad = p.detach() - adapted[name].mean(0)
                p.grad = pseudo_grad if p.grad is None else p.grad + pseudo_grad
            loss = self.loss_fn(outputs.flatten(0, 1), batch[3].flatten(0, 1))
        return metrics(loss, outputs, batch[3])

    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        steps = self.inner_steps if inner_steps is None else inner_steps
        start = {n: p.detach() for n, p in self.model.named_parameters()}
        with torch.no_grad():
            _, outputs = adapt_batch(self.model, start, batch[0], batch[1], steps=steps,
                                     lr=self.inner_lr, loss_fn=self.loss_fn, query_x=batch[2],
                                     strategy=self.strategy, chunk_size=self.chunk_size)
        return outputs
