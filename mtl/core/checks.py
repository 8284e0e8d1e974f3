"""What the inner loop checks before it computes: settings, inputs, labels, finite losses.

Every check raises an ``MTLError`` (``ConfigError``, ``TaskBatchError``, ``InnerLoopError``)
whose message names the fix, and computes nothing the inner loop then uses (``label_errors`` is a
context that turns torch's label errors into such a message). The argument types the inner loop's
modules share (``Params``, ``LR``, ``LossFn``, with ``lr_of`` for a parameter's rate) and the names of its strategies
(``STRATEGIES``) are defined here, below every module that uses them.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl.errors import ConfigError, InnerLoopError, TaskBatchError

__all__ = ["STRATEGIES", "Params", "LR", "LossFn", "lr_of", "check_settings", "check_inputs",
           "check_batch", "check_strategy", "check_finite", "label_errors"]

Params = dict[str, Tensor]
LR = float | Mapping[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

#: how a batch of tasks runs: "auto" (vmap on CUDA, the loop elsewhere), "vmap" or "loop"
STRATEGIES = ("auto", "vmap", "loop")


def lr_of(lr: LR, name: str) -> float | Tensor:
    """The inner learning rate of parameter ``name``: ``lr`` itself, or its entry (Meta-SGD)."""
    return lr[name] if isinstance(lr, Mapping) else lr


def check_settings(steps: int, lr: LR) -> None:
    """A whole number of steps >= 0 and a finite learning rate >= 0 (or a dict of tensors)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"steps must be a whole number >= 0, got {steps!r}")
    if isinstance(lr, Mapping):
        return
    if isinstance(lr, Tensor) and lr.numel() == 1:
        lr = float(lr)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
        raise ConfigError(f"lr must be a finite number >= 0, got {lr!r} (a negative step climbs "
                          "the loss; per-parameter rates go in a dict name -> tensor)")


def check_inputs(model: nn.Module, params: Mapping[str, Tensor], inputs: dict[str, Tensor],
                 targets: dict[str, Tensor], loss_fn: LossFn, *, leading: int) -> None:
    """Types, devices, sizes and label kinds of the inputs of ``adapt``/``maml_loss``.

    ``leading``: 1 for one task ``[n, ...]``, 2 for a batch of tasks ``[B, n, ...]``.
    """
    every = {**inputs, **targets}
    for name, t in every.items():
        if not isinstance(t, Tensor):
            raise TaskBatchError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < leading:
            raise TaskBatchError(f"{name} needs the leading dimensions "
                                 f"{'[n]' if leading == 1 else '[B, n]'}, got shape {tuple(t.shape)}")
        empty = [d for d, size in zip(("B", "n") if leading == 2 else ("n",), t.shape) if size == 0]
        if empty:
            raise TaskBatchError(f"{name} has shape {tuple(t.shape)}: {empty[0]} is 0 (an empty "
                                 f"{'batch of tasks' if empty[0] == 'B' else 'set of examples'}); "
                                 "every task needs at least one support and one query example")
    for name, t in inputs.items():
        if not t.dtype.is_floating_point:
            raise TaskBatchError(f"{name} has dtype {t.dtype}; inputs must be floating point "
                                 "(images stored as uint8: x.float() / 255)")
    if leading == 1:
        x, y = inputs["x"], targets["y"]
        if x.shape[0] != y.shape[0]:
            raise TaskBatchError(f"x has {x.shape[0]} examples but y has {y.shape[0]}: pass one "
                                 "target per example")
    weights = {p.dtype for p in params.values() if p.is_floating_point()}
    for name, t in inputs.items():
        if weights and t.dtype not in weights:
            wanted = next(iter(weights))
            raise TaskBatchError(f"{name} has dtype {t.dtype} but the model's parameters are {wanted}: "
                                 f"pass {name}.to({wanted}) (or convert the model, e.g. "
                                 f"model.to({t.dtype}))")
    if loss_fn is F.cross_entropy:
        for name, t in targets.items():
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise TaskBatchError(f"{name} has dtype {t.dtype}, but cross-entropy needs class ids "
                                     f"(torch.long, 0..N-1): pass {name}.long(), or loss_fn="
                                     "F.mse_loss for regression targets")
            if t.dtype != torch.long:
                raise TaskBatchError(f"{name} has dtype {t.dtype}; cross-entropy needs class ids as "
                                     f"torch.long (int64): pass {name}.long()")
            if leading == 1 and t.numel() and int(t.min()) < 0:  # batches: in check_batch
                raise TaskBatchError(f"{name} holds a negative label; labels are 0..N-1 within "
                                     "each task")
    devices = {t.device for t in every.values()} | {p.device for p in params.values()}
    devices |= {p.device for p in model.parameters()}
    if len(devices) > 1:
        raise TaskBatchError(f"the model's parameters and the data are on different devices "
                             f"({', '.join(sorted(map(str, devices)))}): move both to one, e.g. "
                             "model.to(device) and x.to(device)")


