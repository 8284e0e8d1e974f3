"""The baseline of the MAML paper's sinusoid experiment (section 5.1, Figure 2).

"A model pretrained on all tasks": one network trained to regress every sampled sinusoid at once
(plain supervised learning on the union of the tasks, no inner loop), then fine-tuned on a new
task's K points with the same gradient steps MAML takes. Because the tasks disagree (random
amplitude and phase) it learns roughly their average, the curve -(2/pi) E[a] cos x (phases in
[0, pi] do not cancel). A few gradient steps from there lower its error, but from the same
start MAML's initialisation lowers it far more, most of it in the first step.

It plugs into the engine like any algorithm (``--algorithm joint``)::

    python -m mtl train --preset cpu-joint-sinusoid --out runs/sinusoid-joint
    python -m mtl evaluate --checkpoint runs/sinusoid-joint --inner-steps 10
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from mtl.algorithms.base import Learner, numel
from mtl.core.inner import adapt


class JointTraining(Learner):
    """Pre-train on all regression tasks jointly; adapt at test by ``inner_steps`` SGD steps.

    Same constructor and interface as the algorithms in ``mtl.algorithms`` (the engine treats it as
    one): ``meta_gradient(batch)`` fills ``.grad`` with the gradient of the mean squared error over
    every support and query point of the ``B`` tasks; ``predict(batch, inner_steps=)`` returns the
    query predictions ``[B, Q, 1]`` after fine-tuning on each task's support ``[B, K, 1]``.
    """

    def __init__(self, model: nn.Module, *, inner_steps: int, inner_lr: float,
                 first_order: bool = False, strategy: str = "auto", **extra):
        super().__init__()
        self.model, self.inner_steps, self.inner_lr = model, inner_steps, inner_lr

    def meta_gradient(self, batch) -> dict[str, float]:
        x = torch.cat([batch.support_x, batch.query_x], 1).flatten(0, 1)  # [B*(K+Q), 1]
        y = torch.cat([batch.support_y, batch.query_y], 1).flatten(0, 1)
        loss = F.mse_loss(self.model(x), y)
        loss.backward()
        return {"loss": loss.item()}

    def predict(self, batch, *, inner_steps: int | None = None) -> torch.Tensor:
        steps = self.inner_steps if inner_steps is None else inner_steps
        out = [self._finetuned(sx, sy, steps)(qx) for sx, sy, qx in
               zip(batch.support_x, batch.support_y, batch.query_x)]  # one task at a time
        return torch.stack(out)  # [B, Q, 1]

    def _finetuned(self, x: torch.Tensor, y: torch.Tensor, steps: int):
        """``steps`` SGD steps of size ``inner_lr`` on one task's points ``[K, 1]``; returns f(x)."""
        start = {k: v.detach().requires_grad_() for k, v in self.model.named_parameters()}
        with torch.enable_grad():
            params = adapt(self.model, start, x, y, steps=steps, lr=self.inner_lr, loss_fn=F.mse_loss,
                           first_order=True)
        params = {k: v.detach() for k, v in params.items()}
        return lambda query: functional_call(self.model, params, (query,)).detach()

    def per_task_parameters(self, ways: int) -> int:
        """The whole network is fine-tuned on each task."""
        return numel(self.model.parameters())


