"""Correctness of mtl.adapt / mtl.maml_loss: closed forms, finite differences, strategy agreement."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import mtl
from mtl.core import inner
from mtl.errors import ConfigError, InnerLoopError, TaskBatchError
from mtl.models import BatchNorm, Conv4

D, N_S, N_Q, B = 3, 6, 8, 4


def _regression_tasks(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.randn(B, N_S, D, generator=g), torch.randn(B, N_Q, D, generator=g)
    w_true = torch.randn(B, D, 1, generator=g)
    return sx, sx @ w_true, qx, qx @ w_true


def _closed_form(w: torch.Tensor, sx, sy, qx, qy, steps: int, lr: float, first_order: bool):
    """Mean query MSE after ``steps`` GD steps, and its gradient, for a linear model (by hand).

    L(w) = |Xw - y|^2 / n  ->  grad = A w - b with A = 2 X^T X / n, b = 2 X^T y / n; one step is
    w <- M w + lr b with M = I - lr A, so d w_k / d w = M^k (and the identity at first order).
    """
    total_loss, total_grad = 0.0, torch.zeros_like(w)
    for t in range(B):
        a_s, b_s = 2 * sx[t].T @ sx[t] / N_S, 2 * sx[t].T @ sy[t] / N_S
        a_q, b_q = 2 * qx[t].T @ qx[t] / N_Q, 2 * qx[t].T @ qy[t] / N_Q
        m = torch.eye(D, dtype=w.dtype) - lr * a_s
        wk = w.clone()
        for _ in range(steps):
            wk = m @ wk + lr * b_s
        total_loss += ((qx[t] @ wk - qy[t]) ** 2).mean()
        jac = torch.eye(D, dtype=w.dtype) if first_order else torch.linalg.matrix_power(m, steps)
        total_grad += jac.T @ (a_q @ wk - b_q)
    return total_loss / B, total_grad / B


@pytest.mark.parametrize("steps", [1, 4])
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_hypergradient_matches_closed_form(steps, first_order, strategy):
    sx, sy, qx, qy = (t.double() for t in _regression_tasks())
    model = nn.Linear(D, 1, bias=False).double()
    w = torch.randn(1, D, dtype=torch.float64, requires_grad=True)
    loss = mtl.maml_loss(model, {"weight": w}, sx, sy, qx, qy, steps=steps, lr=0.1,
                         loss_fn=F.mse_loss, first_order=first_order, strategy=strategy)
    (g,) = torch.autograd.grad(loss, [w])
    want_loss, want_grad = _closed_form(w.detach().T, sx, sy, qx, qy, steps, 0.1, first_order)
    torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, want_grad.T, rtol=1e-10, atol=1e-12)


def test_second_order_differs_with_curvature_equals_without():
    sx, sy, qx, qy = (t.double() for t in _regression_tasks(1))
    model = nn.Linear(D, 1, bias=False).double()
    w = torch.randn(1, D, dtype=torch.float64, requires_grad=True)

    def meta_grad(loss_fn, first_order):
        loss = mtl.maml_loss(model, {"weight": w}, sx, sy, qx, qy, steps=2, lr=0.1,
                             loss_fn=loss_fn, first_order=first_order, strategy="loop")
        return torch.autograd.grad(loss, [w])[0]

    # Squared error: the inner loss has curvature, so the Hessian terms matter.
    assert (meta_grad(F.mse_loss, False) - meta_grad(F.mse_loss, True)).abs().max() > 1e-3
    # A loss linear in the parameters: zero Hessian, the two coincide.
    linear = lambda out, y: (out * y).mean()  # noqa: E731
    torch.testing.assert_close(meta_grad(linear, False), meta_grad(linear, True), rtol=0, atol=1e-14)


def _image_tasks(batch=4, ways=3, shots=2, queries=2, side=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    sx = torch.randn(batch, ways * shots, 1, side, side, generator=g, dtype=dtype)
    qx = torch.randn(batch, ways * queries, 1, side, side, generator=g, dtype=dtype)
    sy = torch.arange(ways).repeat_interleave(shots).expand(batch, -1)
    qy = torch.arange(ways).repeat_interleave(queries).expand(batch, -1)
    return sx, sy, qx, qy


def _small_conv(ways=3, dtype=torch.float64):
    torch.manual_seed(0)
    return Conv4(1, ways, hidden=4, image_size=16).to(dtype)


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_and_loop_agree_with_batch_norm(first_order):
    model = _small_conv()
    params = dict(model.named_parameters())
    tasks = _image_tasks(batch=3)
    results = {}
    for strategy in ("loop", "vmap", "auto"):
        loss = mtl.maml_loss(model, params, *tasks, steps=2, lr=0.3, first_order=first_order,
                             strategy=strategy)
        results[strategy] = (loss, torch.autograd.grad(loss, list(params.values())))
    ref_loss, ref_grads = results["loop"]
    for key, (loss, grads) in results.items():
        torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12, msg=str(key))
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11, msg=str(key))


def test_maml_loss_matches_a_hand_written_second_order_loop():
    """Independent reference: per-task autograd.grad(create_graph=True), as in MAML's paper code."""
    model = _small_conv()
    params = dict(model.named_parameters())
    sx, sy, qx, qy = _image_tasks(batch=3)
    total = 0.0
    for t in range(3):
        fast = dict(params)
        for _ in range(2):
            loss = F.cross_entropy(functional_call(model, fast, (sx[t],)), sy[t])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {n: p - 0.3 * g for (n, p), g in zip(fast.items(), grads)}
        total = total + F.cross_entropy(functional_call(model, fast, (qx[t],)), qy[t])
    want = torch.autograd.grad(total / 3, list(params.values()))
    loss = mtl.maml_loss(model, params, sx, sy, qx, qy, steps=2, lr=0.3, strategy="vmap")
    for g, w in zip(torch.autograd.grad(loss, list(params.values())), want):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def _smooth_conv(ways=3):
    """A small conv net with batch norm and *smooth* activations: with ReLU the adapted weights
    jump wherever an inner gradient crosses a kink, and finite differences measure the jumps."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), BatchNorm(4), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), BatchNorm(4), nn.Tanh(), nn.AvgPool2d(4),
        nn.Flatten(), nn.Linear(4 * 4, ways)).double()


@pytest.mark.parametrize("first_order,should_match", [(False, True), (True, False)])
def test_second_order_meta_gradient_matches_finite_differences(first_order, should_match):
    model = _smooth_conv()
    params = dict(model.named_parameters())
    tasks = _image_tasks(batch=2)
    settings = dict(steps=2, lr=0.5, strategy="vmap")
    loss = mtl.maml_loss(model, params, *tasks, first_order=first_order, **settings)
    grads = torch.autograd.grad(loss, list(params.values()))
    g = torch.Generator().manual_seed(1)
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
    eps = 1e-5
    with torch.no_grad():
        plus = mtl.maml_loss(model, {n: p + eps * direction[n] for n, p in params.items()}, *tasks,
                             **settings)
        minus = mtl.maml_loss(model, {n: p - eps * direction[n] for n, p in params.items()},
                              *tasks, **settings)
    numeric = (plus - minus) / (2 * eps)
    analytic = sum((gr * direction[n]).sum() for gr, n in zip(grads, params))
    close = bool(torch.isclose(analytic, numeric, rtol=1e-6, atol=1e-9))
    assert close == should_match, (analytic.item(), numeric.item())


def test_adapt_is_differentiable_and_first_order_is_identity():
    model = nn.Linear(D, 1, bias=False).double()
    w = torch.randn(1, D, dtype=torch.float64, requires_grad=True)
    sx, sy, _, _ = (t.double() for t in _regression_tasks())
    adapted = mtl.adapt(model, {"weight": w}, sx[0], sy[0], steps=3, lr=0.1, loss_fn=F.mse_loss)
    assert adapted["weight"].grad_fn is not None
    fo = mtl.adapt(model, {"weight": w}, sx[0], sy[0], steps=3, lr=0.1, loss_fn=F.mse_loss,
                   first_order=True)
    torch.testing.assert_close(fo["weight"], adapted["weight"])
    (jac,) = torch.autograd.grad(fo["weight"].sum(), [w])
    torch.testing.assert_close(jac, torch.ones_like(w))
    same = mtl.adapt(model, {"weight": w}, sx[0], sy[0], steps=0, lr=0.1, loss_fn=F.mse_loss)
    assert same["weight"] is w


def test_auto_is_decided_by_the_device_and_the_model_alone():
    model = _small_conv()
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert inner.resolve_strategy("auto", model.eval(), cpu) == "loop"
    assert inner.resolve_strategy("auto", model.eval(), cuda) == "vmap"
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    assert inner.resolve_strategy("auto", plain, cuda) == "vmap"
    # running statistics are updated per forward only by the loop, as in plain PyTorch
    tracking = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)).train()
    assert inner.resolve_strategy("auto", tracking, cuda) == "loop"
    assert inner.resolve_strategy("auto", tracking.eval(), cuda) == "vmap"
    assert inner.resolve_strategy("vmap", tracking.train(), cpu) == "vmap"
    assert inner.STRATEGIES == ("auto", "vmap", "loop")


@pytest.mark.parametrize("strategy", ["auto", "loop", "vmap"])
def test_the_loss_is_differentiable_twice_and_the_outputs_carry_the_graph(strategy):
    """A gradient penalty on the meta-gradient: d/dw |d loss/dw|^2 against finite differences."""
    sx, sy, qx, qy = (t.double() for t in _regression_tasks())
    model = nn.Linear(D, 1, bias=False).double()
    w = torch.randn(1, D, dtype=torch.float64, requires_grad=True)

    def penalty(weight):
        loss = mtl.maml_loss(model, {"weight": weight}, sx, sy, qx, qy, steps=2, lr=0.1,
                             loss_fn=F.mse_loss, strategy=strategy)
        (g,) = torch.autograd.grad(loss, [weight], create_graph=True)
        return (g ** 2).sum()

    (hyper,) = torch.autograd.grad(penalty(w), [w])
    eps, numeric = 1e-6, torch.zeros_like(w)
    for i in range(D):
        step = torch.zeros_like(w)
        step[0, i] = eps
        numeric[0, i] = (penalty(w + step) - penalty(w - step)) / (2 * eps)
    torch.testing.assert_close(hyper, numeric, rtol=1e-6, atol=1e-9)
    _, outputs = inner.maml_outputs(model, {"weight": w}, sx, sy, qx, qy, steps=2, lr=0.1,
                                    loss_fn=F.mse_loss, strategy=strategy)
    (through_outputs,) = torch.autograd.grad(outputs.sum(), [w])
    assert torch.isfinite(through_outputs).all() and through_outputs.abs().sum() > 0


# ----------------------------------------------------------------------------- bad input

def test_unknown_strategy():
    model = _small_conv()
    tasks = _image_tasks(batch=2)
    for name in ("fast", "shared", "loop+task_backward"):
        with pytest.raises(ConfigError, match=re.escape(f"unknown strategy '{name}'; use one of auto, vmap, loop")):
            mtl.maml_loss(model, dict(model.named_parameters()), *tasks, steps=1, lr=0.1,
                          strategy=name)


@pytest.mark.parametrize("case", ["tasks", "support", "query", "image", "labels", "no_batch"])
def test_shape_and_label_mismatches_are_clear_errors(case):
    model = _small_conv()
    sx, sy, qx, qy = _image_tasks(batch=2)
    if case == "tasks":
        qx, qy = qx[:1], qy[:1]
    elif case == "support":
        sy = sy[:, :-1]
    elif case == "query":
        qx = qx[:, :-1]
    elif case == "image":
        qx = qx[..., :8, :8]
    elif case == "labels":
        qy = qy + 1  # a query class that is not in the support set
    elif case == "no_batch":
        sx, sy, qx, qy = sx[0, :, 0], sy[0], qx[0, :, 0], qy[0]
    with pytest.raises(TaskBatchError):
        mtl.maml_loss(model, dict(model.named_parameters()), sx, sy, qx, qy, steps=1, lr=0.1,
                      strategy="loop")


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_diverging_inner_loop_names_the_step_and_suggests_a_lower_lr(strategy):
    sx, sy, qx, qy = _regression_tasks()
    model = nn.Linear(D, 1, bias=False)
    w = torch.ones(1, D, requires_grad=True)
    with pytest.raises(InnerLoopError, match=r"inner step [2-5] of 5.*lower the inner learning rate"):
        mtl.maml_loss(model, {"weight": w}, sx, 100 * sy, qx, qy, steps=5, lr=1e12,
                      loss_fn=F.mse_loss, strategy=strategy)
    with pytest.raises(InnerLoopError, match="inner step 1 of 2"):
        mtl.adapt(model, {"weight": w}, sx[0] * float("nan"), sy[0], steps=2, lr=0.1,
                  loss_fn=F.mse_loss)


def _conv_tasks(b=2, n_s=3, n_q=3):
    g = torch.Generator().manual_seed(0)
    return (torch.rand(b, n_s, 1, 16, 16, generator=g), torch.arange(n_s).remainder(3).repeat(b, 1),
            torch.rand(b, n_q, 1, 16, 16, generator=g), torch.arange(n_q).remainder(3).repeat(b, 1))


@pytest.mark.parametrize("case, match", [
    ("zero tasks", "B is 0"), ("zero queries", "n is 0"), ("uint8 images", "x.float"),
    ("float labels", "cross-entropy needs class ids"), ("label beyond head", "larger than the model's head"),
    ("negative lr", "lr must be"), ("nan lr", "lr must be"), ("negative steps", "steps must be"),
    ("float steps", "steps must be"), ("int32 labels", r"torch.long \(int64\): pass support_y.long\(\)"),
    ("float64 images", r"support_x has dtype torch.float64 but the model's parameters are torch.float32"),
    ("float16 images", r"pass support_x.to\(torch.float32\)"),
])
def test_maml_loss_refuses_bad_inputs_with_a_clear_error(case, match):
    model = Conv4(1, 3, hidden=4, image_size=16)
    params = dict(model.named_parameters())
    sx, sy, qx, qy = _conv_tasks()
    kwargs = dict(steps=1, lr=0.1)
    if case == "zero tasks":
        sx, sy, qx, qy = (t[:0] for t in (sx, sy, qx, qy))
    elif case == "zero queries":
        qx, qy = qx[:, :0], qy[:, :0]
    elif case == "uint8 images":
        sx, qx = (sx * 255).to(torch.uint8), (qx * 255).to(torch.uint8)
    elif case == "float labels":
        sy, qy = sy.float(), qy.float()
    elif case == "label beyond head":
        sy, qy = sy + 3, qy + 3
    elif case == "negative lr":
        kwargs["lr"] = -0.1
    elif case == "nan lr":
        kwargs["lr"] = float("nan")
    elif case == "negative steps":
        kwargs["steps"] = -1
    elif case == "float steps":
        kwargs["steps"] = 1.5
    elif case == "int32 labels":
        sy, qy = sy.int(), qy.int()
    elif case == "float64 images":
        sx, qx = sx.double(), qx.double()
    elif case == "float16 images":
        sx, qx = sx.half(), qx.half()
    with pytest.raises(mtl.errors.MTLError, match=match):
        mtl.maml_loss(model, params, sx, sy, qx, qy, strategy="loop", **kwargs)


def test_adapt_refuses_bad_inputs_and_catches_a_nan_last_update():
    model = Conv4(1, 3, hidden=4, image_size=16)
    params = dict(model.named_parameters())
    sx, sy, _, _ = _conv_tasks()
    with pytest.raises(TaskBatchError, match="3 examples but y has 2"):
        mtl.adapt(model, params, sx[0], sy[0, :2], steps=1, lr=0.1)
    with pytest.raises(TaskBatchError, match="negative label"):
        mtl.adapt(model, params, sx[0], sy[0] - 1, steps=1, lr=0.1)
    with pytest.raises(ConfigError, match="lr must be"):
        mtl.adapt(model, params, sx[0], sy[0], steps=1, lr=float("nan"))
    # the only inner loss is finite; the one update overflows float32 (the last step's check)
    with pytest.raises(InnerLoopError, match="adapted parameters are NaN/Inf"):
        mtl.adapt(model, params, sx[0], sy[0], steps=1, lr=1e300)


def test_a_model_and_data_on_different_devices_are_refused():
    model = Conv4(1, 3, hidden=4, image_size=16)
    sx, sy, qx, qy = (t.to("meta") for t in _conv_tasks())
    with pytest.raises(TaskBatchError, match="different devices"):
        mtl.maml_loss(model, dict(model.named_parameters()), sx, sy, qx, qy, steps=1, lr=0.1)
