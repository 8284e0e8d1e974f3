"""MAML (Finn, Abbeel, Levine 2017): learn an initialisation that adapts to a task in a few steps.

Meta-objective, for a batch of tasks ``i`` with support set ``S_i`` and query set ``Q_i``::

    phi_i = theta - alpha * grad L_S_i(theta)      (``inner_steps`` times)
    min_theta  mean_i  L_Q_i(phi_i)

The gradient flows through the inner updates (second order: it contains Hessian-vector products);
``first_order=True`` treats the inner gradients as constants (see ``fomaml.py``).
"""
from __future__ import annotations

from torch import Tensor

from mtl.algorithms.base import MetaLearner
from mtl.core.inner import maml_outputs


class MAML(MetaLearner):
    """``MAML(model, *, inner_steps=1, inner_lr=0.4, first_order=False, strategy="auto")``.

    ``meta_gradient(batch)`` fills ``.grad``; ``predict(batch)`` adapts and returns query logits
    (both from ``MetaLearner``, around ``_outputs``).
    """

    def _outputs(self, batch, steps: int, first_order: bool) -> tuple[Tensor, Tensor]:
        """Each task's query loss ``[B]`` and query outputs ``[B, N*Q, N]`` after ``steps`` steps."""
        return maml_outputs(self.model, dict(self.model.named_parameters()), *batch[:4],
                            steps=steps, lr=self.inner_lr, loss_fn=self.loss_fn,
                            first_order=first_order, strategy=self.strategy)
