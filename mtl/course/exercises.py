"""Checkers for the lessons' "Your turn" cells: they say *what* is wrong, not only that it is.

Each ``check_*`` calls the student's function on small inputs, compares it with the reference
(the code ``mtl`` runs), prints one line when it is right and raises ``ExerciseError`` (an
``AssertionError``) with a diagnosis and a hint otherwise. Each tries several settings, and accepts
every answer the exercise's statement allows (a head with the same softmax, logits up to one number
per query, a Student-t interval), not only the reference's own form.

- lesson 01: ``check_inner_step(fn)``   one functional SGD step that keeps the graph
- lesson 02: ``check_ci95(fn)``         mean and 95% confidence half-width (normal or Student-t)
- lesson 03: ``check_task_meta_loss(fn)``  MAML's outer loss for one task, via ``mtl.adapt``
- lesson 04: ``check_reptile_update(fn)``  Reptile's outer update from adapted weights
- lesson 05: ``check_prototype_head(fn)``  class prototypes as a linear head (ProtoNet's softmax)
- lesson 06: ``check_context(fn)``      the token sequence and attention mask of a task
- lesson 07: ``check_nearest_centroid(fn)``  nearest centroid on normalised features
- lesson 08: ``check_hardest_class(fn)``  the hard-task meta-batch's class choice
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mtl.errors import ExerciseError

__all__ = ["ExerciseError", "check_inner_step", "check_ci95", "check_task_meta_loss", "check_reptile_update"]


def _fail(what: str, hint: str) -> None:
    raise ExerciseError(f"{what}\nHint: {hint}")


def _same(a: Mapping[str, Tensor], b: Mapping[str, Tensor], tol: float = 1e-6) -> bool:
    return all(torch.allclose(a[k].detach(), b[k].detach(), atol=tol, rtol=tol) for k in b)


def _tiny_regression(seed: int = 0):
    """A 3-5-1 tanh network and one task of 8 points (float64): enough to see second-order terms."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(8, 1, generator=g, dtype=torch.float64)
    return model, x, y


def _reference_step(model, params, x, y, lr, loss_fn, *, create_graph=True):
    loss = loss_fn(torch.func.functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
    return {name: p - lr * g for (name, p), g in zip(params.items(), grads)}


def _check_mapping(result, params: Mapping[str, Tensor], what: str) -> None:
    if not isinstance(result, Mapping):
        _fail(f"{what} returned a {type(result).__name__}, expected a dict name -> tensor.",
              "return {name: new_tensor for name, ... in params.items()}.")
    if set(result) != set(params):
        _fail(f"{what} returned the keys {sorted(result)}, expected {sorted(params)}.",
              "keep exactly the parameter names of `params` (model.named_parameters()).")
    for name, p in params.items():
        if tuple(result[name].shape) != tuple(p.shape):
            _fail(f"{what}: {name!r} has shape {tuple(result[name].shape)}, expected {tuple(p.shape)}.",
                  "each new parameter has the shape of the old one; do not sum or flatten gradients.")



def _check_step_once(fn: Callable, seed: int, lr: float, loss_fn: Callable, setting: str) -> None:
    model, x, y = _tiny_regression(seed)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in params.items()}
    result = fn(model, params, x, y, lr, loss_fn)
    _check_mapping(result, params, "your step")
    if not _same(params, before, 0):
        _fail("your step changed `params` in place.",
              "build new tensors (p - lr * g); never p -= ... or p.data: the outer loop needs the old theta.")
    want = _reference_step(model, params, x, y, lr, loss_fn)
    if not _same(result, want):
        uphill = {n: 2 * p - want[n] for n, p in params.items()}
        no_lr = _reference_step(model, params, x, y, 1.0, loss_fn)
        if _same(result, params):
            _fail("your step returned the parameters unchanged.", "subtract lr * gradient from each parameter.")
        if _same(result, uphill):
            _fail("your step went uphill (params + lr * grad).", "gradient *descent*: params - lr * grad.")
        if _same(result, no_lr):
            _fail("your step ignores lr (it subtracts the whole gradient).", "multiply the gradient by lr.")
        _fail(f"your step's values differ from params - lr * grad(loss_fn(model(x), y)) ({setting}).",
              "compute the loss with torch.func.functional_call(model, params, (x,)) and with the loss_fn "
              "argument, so that it uses `params`.")
    if not all(t.requires_grad for t in result.values()):
        _fail("your step's result is detached from `params`: no meta-gradient can flow through it.",
              "do not call .detach() or torch.no_grad(); use torch.autograd.grad(..., create_graph=True).")
    outer = lambda adapted: loss_fn(torch.func.functional_call(model, adapted, (x,)), y)  # noqa: E731
    got = torch.autograd.grad(outer(result), list(params.values()), allow_unused=True)
    ref = torch.autograd.grad(outer(want), list(params.values()))
    if any(g is None for g in got) or not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, ref)):
        _fail("values are right, but the meta-gradient through your step misses the second-order term.",
              "pass create_graph=True to torch.autograd.grad (or use torch.func.grad): the gradient is "
              "itself a function of params.")


