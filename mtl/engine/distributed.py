"""torch.distributed glue: task-parallel training and sharded evaluation under torchrun.

    torchrun --nproc_per_node=8 -m mtl train --preset maml-omniglot-5w1s      # docs/distributed.md

Meta-training. The meta-batch of ``B`` tasks is split into contiguous shares (`shard_range`); each
rank draws only its share (`TaskStream`), runs the algorithm's own batched ``meta_gradient`` on it,
and one all-reduce of the ``.grad`` tensors, weighted by task counts, leaves every rank with the
mean over all ``B`` tasks (`all_reduce_gradients`, `meta_gradient`). Meta-batch ``t`` is drawn from
the seed ``(seed, t)`` on every rank, which keeps only its share, so the union of the shares *is*
the meta-batch a single process draws: W processes take exactly the steps one process takes (up
to float summation order), a run can be resumed with another world size, and shares never overlap.

Why not DDP: its hooks fire on the wrapped module's backward, but the functional inner loop calls
the model through ``torch.func.functional_call`` with adapted weights (second-order graphs through
several forward passes) and Reptile's pseudo-gradient comes from no backward at all. One explicit
all-reduce after ``meta_gradient`` is correct for every algorithm and costs the same bytes.

Evaluation: `sharded_scores` runs each rank on its share of a fixed episode set and gathers the
per-episode scores in episode order on every rank (``mtl.engine.evaluate.confidence_interval``: one CI).

Failure: collectives time out after ``MTL_DIST_TIMEOUT`` seconds (default 300) and raise
`DistributedError` naming the fix; torchrun stops the other ranks when one exits with an error.
Only rank 0 writes (`is_main_process`), with atomic writes, so the last checkpoint stays usable.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Iterable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from mtl.data.episodes import TaskBatch
from mtl.errors import DistributedError, MTLError

__all__ = [
    "DistributedError", "DistInfo", "setup", "teardown", "info", "is_distributed", "get_rank",
    "get_world_size", "is_main_process", "barrier", "shard_range", "step_seed", "TaskStream",
    "all_reduce_gradients", "all_reduce_metrics", "any_rank", "meta_gradient",
    "gather_shards", "sharded_scores",
]

DEFAULT_TIMEOUT_S = 300.0
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size``, its GPU (``local_rank``) and device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None


# ----------------------------------------------------------------------------- process group

def setup(*, backend: str | None = None, timeout_s: float | None = None,
          device: str | torch.device | None = None) -> DistInfo:
    """Join the process group described by torchrun's environment; a no-op without one.

    Reads ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT`` (set by
    torchrun). ``backend`` (default env ``MTL_DIST_BACKEND``): NCCL when CUDA is available, else
    Gloo (``MTL_DIST_BACKEND=gloo`` runs on CPUs on a GPU machine). ``timeout_s`` (default env
    ``MTL_DIST_TIMEOUT`` or 300): how long a collective waits for the other ranks before this
    rank stops with `DistributedError` instead of hanging. ``device``: default ``cuda:LOCAL_RANK``
    with NCCL, else the CPU. Idempotent.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(device=torch.device(device) if device is not None else torch.device("cpu"))
    missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise DistributedError(f"WORLD_SIZE={world_size} but {missing} are not set: launch with "
                               "`torchrun --nproc_per_node=N -m mtl ...` (docs/distributed.md), "
                               "or unset WORLD_SIZE for a single process")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    backend = (backend or os.environ.get("MTL_DIST_BACKEND")
               or ("nccl" if torch.cuda.is_available() else "gloo"))
    if backend not in ("nccl", "gloo"):
        raise DistributedError(f"backend {backend!r} is not supported: use nccl (GPUs) or gloo (CPUs)")
    if backend == "nccl":
        device = torch.device(device if device is not None else f"cuda:{local_rank}")
        torch.cuda.set_device(device)
        # A timed-out NCCL collective aborts the process (torchrun then stops the others).
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    else:
        device = torch.device(device if device is not None else "cpu")
    if not dist.is_initialized():
        timeout = _timeout_s(timeout_s)
        try:
            dist.init_process_group(backend, rank=rank, world_size=world_size,
                                    timeout=timedelta(seconds=timeout))
        except (RuntimeError, ValueError) as exc:  # DistStoreError, DistNetworkError: RuntimeError
            raise DistributedError(
                f"rank {rank}/{world_size} could not join the process group at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} ({_first_line(exc)}): check "
                "that every node was started with the same --rdzv-endpoint/--nnodes and can reach it "
                "(firewall, NCCL_SOCKET_IFNAME/GLOO_SOCKET_IFNAME)") from exc
    return DistInfo(rank, world_size, local_rank, device, backend)


