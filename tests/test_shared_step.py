"""strategy="shared": inner step 0 of all tasks as one merged batch, exact to the per-task loop.

Every meta-gradient here is float64 and compared, to 1e-10 relative, with a plain per-task loop of
``functional_call`` + ``torch.autograd.grad`` written in this file and with ``higher``.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtl
from mtl.core import auto, inner, shared_step
import mtl.errors
from mtl.errors import ConfigError
from mtl.models import MLP, Conv4
from oracles import higher_meta_gradient, per_task_loop, random_tasks, randomise_stats

WAYS, B, LR, TOL = 3, 3, 0.3, 1e-10


def _standard(norm=lambda c: nn.BatchNorm2d(c, track_running_stats=False)) -> nn.Module:
    """Conv4-like, of standard torch layers only."""
    layers, c = [], 1
    for _ in range(2):
        layers += [nn.Conv2d(c, 4, 3, padding=1), norm(4), nn.ReLU(), nn.MaxPool2d(2)]
        c = 4
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(16, WAYS))


MODELS = {
    "mtl-conv4": (lambda: Conv4(1, WAYS, hidden=4, image_size=16), (1, 16, 16), True),
    "standard-bn2d": (_standard, (1, 8, 8), True),
    "standard-bn2d-no-affine": (lambda: _standard(lambda c: nn.BatchNorm2d(
        c, affine=False, track_running_stats=False)), (1, 8, 8), True),
    "standard-bn2d-running-eval": (lambda: _standard(nn.BatchNorm2d), (1, 8, 8), False),
    "bn1d-mlp": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 6), nn.BatchNorm1d(
        6, track_running_stats=False), nn.ReLU(), nn.Linear(6, WAYS)), (1, 8, 8), True),
}


def _build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    factory, shape, train = MODELS[name]
    torch.manual_seed(0)
    return randomise_stats(factory()).double().train(train), shape


def _tasks(shape, shots=2, queries=3, seed=0):
    return random_tasks(shape, tasks=B, ways=WAYS, shots=shots, queries=queries, seed=seed)


def _rel(a, b) -> float:
    num = sum(((x - y) ** 2).sum() for x, y in zip(a, b)) ** 0.5
    den = sum((y ** 2).sum() for y in b) ** 0.5
    return float(num / den)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 3])
def test_shared_first_step_matches_the_per_task_loop_and_higher(name, first_order, steps):
    model, shape = _build(name)
    params = dict(model.named_parameters())
    sx, sy, qx, qy = _tasks(shape)
    want_loss, reference = _per_task_loop(model, params, sx, sy, qx, qy, steps, first_order)
    assert _rel(_higher(model, sx, sy, qx, qy, steps, first_order), reference) <= TOL
    for strategy, chunk in [("shared", None), ("shared+channels_last", None), ("shared", 2),
                            ("loop+channels_last", None), ("loop+task_backward", None),
                            ("shared+task_backward", None),
                            ("shared+channels_last+task_backward", None)]:
        loss = mtl.maml_loss(model, params, sx, sy, qx, qy, steps=steps, lr=LR,
                             first_order=first_order, strategy=strategy, chunk_size=chunk)
        torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-12)
        error = _rel(torch.autograd.grad(loss, list(params.values())), reference)
        assert error <= TOL, f"{strategy} (chunk {chunk}): relative error {error:.2e}"


def test_the_shared_step_is_not_the_same_as_the_loop_when_a_rule_is_wrong(monkeypatch):
    """The comparison above can fail: break one per-layer rule and the meta-gradient moves."""
    model, shape = _build("mtl-conv4")
    params = dict(model.named_parameters())
    sx, sy, qx, qy = _tasks(shape)
    _, reference = _per_task_loop(model, params, sx, sy, qx, qy, 1, False)
    real = shared_step._per_task_grads

    def off(*args):
        grads = real(*args)
        return {k: g * 1.001 if k.endswith("0.weight") else g for k, g in grads.items()}

    monkeypatch.setattr(shared_step, "_per_task_grads", off)
    loss = mtl.maml_loss(model, params, sx, sy, qx, qy, steps=1, lr=LR, strategy="shared")
    assert _rel(torch.autograd.grad(loss, list(params.values())), reference) > 1e-6


def test_per_task_outputs_and_inner_losses_equal_the_loops():
    model, shape = _build("standard-bn2d")
    params = dict(model.named_parameters())
    tasks = _tasks(shape, seed=1)
    got = inner.maml_outputs(model, params, *tasks, steps=2, lr=LR, strategy="shared")
    want = inner.maml_outputs(model, params, *tasks, steps=2, lr=LR, strategy="loop")
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_meta_sgd_rates_anil_head_and_regression():
    # Meta-SGD: a learned rate per parameter; its gradient too must match the loop's.
    model, shape = _build("mtl-conv4")
    params = dict(model.named_parameters())
    rates = {n: torch.full_like(p, LR).requires_grad_() for n, p in params.items()}
    tasks = _tasks(shape, seed=2)
    grads = {}
    for strategy in ("loop", "shared"):
        loss = mtl.maml_loss(model, params, *tasks, steps=2, lr=rates, strategy=strategy)
        grads[strategy] = torch.autograd.grad(loss, list(params.values()) + list(rates.values()))
    assert _rel(grads["shared"], grads["loop"]) <= TOL
    # ANIL-like: only the head adapted, the body fixed (its parameters not in params).
    head = {n: p for n, p in params.items() if n.startswith("head.")}
    for strategy in ("loop", "shared"):
        loss = mtl.maml_loss(model, head, *tasks, steps=2, lr=LR, strategy=strategy)
        grads[strategy] = torch.autograd.grad(loss, list(params.values()), allow_unused=True,
                                              materialize_grads=True)
    assert _rel(grads["shared"], grads["loop"]) <= TOL
    # Regression (mean-squared error, linear layers only).
    torch.manual_seed(0)
    mlp = MLP().double()
    g = torch.Generator().manual_seed(0)
    sx, qx = (torch.randn(B, n, 1, generator=g, dtype=torch.float64) for n in (5, 7))
    sy, qy = torch.sin(sx), torch.sin(qx)
    mlp_params = dict(mlp.named_parameters())
    for strategy in ("loop", "shared"):
        loss = mtl.maml_loss(mlp, mlp_params, sx, sy, qx, qy, steps=3, lr=0.01,
                             loss_fn=F.mse_loss, strategy=strategy)
        grads[strategy] = torch.autograd.grad(loss, list(mlp_params.values()))
    assert _rel(grads["shared"], grads["loop"]) <= TOL


def test_evaluation_without_gradients():
    model, shape = _build("mtl-conv4")
    params = dict(model.named_parameters())
    tasks = _tasks(shape, seed=4)
    with torch.no_grad():
        got = mtl.maml_loss(model, params, *tasks, steps=3, lr=LR, strategy="shared")
        want = mtl.maml_loss(model, params, *tasks, steps=3, lr=LR, strategy="loop")
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert all("forward" not in m.__dict__ for m in model.modules())  # forwards given back


@pytest.mark.parametrize("layer, match", [
    (lambda: nn.BatchNorm2d(4), "running statistics"),
    (lambda: nn.GroupNorm(2, 4), "GroupNorm .* no per-task gradient rule"),
])
def test_models_it_cannot_run_are_refused_with_the_fix(layer, match):
    torch.manual_seed(0)
    model = _standard(lambda c: layer()).double()
    tasks = _tasks((1, 8, 8))
    with pytest.raises(ConfigError, match=rf"(?s){match}.*strategy='loop'"):
        mtl.maml_loss(model, dict(model.named_parameters()), *tasks, steps=1, lr=LR,
                      strategy="shared")
    assert "shared" not in auto._candidates(model, torch.device("cpu"), 1)  # auto skips it


def test_running_statistics_in_training_mode_are_left_untouched_by_the_refusal():
    torch.manual_seed(0)
    model = _standard(nn.BatchNorm2d).double()
    before = model[1].running_mean.clone()
    with pytest.raises(ConfigError):
        mtl.maml_loss(model, dict(model.named_parameters()), *_tasks((1, 8, 8)), steps=1, lr=LR,
                      strategy="shared")
    assert torch.equal(model[1].running_mean, before)


def test_zero_steps_is_the_loop():
    model, shape = _build("mtl-conv4")
    params = dict(model.named_parameters())
    tasks = _tasks(shape)
    got = mtl.maml_loss(model, params, *tasks, steps=0, lr=LR, strategy="shared")
    want = mtl.maml_loss(model, params, *tasks, steps=0, lr=LR, strategy="loop")
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_auto_considers_the_shared_step_and_records_every_timing(monkeypatch):
    model, shape = _build("standard-bn2d")
    params = dict(model.named_parameters())
    tasks = _tasks(shape, seed=5)
    real = auto._time_once

    def shared_fastest(run, strategy, *args, **kwargs):
        seconds, grads = real(run, strategy, *args, **kwargs)
        return (0.0 if strategy == "shared+task_backward" else 1.0 + seconds), grads

    monkeypatch.setattr(auto, "_time_once", shared_fastest)
    monkeypatch.setattr(auto, "AUTO_DECISIONS", {})
    monkeypatch.setattr(auto, "AUTO_TIMINGS", {})
    loss = mtl.maml_loss(model, params, *tasks, steps=2, lr=LR, strategy="auto")
    record = inner.last_auto_choice()
    assert record["chosen"] == "shared+task_backward" and record["rejected"] == {}
    assert set(record["timings_ms"]) == {"loop", "loop+task_backward", "loop+channels_last+task_backward",
                                         "shared+task_backward", "shared+channels_last+task_backward",
                                         "vmap"}
    assert "auto chose shared+task_backward" in inner.describe_auto_choice()
    want = mtl.maml_loss(model, params, *tasks, steps=2, lr=LR, strategy="loop")
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)


def _shared_fastest_and_1_percent_off(real):
    """A stand-in for ``auto._time_once`` under which the shared step is the fastest candidate and
    its meta-gradient 1.01 times the true one."""
    def timed(run, strategy, *args, **kwargs):
        seconds, grads = real(run, strategy, *args, **kwargs)
        if strategy == "shared+task_backward":
            return 0.0, [g * 1.01 for g in grads]
        return 1.0 + seconds, grads
    return timed


def test_auto_rejects_a_shared_step_whose_meta_gradient_disagrees(monkeypatch):
    model, shape = _build("standard-bn2d")
    params = dict(model.named_parameters())
    tasks = _tasks(shape, seed=6)
    monkeypatch.setattr(auto, "_time_once", _shared_fastest_and_1_percent_off(auto._time_once))
    monkeypatch.setattr(auto, "AUTO_DECISIONS", {})
    monkeypatch.setattr(auto, "AUTO_REJECTED", {})
    chosen = inner.resolve_strategy("auto", model, params, *tasks, steps=1, lr=LR,
                                    loss_fn=F.cross_entropy, first_order=False, chunk_size=None)
    assert chosen != "shared+task_backward"
    assert inner.last_auto_choice()["rejected"]["shared+task_backward"] == pytest.approx(0.01, rel=1e-6)


@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
def test_the_benchmarks_peers_compute_the_same_meta_gradient(first_order):
    """``python -m mtl bench`` compares speed only: its l2l-style, functional and higher peers
    must do the same work, so their .grad must equal mtl's meta-gradient."""
    from mtl.cli import bench

    model, shape = _build("standard-bn2d")
    params = dict(model.named_parameters())
    tasks = _tasks(shape, seed=7)
    loss = mtl.maml_loss(model, params, *tasks, steps=2, lr=LR, first_order=first_order,
                         strategy="loop")
    want = torch.autograd.grad(loss, list(params.values()))
    for peer in (bench._l2l_step, bench._functional_step, bench._higher_step):
        model.zero_grad(set_to_none=True)
        peer(model, tasks, LR, first_order, 2)()
        got = [p.grad for p in params.values()]
        assert _rel(got, want) <= TOL, peer.__name__
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("strategy", ["loop+task_backward", "shared+task_backward",
                                      "shared+channels_last+task_backward"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
def test_one_backward_per_task_weights_each_task_by_its_incoming_gradient(strategy, first_order):
    """The per-task gradients are kept separately: unequal task weights, learned rates."""
    model, shape = _build("standard-bn2d")
    params = dict(model.named_parameters())
    rates = {n: torch.full_like(p, LR).requires_grad_() for n, p in params.items()}
    tasks = _tasks(shape, seed=8)
    weights = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    leaves = list(params.values()) + list(rates.values())
    grads = {}
    for name in ("loop", strategy):
        losses, _ = inner.maml_outputs(model, params, *tasks, steps=2, lr=rates,
                                       first_order=first_order, strategy=name)
        grads[name] = torch.autograd.grad((losses * weights).sum(), leaves)
    assert _rel(grads[strategy], grads["loop"]) <= TOL


def test_one_backward_per_task_refuses_what_it_cannot_give():
    model, shape = _build("mtl-conv4")
    params = dict(model.named_parameters())
    tasks = _tasks(shape, seed=9)
    losses, outputs = inner.maml_outputs(model, params, *tasks, steps=1, lr=LR,
                                         strategy="loop+task_backward")
    with pytest.raises(mtl.errors.InnerLoopError, match="query outputs carry no graph"):
        (losses.mean() + outputs.sum()).backward()
    loss = mtl.maml_loss(model, params, *tasks, steps=1, lr=LR, strategy="loop+task_backward")
    with pytest.raises(mtl.errors.InnerLoopError, match="create_graph"):
        torch.autograd.grad(loss, list(params.values()), create_graph=True)
    with torch.no_grad():  # evaluation: nothing to differentiate, the plain loop runs
        got = mtl.maml_loss(model, params, *tasks, steps=1, lr=LR, strategy="loop+task_backward")
    torch.testing.assert_close(got, loss.detach(), rtol=1e-12, atol=1e-12)


def _per_task_loop(model, params, sx, sy, qx, qy, steps, first_order):
    return per_task_loop(model, params, sx, sy, qx, qy, steps, first_order, LR)


def _higher(model, sx, sy, qx, qy, steps, first_order):
    return higher_meta_gradient(model, sx, sy, qx, qy, steps, first_order, LR)


def test_auto_judges_a_disagreement_against_float64_when_the_float32_loop_is_inexact(monkeypatch):
    """A float32 candidate 1% from the float32 loop is kept where the loop is itself 2% from the
    float64 loop and the candidate only 1% (an ill-conditioned inner loop), rejected otherwise."""
    model, shape = _build("standard-bn2d")
    model = model.float()
    params = dict(model.named_parameters())
    tasks = [t.float() if t.is_floating_point() else t for t in _tasks(shape, seed=6)]
    real_reference = auto._float64_reference
    monkeypatch.setattr(auto, "_time_once", _shared_fastest_and_1_percent_off(auto._time_once))
    for loop_error, kept in [(0.02, True), (None, False)]:
        if loop_error is None:  # the true float64 reference: the float32 loop is exact to ~1e-6
            monkeypatch.setattr(auto, "_float64_reference", real_reference)
        else:  # a reference the float32 loop is 2% from, the candidate (1.01 x loop) ~1%
            monkeypatch.setattr(auto, "_float64_reference",
                                lambda *a, e=loop_error, **k: [g.double() * (1 + e) for g in
                                                               real_reference(*a, **k)])
        monkeypatch.setattr(auto, "AUTO_DECISIONS", {})
        monkeypatch.setattr(auto, "AUTO_REJECTED", {})
        chosen = inner.resolve_strategy("auto", model, params, *tasks, steps=1, lr=LR,
                                        loss_fn=F.cross_entropy, first_order=False, chunk_size=None)
        record = inner.last_auto_choice()
        checked = record["float64_checked"]["shared+task_backward"]
        assert checked["vs_loop"] == pytest.approx(0.01, rel=1e-3)
        if kept:
            assert chosen == "shared+task_backward" and record["rejected"] == {}
            assert checked["loop_vs_float64"] == pytest.approx(0.02 / 1.02, rel=1e-2)
            assert "kept" in inner.describe_auto_choice(record)
        else:
            assert chosen != "shared+task_backward" and "shared+task_backward" in record["rejected"]
            assert checked["loop_vs_float64"] < 1e-4


def test_the_float64_reference_is_the_loop_in_double_precision():
    model, shape = _build("standard-bn2d")
    model = model.float()
    params = dict(model.named_parameters())
    tasks = [t.float() if t.is_floating_point() else t for t in _tasks(shape, seed=2)]
    settings = dict(steps=2, lr=LR, loss_fn=F.cross_entropy, first_order=False, chunk_size=None)
    exact = auto._float64_reference(inner.maml_outputs, model, params, *tasks, **settings)
    losses, _ = inner.maml_outputs(model, params, *tasks, strategy="loop", **settings)
    loop32 = torch.autograd.grad(losses.mean(), list(params.values()))
    assert all(g.dtype == torch.float64 for g in exact)
    assert 0 < auto._relative_error(list(loop32), exact) < 1e-4
    assert next(model.parameters()).dtype == torch.float32  # the model itself is left as it was
