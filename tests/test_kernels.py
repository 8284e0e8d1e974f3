"""mtl.core.kernels: the faster CPU max-pool is torch's own, bit for bit, in value, first and second
derivative; the context takes it only where it applies."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mtl
from mtl.core import kernels
from oracles import per_task_loop, random_tasks

POOLS = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
         dict(kernel_size=2, ceil_mode=True), dict(kernel_size=2, dilation=2),
         dict(kernel_size=(2, 3), stride=(1, 2))]


@pytest.fixture(autouse=True)
def every_size(monkeypatch):
    """The fast path for the small tensors these tests use (by default only larger ones take it)."""
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 0)


def _derivatives(fn, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``fn(x)``, d/dx of a loss of it, and d/dx of a function of that gradient (double backward)."""
    x = x.clone().requires_grad_()
    y = fn(x)
    (g,) = torch.autograd.grad((y.sin() * torch.linspace(0.5, 2, y.numel()).view_as(y).to(y)).sum(),
                               x, create_graph=True)
    (h,) = torch.autograd.grad((g * x.cos()).sum(), x)
    return y.detach(), g.detach(), h


@pytest.mark.parametrize("settings", POOLS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("relu", [False, True], ids=["random", "after-relu"])
def test_max_pool_is_torchs_in_value_and_both_derivatives(settings, relu):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 9, 10, generator=g, dtype=torch.float64)
    x = x.relu() if relu else x  # after a ReLU most windows tie at zero
    ours = _derivatives(lambda t: kernels.max_pool2d(t, **settings), x)
    torchs = _derivatives(lambda t: F.max_pool2d(t, **settings), x)
    for a, b in zip(ours, torchs):
        assert torch.equal(a, b)
    out, index = kernels.max_pool2d(x, **settings, return_indices=True)
    expected, expected_index = F.max_pool2d(x, **settings, return_indices=True)
    assert torch.equal(out, expected) and torch.equal(index, expected_index)


def _counted(monkeypatch) -> dict[str, int]:
    calls = {"max_pool2d": 0}
    for name in calls:
        original = getattr(kernels, name)

        def counting(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(kernels, name, counting)
    return calls


def _conv_net(norm) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), norm(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).double()


def test_the_context_takes_the_fast_path_only_where_it_applies(monkeypatch):
    calls = _counted(monkeypatch)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    net = _conv_net(lambda c: nn.BatchNorm2d(c, track_running_stats=False))
    expected = net(x)
    with kernels.cpu_kernels(x, net):
        torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
    assert calls == {"max_pool2d": 1}
    # switched off, a channels-last input, and inside a torch.func transform: torch's own
    with kernels.enabled(False), kernels.cpu_kernels(x, net):
        net(x)
    with kernels.cpu_kernels(x, net):
        net[3](torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last))
        with kernels.enabled(False):  # switched off inside an open block
            net(x)
    assert calls == {"max_pool2d": 1}
    with kernels.cpu_kernels(x, net):
        batched = torch.func.vmap(lambda t: net(t))(x[None])
    torch.testing.assert_close(batched[0], expected, rtol=1e-12, atol=1e-12)
    assert calls == {"max_pool2d": 1}


@pytest.mark.parametrize("strategy", ["loop", "shared", "loop+task_backward", "shared+task_backward"])
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
def test_the_strategies_use_them_and_keep_the_meta_gradient(monkeypatch, strategy, first_order):
    net = _conv_net(lambda c: nn.BatchNorm2d(c, track_running_stats=False))
    sx, sy, qx, qy = random_tasks((1, 8, 8), tasks=3, ways=3, shots=2, queries=3, seed=0)
    params = dict(net.named_parameters())
    expected_loss, expected = per_task_loop(net, params, sx, sy, qx, qy, 2, first_order, 0.3)
    calls = _counted(monkeypatch)
    loss = mtl.maml_loss(net, params, sx, sy, qx, qy, steps=2, lr=0.3, first_order=first_order,
                         strategy=strategy)
    got = torch.autograd.grad(loss, list(params.values()))
    torch.testing.assert_close(loss, expected_loss, rtol=1e-10, atol=1e-12)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # one pool per forward: the loop 3 tasks x (2 inner steps + query), the shared step one merged
    # step 0, then 3 x (1 inner step + query)
    assert calls["max_pool2d"] == (9 if strategy.startswith("loop") else 7)


def test_the_block_replaces_only_max_pool_forwards_and_restores_them(monkeypatch):
    calls = _counted(monkeypatch)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    net = _conv_net(lambda c: nn.BatchNorm2d(c, track_running_stats=False))
    with kernels.cpu_kernels(x, net):
        assert [name for name, m in net.named_modules() if "forward" in m.__dict__] == ["3"]
        with kernels.cpu_kernels(x, net):  # nested: the outer block's replacement stays
            net(x)
        net(x)
    assert calls == {"max_pool2d": 2}
    assert not any("forward" in m.__dict__ for m in net.modules())
    # a pool whose forward its owner replaced keeps it
    own = lambda t: t[..., ::2, ::2]  # noqa: E731
    net[3].forward = own
    with kernels.cpu_kernels(x, net):
        net(x)
    assert net[3].forward is own and calls == {"max_pool2d": 2}


def test_an_error_in_the_block_restores_the_pools_and_a_forward_set_inside_is_kept():
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    net = _conv_net(lambda c: nn.BatchNorm2d(c, track_running_stats=False))
    with pytest.raises(RuntimeError, match="inside"):
        with kernels.cpu_kernels(x, net):
            raise RuntimeError("inside")
    assert not any("forward" in m.__dict__ for m in net.modules())
    own = lambda t: t[..., ::2, ::2]  # noqa: E731
    with kernels.cpu_kernels(x, net):
        net[3].forward = own
    assert net[3].forward is own


def test_small_inputs_pool_in_torchs_own_kernel(monkeypatch):
    calls = _counted(monkeypatch)
    monkeypatch.setattr(kernels, "MIN_ELEMENTS", 2 ** 17)
    net = _conv_net(lambda c: nn.BatchNorm2d(c, track_running_stats=False))
    for side, expected in ((8, 0), (184, 1)):  # 2 x 4 x 8 x 8 elements, then 2 x 4 x 184 x 184
        x = torch.randn(2, 1, side, side, dtype=torch.float64)
        with kernels.cpu_kernels(x, net):
            net[:4](x)
        assert calls == {"max_pool2d": expected}


def test_a_model_without_a_max_pool_is_untouched():
    mlp = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x = torch.randn(5, 3, dtype=torch.float64)
    with kernels.cpu_kernels(x, mlp):
        assert not any("forward" in m.__dict__ for m in mlp.modules())
        mlp(x)