def teardown() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def info() -> DistInfo:
    """`DistInfo` of the current process group (world size 1 when there is none)."""
    if not is_distributed():
        return DistInfo()
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                    device, backend)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the only rank that writes files and prints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_distributed():
        with _collective("barrier"):
            dist.barrier()


# ----------------------------------------------------------------------------- sharding tasks

def shard_range(n: int, *, rank: int | None = None, world_size: int | None = None) -> range:
    """This rank's contiguous share of ``range(n)``; the first ``n % W`` ranks get one more.

    The shares of ranks ``0..W-1`` concatenate to ``range(n)`` (e.g. n=5, W=2: 0..2 and 3..4).
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def step_seed(seed: int, step: int) -> int:
    """The seed of meta-step ``step``'s meta-batch (a 63-bit int; independent streams per step)."""
    if min(seed, step) < 0:
        raise MTLError(f"seed and step must be >= 0, got {seed} and {step}")
    state = np.random.SeedSequence((seed, step)).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class TaskStream:
    """Meta-batches drawn from seed ``step_seed(seed, t)`` at meta-step ``t``, split across ranks.

    ``sampler``: an ``EpisodeSampler`` or ``SinusoidTasks`` (anything with ``.sample(n)`` and a
    ``.generator``, which the stream reseeds every step). ``sample(step, B)`` returns this rank's
    share (`shard_range`) of the step's B tasks; ``sample(step, B, rank=0, world_size=1)`` all of
    them. The result depends only on ``(seed, step, B)`` and the share: no state to checkpoint,
    and the same meta-batch whatever the world size. Every rank draws the whole meta-batch (one
    batched call: index drawing and the image gather cost little next to a meta-step) and keeps
    its share; the float images of the other shares are the memory this costs.
    ``dtype`` (e.g. ``torch.float64``) converts the floating tensors of each batch.

    A sampler with ``.sample_step(t, B)`` (e.g. pre-training's ``EpochBatches``: epochs over a
    shuffled order) draws step ``t``'s batch itself, from the step alone. A sampler without
    ``.generator`` is used as is, ``sampler.sample(B)``, in a single process only.
    """

    def __init__(self, sampler: Any, *, seed: int = 0, dtype: torch.dtype | None = None) -> None:
        self.sampler, self.seed, self.dtype = sampler, seed, dtype
        self.shardable = isinstance(getattr(sampler, "generator", None), torch.Generator)

    def indices(self, step: int, batch_size: int, *, rank: int | None = None,
                world_size: int | None = None) -> range:
        """Indices (within the step's meta-batch) of the tasks this rank keeps."""
        return shard_range(batch_size, rank=rank, world_size=world_size)

    def sample(self, step: int, batch_size: int, *, rank: int | None = None,
               world_size: int | None = None):
        """This rank's tasks of meta-step ``step`` as one TaskBatch ``[n_rank, ...]``."""
        world_size = get_world_size() if world_size is None else world_size
        if not self.shardable:
            if world_size > 1:
                raise DistributedError(
                    f"{type(self.sampler).__name__} has no `.generator` to draw meta-batches by seed, "
                    "so they cannot be split across ranks (hard-task meta-batches need whole "
                    "batches): run this algorithm in a single process")
            return self._cast(self.sampler.sample(batch_size))
        tasks = self.indices(step, batch_size, rank=rank, world_size=world_size)
        if len(tasks) == 0:
            raise DistributedError(f"meta-batch {batch_size} leaves a rank without a task: use a "
                                   f"meta-batch of at least {world_size} (the world size) or fewer "
                                   "processes")
        if hasattr(self.sampler, "sample_step"):
            batch = self.sampler.sample_step(step, batch_size)
        else:
            self.sampler.generator.manual_seed(step_seed(self.seed, step))
            batch = self.sampler.sample(batch_size)
        if len(tasks) < batch_size:
            batch = _tasks(batch, tasks.start, tasks.stop)
        return self._cast(batch)

    def _cast(self, batch):
        if self.dtype is None:
            return batch
        cast = lambda t: t.to(self.dtype) if t.is_floating_point() else t  # noqa: E731
        return batch.map(cast) if isinstance(batch, TaskBatch) else type(batch)(*map(cast, batch))


