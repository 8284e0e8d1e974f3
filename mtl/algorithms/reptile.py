"""Reptile (Nichol, Achiam, Schulman 2018): move the initialisation towards the adapted weights.

For each task, run ``inner_steps`` steps from ``theta`` to ``phi_i`` on the task's support set (no
graph, no second derivatives), then::

    theta <- theta + epsilon * mean_i (phi_i - theta)

Written as a gradient for an ordinary optimizer: ``.grad = theta - mean_i phi_i`` (so SGD with
learning rate epsilon is exactly the update above). With one plain SGD inner step this
pseudo-gradient is ``inner_lr * grad mean_i L_i(theta)``: joint training on the tasks; with more
steps it picks up the same "generalise within a task" term as first-order MAML (the paper's
Taylor expansion).

The paper's inner loop (``inner_optimizer="adam"``) is Adam with ``beta1 = 0`` on mini-batches of
``inner_batch`` examples drawn in turn from a shuffled copy of the support set, each task starting
with a fresh Adam state.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from mtl.algorithms.base import MetaLearner, metrics
from mtl.errors import ConfigError
from mtl.core.inner import adapt_batch, map_tasks, resolve_strategy


class Reptile(MetaLearner):
    """``Reptile(model, *, inner_steps, inner_lr, inner_optimizer="sgd", inner_batch=None)``.

    ``inner_optimizer``: ``"sgd"`` (plain steps on the whole support set) or ``"adam"`` (the
    paper's; ``betas=(0, 0.999)``); ``inner_batch``: examples per inner step (None: all of them).
    """

    def __init__(self, model: nn.Module, *, inner_optimizer: str = "sgd",
                 inner_batch: int | None = None, betas: tuple[float, float] = (0.0, 0.999),
                 **settings) -> None:
        super().__init__(model, **settings)
        if inner_optimizer not in ("sgd", "adam"):
            raise ConfigError(f"Reptile's inner_optimizer must be 'sgd' or 'adam', got "
                              f"{inner_optimizer!r} (set it with --set inner_optimizer=adam)")
        if inner_batch is not None and inner_batch < 1:
            raise ConfigError(f"inner_batch must be >= 1, got {inner_batch}")
        self.inner_optimizer, self.inner_batch, self.betas = inner_optimizer, inner_batch, betas

    def meta_gradient(self, batch) -> dict[str, float]:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            adapted, outputs = self._adapt(batch, self.inner_steps)
            for name, p in params.items():
                pseudo_grad = p.detach() - adapted[name].mean(0)
                p.grad = pseudo_grad if p.grad is None else p.grad + pseudo_grad
            loss = self.loss_fn(outputs.flatten(0, 1), batch[3].flatten(0, 1))
        return metrics(loss, outputs, batch[3])

    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        steps = self.inner_steps if inner_steps is None else inner_steps
        with torch.no_grad():
            return self._adapt(batch, steps)[1]

    def _adapt(self, batch, steps: int) -> tuple[dict[str, Tensor], Tensor]:
        """Each task's adapted weights ``{name: [B, ...]}`` and its query outputs ``[B, n_q, ...]``."""
        start = {n: p.detach() for n, p in self.model.named_parameters()}
        if self.inner_optimizer == "sgd" and self.inner_batch is None:
            return adapt_batch(self.model, start, batch[0], batch[1], steps=steps,
                               lr=self.inner_lr, loss_fn=self.loss_fn, first_order=True,
                               query_x=batch[2], strategy=self.strategy)
        order = _minibatch_order(batch[0].shape[0], batch[0].shape[1], steps, self.inner_batch,
                                 batch[0].device)
        return map_tasks(self._task, start, (batch[0], batch[1], batch[2], order),
                         strategy=resolve_strategy(self.strategy, self.model, batch[0].device),
                         model=self.model)

    def _task(self, params: dict[str, Tensor], x: Tensor, y: Tensor, query_x: Tensor,
              order: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """One task: ``len(order)`` steps on the mini-batches ``x[order[t]]``, then the query."""
        def loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
            return self.loss_fn(functional_call(self.model, p, (xb,)), yb)

        beta1, beta2 = self.betas
        m = {n: torch.zeros_like(p) for n, p in params.items()}
        v = {n: torch.zeros_like(p) for n, p in params.items()}
        for t in range(order.shape[0]):
            g = grad(loss)(params, x[order[t]], y[order[t]])
            if self.inner_optimizer == "sgd":
                params = {n: p - self.inner_lr * g[n] for n, p in params.items()}
                continue
            m = {n: beta1 * m[n] + (1 - beta1) * g[n] for n in params}
            v = {n: beta2 * v[n] + (1 - beta2) * g[n] ** 2 for n in params}
            c1, c2 = 1 - beta1 ** (t + 1), (1 - beta2 ** (t + 1)) ** 0.5  # bias corrections
            params = {n: p - self.inner_lr / c1 * m[n] / (v[n].sqrt() / c2 + 1e-8)
                      for n, p in params.items()}
        return params, functional_call(self.model, params, (query_x,))


def _minibatch_order(tasks: int, n: int, steps: int, batch: int | None,
                     device: torch.device) -> Tensor:
    """Indices ``[tasks, steps, b]``: per task, consecutive slices of shuffled copies of ``0..n-1``."""
    b = n if batch is None else min(batch, n)
    if steps == 0:
        return torch.zeros(tasks, 0, b, dtype=torch.long, device=device)
    per_pass = n // b
    passes = -(-steps // per_pass)
    perms = torch.stack([torch.stack([torch.randperm(n) for _ in range(passes)])
                         for _ in range(tasks)])  # [tasks, passes, n]
    order = perms[:, :, : per_pass * b].reshape(tasks, passes * per_pass, b)
    return order[:, :steps].to(device)
