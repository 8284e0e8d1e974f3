"""Prototypical networks (Snell, Swersky, Zemel 2017): a baseline with no inner loop at all.

Embed every image, average each class's support embeddings into a *prototype*, classify a query
by its (negative squared Euclidean) distance to the prototypes. Meta-training is plain
cross-entropy on those logits. There is no inner loop: a non-zero ``inner_steps``/``inner_lr`` or
``first_order`` is refused.

Defaults as in the paper: one large task per meta-step (meta-batch 1), trained wider than tested
(20-way, its 5-shot mini-ImageNet setting; 30 and 60 ways elsewhere in the paper), tested 5-way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.algorithms.base import MetaLearner, embed_tasks, metrics
from mtl.core.heads import prototype_logits
from mtl.errors import ConfigError


class ProtoNet(MetaLearner):
    """``ProtoNet(model)``: embeds with ``model.features`` (or ``model`` if it has none)."""

    REGRESSION = False  # class prototypes need class labels
    #: TrainConfig fields set when a run leaves them unset (evaluation stays 5-way)
    DEFAULTS = {"ways": 20, "meta_batch": 1, "inner_steps": 0, "inner_lr": 0.0}

    def __init__(self, model, *, inner_steps: int = 0, inner_lr: float = 0.0, first_order: bool = False,
                 strategy: str = "auto", **settings) -> None:
        if inner_steps or inner_lr or first_order:
            raise ConfigError(
                f"ProtoNet has no inner loop, so inner_steps={inner_steps}, inner_lr={inner_lr:g} and "
                f"first_order={first_order} mean nothing to it: drop --inner-steps, --inner-lr and "
                "--first-order (or use --algorithm protomaml, which adapts from the prototypes)")
        super().__init__(model, inner_steps=0, inner_lr=0.0, strategy=strategy, **settings)
        head = getattr(model, "head", None)
        if getattr(model, "features", None) is not None and isinstance(head, torch.nn.Module):
            head.requires_grad_(False)  # only the body embeds: a model's own head is never used, so not meta-learned

    @classmethod
    def from_config(cls, config, build_model) -> "ProtoNet":
        """As every learner's, refusing test-time inner steps (it has no inner loop)."""
        if config.test_inner_steps:
            raise ConfigError(f"ProtoNet has no inner loop: drop --test-inner-steps {config.test_inner_steps}")
        return super().from_config(config, build_model)

    def _logits(self, batch) -> Tensor:
        body = getattr(self.model, "features", self.model)
        support = embed_tasks(body, batch[0], self.strategy)
        query = embed_tasks(body, batch[2], self.strategy)
        ways = int(batch[1].max()) + 1
        return prototype_logits(support, batch[1], query, ways)

    def meta_gradient(self, batch) -> dict[str, float]:
        logits = self._logits(batch)
        loss = F.cross_entropy(logits.flatten(0, 1), batch[3].flatten())
        loss.backward()
        return metrics(loss, logits, batch[3])

    def predict(self, batch, *, inner_steps: int | None = None) -> Tensor:
        with torch.no_grad():
            return self._logits(batch)

    def per_task_parameters(self, ways: int) -> int:
        """None: a task is summarised by its class means, computed, not learned."""
        return 0

    def set_ways(self, ways: int) -> None:
        """Any number of ways: one prototype per class of the support set."""
