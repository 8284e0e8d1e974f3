"""Checkers for the lessons' "Your turn" cells: they say *what* is wrong, not only that it is.

Each ``check_*`` calls the student's function on small inputs, compares it with the reference
(the code ``mtl`` runs), prints one line when it is right and raises ``ExerciseError`` (an
``AssertionError``) with a diagnosis and a hint otherwise.

- lesson 01: ``check_inner_step(fn)``   one functional SGD step that keeps the graph
- lesson 02: ``check_ci95(fn)``         mean and 95% confidence half-width of accuracies
- lesson 03: ``check_task_meta_loss(fn)``  MAML's outer loss for one task, via ``mtl.adapt``
- lesson 04: ``check_reptile_update(fn)``  Reptile's outer update from adapted weights
- lesson 05: ``check_prototype_head(fn)``  class prototypes as a linear head (W = 2c, b = -||c||^2)
- lesson 06: ``check_nearest_centroid(fn)``  nearest centroid on normalised features
- lesson 07: ``check_hardest_class(fn)``  the hard-task meta-batch's class choice
"""
from __future__ import annotations

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


def check_inner_step(fn: Callable) -> None:
    """Check ``fn(model, params, x, y, lr, loss_fn) -> dict``: one SGD step, differentiable in ``params``.

    Right means: values ``params - lr * grad``, the input ``params`` untouched, and the result still
    connected to ``params`` with the second-order term (``create_graph=True``).
    """
    model, x, y = _tiny_regression()
    lr, loss_fn = 0.3, F.mse_loss
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
        _fail("your step's values differ from params - lr * grad(loss_fn(model(x), y)).",
              "compute the loss with torch.func.functional_call(model, params, (x,)) so that it uses `params`.")
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
    print("Correct: one differentiable SGD step (values, no in-place change, second-order graph).")


def check_ci95(fn: Callable) -> None:
    """Check ``fn(accuracies: Tensor [n]) -> (mean, half_width)`` with half_width = 1.96 std / sqrt(n)."""
    g = torch.Generator().manual_seed(1)
    for n in (10, 600):
        acc = (torch.rand(n, generator=g, dtype=torch.float64) * 0.4 + 0.5)
        result = fn(acc.clone())
        if not (isinstance(result, tuple) and len(result) == 2):
            _fail(f"expected a pair (mean, half_width), got {type(result).__name__}.", "return mean, half_width.")
        mean, half = (float(v) for v in result)
        std0, std1 = acc.std(correction=0).item(), acc.std(correction=1).item()
        want = 1.96 * std1 / n ** 0.5
        if abs(mean - acc.mean().item()) > 1e-9:
            _fail(f"mean is {mean:.4f}, expected {acc.mean().item():.4f} (n={n}).", "mean over episodes.")
        if abs(half - want) <= 1e-9 or abs(half - 1.96 * std0 / n ** 0.5) <= 1e-9:
            continue
        guesses = {
            "you used the variance instead of the standard deviation": 1.96 * std1 ** 2 / n ** 0.5,
            "you divided by n instead of sqrt(n)": 1.96 * std1 / n,
            "you forgot to divide by sqrt(n): that is the spread of episodes, not of their mean": 1.96 * std1,
            "you returned the standard error without the 1.96 factor": std1 / n ** 0.5,
            "1.96 is the 95% factor; 2.576 gives 99%": 2.576 * std1 / n ** 0.5,
        }
        for diagnosis, value in guesses.items():
            if abs(half - value) <= 1e-9:
                _fail(f"half-width {half:.5f}, expected {want:.5f} (n={n}): {diagnosis}.",
                      "half_width = 1.96 * accuracies.std() / sqrt(n).")
        _fail(f"half-width {half:.5f}, expected {want:.5f} (n={n}).", "half_width = 1.96 * accuracies.std() / sqrt(n).")
    print("Correct: mean +- 1.96 std / sqrt(n); with 600 episodes the interval is ~8x narrower than with 10.")


