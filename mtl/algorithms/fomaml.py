"""First-order MAML: MAML's update with the inner gradients treated as constants.

The meta-gradient becomes the query-loss gradient *at the adapted parameters*,
``mean_i grad L_Q_i(phi_i)``: no Hessian-vector products, about a third faster, and nearly as
accurate on the few-shot benchmarks (MAML paper, section 5.2).
"""
from __future__ import annotations

from torch import nn

from mtl.algorithms.maml import MAML


class FOMAML(MAML):
    """``MAML`` with ``first_order=True`` always."""

    def __init__(self, model: nn.Module, **settings) -> None:
        settings["first_order"] = True
        super().__init__(model, **settings)