def _half_squared_error(out: Tensor, y: Tensor) -> Tensor:
    return 0.5 * (out - y).pow(2).sum()


def check_inner_step(fn: Callable) -> None:
    """Check ``fn(model, params, x, y, lr, loss_fn) -> dict``: one SGD step, differentiable in ``params``.

    Right means: values ``params - lr * grad``, the input ``params`` untouched, and the result still
    connected to ``params`` with the second-order term (``create_graph=True``). Tried on two networks,
    step sizes and losses.
    """
    for seed, lr, loss_fn, setting in ((0, 0.3, F.mse_loss, "lr 0.3, F.mse_loss"),
                                       (3, 0.05, _half_squared_error, "lr 0.05, half the summed squared error")):
        _check_step_once(fn, seed, lr, loss_fn, setting)
    print("Correct: one differentiable SGD step (values, no in-place change, second-order graph).")


def _t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (``p > 0.5``) of Student's t with ``df`` degrees of freedom: the density
    integrated by Simpson's rule from 0, inverted by bisection (float64, error below 1e-10)."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(x: float) -> float:
        t = torch.linspace(0.0, x, 4001, dtype=torch.float64)
        density = torch.exp(log_c - (df + 1) / 2 * torch.log1p(t * t / df))
        h = x / 4000
        return 0.5 + h / 3 * (density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum()).item()

    low, high = 0.0, 1.0
    while cdf(high) < p:
        low, high = high, 2 * high
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) < p else (low, mid)
    return (low + high) / 2


#: the normal 95% factor: 1.96 as papers round it, and its exact value (``scipy.stats.norm.ppf(0.975)``)
_Z95 = (1.96, 1.959963984540054)


def check_ci95(fn: Callable) -> None:
    """Check ``fn(accuracies: Tensor [n]) -> (mean, half_width)``: a 95% confidence interval of the mean.

    Right means: ``half_width = z * std / sqrt(n)`` with ``z = 1.96`` (the normal interval papers
    report; ``std`` with or without Bessel's correction), or the Student-t interval
    ``t(0.975, n - 1) * std / sqrt(n)`` (``std`` with ``n - 1``), wider at small ``n``. Tried at
    n = 10, 30 and 600.
    """
    g = torch.Generator().manual_seed(1)
    kinds = set()
    for n in (10, 30, 600):
        acc = (torch.rand(n, generator=g, dtype=torch.float64) * 0.4 + 0.5)
        result = fn(acc.clone())
        if not (isinstance(result, tuple) and len(result) == 2):
            _fail(f"expected a pair (mean, half_width), got {type(result).__name__}.", "return mean, half_width.")
        mean, half = (float(v) for v in result)
        std0, std1 = acc.std(correction=0).item(), acc.std(correction=1).item()
        se0, se1 = std0 / n ** 0.5, std1 / n ** 0.5
        want = 1.96 * se1
        if abs(mean - acc.mean().item()) > 1e-9:
            _fail(f"mean is {mean:.4f}, expected {acc.mean().item():.4f} (n={n}).", "mean over episodes.")
        close = lambda value, half=half: abs(half - value) <= 1e-7 * abs(value) + 1e-12  # noqa: E731
        if any(close(z * se) for z in _Z95 for se in (se0, se1)):
            kinds.add("normal")
            continue
        if close(_t_quantile(0.975, n - 1) * se1):
            kinds.add("t")
            continue
        guesses = {
            "you used the variance instead of the standard deviation": 1.96 * std1 ** 2 / n ** 0.5,
            "you divided by n instead of sqrt(n)": 1.96 * std1 / n,
            "you forgot to divide by sqrt(n): that is the spread of episodes, not of their mean": 1.96 * std1,
            "you returned the standard error without the 1.96 factor": se1,
            "1.96 is the 95% factor; 2.576 gives 99%": 2.576 * se1,
            "a Student-t interval takes n - 1 degrees of freedom, not n": _t_quantile(0.975, n) * se1,
            "a Student-t interval goes with the sample std (n - 1), not the population std (n)":
                _t_quantile(0.975, n - 1) * se0,
        }
        for diagnosis, value in guesses.items():
            if close(value):
                _fail(f"half-width {half:.5f}, expected {want:.5f} (n={n}): {diagnosis}.",
                      "half_width = 1.96 * accuracies.std() / sqrt(n).")
        _fail(f"half-width {half:.5f}, expected {want:.5f} (n={n}).", "half_width = 1.96 * accuracies.std() / sqrt(n).")
    if "t" not in kinds:
        print("Correct: mean +- 1.96 std / sqrt(n); with 600 episodes the interval is ~8x narrower than with 10.")
        return
    t10, t600 = _t_quantile(0.975, 9), _t_quantile(0.975, 599)
    print(f"Correct: a Student-t interval, t(0.975, n - 1) std / sqrt(n): t = {t10:.3f} at n = 10, {t600:.3f} at "
          f"n = 600 (1.96 in the limit), so it is {100 * (t10 / 1.96 - 1):.0f}% wider than the normal interval at "
          f"n = 10 and {100 * (t600 / 1.96 - 1):.1f}% at n = 600, where the course's 1.96 is used.")


