"""The inner loop (``adapt``) and the outer objective batched over tasks (``maml_loss``).

A model is used as a pure function of a dict of parameters (``torch.func.functional_call``), so
adapting to a task is a few lines of arithmetic on that dict::

    for step in range(steps):
        grads = grad(loss_of_params)(params)             # d inner loss / d params
        params = {n: p - lr * grads[n] for n, p in params.items()}

and the outer (meta-) gradient is ordinary autograd through those lines: second order by default,
first order when the inner gradients are treated as constants (``first_order=True``).

A batch of B tasks is handled by one of these *strategies* (same numbers, different speed):

- ``"vmap"``: ``torch.func.vmap`` runs all B inner loops at once, as one batched computation
  (what keeps a GPU busy);
- ``"loop"``: a Python loop over tasks (less overhead on a CPU);
- ``"shared"``: inner step 0 of all B tasks as one merged batch ``[B*n, ...]`` (every task starts
  from the same parameters; batch norm still takes each task's own statistics), each task's
  step-0 gradient split out of the merged backward by a rule per layer kind; steps 1.. and the
  query pass per task, as in the loop. Exact (float64: the loop's numbers to rounding); models of
  Conv/Linear/BatchNorm layers (``shared_step_refusal`` says why another cannot);
- ``"loop+channels_last"``, ``"shared+channels_last"``: the same with every ``nn.Conv2d``'s output
  in channels-last memory format, where torch's CPU max-pool and batch-norm kernels are several
  times faster (torch 2.14);
- ``"...+task_backward"`` (``"loop+task_backward"``, ``"shared+channels_last+task_backward"``, ...):
  each task's gradient is computed during the forward pass and its graph freed at once (what a
  hand-written loop does with ``loss_b.backward()`` per task), instead of keeping all B graphs
  until one backward; ``losses.mean().backward()`` then hands over the stored gradients. The
  query outputs carry no graph then, and the meta-gradient cannot be differentiated again (both
  raise InnerLoopError);
- ``"auto"``: times every strategy that can run the model once per (device, model, shapes,
  settings), round-robin (the loop, and the ``+task_backward`` variants of the loop, the shared
  step and channels-last where they apply, and vmap), and keeps the fastest whose trial
  meta-gradient agrees with the loop's (in float32 where it does not: that is as close to the
  float64 loop as the float32 loop is).
  The number of inner steps is part of the key, up to ``AUTO_TRIAL_STEPS`` (5): what each task's
  kept graph costs grows with the steps, so the trial runs the steps it will serve, and one
  timing with 5 serves any larger count. ``last_auto_choice()`` / ``AUTO_TIMINGS`` hold the choice and every timing,
  ``describe_auto_choice()`` one line for a log.

Every strategy but vmap runs its forward passes on a CPU through ``mtl.core.kernels``: torch's
max-pool replaced by a faster equivalent with the same values and derivatives
(``mtl.core.kernels.enabled(False)`` turns it off).

``chunk_size`` processes the tasks this many at a time and, when gradients are needed, recomputes
each chunk during the backward pass (activation checkpointing), so the memory held for the outer
backward grows with ``chunk_size`` rather than with B, at the cost of one extra forward.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
import types
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from mtl.errors import ConfigError, InnerLoopError, TaskBatchError
from mtl.core.kernels import batch_norm_types, cpu_kernels
from mtl.core.norms import exact_norms, quiet, updates_running_stats

__all__ = ["adapt", "maml_loss", "maml_outputs", "adapt_batch", "map_tasks", "STRATEGIES",
           "resolve_strategy", "last_auto_choice", "describe_auto_choice", "shared_step_refusal"]

Params = dict[str, Tensor]
LR = float | Mapping[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]

STRATEGIES = ("auto", "vmap", "loop", "shared", "loop+channels_last", "shared+channels_last",
              "loop+task_backward", "shared+task_backward", "loop+channels_last+task_backward",
              "shared+channels_last+task_backward")
#: (device, shapes, settings) -> the chosen strategy, filled by "auto" the first time it meets a key.
AUTO_DECISIONS: dict[tuple, str] = {}
#: the same keys -> what "auto" measured: ``{"chosen", "timings_ms", "rejected", "setting"}``.
AUTO_TIMINGS: dict[tuple, dict] = {}
_LAST_KEY: list = [None]  # the key "auto" resolved last (decided then or before)


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
                with cpu_kernels(x, model):
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
    out = _forward(model, {**fixed, **adapted}, query_x)
    return loss_fn(out, query_y), out, inner_losses


def _forward(model: nn.Module, params: Params, x: Tensor) -> Tensor:
    """``model(x)`` with ``params``, through ``mtl.core.kernels``' faster CPU max-pool (which leaves
    a tensor under ``vmap`` to torch's own)."""
    with cpu_kernels(x, model):
        return functional_call(model, params, (x,))