def check_task_meta_loss(fn: Callable) -> None:
    """Check ``fn(model, params, sx, sy, qx, qy, *, steps, lr) -> scalar``: query loss after adapting on support."""
    from mtl.core.inner import adapt

    model, sx, sy = _tiny_regression(0)
    _, qx, qy = _tiny_regression(1)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    kwargs = dict(steps=2, lr=0.1)
    got = fn(model, params, sx, sy, qx, qy, **kwargs)
    if not (isinstance(got, Tensor) and got.dim() == 0):
        _fail(f"expected a scalar tensor, got {getattr(got, 'shape', type(got).__name__)}.",
              "return the mean query loss, a 0-d tensor.")
    run = lambda p, x, y: F.mse_loss(torch.func.functional_call(model, p, (x,)), y)  # noqa: E731
    fast = adapt(model, params, sx, sy, loss_fn=F.mse_loss, **kwargs)
    want = run(fast, qx, qy)
    if not torch.allclose(got, want, atol=1e-6):
        candidates = {
            "it is the support loss after adaptation: evaluate the adapted weights on the query set":
                run(fast, sx, sy),
            "it is the query loss *before* adaptation: evaluate adapt(...)'s result, not params": run(params, qx, qy),
        }
        for diagnosis, value in candidates.items():
            if torch.allclose(got, value, atol=1e-6):
                _fail(f"loss {got.item():.5f}, expected {want.item():.5f}: {diagnosis}.",
                      "fast = mtl.adapt(model, params, sx, sy, steps=steps, lr=lr, loss_fn=F.mse_loss); "
                      "loss on (qx, qy) with fast.")
        _fail(f"loss {got.item():.5f}, expected {want.item():.5f}.",
              "adapt on the support set with mtl.adapt(..., loss_fn=F.mse_loss), then the query loss.")
    if not got.requires_grad:
        _fail("your loss is detached: nothing to back-propagate to the initialisation.",
              "do not detach or use no_grad.")
    g_got = torch.autograd.grad(got, list(params.values()))
    g_want = torch.autograd.grad(want, list(params.values()))
    if not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g_got, g_want)):
        _fail("the value is right but its gradient is not MAML's: the second-order term is missing.",
              "leave first_order=False in mtl.adapt.")
    print("Correct: adapt on the support set, score on the query set, differentiate through both.")


def check_reptile_update(fn: Callable) -> None:
    """Check ``fn(theta: dict, phis: list[dict], outer_lr) -> dict``: theta + outer_lr * mean(phi - theta)."""
    g = torch.Generator().manual_seed(2)
    theta = {"w": torch.randn(3, 2, generator=g), "b": torch.randn(2, generator=g)}
    phis = [{k: v + torch.randn(v.shape, generator=g) for k, v in theta.items()} for _ in range(4)]
    eps = 0.25
    before = {k: v.clone() for k, v in theta.items()}
    result = fn(theta, phis, eps)
    _check_mapping(result, theta, "your update")
    if not _same(theta, before, 0):
        _fail("your update changed `theta` in place.", "return new tensors; the caller decides what to keep.")
    mean = {k: torch.stack([p[k] for p in phis]).mean(0) for k in theta}
    want = {k: theta[k] + eps * (mean[k] - theta[k]) for k in theta}
    if _same(result, want, 1e-5):
        print("Correct: theta moves a fraction outer_lr of the way to the mean adapted weights.")
        return
    candidates = {
        "it moves away from the adapted weights (sign)": {k: theta[k] - eps * (mean[k] - theta[k]) for k in theta},
        "it sums over tasks instead of averaging":
            {k: theta[k] + eps * len(phis) * (mean[k] - theta[k]) for k in theta},
        "it ignores outer_lr (jumps all the way to mean(phi))": mean,
        "it uses only the last task": {k: theta[k] + eps * (phis[-1][k] - theta[k]) for k in theta},
    }
    for diagnosis, value in candidates.items():
        if _same(result, value, 1e-5):
            _fail(f"your update is not Reptile's: {diagnosis}.", "theta + outer_lr * (mean_tau phi_tau - theta).")
    _fail("your update differs from theta + outer_lr * (mean(phi) - theta).",
          "average phi over tasks, per parameter name, then take a step of size outer_lr toward it.")


# --- lesson 05 (metric-based and hybrid meta-learning) ----------------------------------------------
__all__ += ["check_prototype_head"]