def check_task_meta_loss(fn: Callable) -> None:
    """Check ``fn(model, params, sx, sy, qx, qy, *, steps, lr) -> scalar``: query loss after adapting on support.

    Tried with (steps, lr) = (2, 0.1), (1, 0.5) and (3, 0.05) on two networks.
    """
    from mtl.core.inner import adapt

    for seed, steps, lr in ((0, 2, 0.1), (2, 1, 0.5), (4, 3, 0.05)):
        model, sx, sy = _tiny_regression(seed)
        _, qx, qy = _tiny_regression(seed + 1)
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        kwargs = dict(steps=steps, lr=lr)
        setting = f"steps={steps}, lr={lr}"
        got = fn(model, params, sx, sy, qx, qy, **kwargs)
        if not (isinstance(got, Tensor) and got.dim() == 0):
            _fail(f"expected a scalar tensor, got {getattr(got, 'shape', type(got).__name__)}.",
                  "return the mean query loss, a 0-d tensor.")
        run = lambda p, x, y, model=model: F.mse_loss(torch.func.functional_call(model, p, (x,)), y)  # noqa: E731
        fast = adapt(model, params, sx, sy, loss_fn=F.mse_loss, **kwargs)
        want = run(fast, qx, qy)
        if not torch.allclose(got.double(), want, atol=1e-6):
            candidates = {
                "it is the support loss after adaptation: evaluate the adapted weights on the query set":
                    run(fast, sx, sy),
                "it is the query loss *before* adaptation: evaluate adapt(...)'s result, not params":
                    run(params, qx, qy),
            }
            for diagnosis, value in candidates.items():
                if torch.allclose(got.double(), value, atol=1e-6):
                    _fail(f"loss {got.item():.5f}, expected {want.item():.5f} ({setting}): {diagnosis}.",
                          "fast = mtl.adapt(model, params, sx, sy, steps=steps, lr=lr, loss_fn=F.mse_loss); "
                          "loss on (qx, qy) with fast.")
            _fail(f"loss {got.item():.5f}, expected {want.item():.5f} ({setting}).",
                  "adapt on the support set with mtl.adapt(..., steps=steps, lr=lr, loss_fn=F.mse_loss), then the "
                  "query loss.")
        if not got.requires_grad:
            _fail("your loss is detached: nothing to back-propagate to the initialisation.",
                  "do not detach or use no_grad.")
        g_got = torch.autograd.grad(got, list(params.values()))
        g_want = torch.autograd.grad(want, list(params.values()))
        if not all(torch.allclose(a.double(), b, atol=1e-6) for a, b in zip(g_got, g_want)):
            _fail("the value is right but its gradient is not MAML's: the second-order term is missing.",
                  "leave first_order=False in mtl.adapt.")
    print("Correct: adapt on the support set, score on the query set, differentiate through both.")