@contextlib.contextmanager
def label_errors(model: nn.Module):
    """Turn torch's "target out of bounds" into a TaskBatchError naming the model's outputs."""
    try:
        yield
    except (IndexError, RuntimeError) as error:
        text = str(error)
        if "out of bounds" not in text and "Target" not in text:
            raise
        outputs = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
        size = f" ({outputs[-1]} outputs)" if outputs else ""
        raise TaskBatchError(f"a label is larger than the model's head can predict{size}: labels "
                             "must be 0..N-1 for an N-way head; build the model with num_classes=N "
                             f"for N-way tasks ({text.splitlines()[0]})") from error


def check_strategy(strategy: str) -> None:
    """One of ``STRATEGIES``."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)} "
                          "('auto': vmap on CUDA, the per-task loop elsewhere)")


def check_batch(support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                loss_fn: LossFn) -> None:
    """Shapes (and, for class labels, ranges) of one batch of tasks must agree (after
    ``check_inputs``, which checks that each tensor has its ``[B, n]`` dimensions)."""
    b = support_x.shape[0]
    named = {"support_x": support_x, "support_y": support_y, "query_x": query_x,
             "query_y": query_y}
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in named.items())
    if any(t.shape[0] != b for t in named.values()):
        raise TaskBatchError(f"the number of tasks (first dimension) differs: {shapes}")
    if support_x.shape[1] != support_y.shape[1] or query_x.shape[1] != query_y.shape[1]:
        raise TaskBatchError(f"inputs and targets hold different numbers of examples: {shapes}")
    if support_x.shape[2:] != query_x.shape[2:]:
        raise TaskBatchError(f"support and query examples have different shapes: {shapes}")
    if support_y.dtype.is_floating_point or query_y.dtype.is_floating_point:
        return  # regression targets: no label range
    lo_s, hi_s, lo_q, hi_q = torch.stack([support_y.min(), support_y.max(), query_y.min(),
                                          query_y.max()]).tolist()
    if lo_s < 0 or lo_q < 0:
        raise TaskBatchError("labels must be 0..N-1 within each task; found a negative label")
    if hi_q > hi_s:
        raise TaskBatchError(f"query labels go up to {hi_q} but support labels only to {hi_s}: "
                             "every query class must appear in the support set (labels 0..N-1)")


def check_finite(inner_losses: Tensor, query_losses: Tensor | None, steps: int, lr: LR) -> None:
    """Raise InnerLoopError naming the first inner step whose loss is NaN/Inf."""
    ok = torch.isfinite(inner_losses).all()
    if query_losses is not None:
        ok = ok & torch.isfinite(query_losses.detach()).all()
    if bool(ok):
        return
    lr_text = "the per-parameter learning rates" if isinstance(lr, Mapping) else f"lr={lr:g}"
    bad = ~torch.isfinite(inner_losses)
    if bad.any():
        task, step = (int(i) for i in bad.nonzero()[0])
        value = inner_losses[task, step].item()
        where = f"inner step {step + 1} of {steps}" + (f" (task {task})" if inner_losses.shape[0] > 1
                                                        else "")
        raise InnerLoopError(f"the inner loss is {value} at {where}; the inner loop diverged: lower "
                             f"the inner learning rate ({lr_text}) or check the inputs for NaN/Inf")
    raise InnerLoopError(f"the query loss after {steps} inner steps is NaN/Inf; lower the inner "
                         f"learning rate ({lr_text}) or check the query inputs for NaN/Inf")
