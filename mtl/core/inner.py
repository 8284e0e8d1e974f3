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
- ``"auto"``: the fastest of them here, measured once per (device, model, shapes, settings)
  among those whose trial meta-gradient agrees with the loop's (``mtl.core.auto``;
  ``last_auto_choice()`` / ``describe_auto_choice()`` say what it chose and why).

The shared first step's per-layer rules are ``mtl.core.shared_step``; the checks of settings and
inputs, with the messages that name the fix, ``mtl.core.checks``.

Every strategy but vmap runs its forward passes on a CPU through ``mtl.core.kernels``: torch's
max-pool of inputs of ``MIN_ELEMENTS`` (2^17) elements or more replaced by a faster equivalent
with the same values and derivatives (``mtl.core.kernels.enabled(False)`` turns it off).

``chunk_size`` processes the tasks this many at a time and, when gradients are needed, recomputes
each chunk during the backward pass (activation checkpointing), so the memory held for the outer
backward grows with ``chunk_size`` rather than with B, at the cost of one extra forward.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from mtl.core import auto
from mtl.core.auto import describe_auto_choice, last_auto_choice, untimed_strategy
from mtl.core.checks import (LR, STRATEGIES, LossFn, Params, check_batch, check_finite, check_inputs,
                             check_settings, check_strategy, label_errors, lr_of)
from mtl.core.kernels import batch_norm_types, cpu_kernels
from mtl.core.norms import exact_norms
from mtl.core.shared_step import shared_first_step, shared_step_refusal
from mtl.errors import ConfigError, InnerLoopError, TaskBatchError

__all__ = ["adapt", "maml_loss", "maml_outputs", "adapt_batch", "map_tasks", "STRATEGIES",
           "resolve_strategy", "last_auto_choice", "describe_auto_choice", "shared_step_refusal",
           "untimed_strategy"]


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
        params = {n: p - lr_of(lr, n) * grads[n] for n, p in params.items()}
        losses.append(loss)
    inner_losses = torch.stack(losses) if losses else x.new_zeros(0)
    return params, inner_losses


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
    check_settings(steps, lr)
    check_inputs(model, params, {"x": x}, {"y": y}, loss_fn, leading=1)
    with label_errors(model):
        adapted, inner_losses = _adapt(model, dict(params), x, y, steps, lr, loss_fn, first_order,
                                       functional=False)
    check_finite(inner_losses[None], None, steps, lr)
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
    check_settings(steps, lr)
    check_inputs(model, params, {"support_x": support_x, "query_x": query_x},
                 {"support_y": support_y, "query_y": query_y}, loss_fn, leading=2)
    check_batch(support_x, support_y, query_x, query_y, loss_fn)
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
    with label_errors(model):
        if task_backward:  # one task at a time already: chunk_size has nothing left to bound
            losses, outputs, inner_losses = _task_backward_outputs(
                model, shared, lr, steps, loss_fn, first_order, base, channels_last, batched)
        elif base == "shared":
            losses, outputs, inner_losses = _chunked(shared_tasks, shared, batched, chunk_size)
        else:
            losses, outputs, inner_losses = map_tasks(one_task, shared, batched, strategy=strategy,
                                                      chunk_size=chunk_size, model=model)
    check_finite(inner_losses, losses, steps, lr)
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


def resolve_strategy(strategy: str, model: nn.Module, params: Params, support_x: Tensor,
                     support_y: Tensor, query_x: Tensor, query_y: Tensor, *, steps: int, lr: LR,
                     loss_fn: LossFn, first_order: bool, chunk_size: int | None) -> str:
    """A named strategy unchanged; "auto": the fastest here for ``maml_outputs`` with these
    arguments, measured once per setting (``mtl.core.auto``)."""
    return auto.resolve_strategy(strategy, model, params, support_x, support_y, query_x, query_y,
                                 steps=steps, lr=lr, loss_fn=loss_fn, first_order=first_order,
                                 chunk_size=chunk_size, run=maml_outputs)


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
    check_settings(steps, lr)
    check_inputs(model, params, {"x": x} if query_x is None else {"x": x, "query_x": query_x},
                 {"y": y}, loss_fn, leading=2)
    if x.shape[:2] != y.shape[:2] or (query_x is not None and query_x.shape[0] != x.shape[0]):
        raise TaskBatchError(f"x {tuple(x.shape)}, y {tuple(y.shape)} and query_x disagree in the "
                             "leading dimensions [B, n]; pass one target per example of each task")
    check_strategy(strategy)
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
    check_finite(inner_losses, None, steps, lr)
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


def _shared_outputs(model: nn.Module, shared: dict, lr: LR, steps: int, loss_fn: LossFn,
                    first_order: bool, channels_last: bool, sx: Tensor, sy: Tensor, qx: Tensor,
                    qy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """B tasks with the shared first step, then per-task steps 1.. and query passes."""
    params, fixed, lr = shared["params"], shared["fixed"], _shared_lr(shared, lr)
    adapted, first = shared_first_step(model, params, fixed, sx, sy, lr, loss_fn, first_order,
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
                adapted, first = shared_first_step(model, shared_["params"], shared_["fixed"], sx,
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