def check_reptile_update(fn: Callable) -> None:
    """Check ``fn(theta: dict, phis: list[dict], outer_lr) -> dict``: theta + outer_lr * mean(phi - theta).

    Tried with 4 tasks and outer_lr 0.25, 3 tasks and 0.6, 2 tasks and 0.1.
    """
    for seed, tasks, eps in ((2, 4, 0.25), (5, 3, 0.6), (8, 2, 0.1)):
        g = torch.Generator().manual_seed(seed)
        theta = {"w": torch.randn(3, 2, generator=g), "b": torch.randn(2, generator=g)}
        phis = [{k: v + torch.randn(v.shape, generator=g) for k, v in theta.items()} for _ in range(tasks)]
        before = {k: v.clone() for k, v in theta.items()}
        result = fn(theta, phis, eps)
        _check_mapping(result, theta, "your update")
        if not _same(theta, before, 0):
            _fail("your update changed `theta` in place.", "return new tensors; the caller decides what to keep.")
        mean = {k: torch.stack([p[k] for p in phis]).mean(0) for k in theta}
        want = {k: theta[k] + eps * (mean[k] - theta[k]) for k in theta}
        if _same(result, want, 1e-5):
            continue
        candidates = {
            "it moves away from the adapted weights (sign)": {k: theta[k] - eps * (mean[k] - theta[k]) for k in theta},
            "it sums over tasks instead of averaging":
                {k: theta[k] + eps * len(phis) * (mean[k] - theta[k]) for k in theta},
            "it ignores outer_lr (jumps all the way to mean(phi))": mean,
            "it uses only the last task": {k: theta[k] + eps * (phis[-1][k] - theta[k]) for k in theta},
            "it uses only the first task": {k: theta[k] + eps * (phis[0][k] - theta[k]) for k in theta},
        }
        for diagnosis, value in candidates.items():
            if _same(result, value, 1e-5):
                _fail(f"your update is not Reptile's ({tasks} tasks, outer_lr {eps}): {diagnosis}.",
                      "theta + outer_lr * (mean_tau phi_tau - theta).")
        _fail(f"your update differs from theta + outer_lr * (mean(phi) - theta) ({tasks} tasks, outer_lr {eps}).",
              "average phi over tasks, per parameter name, then take a step of size outer_lr toward it.")
    print("Correct: theta moves a fraction outer_lr of the way to the mean adapted weights.")


# --- lesson 05 (metric-based and hybrid meta-learning) ----------------------------------------------
__all__ += ["check_prototype_head"]


def _feature_task(seed: int, ways: int, shots: int, dim: int, queries: int, shuffle: bool):
    """Features of one ``ways``-way ``shots``-shot task (float64): support ``[ways * shots, dim]``, its
    labels (grouped by class, or in a random order with ``shuffle``) and queries ``[queries, dim]``."""
    g = torch.Generator().manual_seed(seed)
    m = ways * shots
    support = torch.randn(m, dim, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3.0, m)[:, None].double()
    support_y = torch.arange(ways).repeat_interleave(shots)
    if shuffle:
        support_y = support_y[torch.randperm(m, generator=g)]
    query = torch.randn(queries, dim, generator=g, dtype=torch.float64) * 2.0
    return support, support_y, query, ways


def _centroid_task(seed: int = 3):
    """Features of one 4-way 3-shot task: support ``[12, 6]``, labels ``[12]`` grouped by class, query ``[10, 6]``."""
    return _feature_task(seed, ways=4, shots=3, dim=6, queries=10, shuffle=False)


def _up_to_row_constant(a: Tensor, b: Tensor, tol: float = 1e-5) -> bool:
    """``a - b`` is the same number across each row (softmax and argmax of a row cannot tell them apart)."""
    diff = a.double() - b.double()
    scale = max(1.0, float(b.abs().max()))
    return bool((diff - diff[..., :1]).abs().max() <= tol * scale)


#: (seed, ways, shots, feature size, shuffled labels): the tasks the feature checkers try
_FEATURE_SETTINGS = ((5, 4, 3, 6, False), (6, 5, 1, 4, True), (7, 3, 2, 8, True))


