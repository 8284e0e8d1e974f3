"""Meta-SGD (Li et al. 2017): learn the initialisation *and* a learning rate per parameter.

The inner step becomes ``phi = theta - alpha * grad L_S(theta)`` with ``alpha`` a tensor of the
same shape as ``theta`` (direction and size of the step are learned), meta-learned together with
``theta`` by the same outer gradient.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mtl.algorithms.base import MetaLearner
from mtl.core.inner import maml_outputs


class MetaSGD(MetaLearner):
    """``MetaSGD(model, inner_lr=0.4)``: ``inner_lr`` initialises every learned rate."""

    def __init__(self, model: nn.Module, **settings) -> None:
        super().__init__(model, **settings)
        # ParameterDict keys cannot hold dots: "features.0.0.weight" -> "features__0__0__weight".
        self.lrs = nn.ParameterDict({
            _key(name): nn.Parameter(torch.full_like(p.detach(), float(self.inner_lr)))
            for name, p in model.named_parameters()})

    def learning_rates(self) -> dict[str, Tensor]:
        """name -> learned rate, shaped like that parameter."""
        return {name: self.lrs[_key(name)] for name, _ in self.model.named_parameters()}

    def _outputs(self, batch, steps: int, first_order: bool) -> tuple[Tensor, Tensor]:
        return maml_outputs(self.model, dict(self.model.named_parameters()), *batch[:4], steps=steps,
                            lr=self.learning_rates(), loss_fn=self.loss_fn,
                            first_order=first_order, strategy=self.strategy)


def _key(name: str) -> str:
    return name.replace(".", "__")
