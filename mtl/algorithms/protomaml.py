"""Proto-MAML (Triantafillou et al. 2020, Meta-Dataset): MAML whose head starts at the prototypes.

ProtoNet's logits are a linear layer in disguise: ``-||x - c_k||^2 = 2 c_k.x - ||c_k||^2 - ||x||^2``,
and the last term is the same for every class, so softmax ignores it. For each task Proto-MAML sets
the linear head to ``W_k = 2 c_k``, ``b_k = -||c_k||^2`` (``c_k``: class k's mean support embedding,
``mtl.core.heads.prototype_head``), then adapts the whole network, head included, by MAML's inner loop.
With 0 inner steps it predicts exactly as ProtoNet. The head's start is a function of the body, so
the meta-gradient also flows through the prototypes, even with ``first_order=True`` (the paper's
fo-Proto-MAML). The model's own head weights are not used. Tasks are adapted one at a time by
``mtl.core.inner.adapt`` (``strategy`` is ignored).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from mtl.algorithms.base import MetaLearner
from mtl.core.heads import prototype_head
from mtl.core.inner import adapt


class ProtoMAML(MetaLearner):
    """``ProtoMAML(model, ...)``; ``model`` needs ``.features`` (body) and ``.head`` (linear head)."""

    REGRESSION = False  # class prototypes need class labels

    def __init__(self, model: nn.Module, **settings) -> None:
        super().__init__(model, **settings)
        model.head.requires_grad_(False)  # every task's head starts at its prototypes instead

    def _outputs(self, batch, steps: int, first_order: bool) -> tuple[Tensor, Tensor]:
        losses, outputs = [], []
        for sx, sy, qx, qy in zip(*batch):
            weight, bias = prototype_head(self.model.features(sx)[None], sy[None], int(sy.max()) + 1)
            start = {**dict(self.model.named_parameters()), "head.weight": weight[0], "head.bias": bias[0]}
            params = adapt(self.model, start, sx, sy, steps=steps, lr=self.inner_lr, loss_fn=self.loss_fn,
                           first_order=first_order)  # the head is a variable of its own in the inner loop
            out = functional_call(self.model, params, (qx,))
            losses.append(self.loss_fn(out, qy))
            outputs.append(out)
        return torch.stack(losses), torch.stack(outputs)

    def set_ways(self, ways: int) -> None:
        """Any number of ways: the head is made from the support set's prototypes."""