# ----------------------------------------------------------------------------- many tasks

def map_tasks(fn: Callable[..., object], shared: object, batched: tuple[Tensor, ...], *,
              strategy: str, chunk_size: int | None = None, model: nn.Module | None = None) -> object:
    """Apply ``fn(shared, *task_args)`` to every task of ``batched`` and stack the results.

    Args:
        fn: one task's computation; returns a tensor or a tuple/dict of tensors.
        shared: what every task shares (parameters, learning rates): a tensor or a nested
            dict/tuple of tensors (a "pytree"); gradients flow to it.
        batched: tensors with a leading task dimension B (task ``b`` gets ``t[b]`` of each).
        strategy: "vmap", "loop" or "loop+channels_last" (resolve "auto" with
            ``resolve_strategy`` first; "shared" is ``maml_outputs``'s own).
        chunk_size: process this many tasks at a time; if autograd is recording, each chunk is
            recomputed during the backward pass instead of keeping its activations.
        model: the module ``fn`` calls; under "vmap" its batch, instance and layer norm layers run
            through ``mtl.core.norms`` (exact second derivatives, no in-place update of running
            statistics).

    Returns:
        ``fn``'s output structure with a leading dimension B on every tensor.
    """
    base, channels_last = _parse(strategy)
    if base not in ("vmap", "loop") or (channels_last and base != "loop"):
        raise ConfigError(f"strategy {strategy!r} is not one of 'vmap', 'loop', 'loop+channels_last' "
                          "(resolve 'auto' with resolve_strategy first)")

    def run(shared_: object, *args: Tensor) -> object:
        if base == "vmap":
            with exact_norms(model) if model is not None else contextlib.nullcontext():
                try:
                    return vmap(fn, in_dims=(None,) + (0,) * len(args),
                                randomness="different")(shared_, *args)
                except RuntimeError as error:
                    if "in-place" not in str(error):
                        raise
                    raise ConfigError(_in_place_message(model, error)) from error
        with _layout(model, channels_last):
            return _stack([fn(shared_, *(a[b] for a in args)) for b in range(args[0].shape[0])])

    return _chunked(run, shared, batched, chunk_size)


