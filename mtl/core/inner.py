"""The inner loop (``adapt``) and the outer objective batched over tasks (``maml_loss``).

A model is used as a pure function of a dict of parameters (``torch.func.functional_call``), so
adapting to a task is a few lines of arithmetic on that dict::

    for step in range(steps):
        grads = grad(loss_of_params)(params)             # d inner loss / d params
        params = {n: p - lr * grads[n] for n, p in params.items()}

and the outer (meta-) gradient is ordinary autograd through those lines: second order by default,
first order when the inner gradients are treated as constants (``first_order=True``).

A batch of B tasks is handled by one of two *strategies* (same numbers, different speed):

- ``"vmap"``: ``torch.func.vmap`` runs all B inner loops at once, as one batched computation
  (what keeps a GPU busy);
- ``"loop"``: a Python loop over tasks (less overhead on a CPU);
- ``"auto"``: times both once per (device, shapes, settings) and keeps the faster one. The
  number of inner steps is not part of the key: both strategies repeat the same per-step work, so
  one inner step is timed and the decision holds for any step count (a 10-step evaluation after
  1-step training does not time again).

``chunk_size`` processes the tasks this many at a time and, when gradients are needed, recomputes
each chunk during the backward pass (activation checkpointing), so the memory held for the outer
backward grows with ``chunk_size`` rather than with B, at the cost of one extra forward.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from mtl.errors import ConfigError, InnerLoopError, TaskBatchError
from mtl.core.norms import exact_norms, quiet, updates_running_stats

__all__ = ["adapt", "maml_loss", "maml_outputs", "adapt_batch", "map_tasks", "STRATEGIES",
           "resolve_strategy"]

Params = dict[str, Tensor]
LR = float | Mapping[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

STRATEGIES = ("auto", "vmap", "loop")
#: (device, shapes, settings) -> "vmap" | "loop", filled by "auto" the first time it meets a key.
AUTO_DECISIONS: dict[tuple, str] = {}


# ----------------------------------------------------------------------------- one task

def _adapt(model: nn.Module, params: Params, x: Tensor, y: Tensor, steps: int, lr: LR,
           loss_fn: LossFn, first_order: bool, fixed: Params | None = None,
           functional: bool = True) -> tuple[Params, Tensor]:
    """``steps`` SGD steps on ``loss_fn(model(x), y)``; returns (adapted params, inner losses [steps]).

    ``fixed``: more parameters for the model that are not adapted (by default the module's own).
    ``functional=True`` differentiates with ``torch.func.grad``: safe inside ``vmap`` (no
    data-dependent control flow, no ``.item()``). ``functional=False`` uses
    ``torch.autograd.grad`` (the same numbers, less overhead one task at a time).
    """
    fixed = fixed or {}

    def inner_loss(p: Params) -> tuple[Tensor, Tensor]:
        loss = loss_fn(functional_call(model, {**fixed, **p}, (x,)), y)
        return loss, loss.detach()

    # Second order needs a graph back to params; without one (first order, or params that need
    # no gradient, as in evaluation) differentiate at a detached copy: the inner gradients are
    # then constants for the outer backward and no second-level graph is recorded at all.
    graph = not first_order and torch.is_grad_enabled() and any(
        p.requires_grad for p in params.values())
    losses = []
    for _ in range(steps):
        if functional:
            at = params if graph else {n: p.detach() for n, p in params.items()}
            grads, loss = grad(inner_loss, has_aux=True)(at)
        else:
            at = params if graph else {n: p.detach().requires_grad_() for n, p in params.items()}
            with torch.enable_grad():
                loss, _ = inner_loss(at)
                grads = dict(zip(at, torch.autograd.grad(loss, list(at.values()),
                                                         create_graph=graph)))
            loss = loss.detach()
        params = {n: p - _lr_of(lr, n) * grads[n] for n, p in params.items()}
        losses.append(loss)
    inner_losses = torch.stack(losses) if losses else x.new_zeros(0)
    return params, inner_losses


def _lr_of(lr: LR, name: str) -> float | Tensor:
    return lr[name] if isinstance(lr, Mapping) else lr


def adapt(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, *, steps: int,
          lr: LR, loss_fn: LossFn = F.cross_entropy, first_order: bool = False) -> Params:
    """Adapt ``params`` to one task by ``steps`` steps of gradient descent on ``loss_fn(model(x), y)``.

    Args:
        model: any module; called as ``functional_call(model, params, (x,))``. Parameters not in
            ``params`` keep the module's own values (and are not adapted).
        params: name -> tensor, the starting point (usually ``dict(model.named_parameters())``).
        x: inputs of the task's support set, ``[n, ...]`` (``[N*K, C, H, W]`` for images).
        y: targets ``[n]`` (class ids) or ``[n, ...]`` (regression).
        steps: number of inner steps (0 returns ``params`` unchanged).
        lr: inner learning rate, a float or a dict name -> tensor broadcastable to that parameter
            (Meta-SGD's learned per-parameter rates).
        first_order: treat the inner gradients as constants in the outer backward (FOMAML).

    Returns:
        dict name -> adapted tensor (same shapes), differentiable with respect to ``params`` (and
        to a tensor ``lr``): fully unless ``first_order``, where d adapted / d params = identity.

    Raises:
        InnerLoopError: an inner loss that is NaN or Inf (names the step).
    """
    _check_settings(steps, lr)
    _check_inputs(model, params, {"x": x}, {"y": y}, loss_fn, leading=1)
    with _label_errors(model):
        adapted, inner_losses = _adapt(model, dict(params), x, y, steps, lr, loss_fn, first_order,
                                       functional=False)
    _check_finite(inner_losses[None], None, steps, lr)
    if steps and not bool(torch.stack([torch.isfinite(p.detach()).all() for p in adapted.values()]).all()):
        lr_text = "the per-parameter learning rates" if isinstance(lr, Mapping) else f"lr={lr:g}"
        raise InnerLoopError(f"the adapted parameters are NaN/Inf after step {steps} of {steps}: the "
                             f"last update diverged; lower the inner learning rate ({lr_text})")
    return adapted


def _task_outputs(model: nn.Module, params: Params, lr: LR, fixed: Params, steps: int,
                  loss_fn: LossFn, first_order: bool, support_x: Tensor, support_y: Tensor,
                  query_x: Tensor, query_y: Tensor,
                  functional: bool) -> tuple[Tensor, Tensor, Tensor]:
    """One task: (query loss [], query outputs [n_q, ...], inner losses [steps])."""
    adapted, inner_losses = _adapt(model, params, support_x, support_y, steps, lr, loss_fn,
                                   first_order, fixed, functional)
    out = functional_call(model, {**fixed, **adapted}, (query_x,))
    return loss_fn(out, query_y), out, inner_losses


# ----------------------------------------------------------------------------- many tasks

def map_tasks(fn: Callable[..., object], shared: object, batched: tuple[Tensor, ...], *,
              strategy: str, chunk_size: int | None = None, model: nn.Module | None = None) -> object:
    """Apply ``fn(shared, *task_args)`` to every task of ``batched`` and stack the results.

    Args:
        fn: one task's computation; returns a tensor or a tuple/dict of tensors.
        shared: what every task shares (parameters, learning rates): a tensor or a nested
            dict/tuple of tensors (a "pytree"); gradients flow to it.
        batched: tensors with a leading task dimension B (task ``b`` gets ``t[b]`` of each).
        strategy: "vmap" or "loop" (resolve "auto" with ``resolve_strategy`` first).
        chunk_size: process this many tasks at a time; if autograd is recording, each chunk is
            recomputed during the backward pass instead of keeping its activations.
        model: the module ``fn`` calls; under "vmap" its batch, instance and layer norm layers run
            through ``mtl.core.norms`` (exact second derivatives, no in-place update of running
            statistics).

    Returns:
        ``fn``'s output structure with a leading dimension B on every tensor.
    """
    if strategy not in ("vmap", "loop"):
        raise ConfigError(f"strategy {strategy!r} is not one of 'vmap', 'loop' (resolve 'auto' "
                          "with resolve_strategy first)")

    def run(shared_: object, *args: Tensor) -> object:
        if strategy == "vmap":
            with exact_norms(model) if model is not None else contextlib.nullcontext():
                try:
                    return vmap(fn, in_dims=(None,) + (0,) * len(args),
                                randomness="different")(shared_, *args)
                except RuntimeError as error:
                    if "in-place" not in str(error):
                        raise
                    raise ConfigError(_in_place_message(model, error)) from error
        return _stack([fn(shared_, *(a[b] for a in args)) for b in range(args[0].shape[0])])

    batch = batched[0].shape[0]
    if chunk_size is None or chunk_size >= batch:
        return run(shared, *batched)
    if chunk_size < 1:
        raise ConfigError(f"chunk_size must be a positive number of tasks, got {chunk_size}")
    pieces = []
    for start in range(0, batch, chunk_size):
        args = tuple(a[start:start + chunk_size] for a in batched)
        pieces.append(_recomputed(run, shared, args) if torch.is_grad_enabled() else run(shared, *args))
    return _cat(pieces)


def _in_place_message(model: nn.Module | None, error: RuntimeError) -> str:
    """Why a model cannot run under vmap: some layer writes to a tensor it does not own."""
    holders = [] if model is None else sorted(
        {type(m).__name__ for m in model.modules() if any(True for _ in m.buffers(recurse=False))})
    layers = f" (layers with buffers: {', '.join(holders)})" if holders else ""
    first_line = str(error).splitlines()[0]
    return (f"strategy='vmap' cannot run this model: a layer changes a tensor in place inside the "
            f"batched inner loop{layers}: {first_line}. Use strategy='loop' (or 'auto', which "
            "falls back to it), or make the layer write to a new tensor instead.")


def _recomputed(run: Callable[..., object], shared: object, args: tuple[Tensor, ...]) -> object:
    """``run(shared, *args)`` without keeping its graph: recompute it during backward."""
    flat, spec = tree_flatten((shared, args))
    out_specs: list = []

    def flat_run(*tensors: Tensor) -> tuple[Tensor, ...]:
        shared_, args_ = tree_unflatten(list(tensors), spec)
        out, out_spec = tree_flatten(run(shared_, *args_))
        out_specs[:] = [out_spec]
        return tuple(out)

    outputs = _Recompute.apply(flat_run, *flat)
    return tree_unflatten(list(outputs), out_specs[0])


class _Recompute(torch.autograd.Function):
    """Forward without a graph; backward re-runs forward with one and differentiates it."""

    @staticmethod
    def forward(ctx, flat_run, *tensors):  # noqa: D102 - autograd.Function protocol
        ctx.flat_run = flat_run
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(*tensors)
        return flat_run(*tensors)

    @staticmethod
    def backward(ctx, *grad_outputs):  # noqa: D102
        needs = ctx.needs_input_grad[1:]
        inputs = [t.detach().requires_grad_(need) if isinstance(t, Tensor) else t
                  for t, need in zip(ctx.saved_tensors, needs)]
        with torch.enable_grad():
            outputs = ctx.flat_run(*inputs)
        pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if g is not None and o.requires_grad]
        wanted = [i for i, need in enumerate(needs) if need]
        grads = torch.autograd.grad([o for o, _ in pairs], [inputs[i] for i in wanted],
                                    [g for _, g in pairs], allow_unused=True) if pairs else ()
        result: list[Tensor | None] = [None] * len(inputs)
        for i, g in zip(wanted, grads):
            result[i] = g
        return (None, *result)


def _stack(items: list) -> object:
    first = items[0]
    if isinstance(first, Tensor):
        return torch.stack(items)
    if isinstance(first, dict):
        return {k: torch.stack([it[k] for it in items]) for k in first}
    return type(first)(_stack(list(parts)) for parts in zip(*items))


def _cat(items: list) -> object:
    first = items[0]
    if isinstance(first, Tensor):
        return torch.cat(items)
    if isinstance(first, dict):
        return {k: torch.cat([it[k] for it in items]) for k in first}
    return type(first)(_cat(list(parts)) for parts in zip(*items))


def maml_outputs(model: nn.Module, params: Mapping[str, Tensor], support_x: Tensor,
                 support_y: Tensor, query_x: Tensor, query_y: Tensor, *, steps: int, lr: LR,
                 loss_fn: LossFn = F.cross_entropy, first_order: bool = False,
                 strategy: str = "auto", chunk_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Adapt to each task on its support set, evaluate on its query set.

    Shapes: ``support_x [B, n_s, ...]``, ``support_y [B, n_s]``, ``query_x [B, n_q, ...]``,
    ``query_y [B, n_q]`` (regression: ``[B, n, 1]`` targets).

    Returns:
        ``(losses [B], query_outputs [B, n_q, num_classes])``: each task's query loss after
        adaptation and its query logits (or predictions), differentiable w.r.t. ``params``.
    """
    params = dict(params)
    _check_settings(steps, lr)
    _check_inputs(model, params, {"support_x": support_x, "query_x": query_x},
                  {"support_y": support_y, "query_y": query_y}, loss_fn, leading=2)
    _check_batch(support_x, support_y, query_x, query_y, loss_fn)
    strategy = resolve_strategy(strategy, model, params, support_x, support_y, query_x, query_y,
                                steps=steps, lr=lr, loss_fn=loss_fn, first_order=first_order,
                                chunk_size=chunk_size)

    def one_task(shared: dict, sx: Tensor, sy: Tensor, qx: Tensor,
                 qy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _task_outputs(model, shared["params"], _shared_lr(shared, lr), shared["fixed"],
                             steps, loss_fn, first_order, sx, sy, qx, qy, strategy == "vmap")

    shared = _shared(model, params, lr)
    with _label_errors(model):
        losses, outputs, inner_losses = map_tasks(one_task, shared,
                                                  (support_x, support_y, query_x, query_y),
                                                  strategy=strategy, chunk_size=chunk_size,
                                                  model=model)
    _check_finite(inner_losses, losses, steps, lr)
    return losses, outputs


def maml_loss(model: nn.Module, params: Mapping[str, Tensor], support_x: Tensor,
              support_y: Tensor, query_x: Tensor, query_y: Tensor, *, steps: int, lr: LR,
              loss_fn: LossFn = F.cross_entropy, first_order: bool = False,
              strategy: str = "auto", chunk_size: int | None = None) -> Tensor:
    """MAML's outer objective: the mean over B tasks of the query loss after ``adapt``.

    Args:
        model, params, steps, lr, loss_fn, first_order: as in ``adapt``.
        support_x: ``[B, n_s, ...]`` (``[B, N*K, C, H, W]``); support_y ``[B, n_s]``.
        query_x: ``[B, n_q, ...]``; query_y ``[B, n_q]``.
        strategy: "vmap", "loop" or "auto" (the faster of the two, measured once per device and
            shapes; see ``AUTO_DECISIONS``).
        chunk_size: at most this many tasks at a time (bounds peak memory; slower).

    Returns:
        scalar tensor; ``.backward()`` gives the meta-gradient (second order unless
        ``first_order``).

    Raises:
        TaskBatchError: support and query that disagree (batch size, image shape, labels).
        ConfigError: an unknown strategy or a bad chunk_size.
        InnerLoopError: a NaN/Inf inner loss (names the step; lower the inner lr).
    """
    losses, _ = maml_outputs(model, params, support_x, support_y, query_x, query_y, steps=steps,
                             lr=lr, loss_fn=loss_fn, first_order=first_order, strategy=strategy,
                             chunk_size=chunk_size)
    return losses.mean()


def adapt_batch(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, *,
                steps: int, lr: LR, loss_fn: LossFn = F.cross_entropy, first_order: bool = True,
                query_x: Tensor | None = None, strategy: str = "auto",
                chunk_size: int | None = None) -> tuple[Params, Tensor | None]:
    """``adapt`` for each of B tasks, keeping the adapted parameters (Reptile needs them).

    Unlike ``adapt`` (second order by default), ``first_order`` defaults to True here: its users
    (Reptile, evaluation) never differentiate through the inner steps.

    Args:
        x: ``[B, n, ...]`` support inputs; y: ``[B, n]`` (or ``[B, n, 1]``) targets.
        query_x: optional ``[B, n_q, ...]``: also return the adapted models' outputs on it.
        others: as in ``maml_loss``.

    Returns:
        ``(adapted, query_outputs)``: dict name -> ``[B, *shape]`` and ``[B, n_q, ...]`` (or None).
    """
    params = dict(params)
    _check_settings(steps, lr)
    _check_inputs(model, params, {"x": x} if query_x is None else {"x": x, "query_x": query_x},
                  {"y": y}, loss_fn, leading=2)
    if x.shape[:2] != y.shape[:2] or (query_x is not None and query_x.shape[0] != x.shape[0]):
        raise TaskBatchError(f"x {tuple(x.shape)}, y {tuple(y.shape)} and query_x disagree in the "
                             "leading dimensions [B, n]; pass one target per example of each task")
    if strategy == "auto":  # no query loss to time here
        strategy = untimed_strategy(model, x.device)
    _check_strategy(strategy)

    def one_task(shared: dict, tx: Tensor, ty: Tensor, *rest: Tensor) -> tuple:
        adapted, inner_losses = _adapt(model, shared["params"], tx, ty, steps,
                                       _shared_lr(shared, lr), loss_fn, first_order,
                                       shared["fixed"], strategy == "vmap")
        outputs = [functional_call(model, {**shared["fixed"], **adapted}, (q,)) for q in rest]
        return (adapted, inner_losses, *outputs)

    batched = (x, y) if query_x is None else (x, y, query_x)
    adapted, inner_losses, *outputs = map_tasks(one_task, _shared(model, params, lr), batched,
                                                strategy=strategy, chunk_size=chunk_size,
                                                model=model)
    _check_finite(inner_losses, None, steps, lr)
    return adapted, (outputs[0] if outputs else None)


def _shared(model: nn.Module, params: Params, lr: LR) -> dict:
    """What every task shares, as explicit tensors (so that chunk recomputation sees them)."""
    fixed = {n: p for n, p in model.named_parameters() if n not in params}
    return {"params": params, "fixed": fixed, "lr": dict(lr) if isinstance(lr, Mapping) else None}


def _shared_lr(shared: dict, lr: LR) -> LR:
    return shared["lr"] if shared["lr"] is not None else lr


# ----------------------------------------------------------------------------- checks

def _check_settings(steps: int, lr: LR) -> None:
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


def _check_inputs(model: nn.Module, params: Mapping[str, Tensor], inputs: dict[str, Tensor],
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
    if loss_fn is F.cross_entropy:
        for name, t in targets.items():
            if t.dtype.is_floating_point or t.dtype == torch.bool:
                raise TaskBatchError(f"{name} has dtype {t.dtype}, but cross-entropy needs class ids "
                                     f"(torch.long, 0..N-1): pass {name}.long(), or loss_fn="
                                     "F.mse_loss for regression targets")
            if leading == 1 and t.numel() and int(t.min()) < 0:  # batches: in _check_batch
                raise TaskBatchError(f"{name} holds a negative label; labels are 0..N-1 within "
                                     "each task")
    devices = {t.device for t in every.values()} | {p.device for p in params.values()}
    devices |= {p.device for p in model.parameters()}
    if len(devices) > 1:
        raise TaskBatchError(f"the model's parameters and the data are on different devices "
                             f"({', '.join(sorted(map(str, devices)))}): move both to one, e.g. "
                             "model.to(device) and x.to(device)")


@contextlib.contextmanager
def _label_errors(model: nn.Module):
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


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


def _check_batch(support_x: Tensor, support_y: Tensor, query_x: Tensor, query_y: Tensor,
                 loss_fn: LossFn) -> None:
    """Shapes (and, for class labels, ranges) of one batch of tasks must agree (after
    ``_check_inputs``, which checks that each tensor has its ``[B, n]`` dimensions)."""
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


def _check_finite(inner_losses: Tensor, query_losses: Tensor | None, steps: int, lr: LR) -> None:
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


# ----------------------------------------------------------------------------- "auto"

def resolve_strategy(strategy: str, model: nn.Module, params: Params, support_x: Tensor,
                     support_y: Tensor, query_x: Tensor, query_y: Tensor, *, steps: int, lr: LR,
                     loss_fn: LossFn, first_order: bool, chunk_size: int | None) -> str:
    """"vmap"/"loop" unchanged; "auto": the faster of the two here, timed once per setting.

    "auto" keeps the loop, untimed, for a model whose norm layers would update running
    statistics (only the loop updates them as plain PyTorch does), and chooses "vmap" only if its
    meta-gradient on the timed trial agrees with the loop's (a guard against layers whose
    derivatives are wrong under ``vmap``; ``AUTO_REJECTED`` records such settings).
    """
    _check_strategy(strategy)
    if strategy != "auto":
        return strategy
    if updates_running_stats(model):
        return "loop"
    timed_steps = min(steps, 1)  # per-step work is the same at any step count: time one step
    key = (str(support_x.device), type(model).__name__, model.training, tuple(support_x.shape),
           tuple(query_x.shape), support_x.dtype, timed_steps, first_order, chunk_size,
           isinstance(lr, Mapping), len(params), sum(p.numel() for p in params.values()))
    if key not in AUTO_DECISIONS:
        AUTO_DECISIONS[key] = _measure(key, model, params, support_x, support_y, query_x, query_y,
                                       steps=timed_steps, lr=lr, loss_fn=loss_fn,
                                       first_order=first_order, chunk_size=chunk_size)
    return AUTO_DECISIONS[key]


#: settings for which "auto" found vmap's meta-gradient different from the loop's -> relative error.
AUTO_REJECTED: dict[tuple, float] = {}


def _measure(key: tuple, model: nn.Module, params: Params, support_x: Tensor, support_y: Tensor,
             query_x: Tensor, query_y: Tensor, **settings) -> str:
    """Time one meta-step (forward + backward) of each strategy on a detached copy of params."""
    timings, grads = {}, {}
    for strategy in ("loop", "vmap"):
        try:
            with quiet():
                runs = [_time_once(strategy, model, params, support_x, support_y, query_x,
                                   query_y, **settings) for _ in range(2)]
            timings[strategy] = min(t for t, _ in runs)
            grads[strategy] = runs[-1][1]
        except Exception:  # noqa: BLE001 - a strategy that cannot run here is simply not chosen
            timings[strategy] = float("inf")
    if timings["vmap"] < timings["loop"] and not _random(model):
        error = _relative_error(grads["vmap"], grads["loop"])
        if error > (1e-8 if support_x.dtype == torch.float64 else 1e-3):
            AUTO_REJECTED[key] = error
            return "loop"
    return min(timings, key=timings.get)


def _random(model: nn.Module) -> bool:
    """True if a forward draws random numbers (dropout in training mode): strategies then differ."""
    return any(isinstance(m, nn.modules.dropout._DropoutNd) and m.training and m.p > 0
               for m in model.modules())


def _relative_error(a: list[Tensor], b: list[Tensor]) -> float:
    if not a:
        return 0.0
    diff = torch.sqrt(sum(((x - y).double() ** 2).sum() for x, y in zip(a, b)))
    size = torch.sqrt(sum((y.double() ** 2).sum() for y in b))
    return float(diff / size.clamp_min(1e-30))


def _time_once(strategy: str, model: nn.Module, params: Params, support_x: Tensor,
               support_y: Tensor, query_x: Tensor, query_y: Tensor,
               **settings) -> tuple[float, list[Tensor]]:
    """Seconds of one meta-step and its meta-gradient (empty without a backward)."""
    trial = {n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in params.items()}
    backward = torch.is_grad_enabled() and any(p.requires_grad for p in trial.values())
    _sync(support_x.device)
    start = time.perf_counter()
    losses, _ = maml_outputs(model, trial, support_x, support_y, query_x, query_y,
                             strategy=strategy, **settings)
    grads: list[Tensor] = []
    if backward:  # autograd.grad, not backward: leave every .grad untouched
        grads = list(torch.autograd.grad(losses.mean(),
                                         [p for p in trial.values() if p.requires_grad],
                                         allow_unused=True, materialize_grads=True))
    _sync(support_x.device)
    return time.perf_counter() - start, grads


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def untimed_strategy(model: nn.Module | None, device: torch.device) -> str:
    """"auto" where there is nothing to time (adaptation without a query loss, forward passes):
    the usual winner per device, vmap on GPUs and the loop on CPUs, and the loop for a model
    whose norm layers update running statistics."""
    if device.type == "cuda" and (model is None or not updates_running_stats(model)):
        return "vmap"
    return "loop"
