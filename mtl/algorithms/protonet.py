"""Prototypical networks (Snell, Swersky, Zemel 2017): a baseline with no inner loop at all.

Embed every image, average each class's support embeddings into a *prototype*, classify a query
by its (negative squared Euclidean) distance to the prototypes. Meta-training is plain
cross-entropy on those logits. ``inner_steps`` and ``inner_lr`` are accepted and ignored.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.algorithms.base import MetaLearner, embed_tasks, metrics
from mtl.core.heads import prototype_logits


class ProtoNet(MetaLearner):
    """``ProtoNet(model)``: embeds with ``model.features`` (or ``model`` if it has none)."""

    REGRESSION = False  # class prototypes need class labels

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
