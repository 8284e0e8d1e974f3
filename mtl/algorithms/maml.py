"""MAML (Finn, Abbeel, Levine 2017): learn an initialisation that adapts to a task in a few steps.

Meta-objective, for a batch of tasks ``i`` with support set ``S_i`` and query set ``Q_i``::

    phi_i = theta - alpha * grad L_S_i(theta)      (``inner_steps`` times)
    min_theta  mean_i  L_Q_i(phi_i)

The gradient flows through the inner updates (second order: it contains Hessian-vector products);
``first_order=True`` treats the inner gradients as constants (see ``fomaml.py``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from mtl.algorithms.base import MetaLearner, metrics
from mtl.core.inner import maml_outputs


class MAML(MetaLearner):
    """``MAML(model, *, inner_steps=1, inner_lr=0.4, first_order=False, strategy="auto")``.

    ``meta_gradient(batch)`` fills ``.grad``; ``predict(batch)`` adapts and returns query logits.
    """

    def meta_gradient(self, batch) -> dict[str, float]:
        losses, outputs = maml_outputs(
            self.model, dict(self.model.named_parameters()), *batch, steps=self.inner_steps,
            lr=self.inner_lr, loss_fn=self.loss_fn, first_order=self.first_order,
            strategy=self.strategy, chunk_size=self.chunk_size)
        loss = losses.mean()
        loss.backward()
        return metrics(loss, outputs, batch[3])

    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        steps = self.inner_steps if inner_steps is None else inner_steps
        with torch.no_grad():  # the inner loop still differentiates (torch.func.grad ignores this)
            _, outputs = maml_outputs(
                self.model, dict(self.model.named_parameters()), *batch, steps=steps,
                lr=self.inner_lr, loss_fn=self.loss_fn, first_order=True, strategy=self.strategy,
                chunk_size=self.chunk_size)
        return outputs
