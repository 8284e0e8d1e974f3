"""The inner loop (``adapt``) and the outer objective batched over tasks (``maml_loss``).

A model is used as a pure function of a dict of parameters (``torch.func.functional_call``), so
adapting to a task is a few lines of arithmetic on that dict::

    for step in range(steps):
        grads = grad(loss_of_params)(params)             # d inner loss / d params
        params = {n: p - lr * grads[n] for n, p in params.items()}

and the outer (meta-) gradient is ordinary autograd through those lines: second order by default,
first order when the inner gradients are treated as constants (``first_order=True``).

A batch of B tasks runs by one of two *strategies*, with the same numbers (up to the order of
floating-point sums) and the same graph:

- ``"vmap"``: ``torch.func.vmap`` runs the B inner loops as one batched computation (what keeps a
  GPU busy). Batch, instance and layer norm run through ``mtl.core.norms`` (exact second
  derivatives; running statistics read, never updated);
- ``"loop"``: a Python loop over the tasks (less overhead on a CPU; running statistics updated once
  per forward, as in plain PyTorch).

``"auto"`` (the default) is ``"vmap"`` on CUDA and ``"loop"`` elsewhere, and ``"loop"`` for a model
in training mode whose norm layers update running statistics (``resolve_strategy``). It depends on
the device and the model only, never on a measurement.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from mtl.core.checks import (LR, STRATEGIES, LossFn, Params, check_batch, check_finite, check_inputs,
                             check_settings, check_strategy, label_errors, lr_of)
from mtl.core.norms import exact_norms, updates_running_stats
from mtl.errors import ConfigError, InnerLoopError, TaskBatchError

__all__ = ["adapt", "maml_loss", "maml_outputs", "adapt_batch", "map_tasks", "STRATEGIES",
           "resolve_strategy"]


def resolve_strategy(strategy: str, model: nn.Module | None, device: torch.device) -> str:
    """``"vmap"`` or ``"loop"``: a named strategy unchanged; ``"auto"``: ``"vmap"`` on CUDA unless
    ``model`` updates running statistics (training mode), else ``"loop"``."""
    check_strategy(strategy)
    if strategy != "auto":
        return strategy
    if torch.device(device).type == "cuda" and (model is None or not updates_running_stats(model)):
        return "vmap"
    return "loop"


# ----------------------------------------------------------------------------- one task

def _adapt(model: nn.Module, params: Params, x: Tensor, y: Tensor, steps: int, lr: LR,
           loss_fn: LossFn, first_order: bool, fixed: Params | None = None,
           functional: bool = False) -> tuple[Params, Tensor]:
    """``steps`` SGD steps on ``loss_fn(model(x), y)``; returns (adapted params, inner losses [steps]).

    ``fixed``: more parameters for the model that are not adapted (by default the module's own).
    ``functional=True`` differentiates with ``torch.func.grad`` (what runs inside ``vmap``);
    ``False`` with ``torch.autograd.grad`` (the same numbers, less overhead one task at a time).
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
        adapted, inner_losses = _adapt(model, dict(params), x, y, steps, lr, loss_fn, first_order)
    check_finite(inner_losses[None], None, steps, lr)
    if steps and not bool(torch.stack([torch.isfinite(p.detach()).all() for p in adapted.values()]).all()):
        lr_text = "the per-parameter learning rates" if isinstance(lr, Mapping) else f"lr={lr:g}"
        raise InnerLoopError(f"the adapted parameters are NaN/Inf after step {steps} of {steps}: the "
                             f"last update diverged; lower the inner learning rate ({lr_text})")
    return adapted


# ----------------------------------------------------------------------------- many tasks

def map_tasks(fn: Callable[..., object], shared: object, batched: tuple[Tensor, ...], *,
              strategy: str, model: nn.Module | None = None) -> object:
    """Apply ``fn(shared, *task_args)`` to every task of ``batched`` and stack the results.

    Args:
        fn: one task's computation; returns a tensor or a tuple/dict of tensors.
        shared: what every task shares (parameters, learning rates): a tensor or a nested
            dict/tuple of tensors; gradients flow to it.
        batched: tensors with a leading task dimension B (task ``b`` gets ``t[b]`` of each).
        strategy: "vmap" or "loop" (resolve "auto" with ``resolve_strategy`` first).
        model: the module ``fn`` calls; under "vmap" its batch, instance and layer norm layers run
            through ``mtl.core.norms``.

    Returns:
        ``fn``'s output structure with a leading dimension B on every tensor.
    """
    if strategy == "loop":
        return _stack([fn(shared, *(a[b] for a in batched)) for b in range(batched[0].shape[0])])
    if strategy != "vmap":
        raise ConfigError(f"map_tasks runs strategy 'vmap' or 'loop', got {strategy!r} (resolve "
                          "'auto' with resolve_strategy first)")
    with exact_norms(model) if model is not None else contextlib.nullcontext():
        try:
            return vmap(fn, in_dims=(None,) + (0,) * len(batched), randomness="different")(
                shared, *batched)
        except RuntimeError as error:
            if "in-place" not in str(error):
                raise
            raise ConfigError(_in_place_message(model, error)) from error


def _in_place_message(model: nn.Module | None, error: RuntimeError) -> str:
    """Why a model cannot run under vmap: some layer writes to a tensor it does not own."""
    holders = [] if model is None else sorted(
        {type(m).__name__ for m in model.modules() if any(True for _ in m.buffers(recurse=False))})
    layers = f" (layers with buffers: {', '.join(holders)})" if holders else ""
    first_line = str(error).splitlines()[0]
    return (f"strategy='vmap' cannot run this model: a layer changes a tensor in place inside the "
            f"batched inner loop{layers}: {first_line}. Use strategy='loop', or make the layer "
            "write to a new tensor instead.")


def _stack(items: list) -> object:
    first = items[0]
    if isinstance(first, Tensor):
        return torch.stack(items)
    if isinstance(first, dict):
        return {k: torch.stack([it[k] for it in items]) for k in first}
    return type(first)(_stack(list(parts)) for parts in zip(*items))


def _shared(model: nn.Module, params: Params, lr: LR) -> dict:
    """What every task shares, as explicit tensors (``vmap`` passes them to each task unbatched)."""
    fixed = {n: p for n, p in model.named_parameters() if n not in params}
    return {"params": params, "fixed": fixed, "lr": dict(lr) if isinstance(lr, Mapping) else lr}


def maml_outputs(model: nn.Module, params: Mapping[str, Tensor], support_x: Tensor,
                 support_y: Tensor, query_x: Tensor, query_y: Tensor, *, steps: int, lr: LR,
                 loss_fn: LossFn = F.cross_entropy, first_order: bool = False,
                 strategy: str = "auto") -> tuple[Tensor, Tensor]:
    """Adapt to each task on its support set, evaluate on its query set.

    Shapes: ``support_x [B, n_s, ...]``, ``support_y [B, n_s]``, ``query_x [B, n_q, ...]``,
    ``query_y [B, n_q]`` (regression: ``[B, n, 1]`` targets). Other arguments as in ``maml_loss``.

    Returns:
        ``(losses [B], query_outputs [B, n_q, num_classes])``: each task's query loss after
        adaptation and its query logits (or predictions), both differentiable w.r.t. ``params``
        (and a tensor ``lr``), twice if needed.
    """
    params = dict(params)
    check_settings(steps, lr)
    check_inputs(model, params, {"support_x": support_x, "query_x": query_x},
                 {"support_y": support_y, "query_y": query_y}, loss_fn, leading=2)
    check_batch(support_x, support_y, query_x, query_y, loss_fn)
    strategy = resolve_strategy(strategy, model, support_x.device)

    def one_task(shared: dict, sx: Tensor, sy: Tensor, qx: Tensor,
                 qy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        adapted, inner_losses = _adapt(model, shared["params"], sx, sy, steps, shared["lr"],
                                       loss_fn, first_order, shared["fixed"], strategy == "vmap")
        out = functional_call(model, {**shared["fixed"], **adapted}, (qx,))
        return loss_fn(out, qy), out, inner_losses

    with label_errors(model):
        losses, outputs, inner_losses = map_tasks(
            one_task, _shared(model, params, lr), (support_x, support_y, query_x, query_y),
            strategy=strategy, model=model)
    check_finite(inner_losses, losses, steps, lr)
    return losses, outputs


def maml_loss(model: nn.Module, params: Mapping[str, Tensor], support_x: Tensor,
              support_y: Tensor, query_x: Tensor, query_y: Tensor, *, steps: int, lr: LR,
              loss_fn: LossFn = F.cross_entropy, first_order: bool = False,
              strategy: str = "auto") -> Tensor:
    """MAML's outer objective: the mean over B tasks of the query loss after ``adapt``.

    Args:
        model, params, steps, lr, loss_fn, first_order: as in ``adapt``.
        support_x: ``[B, n_s, ...]`` (``[B, N*K, C, H, W]``); support_y ``[B, n_s]``.
        query_x: ``[B, n_q, ...]``; query_y ``[B, n_q]``.
        strategy: "auto" (vmap on CUDA, the loop elsewhere), "vmap" or "loop".

    Returns:
        scalar tensor carrying the whole graph: ``.backward()`` gives the meta-gradient (second
        order unless ``first_order``), and ``torch.autograd.grad(..., create_graph=True)`` a
        meta-gradient that can be differentiated again.

    Raises:
        TaskBatchError: support and query that disagree (batch size, image shape, labels).
        ConfigError: an unknown strategy, or a model that cannot run under "vmap".
        InnerLoopError: a NaN/Inf inner loss (names the step; lower the inner lr).
    """
    losses, _ = maml_outputs(model, params, support_x, support_y, query_x, query_y, steps=steps,
                             lr=lr, loss_fn=loss_fn, first_order=first_order, strategy=strategy)
    return losses.mean()


def adapt_batch(model: nn.Module, params: Mapping[str, Tensor], x: Tensor, y: Tensor, *,
                steps: int, lr: LR, loss_fn: LossFn = F.cross_entropy, first_order: bool = True,
                query_x: Tensor | None = None,
                strategy: str = "auto") -> tuple[Params, Tensor | None]:
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
    strategy = resolve_strategy(strategy, model, x.device)

    def one_task(shared: dict, tx: Tensor, ty: Tensor, *rest: Tensor) -> tuple:
        adapted, inner_losses = _adapt(model, shared["params"], tx, ty, steps, shared["lr"],
                                       loss_fn, first_order, shared["fixed"], strategy == "vmap")
        outputs = [functional_call(model, {**shared["fixed"], **adapted}, (q,)) for q in rest]
        return (adapted, inner_losses, *outputs)

    batched = (x, y) if query_x is None else (x, y, query_x)
    with label_errors(model):
        adapted, inner_losses, *outputs = map_tasks(one_task, _shared(model, params, lr), batched,
                                                    strategy=strategy, model=model)
    check_finite(inner_losses, None, steps, lr)
    return adapted, (outputs[0] if outputs else None)
