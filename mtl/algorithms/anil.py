"""ANIL (Raghu et al. 2020): "almost no inner loop" -- adapt only the head.

The body (``model.features``) is meta-learned but frozen inside the inner loop; only the linear
head (``model.head``) takes inner steps. Each task's features are computed once, so the inner
loop is a few steps of logistic regression: far cheaper than MAML, and about as accurate, which
suggests MAML mostly *reuses* features rather than rapidly learning new ones.
"""
from __future__ import annotations

from torch import Tensor

from mtl.algorithms.base import MetaLearner, embed_tasks, numel
from mtl.core.inner import maml_outputs


class ANIL(MetaLearner):
    """``ANIL(model, ...)``; ``model`` needs ``.features`` (body) and ``.head`` (linear head)."""

    def _outputs(self, batch, steps: int, first_order: bool) -> tuple[Tensor, Tensor]:
        support = embed_tasks(self.model.features, batch[0], self.strategy)  # [B, n_s, D]
        query = embed_tasks(self.model.features, batch[2], self.strategy)  # [B, n_q, D]
        head = self.model.head
        return maml_outputs(head, dict(head.named_parameters()), support, batch[1], query,
                            batch[3], steps=steps, lr=self.inner_lr, loss_fn=self.loss_fn,
                            first_order=first_order, strategy=self.strategy)

    def per_task_parameters(self, ways: int) -> int:
        """Only the head is adapted."""
        return numel(self.model.head.parameters())