def check_prototype_head(fn: Callable) -> None:
    """Check ``fn(support [M, D], support_y [M], ways) -> (weight [ways, D], bias [ways])``.

    Right means: the class prototypes ``c_k`` (mean support feature of class k) as a linear head,
    ``weight = 2 c``, ``bias = -||c||^2`` (``mtl.core.heads.prototype_head`` on one task), so that
    ``query @ weight.T + bias`` is ProtoNet's ``-||query - c||^2`` plus ``||query||^2``.
    """
    from mtl.core.heads import prototype_head, prototype_logits

    support, support_y, query, ways = _centroid_task(seed=5)
    result = fn(support.clone(), support_y.clone(), ways)
    if not (isinstance(result, tuple) and len(result) == 2 and all(isinstance(t, Tensor) for t in result)):
        _fail(f"expected a pair of tensors (weight, bias), got {type(result).__name__}.", "return weight, bias.")
    weight, bias = (t.double() for t in result)
    want_w, want_b = (t[0] for t in prototype_head(support[None], support_y[None], ways))
    d = support.shape[1]
    if tuple(weight.shape) == (d, ways) and tuple(bias.shape) == (ways,):
        _fail(f"weight has shape {(d, ways)}: it is transposed; a linear head's weight is [ways, D], a row per class.",
              "stack the prototypes as rows: weight[k] = 2 * c_k.")
    if tuple(weight.shape) != (ways, d) or tuple(bias.shape) != (ways,):
        _fail(f"expected weight {(ways, d)} and bias {(ways,)}, got {tuple(weight.shape)} and {tuple(bias.shape)}.",
              "one row of weight and one bias per class.")
    c = want_w / 2
    sums = torch.stack([support[support_y == k].sum(0) for k in range(ways)])
    if torch.allclose(weight, c) and torch.allclose(bias, -0.5 * c.pow(2).sum(-1)):
        _fail("your head gives half of ProtoNet's logits (W = c, b = -||c||^2 / 2): the same ranking, but a "
              "softmax twice as flat, so the loss and the inner loop see different logits.",
              "expand -||x - c||^2 = 2 c.x - ||c||^2 - ||x||^2: W = 2c, b = -||c||^2.")
    weight_wrong = {
        "the weight is c, the identity gives 2c (the cross term of ||x - c||^2 is -2 c.x)": c,
        "the weight has the wrong sign: -||x - c||^2 gives +2 c.x": -want_w,
        "the weight uses class *sums*, not means: divide by the number of shots": 2 * sums,
    }
    if not torch.allclose(weight, want_w, atol=1e-6):
        for diagnosis, value in weight_wrong.items():
            if torch.allclose(weight, value, atol=1e-6):
                _fail(f"your weight is not 2c: {diagnosis}.", "c_k = support[support_y == k].mean(0); weight = 2 * c.")
        _fail("your weight differs from 2c (c_k: the mean support feature of class k).",
              "c = torch.stack([support[support_y == k].mean(0) for k in range(ways)]); weight = 2 * c.")
    bias_wrong = {
        "the bias has the wrong sign: it is -||c||^2": c.pow(2).sum(-1),
        "the bias is -||c||, not squared": -c.norm(dim=-1),
        "the bias is missing (zero): without -||c||^2 a class with a long prototype wins every query":
            torch.zeros(ways, dtype=bias.dtype),
        "the bias is -||c||^2 / 2: that goes with W = c, not W = 2c": -0.5 * c.pow(2).sum(-1),
    }
    if not torch.allclose(bias, want_b, atol=1e-6):
        for diagnosis, value in bias_wrong.items():
            if torch.allclose(bias, value, atol=1e-6):
                _fail(f"your weight is right but {diagnosis}.", "bias = -(c ** 2).sum(-1).")
        _fail("your weight is right, your bias differs from -||c||^2.", "bias = -(c ** 2).sum(-1), one per class.")
    shift = query @ weight.T + bias - prototype_logits(support[None], support_y[None], query[None], ways)[0]
    assert torch.allclose(shift, query.pow(2).sum(-1, keepdim=True).expand(-1, ways), atol=1e-8)
    print("Correct: W = 2c, b = -||c||^2; the logits differ from ProtoNet's by ||x||^2 per query, "
          "which softmax ignores.")


