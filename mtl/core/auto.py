"""``strategy="auto"``: the fastest strategy for a setting, chosen by measurement.

The first time ``resolve_strategy`` meets a (device, model, shapes, settings) key it times every
strategy that can run the model (``_candidates``) round-robin on a copy of the parameters, and
keeps the fastest whose trial meta-gradient agrees with the per-task loop's; ``AUTO_DECISIONS``
holds the choices, ``AUTO_TIMINGS`` everything measured, ``last_auto_choice`` and
``describe_auto_choice`` what a log shows. The number of inner steps is part of the key, up to
``AUTO_TRIAL_STEPS`` (5): what each task's kept graph costs grows with the steps, so the trial
runs the steps it will serve, and one timing with 5 serves any larger count. The computation a
trial times is passed in (``run``: ``mtl.core.inner.maml_outputs``), so this module sits below
the inner loop it chooses for.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from mtl.core.checks import LR, LossFn, Params, check_strategy
from mtl.core.norms import quiet, updates_running_stats
from mtl.core.shared_step import shared_step_refusal

__all__ = ["resolve_strategy", "last_auto_choice", "describe_auto_choice", "untimed_strategy",
           "AUTO_DECISIONS", "AUTO_TIMINGS", "AUTO_REJECTED", "AUTO_TRIAL_STEPS"]

#: (device, shapes, settings) -> the chosen strategy, filled by "auto" the first time it meets a key.
AUTO_DECISIONS: dict[tuple, str] = {}
#: the same keys -> what "auto" measured: ``{"chosen", "timings_ms", "rejected", "setting"}``.
AUTO_TIMINGS: dict[tuple, dict] = {}
_LAST_KEY: list = [None]  # the key "auto" resolved last (decided then or before)
#: what a trial times: ``maml_outputs(model, params, sx, sy, qx, qy, strategy=..., **settings)``
Run = Callable[..., tuple[Tensor, Tensor]]


def resolve_strategy(strategy: str, model: nn.Module, params: Params, support_x: Tensor,
                     support_y: Tensor, query_x: Tensor, query_y: Tensor, *, steps: int, lr: LR,
                     loss_fn: LossFn, first_order: bool, chunk_size: int | None,
                     run: Run) -> str:
    """A named strategy unchanged; "auto": the fastest here, timed once per setting.

    "auto" keeps the loop, untimed, for a model whose norm layers would update running
    statistics (only the loop updates them as plain PyTorch does); otherwise it times every
    candidate (``_candidates``: the loop and ``loop+task_backward``; on a CPU for a
    convolutional model ``loop+channels_last+task_backward``; ``shared+task_backward`` (and its
    channels-last variant) where the model allows the shared first step; vmap) and chooses one
    other than the loop only if its meta-gradient on the timed trial agrees with the loop's (a
    guard against layers whose derivatives are wrong under ``vmap`` or outside the shared step's
    rules; ``AUTO_REJECTED`` records such settings). ``AUTO_TIMINGS[key]`` /
    ``last_auto_choice()`` keep what was measured.
    ``run``: what a trial times, ``mtl.core.inner.maml_outputs`` (its arguments, with a named
    ``strategy``; returns ``(losses [B], outputs)``).
    """
    check_strategy(strategy)
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
        AUTO_DECISIONS[key] = _measure(key, run, model, params, support_x, support_y, query_x, query_y,
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


def _measure(key: tuple, run: Run, model: nn.Module, params: Params, support_x: Tensor, support_y: Tensor,
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
                    seconds, grads[strategy] = _time_once(run, strategy, model, params, support_x,
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
                    reference.append(_float64_reference(run, model, params, support_x, support_y,
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


def _float64_reference(run: Run, model: nn.Module, params: Params, support_x: Tensor, support_y: Tensor,
                       query_x: Tensor, query_y: Tensor, **settings) -> list[Tensor] | None:
    """The loop's meta-gradient with a float64 copy of the model, params and images (None where
    that cannot run): what "auto" measures a float32 strategy against when it disagrees with the
    float32 loop."""
    try:
        lr = settings["lr"]
        lr = ({k: v.detach().double() for k, v in lr.items()} if isinstance(lr, Mapping)
              else lr.detach().double() if isinstance(lr, Tensor) else lr)
        with quiet():
            _, grads = _time_once(run, "loop", copy.deepcopy(model).double(),
                                  {n: p.double() for n, p in params.items()}, support_x.double(),
                                  support_y, query_x.double(), query_y, **{**settings, "lr": lr})
        return grads
    except Exception:  # noqa: BLE001 - without a reference the float32 loop decides, as before
        return None


def _time_once(run: Run, strategy: str, model: nn.Module, params: Params, support_x: Tensor,
               support_y: Tensor, query_x: Tensor, query_y: Tensor,
               **settings) -> tuple[float, list[Tensor]]:
    """Seconds of one meta-step and its meta-gradient (empty without a backward)."""
    trial = {n: p.detach().clone().requires_grad_(p.requires_grad) for n, p in params.items()}
    backward = torch.is_grad_enabled() and any(p.requires_grad for p in trial.values())
    _sync(support_x.device)
    start = time.perf_counter()
    losses, _ = run(model, trial, support_x, support_y, query_x, query_y,
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