def _tasks(batch, start: int, stop: int):
    """Tasks ``start:stop`` of a batch (a ``TaskBatch`` keeps its class ids)."""
    if isinstance(batch, TaskBatch):
        return batch.tasks(start, stop)
    return type(batch)(*(t[start:stop] for t in batch))


# ----------------------------------------------------------------------------- gradients

def all_reduce_gradients(params: nn.Module | Iterable[Tensor], *, weight: float | None = None) -> None:
    """Replace each ``p.grad`` by ``sum over ranks of weight_r * p.grad_r`` (one all-reduce).

    ``weight``: this rank's share of the global mean, e.g. ``n_rank / B`` tasks (default
    ``1 / world_size``); the weights of all ranks must sum to 1. A gradient that is ``None`` on a
    rank counts as zero there, and stays ``None`` only if it is ``None`` on every rank. Parameters
    with ``requires_grad=False`` are skipped. No-op in a single process.
    """
    if not is_distributed():
        return
    params = list(params.parameters() if isinstance(params, nn.Module) else params)
    params = [p for p in params if p.requires_grad]
    weight = 1.0 / get_world_size() if weight is None else float(weight)
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for p in params:
        groups.setdefault((p.device, p.dtype), []).append(p)
    for (device, dtype), group in groups.items():
        # One flat buffer: every gradient, then one "has a gradient" count per parameter.
        flat = torch.cat([(p.grad.detach().reshape(-1) * weight) if p.grad is not None
                          else torch.zeros(p.numel(), device=device, dtype=dtype) for p in group]
                         + [torch.tensor([float(p.grad is not None) for p in group],
                                         device=device, dtype=dtype)])
        with _collective("all_reduce of gradients"):
            dist.all_reduce(flat)
        counts = flat[-len(group):]
        offset = 0
        for i, p in enumerate(group):
            values = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
            if counts[i] == 0:
                p.grad = None
            elif p.grad is None:
                p.grad = values.clone()
            else:
                p.grad.copy_(values)