def check_prototype_head(fn: Callable) -> None:
    """Check ``fn(support [M, D], support_y [M], ways) -> (weight [ways, D], bias [ways])``.

    Right means: a linear head whose softmax is ProtoNet's, i.e. whose logits ``query @ weight.T +
    bias`` differ from ProtoNet's ``-||query - c_k||^2`` by one number per query. ``weight = 2 c``,
    ``bias = -||c||^2`` (``mtl.core.heads.prototype_head`` on one task) is the answer the lesson
    derives; ``weight = 2 c + v``, ``bias = -||c||^2 + beta`` with ``v``, ``beta`` shared by all
    classes gives the same softmax and passes too. Tried on three tasks (1 and more shots, labels
    grouped by class and in a random order), each with 40 random queries.
    """
    from mtl.core.heads import prototype_head, prototype_logits

    exact = True
    for seed, ways, shots, d, shuffle in _FEATURE_SETTINGS:
        support, support_y, _, ways = _feature_task(seed, ways, shots, d, queries=1, shuffle=shuffle)
        query = torch.randn(40, d, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64) * 2.0
        setting = f"{ways}-way {shots}-shot, labels {'in a random order' if shuffle else 'grouped by class'}"
        result = fn(support.clone(), support_y.clone(), ways)
        if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, Tensor) for t in result)):
            _fail(f"expected a pair of tensors (weight, bias), got {type(result).__name__}.", "return weight, bias.")
        weight, bias = (t.detach().double() for t in result)
        if tuple(weight.shape) == (d, ways) and tuple(bias.shape) == (ways,) and d != ways:
            _fail(f"weight has shape {(d, ways)}: it is transposed; a linear head's weight is [ways, D], a row per "
                  "class.", "stack the prototypes as rows: weight[k] = 2 * c_k.")
        if tuple(weight.shape) != (ways, d) or tuple(bias.shape) != (ways,):
            _fail(f"expected weight {(ways, d)} and bias {(ways,)}, got {tuple(weight.shape)} and "
                  f"{tuple(bias.shape)} ({setting}).", "one row of weight and one bias per class.")
        want_w, want_b = (t[0] for t in prototype_head(support[None], support_y[None], ways))
        reference = prototype_logits(support[None], support_y[None], query[None], ways)[0]
        if _up_to_row_constant(query @ weight.T + bias, reference):
            exact = exact and torch.allclose(weight, want_w, rtol=1e-5, atol=1e-6) and torch.allclose(
                bias, want_b, rtol=1e-5, atol=1e-6)
            continue
        _diagnose_prototype_head(weight, bias, support, support_y, ways, shots, want_w, want_b, setting)
    if exact:
        print("Correct: W = 2c, b = -||c||^2; the logits differ from ProtoNet's by ||x||^2 per query, "
              "which softmax ignores.")
    else:
        print("Correct: your head's logits differ from ProtoNet's by one number per query (with W = 2c + v, "
              "b = -||c||^2 + beta: ||x||^2 + v.x + beta), which softmax ignores: the same probabilities.")


def _diagnose_prototype_head(weight, bias, support, support_y, ways, shots, want_w, want_b, setting) -> None:
    """Name the slip of a head that is not ProtoNet's; weights and biases are compared up to a part
    shared by all classes (which softmax ignores)."""
    centred = lambda t: t - t.mean(0, keepdim=True)  # noqa: E731
    like = lambda a, b: torch.allclose(centred(a), centred(b), atol=1e-6)  # noqa: E731
    c = want_w / 2
    d = support.shape[1]
    if like(weight, c) and like(bias, -0.5 * c.pow(2).sum(-1)):
        _fail("your head gives half of ProtoNet's logits (W = c, b = -||c||^2 / 2): the same ranking, but a "
              "softmax twice as flat, so the loss and the inner loop see different logits.",
              "expand -||x - c||^2 = 2 c.x - ||c||^2 - ||x||^2: W = 2c, b = -||c||^2.")
    sums = torch.stack([support[support_y == k].sum(0) for k in range(ways)])
    weight_wrong = {
        "the weight is c, the identity gives 2c (the cross term of ||x - c||^2 is -2 c.x)": c,
        "the weight has the wrong sign: -||x - c||^2 gives +2 c.x": -want_w,
        "the weight uses class *sums*, not means: divide by the number of shots": 2 * sums,
        "the prototypes are taken by position, not by label: support_y is not always grouped by class; "
        "average support[support_y == k]": 2 * support.reshape(ways, shots, d).mean(1),
        "the prototypes are taken by position, not by label: support_y is not always in the order 0, 1, ..., "
        "ways - 1; average support[support_y == k]": 2 * support.reshape(shots, ways, d).mean(0),
    }
    if not like(weight, want_w):
        for diagnosis, value in weight_wrong.items():
            if like(weight, value):
                _fail(f"your weight is not 2c ({setting}): {diagnosis}.",
                      "c_k = support[support_y == k].mean(0); weight = 2 * c.")
        _fail(f"your weight differs from 2c (c_k: the mean support feature of class k; {setting}).",
              "c = torch.stack([support[support_y == k].mean(0) for k in range(ways)]); weight = 2 * c.")
    bias_wrong = {
        "the bias has the wrong sign: it is -||c||^2": c.pow(2).sum(-1),
        "the bias is -||c||, not squared": -c.norm(dim=-1),
        "the bias is missing (zero): without -||c||^2 a class with a long prototype wins every query":
            torch.zeros_like(bias),
        "the bias is -||c||^2 / 2: that goes with W = c, not W = 2c": -0.5 * c.pow(2).sum(-1),
    }
    for diagnosis, value in bias_wrong.items():
        if like(bias, value):
            _fail(f"your weight is right but {diagnosis}.", "bias = -(c ** 2).sum(-1).")
    _fail(f"your weight is right, your bias differs from -||c||^2 ({setting}).",
          "bias = -(c ** 2).sum(-1), one per class.")


