"""The sinusoid regression tasks of the MAML paper (section 5.1).

A task is ``y = amplitude * sin(x - phase)`` with amplitude ~ U[0.1, 5.0], phase ~ U[0, pi] and
inputs x ~ U[-5, 5]; a learner sees K (x, y) points (support) and is scored on others (query).
One family of tasks serves every split; the fixed episode sets of ``val`` and ``train`` are drawn
from seeds offset by `SPLIT_SEEDS`, so that validation and test episodes differ.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

from mtl.data.episodes import TaskBatch
from mtl.data.spec import DatasetSpec
from mtl.errors import EpisodeError

#: seed offset of each split's fixed episode sets (`SinusoidTasks.episodes`)
SPLIT_SEEDS = {"val": 1_000_003, "train": 2_000_003}


class SinusoidTasks:
    """Batches of sinusoid tasks, drawn with a seeded CPU generator.

    Args:
        shots: support points per task (K).
        queries: query points per task.
        amplitude, phase, x_range: ``(low, high)`` of the uniform distributions (MAML's defaults).
        device: where batches are returned.
        seed: seed of the CPU generator (each ``sample`` call advances it).
        split: the split whose fixed episode sets ``episodes`` draws (offsets its seed; None: none).
    """

    def __init__(self, *, shots: int = 10, queries: int = 10, amplitude=(0.1, 5.0), phase=(0.0, math.pi),
                 x_range=(-5.0, 5.0), device: str | torch.device | None = None, seed: int = 0,
                 split: str | None = None):
        if shots < 1 or queries < 0:
            raise EpisodeError(f"Need shots >= 1 and queries >= 0; got {shots}, {queries}.")
        self.shots, self.queries = shots, queries
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seed, self.split = seed, split
        self.generator = torch.Generator().manual_seed(seed)

    @staticmethod
    def curve(x: torch.Tensor, amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
        """``amplitude * sin(x - phase)``; amplitude and phase broadcast against x (e.g. ``[B, 1, 1]``)."""
        return amplitude * torch.sin(x - phase)

    def sample(self, batch_size: int, *, return_params: bool = False):
        """A regression :class:`TaskBatch` (x, y float32 ``[B, K, 1]`` and ``[B, Q, 1]``).

        ``return_params=True`` returns ``(batch, params)`` with ``params`` float32 ``[B, 2]``
        (amplitude, phase) so the true curves can be drawn with :meth:`curve`.
        """
        return self._sample(batch_size, self.generator, return_params)

    def episodes(self, n: int, batch_size: int, seed: int = 0) -> Iterator[TaskBatch]:
        """A fixed evaluation set of ``n`` tasks in batches (independent of earlier calls; the
        seed is offset by the split's `SPLIT_SEEDS` entry)."""
        generator = torch.Generator().manual_seed(seed + SPLIT_SEEDS.get(self.split, 0))
        for start in range(0, n, batch_size):
            yield self._sample(min(batch_size, n - start), generator, False)

    def _uniform(self, shape, bounds, generator) -> torch.Tensor:
        low, high = bounds
        return torch.rand(shape, generator=generator) * (high - low) + low

    def _sample(self, batch_size: int, generator: torch.Generator, return_params: bool):
        if batch_size < 1:
            raise EpisodeError(f"batch_size must be at least 1, got {batch_size}.")
        amplitude = self._uniform((batch_size, 1, 1), self.amplitude, generator)
        phase = self._uniform((batch_size, 1, 1), self.phase, generator)
        x = self._uniform((batch_size, self.shots + self.queries, 1), self.x_range, generator)
        y = self.curve(x, amplitude, phase)
        x, y = x.to(self.device), y.to(self.device)
        k = self.shots
        batch = TaskBatch(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
        if return_params:
            return batch, torch.cat([amplitude, phase], dim=2).reshape(batch_size, 2).to(self.device)
        return batch

    def __repr__(self) -> str:
        return f"SinusoidTasks(shots={self.shots}, queries={self.queries}, device={self.device}, seed={self.seed})"


def tasks(split: str, *, shots: int, queries: int, device=None, seed: int = 0) -> SinusoidTasks:
    """The task source of ``split`` (every split is the same family; see `SPLIT_SEEDS`)."""
    return SinusoidTasks(shots=shots, queries=queries, device=device, seed=seed, split=split)


SPEC = DatasetSpec(name="sinusoid", task="regression", tasks=tasks,
                   splits={"train": None, "val": None, "test": None}, channels=(), image_size=None,
                   models=("mlp",), hidden=40)