def all_reduce_metrics(metrics: Mapping[str, float], *, weight: float | None = None) -> dict[str, float]:
    """Weighted sum over ranks of each metric (weights as in `all_reduce_gradients`).

    Every rank must pass the same keys. Single process: the metrics unchanged.
    """
    if not is_distributed():
        return {k: float(v) for k, v in metrics.items()}
    keys = sorted(metrics)
    weight = 1.0 / get_world_size() if weight is None else float(weight)
    values = torch.tensor([float(metrics[k]) * weight for k in keys], dtype=torch.float64,
                          device=info().device)
    with _collective("all_reduce of metrics"):
        dist.all_reduce(values)
    return dict(zip(keys, values.tolist()))


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on at least one (single process: ``flag``).

    For decisions every rank must take together, such as stopping at a time budget: each rank
    measures its own clock, and a rank that stopped alone would leave the others waiting in the
    next all-reduce until the timeout.
    """
    if not is_distributed():
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=info().device)
    with _collective("all_reduce of a stop flag"):
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def meta_gradient(algorithm: nn.Module, stream: TaskStream, step: int, batch_size: int) -> dict[str, float]:
    """``algorithm.meta_gradient`` over the whole meta-batch of ``step``, split across the ranks.

    Each rank draws its share of the ``batch_size`` tasks, accumulates its meta-gradient (the
    mean over its tasks), then the ranks average with weights ``n_rank / batch_size``. Afterwards
    every rank holds in ``.grad`` (and returns as metrics) what one process would with all
    ``batch_size`` tasks. Zero the gradients before, step the optimizer after, as usual.
    """
    batch = stream.sample(step, batch_size)
    weight = batch[0].shape[0] / batch_size
    metrics = algorithm.meta_gradient(batch)
    all_reduce_gradients(algorithm, weight=weight)
    return all_reduce_metrics(metrics, weight=weight)


# ----------------------------------------------------------------------------- evaluation

def gather_shards(values: Tensor, total: int) -> Tensor:
    """Concatenate every rank's ``values [len(shard_range(total))]`` in rank order -> ``[total]``."""
    if not is_distributed():
        return values
    world = get_world_size()
    longest = len(shard_range(total, rank=0))
    device = info().device
    padded = torch.zeros(longest, dtype=torch.float64, device=device)
    padded[:len(values)] = values.detach().to(device=device, dtype=torch.float64)
    buffers = [torch.empty_like(padded) for _ in range(world)]
    with _collective("all_gather of evaluation results"):
        dist.all_gather(buffers, padded)
    return torch.cat([buf[:len(shard_range(total, rank=r))] for r, buf in enumerate(buffers)]).cpu()


def sharded_scores(episodes: Iterable[Any], num_episodes: int,
                   score_of: Callable[[Any], Tensor]) -> Tensor:
    """Per-episode scores ``[num_episodes]`` (float64, CPU) of a fixed episode set, across ranks.

    ``episodes``: the set's TaskBatches in order (e.g. ``mtl.engine.evaluate.EpisodeSet``); every rank
    walks it (drawing is cheap next to adapting) but runs ``score_of(batch) -> [b]`` (accuracy or
    MSE per task) only on the tasks of its `shard_range`. Every rank returns all scores in
    episode order, ready for ``mtl.engine.evaluate.confidence_interval``: one CI, as if one process ran.
    """
    mine = shard_range(num_episodes)
    results, start = [], 0
    for batch in episodes:
        size = batch[0].shape[0]
        lo, hi = max(mine.start, start), min(mine.stop, start + size)
        if lo < hi:
            part = type(batch)(*(t[lo - start:hi - start] for t in batch))
            results.append(score_of(part).detach().reshape(-1).double().cpu())
        start += size
    if start != num_episodes:
        raise MTLError(f"the episode set has {start} tasks but num_episodes={num_episodes}: pass the "
                       "episode count the set was built with")
    local = torch.cat(results) if results else torch.zeros(0, dtype=torch.float64)
    return gather_shards(local, num_episodes)


# ----------------------------------------------------------------------------- helpers

def _timeout_s(timeout_s: float | None) -> float:
    if timeout_s is not None:
        return float(timeout_s)
    raw = os.environ.get("MTL_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        return float(raw)
    except ValueError:
        raise DistributedError(f"MTL_DIST_TIMEOUT={raw!r} is not a number of seconds: "
                               "set e.g. MTL_DIST_TIMEOUT=600") from None


@contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a failed or timed-out collective into a `DistributedError` that says what to do."""
    try:
        yield
    except RuntimeError as exc:  # DistBackendError, gloo "Connection closed by peer", timeouts
        raise DistributedError(
            f"rank {get_rank()}/{get_world_size()}: {what} failed ({_first_line(exc)}). Another rank "
            "stopped or is stuck: read its error above (torchrun names the failed rank). The last "
            "checkpoint rank 0 wrote is intact: restart with --resume. If ranks are only slow, "
            "raise MTL_DIST_TIMEOUT (seconds).") from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__