# --- in-context learning -------------------------------------------------------------------------
__all__ += ["check_context"]


def check_context(fn: Callable) -> None:
    """Check ``fn(support_z [M, D], support_y [M], query_z [Q, D], ways) -> (tokens, mask)``.

    Right means (``mtl.models.in_context``): ``tokens [M + Q, D + ways]``, the support tokens first,
    each its features joined with its one-hot label, then the query tokens with an empty (zero)
    label; ``mask [M + Q, M + Q]`` bool, True where a token may **not** attend: every token attends
    to the support and to no query token.
    """
    from mtl.models.in_context import context_mask, context_tokens

    g = torch.Generator().manual_seed(11)
    ways, shots, queries, d = 3, 2, 2, 4
    support_y = torch.tensor([2, 0, 1, 2, 1, 0])
    support_z, query_z = torch.randn(ways * shots, d, generator=g), torch.randn(ways * queries, d, generator=g)
    m, q = len(support_y), len(query_z)
    result = fn(support_z.clone(), support_y.clone(), query_z.clone(), ways)
    if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, Tensor) for t in result)):
        _fail(f"expected a pair of tensors (tokens, mask), got {type(result).__name__}.", "return tokens, mask.")
    tokens, mask = result[0].float(), result[1]
    one_hot = F.one_hot(support_y, ways).float()
    want = context_tokens(support_z[None], one_hot[None], query_z[None])[0]
    if tokens.shape == (m + q, d + 1):
        _fail("each token has one label column: the label is a number, not one-hot. A number puts class 2 "
              "'twice as far' as class 1 from class 0; labels are names, not quantities.",
              "F.one_hot(support_y, ways).float(): one column per class.")
    if tokens.shape != want.shape:
        _fail(f"expected tokens of shape {tuple(want.shape)} (M + Q tokens of D + ways numbers), got "
              f"{tuple(tokens.shape)}.", "torch.cat of [features, label part] per token, support then queries.")
    if torch.allclose(tokens[:q, :d], query_z) or not torch.allclose(tokens[:m, :d], support_z):
        _fail("the tokens are not the support examples in order followed by the queries: support and queries "
              "are mixed.", "tokens = torch.cat([support_tokens, query_tokens]), support first.")
    if not torch.allclose(tokens[m:, :d], query_z):
        _fail("the query tokens' features are not query_z, in order.", "the last Q tokens start with query_z.")
    labels, query_labels = tokens[:m, d:], tokens[m:, d:]
    if query_labels.abs().sum() > 0:
        _fail("the query tokens carry a label: the label part of a query must be empty (zeros). A label there "
              "leaks an answer into the input (or, if it is a guess, misleads the model).",
              "query tokens: torch.cat([query_z, torch.zeros(Q, ways)], 1).")
    if not torch.equal(labels, one_hot):
        if torch.allclose(labels.sum(-1), torch.ones(m)) and not torch.equal(labels, labels.round()):
            _fail("the support labels are not one-hot (a soft or mixed vector).", "F.one_hot(support_y, ways).float().")
        _fail("the support labels are not one-hot vectors of support_y.", "F.one_hot(support_y, ways).float().")
    if not (isinstance(mask, Tensor) and mask.dtype == torch.bool and mask.shape == (m + q, m + q)):
        _fail(f"expected a bool mask of shape {(m + q, m + q)}, got "
              f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}.",
              "torch.zeros(M + Q, M + Q, dtype=torch.bool), then set True where attention is blocked.")
    reference = context_mask(m, q)
    if torch.equal(mask, ~reference):
        _fail("your mask is inverted: in PyTorch's bool attention masks True means 'may not attend'.",
              "mask = ~your_mask.")
    if mask[:, :m].any():
        _fail("some tokens may not attend to the support: every token must see the whole labelled support set.",
              "leave mask[:, :M] False.")
    if not mask[:m, m:].all():
        _fail("support tokens attend to queries: support and queries are mixed in one softmax, so a query's image "
              "flows into the support tokens and from there into every other query's prediction.",
              "mask[:M, M:] = True.")
    off_diagonal = mask[m:, m:] | torch.eye(q, dtype=torch.bool)
    if not off_diagonal.all():
        _fail("queries attend to each other: one query's prediction would depend on which other queries are "
              "in the batch.", "mask[M:, M:] = True.")
    if not mask[m:, m:].diagonal().all():
        _fail("a query attends to itself: its own token is its most similar key, so attention starts by matching "
              "the query with itself instead of with the support; its features already reach its output "
              "through the residual connection.", "mask[:, M:] = True: no token attends to a query.")
    assert torch.equal(mask, reference)
    print(f"Correct: {m} support tokens (features + one-hot label), then {q} query tokens with an empty label; "
          "every token attends to the support only.")