# --- lessons 06-07 (transfer learning, meta-transfer learning) -----------------------------------
__all__ += ["check_nearest_centroid", "check_hardest_class"]


def _centroid_task(seed: int = 3):
    """Features of one 4-way 3-shot task: support ``[12, 6]``, labels ``[12]``, query ``[10, 6]``."""
    g = torch.Generator().manual_seed(seed)
    support = torch.randn(12, 6, generator=g, dtype=torch.float64) * torch.linspace(0.5, 3.0, 12)[:, None].double()
    support_y = torch.arange(4).repeat_interleave(3)
    query = torch.randn(10, 6, generator=g, dtype=torch.float64) * 2.0
    return support, support_y, query, 4


def check_nearest_centroid(fn: Callable) -> None:
    """Check ``fn(support [M, D], support_y [M], query [Q, D], ways) -> logits [Q, ways]``.

    Right means: L2-normalise every feature, average each class's normalised support features,
    logits = minus the squared Euclidean distance of each normalised query to each class mean
    (``mtl.algorithms.transfer.finetune.NearestCentroid`` on one task).
    """
    support, support_y, query, ways = _centroid_task()
    got = fn(support.clone(), support_y.clone(), query.clone(), ways)
    if not isinstance(got, Tensor) or tuple(got.shape) != (len(query), ways):
        _fail(f"expected logits of shape {(len(query), ways)}, got {getattr(got, 'shape', type(got).__name__)}.",
              "one row per query, one column per class: logits[q, c] = -||query_q - centroid_c||^2.")
    normalise = torch.nn.functional.normalize

    def logits(s, q, power=2, sign=-1.0, reduce="mean"):
        one_hot = F.one_hot(support_y, ways).to(s.dtype)
        centroids = one_hot.T @ s
        if reduce == "mean":
            centroids = centroids / one_hot.sum(0)[:, None]
        return sign * torch.cdist(q, centroids).pow(power)

    reference = logits(normalise(support, dim=-1), normalise(query, dim=-1))
    if torch.allclose(got.double(), reference, atol=1e-6):
        print("Correct: normalised features, class means, minus squared distances (nearest centroid).")
        return
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
        if torch.allclose(got.double(), value, atol=1e-6):
            _fail(f"your logits differ from nearest centroid's: {diagnosis}.",
                  "F.normalize(x, dim=-1); centroid_c = mean of class c's support rows; -torch.cdist(q, c) ** 2.")
    _fail("your logits differ from minus the squared distances to the class means of normalised features.",
          "check the order: normalise, then average per class (support_y == c), then -cdist(query, centroids) ** 2.")


def _hard_task_batch(seed: int = 4):
    """3 tasks, 4 ways, 5 queries per class, with one clearly worst class per task (no ties)."""
    g = torch.Generator().manual_seed(seed)
    b, n, q = 3, 4, 5
    query_y = torch.arange(n).repeat_interleave(q).expand(b, -1).clone()       # [B, N*Q]
    correct_per_class = torch.tensor([[5, 4, 1, 3], [0, 5, 2, 4], [3, 2, 5, 4]])  # distinct in each row
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
    """
    from mtl.algorithms.transfer.meta_transfer import hardest_classes

    logits, query_y, classes, correct = _hard_task_batch()
    got = fn(logits.clone(), query_y.clone(), classes.clone())
    want = hardest_classes(logits, query_y, classes)
    if not isinstance(got, Tensor) or tuple(got.shape) != (logits.shape[0],):
        _fail(f"expected one class id per task, shape {(logits.shape[0],)}; got "
              f"{getattr(got, 'shape', type(got).__name__)}.", "return a tensor [B] of dataset class ids.")
    got = got.long().cpu()
    if torch.equal(got, want):
        print("Correct: per task, the dataset class id of the label with the lowest query accuracy.")
        return
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
                  "accuracy per label = mean of (argmax == query_y) over that label's queries; argmin; classes.gather.")
    _fail(f"your classes {got.tolist()} should be {want.tolist()}.",
          "per task: accuracy of each label c over the queries with query_y == c, then classes[b, argmin].")
