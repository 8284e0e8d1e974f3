"""Evaluation: a fixed, seeded set of test episodes -> mean score +- 95% confidence interval.

The protocol of MAML's code, ProtoNets and MTL: adapt to each of ``n`` (600) held-out episodes,
score its queries, and report ``mean +- 1.96 * std / sqrt(n)`` over episodes (``std`` with
``ddof=0``, as ``np.std`` in MAML's code). Classification scores accuracy; sinusoid regression
scores the query mean squared error. The same ``seed`` gives the same episodes on every run,
machine and device (the sampler draws indices with a CPU generator).

Python::

    result = evaluate(learner, config, split="test", episodes=600, seed=0)   # a trained learner
    result = evaluate_checkpoint("runs/x/best.pt", episodes=600, seed=0)    # or a checkpoint
    result.mean, result.ci95, result.n

Test-time inner steps are chosen on validation episodes, never on the test ones::

    steps, on_val = choose_inner_steps(learner, config, episodes=100)   # e.g. 10, {1: 0.93, 3: 0.95, ...}
    result = evaluate(learner, config, split="test", inner_steps=steps)

CLI: ``python -m mtl evaluate --checkpoint PATH --episodes 600 --seed 0 [--inner-steps S]``.
Every result says how batch norm normalised at test time (``Evaluation.protocol["batch_norm"]``):
Conv4 (``mtl.models``) uses the statistics of the batch it sees, each task's own support or query
set (transductive, as in MAML); the pre-trained ResNet-12 of transfer and meta-transfer learning
uses the running statistics of its pre-training (not transductive, as in the MTL paper).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, TypeVar

import torch
from torch import nn

from mtl.algorithms.base import Learner
from mtl.engine.config import TrainConfig
from mtl.errors import ConfigError, MTLError

K = TypeVar("K")

DRAW_BATCH = 50  # episodes drawn per sampler call; part of the definition of a seeded episode set
TRANSDUCTIVE_BN = "transductive batch norm (each task's own batch statistics, as in MAML)"
RUNNING_BN = "batch norm with running statistics from training (not transductive)"
NO_BN = "no batch norm"
STEP_CHOICES = (1, 3, 5, 10)  # the test-time inner step counts tried on validation by default


@dataclass
class Evaluation:
    """``mean +- ci95`` of ``metric`` over ``n`` episodes; ``scores`` holds one value per episode."""

    metric: str                 # "accuracy" (fraction in [0, 1]) or "mse"
    mean: float
    ci95: float                 # half-width: 1.96 * std / sqrt(n)
    n: int
    scores: list[float] = field(repr=False)
    split: str = "test"
    seed: int = 0
    inner_steps: int | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    adapts: bool = True         # False: the learner has no inner loop (it sets no weight per task)

    @property
    def adaptation(self) -> str:
        """How each task was adapted to, in words: ``"3 inner steps"``, or ``"no inner loop"``."""
        return adaptation(self.inner_steps, self.adapts)

    def __str__(self) -> str:
        if self.metric == "accuracy":
            value = f"accuracy {100 * self.mean:.2f}% +- {100 * self.ci95:.2f}%"
        else:
            value = f"{self.metric} {self.mean:.4f} +- {self.ci95:.4f}"
        details = ", ".join(f"{k} {v}" for k, v in self.protocol.items() if k != "batch_norm")
        norm = self.protocol.get("batch_norm")
        return (f"{value} (95% CI, {self.n} episodes, split {self.split}, seed {self.seed}, "
                f"{self.adaptation}{', ' + details if details else ''}"
                f"{'; ' + norm if norm else ''})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def confidence_interval(scores: Iterable[float] | torch.Tensor) -> tuple[float, float]:
    """``(mean, 1.96 * std / sqrt(n))`` of per-episode scores, ``std`` with ``ddof=0``."""
    values = torch.as_tensor(scores if isinstance(scores, torch.Tensor) else list(scores),
                             dtype=torch.float64).flatten()
    n = values.numel()
    if n == 0:
        raise MTLError("no episodes to evaluate: pass episodes >= 1")
    return values.mean().item(), 1.96 * values.std(correction=0).item() / math.sqrt(n)


class EpisodeSet:
    """A re-iterable fixed episode set: every ``iter()`` yields the same `TaskBatch`-es.

    ``config`` gives the dataset and the episode shape (``test_ways``-way ``test_shots``-shot,
    ``queries`` queries per class). Episodes are drawn ``DRAW_BATCH`` at a time, so the set depends
    only on the dataset split, the episode shape, ``n`` and ``seed``; they are handed out in batches
    of ``config.eval_batch`` tasks (a memory knob that never changes the episodes).
    """

    def __init__(self, config: TrainConfig, split: str, *, n: int, seed: int,
                 device: torch.device | str, progress: bool = True):
        self.config, self.split, self.n, self.seed, self.device = config, split, n, seed, device
        self.progress = progress
        self._source = None

    def source(self) -> Any:
        """The split's task source (loaded once); `EpisodeError` naming the fix if this split
        cannot form its episodes."""
        if self._source is None:
            from mtl.engine.build import task_source

            c = self.config
            self._source = task_source(c, self.split, ways=c.test_ways, shots=c.test_shots,
                                       queries=c.test_queries, device=self.device, seed=self.seed,
                                       progress=self.progress)
        return self._source

    def check(self) -> None:
        """Raise `EpisodeError` naming the fix now if this split cannot form its episodes."""
        self.source()

    def __len__(self) -> int:
        return sum(math.ceil(min(DRAW_BATCH, self.n - start) / self.config.eval_batch)
                   for start in range(0, self.n, DRAW_BATCH))

    def __iter__(self) -> Iterator[Any]:
        c = self.config
        # Drawn DRAW_BATCH at a time (so the set depends on the seed only), computed eval_batch at a time.
        for drawn in self.source().episodes(self.n, DRAW_BATCH, self.seed):
            for start in range(0, drawn.support_x.shape[0], c.eval_batch):
                yield type(drawn)(*(t[start:start + c.eval_batch] for t in drawn))


def evaluate(learner: nn.Module, config: TrainConfig, *, split: str = "test", episodes: int = 600,
             seed: int = 0, inner_steps: int | None = None, device: str | torch.device | None = None,
             episode_set: EpisodeSet | None = None, progress: bool | None = None) -> Evaluation:
    """Score ``learner`` (an algorithm module with ``predict``) on a fixed episode set.

    ``config`` (resolved) fixes the dataset and the episode shape; ``inner_steps`` defaults to
    ``config.test_inner_steps``; ``episode_set`` reuses already loaded episodes (validation). A
    `Learner` that sets no weight per task (``per_task_parameters`` 0: ProtoNet, in-context) has no
    inner loop, and its result says so (``adapts=False``) whatever ``inner_steps`` is.
    """
    from mtl.engine.build import resolve_device
    from mtl.io import progress_enabled

    _check_request(None if episode_set is not None else episodes, inner_steps)  # a set: its own n
    config = config.resolved()
    steps = config.test_inner_steps if inner_steps is None else inner_steps
    device = resolve_device(device or config.device) if device is None or isinstance(device, str) else device
    show = progress_enabled(progress)
    if episode_set is None:
        episode_set = EpisodeSet(config, split, n=episodes, seed=seed, device=device, progress=show)
    scores = _scores(learner, episode_set, steps, config.regression, show)
    mean, ci95 = confidence_interval(scores)
    learner_adapts = adapts(learner, config.test_ways)
    return Evaluation(metric="mse" if config.regression else "accuracy", mean=mean,
                      ci95=ci95, n=len(scores), scores=scores, split=episode_set.split,
                      seed=episode_set.seed, inner_steps=steps, protocol=_protocol(config, learner),
                      adapts=learner_adapts)


def choose_inner_steps(learner: nn.Module, config: TrainConfig, *, choices: Iterable[int] = STEP_CHOICES,
                       episodes: int = 100, seed: int = 0, episode_set: EpisodeSet | None = None,
                       progress: bool | None = None) -> tuple[int, dict[int, float]]:
    """The test-time inner step count among ``choices`` with the best mean score on ``episodes``
    validation episodes (``seed``; or ``episode_set``), the fewest steps on a tie, and every
    choice's score: ``(steps, {steps: mean accuracy or MSE})``. Accuracy is maximised, MSE minimised.
    """
    choices = tuple(choices)
    for k in choices:
        _check_request(None, k)
    if not choices:
        raise ConfigError("choose_inner_steps needs at least one step count in choices, e.g. (1, 3, 5, 10)")
    fewest_first = {k: learner for k in sorted(set(choices))}  # choose_learner keeps the first on a tie
    steps, on_val = choose_learner(fewest_first, config, inner_steps={k: k for k in fewest_first}, episodes=episodes,
                                   seed=seed, episode_set=episode_set, progress=progress)
    return steps, {k: on_val[k] for k in choices}


def choose_learner(candidates: Mapping[K, nn.Module], config: TrainConfig, *,
                   inner_steps: Mapping[K, int] | None = None, episodes: int = 100, seed: int = 0,
                   episode_set: EpisodeSet | None = None, progress: bool | None = None) -> tuple[K, dict[K, float]]:
    """The key of the candidate learner (e.g. one per setting: ``{(steps, lr): learner}``) with the
    best mean score on ``episodes`` validation episodes (``seed``; or ``episode_set``), the first in
    ``candidates``' order on a tie, and every candidate's score: ``(key, {key: mean accuracy or MSE})``.
    ``inner_steps`` gives a candidate's test-time steps (default: ``config.test_inner_steps``).
    Accuracy is maximised, MSE minimised."""
    from mtl.engine.build import resolve_device
    from mtl.io import progress_enabled

    if not candidates:
        raise ConfigError("choose_learner needs at least one candidate learner, e.g. {setting: learner}")
    if episode_set is None:
        _check_request(episodes, None)
        first = next(iter(candidates.values()))
        weight = next(first.parameters(), None)
        device = weight.device if weight is not None else resolve_device(config.device)
        episode_set = EpisodeSet(config.resolved(), "val", n=episodes, seed=seed, device=device,
                                 progress=progress_enabled(progress))
    steps = dict(inner_steps or {})
    unknown = set(steps) - set(candidates)
    if unknown:
        raise ConfigError(f"inner_steps names {sorted(map(str, unknown))}, which are not candidates: use the "
                          "candidates' keys")
    on_val = {key: evaluate(learner, config, inner_steps=steps.get(key), episode_set=episode_set,
                            progress=progress).mean for key, learner in candidates.items()}
    sign = 1 if config.resolved().regression else -1  # MSE: lower is better
    order = {key: i for i, key in enumerate(candidates)}
    return min(candidates, key=lambda key: (sign * on_val[key], order[key])), on_val


def adaptation(steps: int | None, adapts: bool = True) -> str:
    """How each task is adapted to, in words: ``"3 inner steps"``, ``"1 inner step"``, or
    ``"no inner loop"`` for a learner that sets no weight per task."""
    if not adapts:
        return "no inner loop"
    return f"{steps} inner step{'' if steps == 1 else 's'}"


def adapts(learner: nn.Module, ways: int) -> bool:
    """Whether ``learner`` sets weights per task (a learner that does not say is taken to)."""
    if not isinstance(learner, Learner):
        return True
    try:
        return learner.per_task_parameters(ways) != 0
    except NotImplementedError:
        return True


def evaluate_checkpoint(path: str | Path, *, split: str = "test", episodes: int = 600, seed: int = 0,
                        inner_steps: int | None = None, device: str | None = None,
                        progress: bool | None = None) -> Evaluation:
    """Load a checkpoint (a file, or a run folder: its best.pt, else last.pt) and `evaluate` it
    (``device`` None: the run's own device setting)."""
    from mtl.engine.build import load_learner

    _check_request(episodes, inner_steps)
    loaded = load_learner(path, device)
    result = evaluate(loaded.learner, loaded.config, split=split, episodes=episodes, seed=seed,
                      inner_steps=inner_steps, device=loaded.device, progress=progress)
    result.protocol["checkpoint"] = str(loaded.path)
    result.protocol["checkpoint_step"] = loaded.step
    return result


def _check_request(episodes: int | None, inner_steps: int | None) -> None:
    """``episodes`` (None: not asked for) a whole number >= 1; ``inner_steps`` None or >= 0."""
    if episodes is not None and (isinstance(episodes, bool) or not isinstance(episodes, int)
                                 or episodes < 1):
        raise ConfigError(f"episodes must be a whole number >= 1, got {episodes!r} (--episodes)")
    if inner_steps is not None and (isinstance(inner_steps, bool) or not isinstance(inner_steps, int)
                                    or inner_steps < 0):
        raise ConfigError(f"inner steps must be a whole number >= 0, got {inner_steps!r} (--inner-steps)")


def _scores(learner: nn.Module, episodes: EpisodeSet, steps: int, regression: bool,
            progress: bool) -> list[float]:
    from tqdm.auto import tqdm

    from mtl.engine import distributed

    def score(batch) -> torch.Tensor:  # [b] per-task accuracy or MSE
        out = learner.predict(batch, inner_steps=steps).detach()  # adapts inside; no graph kept
        if regression:
            return ((out - batch.query_y) ** 2).flatten(1).mean(1)
        return (out.argmax(-1) == batch.query_y).float().mean(1)

    was_training = learner.training
    learner.eval()
    try:
        if distributed.is_distributed():  # [distributed] each rank adapts to its share of the episodes
            return distributed.sharded_scores(episodes, episodes.n, score).tolist()
        batches = tqdm(episodes, total=len(episodes), desc=f"evaluate {episodes.split}",
                       disable=not progress, leave=False)
        return torch.cat([score(batch) for batch in batches]).double().cpu().tolist()
    finally:
        learner.train(was_training)


def _protocol(config: TrainConfig, learner: nn.Module) -> dict[str, Any]:
    info: dict[str, Any] = {"algorithm": config.algorithm, "dataset": config.dataset}
    if config.regression:
        info.update(points=config.test_shots, query_points=config.test_queries)
    else:
        info.update(ways=config.test_ways, shots=config.test_shots, queries=config.test_queries,
                    batch_norm=batch_norm_mode(learner))
    return info


def batch_norm_mode(learner: nn.Module) -> str:
    """How ``learner``'s batch norm normalises in evaluation (``learner.eval()``), in words."""
    from mtl.models import BatchNorm

    running = batch = False
    for module in learner.modules():
        if isinstance(module, BatchNorm):
            batch = True
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            if module.track_running_stats:
                running = True
            else:
                batch = True
    if running and batch:
        return f"{RUNNING_BN} and {TRANSDUCTIVE_BN}"
    return RUNNING_BN if running else TRANSDUCTIVE_BN if batch else NO_BN