# --- lessons 07-08 (transfer learning, meta-transfer learning) -----------------------------------
__all__ += ["check_nearest_centroid", "check_hardest_class"]


def check_nearest_centroid(fn: Callable) -> None:
    """Check ``fn(support [M, D], support_y [M], query [Q, D], ways) -> logits [Q, ways]``.

    Right means: L2-normalise every feature, average each class's normalised support features,
    logits = minus the squared Euclidean distance of each normalised query to each class mean
    (``mtl.algorithms.transfer.finetune.NearestCentroid`` on one task), up to one number per query
    (softmax and argmax ignore it: ``2 q.c - ||c||^2`` drops ``||q||^2 = 1`` and passes). Tried on
    three tasks (1 and more shots, labels grouped by class and in a random order).
    """
    exact = True
    for seed, ways, shots, d, shuffle in ((3, 4, 3, 6, False), (6, 5, 1, 4, True), (7, 3, 2, 8, True)):
        support, support_y, query, ways = _feature_task(seed, ways, shots, d, queries=10, shuffle=shuffle)
        got = fn(support.clone(), support_y.clone(), query.clone(), ways)
        if not isinstance(got, Tensor) or tuple(got.shape) != (len(query), ways):
            _fail(f"expected logits of shape {(len(query), ways)}, got {getattr(got, 'shape', type(got).__name__)}.",
                  "one row per query, one column per class: logits[q, c] = -||query_q - centroid_c||^2.")
        got = got.detach().double()
        normalise = torch.nn.functional.normalize

        def logits(s, q, power=2, sign=-1.0, reduce="mean", support_y=support_y, ways=ways):
            one_hot = F.one_hot(support_y, ways).to(s.dtype)
            centroids = one_hot.T @ s
            if reduce == "mean":
                centroids = centroids / one_hot.sum(0)[:, None]
            return sign * torch.cdist(q, centroids).pow(power)

        reference = logits(normalise(support, dim=-1), normalise(query, dim=-1))
        if _up_to_row_constant(got, reference):
            exact = exact and torch.allclose(got, reference, rtol=1e-5, atol=1e-6)
            continue
        candidates = {
            "the features are not L2-normalised (normalise support and query before the means)":
                logits(support, query),
            "only the support features are normalised; normalise the query features too":
                logits(normalise(support, dim=-1), query),
            "these are plus distances: the nearest class must get the *largest* logit (use minus)":
                -reference,
            "these are distances, not squared distances":
                logits(normalise(support, dim=-1), normalise(query, dim=-1), power=1),
            "the class centroids are sums, not means (divide by the number of shots)":
                logits(normalise(support, dim=-1), normalise(query, dim=-1), reduce="sum"),
        }
        for diagnosis, value in candidates.items():
            if _up_to_row_constant(got, value):
                _fail(f"your logits differ from nearest centroid's: {diagnosis}.",
                      "F.normalize(x, dim=-1); centroid_c = mean of class c's support rows; -torch.cdist(q, c) ** 2.")
        _fail(f"your logits differ from minus the squared distances to the class means of normalised features "
              f"({ways}-way {shots}-shot, labels {'in a random order' if shuffle else 'grouped by class'}).",
              "check the order: normalise, then average per class (support_y == c), then "
              "-cdist(query, centroids) ** 2.")
    if exact:
        print("Correct: normalised features, class means, minus squared distances (nearest centroid).")
    else:
        print("Correct: normalised features, class means; your logits differ from minus the squared distances by "
              "one number per query (for normalised queries 2 q.c - ||c||^2 drops ||q||^2 = 1), which softmax "
              "and argmax ignore.")