def _chunked(run: Callable[..., object], shared: object, batched: tuple[Tensor, ...],
             chunk_size: int | None) -> object:
    """``run(shared, *batched)``, ``chunk_size`` tasks at a time (each recomputed in backward)."""
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

    strategy, task_backward = _split_task_backward(strategy)
    base, channels_last = _parse(strategy)
    if base == "shared" and steps == 0:  # nothing to share: the loop
        base, strategy = "loop", "loop+channels_last" if channels_last else "loop"
    if base == "shared":
        refusal = shared_step_refusal(model)
        if refusal is not None:
            raise ConfigError(f"strategy={strategy!r} cannot run this model: {refusal}. Use "
                              "strategy='loop' (or 'auto', which then does not consider it)")

    def one_task(shared: dict, sx: Tensor, sy: Tensor, qx: Tensor,
                 qy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _task_outputs(model, shared["params"], _shared_lr(shared, lr), shared["fixed"],
                             steps, loss_fn, first_order, sx, sy, qx, qy, strategy == "vmap")

    def shared_tasks(shared: dict, *batched: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return _shared_outputs(model, shared, lr, steps, loss_fn, first_order, channels_last,
                               *batched)

    shared = _shared(model, params, lr)
    batched = (support_x, support_y, query_x, query_y)
    task_backward = task_backward and torch.is_grad_enabled() and not any(
        t.requires_grad for t in batched) and any(
        t.requires_grad for t in tree_flatten(shared)[0] if isinstance(t, Tensor))
    with _label_errors(model):
        if task_backward:  # one task at a time already: chunk_size has nothing left to bound
            losses, outputs, inner_losses = _task_backward_outputs(
                model, shared, lr, steps, loss_fn, first_order, base, channels_last, batched)
        elif base == "shared":
            losses, outputs, inner_losses = _chunked(shared_tasks, shared, batched, chunk_size)
        else:
            losses, outputs, inner_losses = map_tasks(one_task, shared, batched, strategy=strategy,
                                                      chunk_size=chunk_size, model=model)
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
        strategy: "auto" (the fastest strategy here, measured once per device and shapes; see
            ``last_auto_choice``), or one of ``STRATEGIES``: "loop", "shared", "vmap", and the
            "+channels_last" / "+task_backward" variants of the first two (module docstring).
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
    _check_strategy(strategy)
    if strategy == "auto":  # no query loss to time here
        strategy = untimed_strategy(model, x.device)
    strategy = strategy.replace("shared", "loop").replace(TASK_BACKWARD, "")  # no query loss here

    def one_task(shared: dict, tx: Tensor, ty: Tensor, *rest: Tensor) -> tuple:
        adapted, inner_losses = _adapt(model, shared["params"], tx, ty, steps,
                                       _shared_lr(shared, lr), loss_fn, first_order,
                                       shared["fixed"], strategy == "vmap")
        outputs = [_forward(model, {**shared["fixed"], **adapted}, q) for q in rest]
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


# ----------------------------------------------------------------------------- "shared"

CHANNELS_LAST = "+channels_last"


def _parse(strategy: str) -> tuple[str, bool]:
    """``"loop+channels_last"`` -> ``("loop", True)``; ``"vmap"`` -> ``("vmap", False)``."""
    if strategy.endswith(CHANNELS_LAST):
        return strategy[:-len(CHANNELS_LAST)], True
    return strategy, False


def _to_channels_last(module: nn.Module, inputs: tuple, output: object) -> object:
    if isinstance(output, Tensor) and output.dim() == 4:
        return output.contiguous(memory_format=torch.channels_last)
    return output


def _to_contiguous(module: nn.Module, inputs: tuple) -> tuple:
    return tuple(x.contiguous() if isinstance(x, Tensor) else x for x in inputs)


@contextlib.contextmanager
def _layout(model: nn.Module | None, channels_last: bool):
    """Within the block, every ``nn.Conv2d`` of ``model`` returns channels-last tensors.

    The layers after it (batch norm, ReLU, max-pool, the next convolution) then run torch's
    channels-last CPU kernels, several times faster than the contiguous ones for max-pool and
    batch norm (torch 2.14). The same numbers up to the order of floating-point sums. A hook on
    the convolution's output, not the input, because a one-channel image (Omniglot) is both
    contiguous and channels-last, and torch then keeps the contiguous kernels.
    """
    if not channels_last or model is None:
        yield
        return
    handles = [m.register_forward_hook(_to_channels_last) for m in model.modules()
               if isinstance(m, nn.Conv2d)]
    # torch's channels-last batch-norm CPU kernel loses precision in float32 (relative error
    # ~1e-4 against ~1e-7 for the contiguous one, torch 2.14): batch norm runs contiguous, its
    # output goes back to channels-last for the ReLU and max-pool after it.
    for m in model.modules():
        if isinstance(m, batch_norm_types()):
            handles.append(m.register_forward_pre_hook(_to_contiguous))
            handles.append(m.register_forward_hook(_to_channels_last))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def shared_step_refusal(model: nn.Module) -> str | None:
    """Why ``strategy="shared"`` cannot run ``model`` (None when it can).

    The shared first step computes each task's gradient from one merged forward and backward
    with a rule per layer kind, so every module that holds parameters must be one of:
    ``nn.Conv1d/2d/3d`` (zero padding, numeric padding), ``nn.Linear``, ``mtl.models.BatchNorm``,
    ``nn.BatchNorm1d/2d/3d`` (batch statistics without running statistics, or eval mode with
    them). Modules without parameters must treat examples independently (ReLU, pooling,
    flatten, ...). Parameters must be used through their module's forward.
    """
    bn_types = batch_norm_types()
    for name, module in model.named_modules():
        label = f"{type(module).__name__} ({name or 'the model'})"
        if "forward" in module.__dict__:
            return f"{label} has a forward replaced on the instance"
        if isinstance(module, _BatchNorm) and module.training and module.track_running_stats \
                and module.running_mean is not None:
            return (f"{label} updates running statistics in training mode (the merged first step "
                    "would update them once for all tasks instead of once per task); use "
                    "track_running_stats=False, eval mode, or strategy='loop'")
        if isinstance(module, nn.modules.instancenorm._InstanceNorm) and updates_running_stats(module):
            return f"{label} updates running statistics in training mode"
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
            return f"{label} draws random masks (the merged step would draw other ones than the loop)"
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if module.padding_mode != "zeros" or isinstance(module.padding, str) or module.transposed:
                return f"{label} uses padding {module.padding!r} / mode {module.padding_mode!r}"
        elif not isinstance(module, (nn.Linear, *bn_types)):
            return f"{label} holds parameters and has no per-task gradient rule"
    return None


def _shared_first_step(model: nn.Module, params: Params, fixed: Params, sx: Tensor, sy: Tensor,
                       lr: LR, loss_fn: LossFn, first_order: bool,
                       channels_last: bool) -> tuple[dict[str, Tensor], Tensor]:
    """Inner step 0 of B tasks from the same ``params`` as one merged forward and backward.

    Returns ``(adapted, losses)``: name -> ``[B, *shape]`` (each task's parameters after one
    step, exactly as the per-task loop computes them) and the B step-0 inner losses.

    The merged batch ``[B*n, ...]`` runs the model once; batch norm takes its statistics per task
    (the merged batch viewed as ``[B, n, ...]``), so each task's activations are exactly its own.
    The merged loss is the *sum* of the B per-task losses, so the gradient of the merged loss
    with respect to a layer's output is, on task b's rows, the gradient of task b's loss. From
    those, one backward for all tasks, each task's parameter gradient follows by the layer's own
    rule on its rows (convolution: ``convolution_backward`` for the weight; linear: ``dY^T X``;
    batch-norm scale: ``sum dY * x_hat``; biases: ``sum dY``), all differentiable, so second
    order holds.
    """
    batch, n = sx.shape[:2]
    graph = not first_order and torch.is_grad_enabled() and any(
        p.requires_grad for p in params.values())
    at = params if graph else {k: p.detach().requires_grad_() for k, p in params.items()}
    names = {id(p): k for k, p in model.named_parameters()}  # canonical names (tied: the first)
    calls: list[tuple[str, nn.Module, Tensor, Tensor]] = []
    bn_types = batch_norm_types()

    def conv_forward(self: nn.Module, x: Tensor) -> Tensor:
        y = self._conv_forward(x, self.weight, self.bias)
        if channels_last and y.dim() == 4:
            y = y.contiguous(memory_format=torch.channels_last)
        calls.append(("conv", self, x, y))
        return y

    def linear_forward(self: nn.Module, x: Tensor) -> Tensor:
        y = F.linear(x, self.weight, self.bias)
        calls.append(("linear", self, x, y))
        return y

    def norm_forward(self: nn.Module, x: Tensor) -> Tensor:
        channels = (1, -1) + (1,) * (x.dim() - 2)
        running = getattr(self, "running_mean", None)
        if isinstance(self, _BatchNorm):
            self._check_input_dim(x)
        if self.training or running is None:  # per-task batch statistics: tasks as channels
            rest = x.shape[1:]
            grouped = x.unflatten(0, (batch, n)).transpose(0, 1).reshape(n, batch * rest[0], *rest[1:])
            x_hat = F.batch_norm(grouped, None, None, None, None, True, 0.0, self.eps)
            x_hat = x_hat.reshape(n, batch, *rest).transpose(0, 1).reshape(batch * n, *rest)
        else:
            x_hat = (x - running.view(channels)) * torch.rsqrt(self.running_var.view(channels) + self.eps)
        weight, bias = getattr(self, "weight", None), getattr(self, "bias", None)
        y = x_hat if weight is None else x_hat * weight.view(channels)
        y = y if bias is None else y + bias.view(channels)
        if weight is not None or bias is not None:
            calls.append(("norm", self, x_hat, y))
        return y

    patched = []
    for module in model.modules():
        forward = (conv_forward if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else
                   linear_forward if isinstance(module, nn.Linear) else
                   norm_forward if isinstance(module, bn_types) else None)
        if forward is not None:
            module.forward = types.MethodType(forward, module)
            patched.append(module)
    try:
        with torch.enable_grad():
            with cpu_kernels(sx, model):
                out = functional_call(model, {**fixed, **at}, (sx.flatten(0, 1),))
            out = out.unflatten(0, (batch, n))
            losses = torch.stack([loss_fn(out[b], sy[b]) for b in range(batch)])
            wanted = [(kind, m, x, y) for kind, m, x, y in calls if y.requires_grad]
            grads_y = torch.autograd.grad(losses.sum(), [y for *_, y in wanted], create_graph=graph,
                                          allow_unused=True, materialize_grads=True)
            grads = _per_task_grads(wanted, grads_y, model, names, batch, n)
    finally:
        for module in patched:
            del module.forward
    adapted = {}
    for k, p in params.items():
        g = grads.get(k)
        if g is None:
            g = p.new_zeros((batch, *p.shape))
        elif not graph:
            g = g.detach()
        adapted[k] = p - _lr_of(lr, k) * g
    return adapted, losses.detach()


def _per_task_grads(calls: list, grads_y: tuple, model: nn.Module, names: dict[int, str],
                    batch: int, n: int) -> dict[str, Tensor]:
    """name -> ``[B, *shape]``: each task's gradient from the layers' merged inputs and output grads."""
    out: dict[str, Tensor] = {}
    originals = {id(m): m for m in model.modules()}

    def add(module: nn.Module, attr: str, g: Tensor) -> None:
        original = originals[id(module)]._parameters.get(attr)
        name = names.get(id(original)) if original is not None else None
        if name is None:
            return
        out[name] = out[name] + g if name in out else g

    for (kind, module, x, _), dy in zip(calls, grads_y):
        rows = dy.unflatten(0, (batch, n))
        if kind == "conv":
            dims = x.dim() - 2
            weight = module.weight
            per_task = [torch.ops.aten.convolution_backward(
                dy[b * n:(b + 1) * n], x[b * n:(b + 1) * n], weight, None, list(module.stride),
                list(module.padding), list(module.dilation), False, [0] * dims, module.groups,
                (False, True, False))[1] for b in range(batch)]
            add(module, "weight", torch.stack(per_task))
            if module.bias is not None:
                add(module, "bias", rows.sum((1,) + tuple(range(3, rows.dim()))))
        elif kind == "linear":
            xs = x.reshape(batch, -1, x.shape[-1])
            ds = dy.reshape(batch, -1, dy.shape[-1])
            add(module, "weight", ds.transpose(1, 2) @ xs)
            if module.bias is not None:
                add(module, "bias", ds.sum(1))
        else:  # norm: y = x_hat * weight + bias, per channel (dim 1)
            reduce = (1,) + tuple(range(3, rows.dim()))
            if getattr(module, "weight", None) is not None:
                add(module, "weight", (rows * x.unflatten(0, (batch, n))).sum(reduce))
            if getattr(module, "bias", None) is not None:
                add(module, "bias", rows.sum(reduce))
    return out


def _shared_outputs(model: nn.Module, shared: dict, lr: LR, steps: int, loss_fn: LossFn,
                    first_order: bool, channels_last: bool, sx: Tensor, sy: Tensor, qx: Tensor,
                    qy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """B tasks with the shared first step, then per-task steps 1.. and query passes."""
    params, fixed, lr = shared["params"], shared["fixed"], _shared_lr(shared, lr)
    adapted, first = _shared_first_step(model, params, fixed, sx, sy, lr, loss_fn, first_order,
                                        channels_last)
    results = []
    with _layout(model, channels_last):
        for b in range(sx.shape[0]):
            start = {k: v[b] for k, v in adapted.items()}
            losses = first[b:b + 1]
            if steps > 1:
                start, later = _adapt(model, start, sx[b], sy[b], steps - 1, lr, loss_fn,
                                      first_order, fixed, functional=False)
                losses = torch.cat([losses, later])
            out = _forward(model, {**fixed, **start}, qx[b])
            results.append((loss_fn(out, qy[b]), out, losses))
    return _stack(results)


# ----------------------------------------------------------------------------- "+task_backward"

TASK_BACKWARD = "+task_backward"
#: above this many gradient elements (tasks x parameters) only the sum of the per-task gradients
#: is kept: enough for ``losses.mean()`` / ``.sum()``, not for tasks weighted unequally.
PER_TASK_GRADS_LIMIT = 2 ** 25


def _split_task_backward(strategy: str) -> tuple[str, bool]:
    if strategy.endswith(TASK_BACKWARD):
        return strategy[:-len(TASK_BACKWARD)], True
    return strategy, False


def _task_backward_outputs(model: nn.Module, shared: dict, lr: LR, steps: int, loss_fn: LossFn,
                           first_order: bool, base: str, channels_last: bool,
                           batched: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
    """The loop (or the shared step, then the loop) with one backward per task, during the forward.

    What the peers do by hand (``loss_b.backward()`` per task): each task's graph is freed as soon
    as its gradient is known, instead of all B graphs living until one backward (on a CPU the
    memory traffic of B kept graphs costs more than the arithmetic once B x steps is large). The
    losses come back through an autograd function whose backward hands over the stored per-task
    gradients (weighted by the incoming gradient of each task's loss), so ``losses.mean()
    .backward()`` and ``torch.autograd.grad`` work as usual. Not possible: differentiating the
    query outputs, or the meta-gradient itself (``create_graph=True``); both raise.
    """
    flat, spec = tree_flatten(shared)
    wanted = [i for i, t in enumerate(flat) if isinstance(t, Tensor) and t.requires_grad]

    def run(leaves: list[Tensor]):
        full = list(flat)
        for i, t in zip(wanted, leaves):
            full[i] = t
        shared_ = tree_unflatten(full, spec)
        lr_ = _shared_lr(shared_, lr)
        sx, sy, qx, qy = batched
        per_task, results = [], []
        merged = None
        if base == "shared":
            with torch.enable_grad():
                adapted, first = _shared_first_step(model, shared_["params"], shared_["fixed"], sx,
                                                    sy, lr_, loss_fn, first_order, channels_last)
            merged = adapted
        with _layout(model, channels_last):
            for b in range(sx.shape[0]):
                with torch.enable_grad():
                    if merged is None:
                        loss, out, inner_losses = _task_outputs(
                            model, shared_["params"], lr_, shared_["fixed"], steps, loss_fn,
                            first_order, sx[b], sy[b], qx[b], qy[b], False)
                        cut = []
                    else:
                        start = {k: v[b].detach().requires_grad_() for k, v in merged.items()}
                        cut = list(start.values())
                        inner_losses = first[b:b + 1]
                        if steps > 1:
                            start, later = _adapt(model, start, sx[b], sy[b], steps - 1, lr_,
                                                  loss_fn, first_order, shared_["fixed"],
                                                  functional=False)
                            inner_losses = torch.cat([inner_losses, later])
                        out = _forward(model, {**shared_["fixed"], **start}, qx[b])
                        loss = loss_fn(out, qy[b])
                    grads = torch.autograd.grad(loss, cut + leaves, allow_unused=True,
                                                materialize_grads=True)
                per_task.append(grads)
                results.append((loss.detach(), out.detach(), inner_losses.detach()))
        losses, outputs, inner = _stack(results)
        return losses, outputs, inner, per_task, merged

    return _TaskBackward.apply(run, *[flat[i] for i in wanted])


class _TaskBackward(torch.autograd.Function):
    """Forward: every task's loss and its gradient (graph freed per task). Backward: their sum,
    each weighted by the incoming gradient of that task's loss."""

    @staticmethod
    def forward(ctx, run, *leaves):  # noqa: D102 - autograd.Function protocol
        ctx.set_materialize_grads(False)
        detached = [t.detach().requires_grad_() for t in leaves]
        losses, outputs, inner, per_task, merged = run(detached)
        cut = 0 if merged is None else len(merged)
        size = losses.shape[0] * sum(t.numel() for t in leaves)
        stack = merged is not None or size <= PER_TASK_GRADS_LIMIT
        ctx.merged = merged
        ctx.detached = detached
        ctx.cut = cut
        if stack:
            ctx.per_task = per_task
            ctx.total = None
        else:
            ctx.per_task = None
            ctx.total = [sum(g[i] for g in per_task) for i in range(len(per_task[0]))]
        ctx.mark_non_differentiable(inner)
        return losses, outputs, inner

    @staticmethod
    def backward(ctx, grad_losses, grad_outputs, _grad_inner):  # noqa: D102
        if grad_outputs is not None:
            raise InnerLoopError("a '+task_backward' strategy (what strategy='auto' uses) computed "
                                 "each task's gradient during the forward pass, so the query "
                                 "outputs carry no graph; to differentiate through them, pass "
                                 "strategy='loop' (or 'shared', 'vmap')")
        if torch.is_grad_enabled():
            raise InnerLoopError("a '+task_backward' strategy (what strategy='auto' uses) cannot "
                                 "differentiate the meta-gradient again (create_graph=True); pass "
                                 "strategy='loop' (or 'shared', 'vmap') for that")
        if grad_losses is None:
            return (None, *[None] * len(ctx.detached))
        weights = grad_losses.detach()
        if ctx.per_task is not None:
            parts = [[w * g for g in grads] for w, grads in zip(weights, ctx.per_task)]
            totals = [sum(p[i] for p in parts) for i in range(len(parts[0]))]
            cut = [torch.stack([p[i] for p in parts]) for i in range(ctx.cut)]
        else:
            if not bool((weights == weights[0]).all()):
                raise InnerLoopError("the tasks' losses are weighted unequally, and this batch "
                                     "kept only the sum of its per-task gradients (B x parameters "
                                     f"> {PER_TASK_GRADS_LIMIT}); pass strategy='loop'")
            totals = [weights[0] * g for g in ctx.total]
            cut = []
        grads = totals[ctx.cut:]
        if ctx.merged is not None:
            through = torch.autograd.grad(list(ctx.merged.values()), ctx.detached, cut,
                                          allow_unused=True, materialize_grads=True)
            grads = [g + t for g, t in zip(grads, through)]
        return (None, *grads)


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
    """A named strategy unchanged; "auto": the fastest here, timed once per setting.

    "auto" keeps the loop, untimed, for a model whose norm layers would update running
    statistics (only the loop updates them as plain PyTorch does); otherwise it times every
    candidate (``_candidates``: the loop, its channels-last variant on a CPU, the shared first
    step where the model allows it, vmap) and chooses one other than the loop only if its
    meta-gradient on the timed trial agrees with the loop's (a guard against layers whose
    derivatives are wrong under ``vmap`` or outside the shared step's rules; ``AUTO_REJECTED``
    records such settings). ``AUTO_TIMINGS[key]`` / ``last_auto_choice()`` keep what was measured.
    """
    _check_strategy(strategy)
    if strategy != "auto":
        return strategy
    if updates_running_stats(model):
        _LAST_KEY[0] = key = ("untimed", type(model).__name__)
        AUTO_TIMINGS[key] = {"chosen": "loop", "timings_ms": {}, "rejected": {}, "failed": {},
                             "setting": {"reason": "norm layers update running statistics: only "
                                                   "the loop updates them as plain PyTorch does"}}
        return "loop"
    # the trial runs the inner steps it will serve, up to AUTO_TRIAL_STEPS: what each task's kept
    # graph costs grows with the steps, so a one-step trial can rank the strategies wrongly at five
    timed_steps = min(steps, AUTO_TRIAL_STEPS)
    key = (str(support_x.device), type(model).__name__, model.training, tuple(support_x.shape),
           tuple(query_x.shape), support_x.dtype, timed_steps, first_order, chunk_size,
           isinstance(lr, Mapping), len(params), sum(p.numel() for p in params.values()),
           _structure(model))
    _LAST_KEY[0] = key
    if key not in AUTO_DECISIONS:
        AUTO_DECISIONS[key] = _measure(key, model, params, support_x, support_y, query_x, query_y,
                                       steps=timed_steps, lr=lr, loss_fn=loss_fn,
                                       first_order=first_order, chunk_size=chunk_size)
    return AUTO_DECISIONS[key]


def _structure(model: nn.Module) -> int:
    """A hash of the model's layer kinds and modes: two models with the same parameter count but
    other layers (batch norm or instance norm, running statistics or not) get their own timing."""
    return hash(tuple((type(m).__name__, m.training, getattr(m, "track_running_stats", None))
                      for m in model.modules()))


#: the most inner steps "auto" times; more steps reuse the timing made with this many.
AUTO_TRIAL_STEPS = 5

#: settings for which "auto" found a candidate's meta-gradient different from the loop's -> relative error.
AUTO_REJECTED: dict[tuple, float] = {}


def _candidates(model: nn.Module, device: torch.device, steps: int) -> list[str]:
    """The strategies "auto" times here: the loop first (the reference), then the others."""
    found = ["loop", "loop+task_backward"]
    convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if device.type == "cpu" and convolutional:
        found.append("loop+channels_last+task_backward")
    if steps >= 1 and shared_step_refusal(model) is None:
        found.append("shared+task_backward")
        if device.type == "cpu" and convolutional:
            found.append("shared+channels_last+task_backward")
    return found + ["vmap"]


def _measure(key: tuple, model: nn.Module, params: Params, support_x: Tensor, support_y: Tensor,
             query_x: Tensor, query_y: Tensor, rounds: int = 2, **settings) -> str:
    """Time one meta-step (forward + backward) of each candidate on a detached copy of params.

    The candidates run round-robin (``rounds`` rounds, the fastest of each kept), so a change of
    load on a shared CPU reaches all of them alike. A candidate other than the loop is chosen
    only if its meta-gradient on the trial agrees with the loop's, or, in float32 where it does
    not, if it is as close to the loop's float64 meta-gradient as the float32 loop is (within 2x:
    an ill-conditioned inner loop puts the float32 loop itself far from exact);
    ``AUTO_REJECTED`` records the others, ``float64_checked`` the errors of that comparison.
    """
    candidates = _candidates(model, support_x.device, settings["steps"])
    timings: dict[str, float] = {c: float("inf") for c in candidates}
    grads: dict[str, list[Tensor]] = {}
    failed: dict[str, str] = {}
    for _ in range(rounds):
        for strategy in candidates:
            if strategy in failed:
                continue
            try:
                with quiet():
                    seconds, grads[strategy] = _time_once(strategy, model, params, support_x,
                                                          support_y, query_x, query_y, **settings)
                timings[strategy] = min(timings[strategy], seconds)
            except Exception as error:  # noqa: BLE001 - a strategy that cannot run here is not chosen
                failed[strategy] = f"{type(error).__name__}: {str(error)[:200]}"
                timings[strategy] = float("inf")
    tolerance = 1e-8 if support_x.dtype == torch.float64 else 1e-3
    rejected: dict[str, float] = {}
    checked: dict[str, dict[str, float]] = {}
    reference: list[list[Tensor] | None] = []  # the loop in float64, made only when needed
    chosen = "loop"
    for strategy in sorted(candidates, key=lambda c: (timings[c], candidates.index(c))):
        if timings[strategy] == float("inf"):
            break
        if strategy != "loop" and "loop" in grads and not _random(model):
            error = _relative_error(grads[strategy], grads["loop"])
            if error > tolerance:
                # Disagreeing with the float32 loop is no fault where the loop itself is that far
                # from exact (ill-conditioned inner loops): then judge both against float64.
                if not reference and support_x.dtype != torch.float64:
                    reference.append(_float64_reference(model, params, support_x, support_y,
                                                        query_x, query_y, **settings))
                exact = reference[0] if reference else None
                if exact is not None:
                    own, loop_own = (_relative_error(grads[strategy], exact),
                                     _relative_error(grads["loop"], exact))
                    checked[strategy] = {"vs_loop": error, "vs_float64": own,
                                         "loop_vs_float64": loop_own}
                    if own <= max(tolerance, 2 * loop_own):
                        chosen = strategy
                        break
                rejected[strategy] = error
                AUTO_REJECTED[key] = error
                continue
        chosen = strategy
        break
    AUTO_TIMINGS[key] = {
        "chosen": chosen,
        "timings_ms": {c: round(1000 * t, 2) if t != float("inf") else None for c, t in timings.items()},
        "rejected": rejected, "failed": failed, "float64_checked": checked,
        "setting": {"device": key[0], "model": key[1], "support": key[3], "query": key[4],
                    "dtype": str(key[5]), "timed_steps": key[6], "first_order": key[7]}}
    return chosen


def last_auto_choice() -> dict | None:
    """What "auto" used last (None before its first decision), for a log line.

    ``{"chosen": "loop+channels_last", "timings_ms": {"loop": 812.4, ...}, "rejected": {...},
    "failed": {...}, "setting": {...}}``; every decision so far is in ``AUTO_TIMINGS``.
    """
    key = _LAST_KEY[0]
    if key is None or (key not in AUTO_DECISIONS and key not in AUTO_TIMINGS):
        return None
    record = AUTO_TIMINGS.get(key) or {"chosen": AUTO_DECISIONS[key], "timings_ms": {},
                                       "rejected": {}, "failed": {}, "setting": {}}
    return dict(record)


def describe_auto_choice(record: dict | None = None) -> str:
    """One line: ``auto chose loop+channels_last (loop+channels_last 690 ms, loop 812 ms, ...)``."""
    record = record or last_auto_choice()
    if record is None:
        return "auto has not chosen a strategy yet"
    times = ", ".join(f"{c} {'failed' if t is None else f'{t:.0f} ms'}"
                      for c, t in sorted(record["timings_ms"].items(),
                                         key=lambda kv: float("inf") if kv[1] is None else kv[1]))
    rejected = "".join(f"; {c} rejected (meta-gradient off by {e:.1e})"
                       for c, e in record["rejected"].items())
    rejected += "".join(f"; {c} kept: {e['vs_loop']:.1e} from the float32 loop, which is itself "
                        f"{e['loop_vs_float64']:.1e} from float64 ({c}: {e['vs_float64']:.1e})"
                        for c, e in record.get("float64_checked", {}).items() if c not in record["rejected"])
    if not record["timings_ms"]:
        reason = record["setting"].get("reason")
        return f"auto chose {record['chosen']}" + (f" (untimed: {reason})" if reason else "")
    steps = record["setting"]["timed_steps"]
    return (f"auto chose {record['chosen']} ({times}{rejected}; one meta-step with {steps} inner "
            f"step{'s' if steps != 1 else ''}, on {record['setting']['device']})")


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


def _float64_reference(model: nn.Module, params: Params, support_x: Tensor, support_y: Tensor,
                       query_x: Tensor, query_y: Tensor, **settings) -> list[Tensor] | None:
    """The loop's meta-gradient with a float64 copy of the model, params and images (None where
    that cannot run): what "auto" measures a float32 strategy against when it disagrees with the
    float32 loop."""
    try:
        lr = settings["lr"]
        lr = ({k: v.detach().double() for k, v in lr.items()} if isinstance(lr, Mapping)
              else lr.detach().double() if isinstance(lr, Tensor) else lr)
        with quiet():
            _, grads = _time_once("loop", copy.deepcopy(model).double(),
                                  {n: p.double() for n, p in params.items()}, support_x.double(),
                                  support_y, query_x.double(), query_y, **{**settings, "lr": lr})
        return grads
    except Exception:  # noqa: BLE001 - without a reference the float32 loop decides, as before
        return None


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
