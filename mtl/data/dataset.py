"""``FewShotDataset``: every image of a split as one uint8 tensor, one row per class."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class FewShotDataset:
    """Images of one split, grouped by class.

    Attributes:
        images: uint8 ``[num_classes, per_class, C, H, W]`` (0-255).
        class_names: one name per class (row of ``images``).
        name: ``"omniglot"``, ``"mini-imagenet"`` or ``"folder"``.
        split: the split it holds (e.g. ``"train"``).
        counts: int64 ``[num_classes]``, the real images of each row when classes differ in size
            (the rest of the row is padding, never sampled); None: every row is full.
    """

    images: torch.Tensor
    class_names: list[str]
    name: str
    split: str
    counts: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return self.images.shape[0]

    @property
    def per_class(self) -> int:
        """Images per class (the smallest class's count when classes differ)."""
        return int(self.counts.min()) if self.counts is not None else self.images.shape[1]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: str | torch.device | None) -> "FewShotDataset":
        """The same dataset with ``images`` on ``device`` (copied once; self if already there)."""
        if device is None or torch.device(device) == self.images.device:
            return self
        return replace(self, images=self.images.to(device))

    def __len__(self) -> int:
        return self.num_classes

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape))
        return f"FewShotDataset({self.name!r}, split={self.split!r}, images=uint8[{shape}], device={self.device})"