def _hard_task_batch(seed: int = 4, correct_per_class: Tensor | None = None):
    """3 tasks, 4 ways, 5 queries per class, with one clearly worst class per task (no ties):
    ``correct_per_class [3, 4]`` queries of each class answered right (distinct in each row)."""
    g = torch.Generator().manual_seed(seed)
    b, n, q = 3, 4, 5
    query_y = torch.arange(n).repeat_interleave(q).expand(b, -1).clone()       # [B, N*Q]
    if correct_per_class is None:
        correct_per_class = torch.tensor([[5, 4, 1, 3], [0, 5, 2, 4], [3, 2, 5, 4]])
    logits = torch.zeros(b, n * q, n)
    for t in range(b):
        for c in range(n):
            for i in range(q):
                right = i < correct_per_class[t, c]
                label = c if right else (c + 1 + int(torch.randint(0, n - 1, (1,), generator=g))) % n
                logits[t, c * q + i, label] = 1.0 + torch.rand(1, generator=g).item()
    classes = torch.stack([torch.randperm(60, generator=g)[:n] for _ in range(b)])  # dataset ids [B, N]
    return logits, query_y, classes, correct_per_class


def check_hardest_class(fn: Callable) -> None:
    """Check ``fn(query_logits [B, M, N], query_y [B, M], classes [B, N]) -> [B]``: each task's hardest class.

    Right means: the *dataset* class id (``classes[b, c]``) of the label ``c`` with the lowest query
    accuracy in task ``b`` (``mtl.algorithms.transfer.meta_transfer.hardest_classes``, tests without ties).
    Tried on two batches.
    """
    from mtl.algorithms.transfer.meta_transfer import hardest_classes

    for seed, correct in ((4, None), (9, torch.tensor([[2, 5, 3, 0], [4, 1, 5, 3], [5, 4, 2, 3]]))):
        logits, query_y, classes, correct = _hard_task_batch(seed, correct)
        got = fn(logits.clone(), query_y.clone(), classes.clone())
        want = hardest_classes(logits, query_y, classes)
        if not isinstance(got, Tensor) or tuple(got.shape) != (logits.shape[0],):
            _fail(f"expected one class id per task, shape {(logits.shape[0],)}; got "
                  f"{getattr(got, 'shape', type(got).__name__)}.", "return a tensor [B] of dataset class ids.")
        got = got.long().cpu()
        if torch.equal(got, want):
            continue
        worst_label = correct.argmin(1)
        best_label = correct.argmax(1)
        candidates = {
            "these are labels (0..N-1), not dataset class ids: look them up in classes[b]": worst_label,
            "this is the *easiest* class (highest accuracy): hard tasks re-sample the worst one":
                classes.gather(1, best_label[:, None]).squeeze(1),
            "this is the easiest class's label": best_label,
        }
        for diagnosis, value in candidates.items():
            if torch.equal(got, value):
                _fail(f"your classes {got.tolist()} should be {want.tolist()}: {diagnosis}.",
                      "accuracy per label = mean of (argmax == query_y) over that label's queries; argmin; "
                      "classes.gather.")
        _fail(f"your classes {got.tolist()} should be {want.tolist()}.",
              "per task: accuracy of each label c over the queries with query_y == c, then classes[b, argmin].")
    print("Correct: per task, the dataset class id of the label with the lowest query accuracy.")
