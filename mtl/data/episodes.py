"""N-way K-shot episodes as batched tensors: ``TaskBatch`` and ``EpisodeSampler``.

Indices are drawn on the CPU with a seeded ``torch.Generator`` (identical episodes on every machine
and device); the images are gathered from the dataset's uint8 tensor on its device and converted
to float32 in [0, 1] there. One call samples a whole batch of tasks with a few tensor operations
(no Python loop over episodes).
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import torch

from mtl.data.dataset import FewShotDataset
from mtl.data.spec import SPECS
from mtl.errors import EpisodeError


class _Tensors(NamedTuple):
    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor


class TaskBatch(_Tensors):
    """A batch of ``B`` tasks: a 4-tuple ``(support_x, support_y, query_x, query_y)``.

    Classification (``N`` ways, ``K`` shots, ``Q`` queries per class):
        support_x: float32 ``[B, N*K, C, H, W]`` in [0, 1];  support_y: int64 ``[B, N*K]``, labels
        ``0..N-1`` class-major (``[0]*K + [1]*K + ...``);  query_x ``[B, N*Q, C, H, W]``;  query_y ``[B, N*Q]``.

    Regression (sinusoid): x and y are float32 ``[B, K, 1]``.

    ``classes``: int64 ``[B, N]`` (CPU), the dataset class id of each task's label ``0..N-1``, set
    by ``EpisodeSampler``; None for tasks without dataset classes. It is an attribute, not a fifth
    element: ``sx, sy, qx, qy = batch`` unpacks a batch as before.
    """

    classes: torch.Tensor | None = None

    def __new__(cls, support_x, support_y, query_x, query_y, classes: torch.Tensor | None = None):
        self = super().__new__(cls, support_x, support_y, query_x, query_y)
        self.classes = classes
        return self

    def __getnewargs__(self):
        return (*self, self.classes)

    def map(self, fn) -> "TaskBatch":
        """The batch with ``fn`` applied to each of its four tensors (``classes`` kept)."""
        return TaskBatch(*(fn(t) for t in self), classes=self.classes)

    def tasks(self, start: int, stop: int) -> "TaskBatch":
        """Tasks ``start:stop`` of the batch (``classes`` too)."""
        classes = None if self.classes is None else self.classes[start:stop]
        return TaskBatch(*(t[start:stop] for t in self), classes=classes)

    def to(self, device: str | torch.device) -> "TaskBatch":
        """The batch with every tensor on ``device`` (``classes`` stays on the CPU)."""
        return self.map(lambda t: t.to(device))


class EpisodeSampler:
    """Samples ``ways``-way ``shots``-shot tasks with ``queries`` query images per class.

    Args:
        dataset: a :class:`FewShotDataset`; its images are moved to ``device`` once.
        ways, shots, queries: N, K and Q.
        device: where batches are built (default: the dataset's device).
        seed: seed of the sampler's CPU generator (each ``sample`` call advances it).
    """

    def __init__(self, dataset: FewShotDataset, *, ways: int, shots: int, queries: int,
                 device: str | torch.device | None = None, seed: int = 0):
        _check_episode(dataset, ways, shots, queries)
        self.dataset = dataset.to(device)
        self.images = self.dataset.images
        self._flat = self.images.reshape(-1, *self.images.shape[2:])  # [classes * per_class, C, H, W]
        self._counts = None if dataset.counts is None else dataset.counts.cpu()
        self.device = self.images.device
        self.ways, self.shots, self.queries = ways, shots, queries
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(ways, device=self.device)
        self._support_y = labels.repeat_interleave(shots)
        self._query_y = labels.repeat_interleave(queries)

    def sample(self, batch_size: int, *, classes: torch.Tensor | None = None,
               return_classes: bool = False) -> TaskBatch | tuple[TaskBatch, torch.Tensor]:
        """A :class:`TaskBatch` of ``batch_size`` tasks, drawn with the sampler's generator.

        ``classes`` (int64 ``[B, N]``, dataset class ids) fixes each task's classes, in label order;
        only the images are then drawn. The batch carries its class ids (``batch.classes``);
        ``return_classes=True`` also returns them, ``(batch, classes)``.
        """
        return self._sample(batch_size, self.generator, classes, return_classes)

    def episodes(self, n: int, batch_size: int, seed: int = 0) -> Iterator[TaskBatch]:
        """A fixed evaluation set: ``n`` tasks in batches of ``batch_size`` (the last may be smaller).

        Depends only on ``(dataset, ways, shots, queries, n, batch_size, seed)``, not on earlier calls.
        """
        generator = torch.Generator().manual_seed(seed)
        for start in range(0, n, batch_size):
            yield self._sample(min(batch_size, n - start), generator, None, False)

    def _sample(self, batch_size, generator, classes, return_classes):
        if batch_size < 1:
            raise EpisodeError(f"batch_size must be at least 1, got {batch_size}.")
        num_classes, per_class = self.images.shape[:2]
        if classes is None:
            classes = _random_subsets(batch_size, self.ways, num_classes, generator)
        else:
            classes = _check_classes(classes, batch_size, self.ways, num_classes)
        # K + Q distinct images per (task, class): the first K + Q of a random permutation.
        keys = torch.rand(batch_size, self.ways, per_class, generator=generator, dtype=torch.float64)
        if self._counts is not None:  # classes of different sizes: padding sorts last, never drawn
            keys = keys.masked_fill(torch.arange(per_class) >= self._counts[classes][:, :, None], 2.0)
        rows = classes[:, :, None] * per_class + keys.argsort(dim=2)[:, :, : self.shots + self.queries]
        rows = torch.cat([rows[:, :, : self.shots].flatten(), rows[:, :, self.shots:].flatten()])
        support_rows, query_rows = rows.to(self.device).split([batch_size * self.ways * self.shots,
                                                               batch_size * self.ways * self.queries])
        support_x = self._gather(support_rows, batch_size, self.ways * self.shots)
        query_x = self._gather(query_rows, batch_size, self.ways * self.queries)
        batch = TaskBatch(support_x, self._support_y.repeat(batch_size, 1),  # own memory: safe to edit
                          query_x, self._query_y.repeat(batch_size, 1), classes=classes)
        return (batch, classes) if return_classes else batch

    def _gather(self, rows: torch.Tensor, batch_size: int, per_task: int) -> torch.Tensor:
        """float32 ``[B, M, C, H, W]`` in [0, 1] from ``B * M`` row ids of ``self._flat`` (M = per_task)."""
        x = self._flat.index_select(0, rows)  # uint8 [B * M, C, H, W]
        # Two vectorised passes; uint8.div(255) (mixed dtypes) is ~10x slower on CPU.
        return x.view(batch_size, per_task, *x.shape[1:]).float().div_(255)

    def __repr__(self) -> str:
        return (f"EpisodeSampler({self.dataset.name}/{self.dataset.split}, ways={self.ways}, "
                f"shots={self.shots}, queries={self.queries}, device={self.device}, seed={self.seed})")


class FixedLabelTasks:
    """Episodes of ``sampler`` in which every class always gets the same label: class ``c`` is
    label ``c % N`` (``N = sampler.ways``), the label-``k`` class drawn among the ids ``k, k + N, ...``.

    Non-mutually-exclusive tasks (Yin et al. 2020): a learner can solve them from the query image
    alone by memorising each training class's label, ignoring the support set.
    ``.sample(batch_size)`` -> ``TaskBatch``, drawn with ``self.generator`` (seeded from the sampler's seed).
    """

    def __init__(self, sampler: EpisodeSampler) -> None:
        self.sampler, self.ways = sampler, sampler.ways
        self.generator = torch.Generator().manual_seed(sampler.seed)
        self.per_label = sampler.images.shape[0] // sampler.ways  # classes per label
        if self.per_label < 1:
            raise EpisodeError(f"{sampler.ways}-way tasks with fixed labels need {sampler.ways} classes")

    def sample(self, batch_size: int) -> TaskBatch:
        picks = torch.randint(self.per_label, (batch_size, self.ways), generator=self.generator)
        return self.sampler.sample(batch_size, classes=picks * self.ways + torch.arange(self.ways))


def _random_subsets(rows: int, k: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """int64 ``[rows, k]``: in each row ``k`` distinct ids of ``0..n-1``, uniformly random set and order.

    When ``k * k <= n`` (e.g. 5 of 4,400 classes), k ids are drawn independently and the rare rows
    with a repeat are drawn again (a uniform ordered k-subset, O(rows * k) work, whatever ``n``);
    otherwise ``n`` random keys are ranked. Float64 keys make ties, whose order could depend on
    the platform, practically impossible.
    """
    if k * k > n:
        return torch.rand(rows, n, generator=generator, dtype=torch.float64).argsort(dim=1)[:, :k]
    chosen = (torch.rand(rows, k, generator=generator, dtype=torch.float64) * n).long()
    while True:
        repeats = (chosen.sort(dim=1).values.diff(dim=1) == 0).any(dim=1)
        if not repeats.any():
            return chosen
        redo = repeats.nonzero().squeeze(1)
        chosen[redo] = (torch.rand(len(redo), k, generator=generator, dtype=torch.float64) * n).long()


def _check_episode(dataset: FewShotDataset, ways: int, shots: int, queries: int) -> None:
    where = f"{dataset.name} {dataset.split!r}"
    if ways < 1 or shots < 1 or queries < 0:
        raise EpisodeError(f"Need ways >= 1, shots >= 1 and queries >= 0; got {ways}, {shots}, {queries}.")
    if ways > dataset.num_classes:
        raise EpisodeError(
            f"{ways}-way tasks need {ways} classes but {where} has {dataset.num_classes}: use ways <= "
            f"{dataset.num_classes}"
            + (" (or rotations=True, which adds the rotated images as classes)."
               if dataset.split == "train" and _has_rotations(dataset.name) else ".")
        )
    if shots + queries > dataset.per_class:
        raise EpisodeError(
            f"shots + queries = {shots} + {queries} = {shots + queries} images per class, but {where} has "
            f"{dataset.per_class} per class: lower shots or queries so that shots + queries <= {dataset.per_class}."
        )


def _has_rotations(name: str) -> bool:
    spec = SPECS.get(name)
    return spec is not None and spec.rotations


def _check_classes(classes, batch_size: int, ways: int, num_classes: int) -> torch.Tensor:
    classes = torch.as_tensor(classes, dtype=torch.int64).cpu()
    if classes.shape != (batch_size, ways):
        raise EpisodeError(f"classes must have shape [batch_size, ways] = [{batch_size}, {ways}], "
                           f"got {list(classes.shape)}.")
    if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
        raise EpisodeError(f"classes must be class ids in 0..{num_classes - 1}.")
    if (classes.sort(dim=1).values.diff(dim=1) == 0).any():
        raise EpisodeError("each task's classes must be distinct (a row of classes repeats an id).")
    return classes
