"""Models: shapes, no hidden state, batch norm on the current batch (train and eval alike)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from mtl.models import MLP, BatchNorm, Conv4


@pytest.mark.parametrize("channels,hidden,side,flat", [(1, 64, 28, 64), (3, 32, 84, 800)])
def test_conv4_shapes_and_head_size(channels, hidden, side, flat):
    model = Conv4(channels, 5, hidden=hidden, image_size=side)
    assert model.head.in_features == flat
    assert model(torch.rand(2, channels, side, side)).shape == (2, 5)


def test_no_buffers_and_batch_statistics_in_eval_mode_too():
    model = Conv4(1, 5, hidden=8, image_size=28)
    assert list(model.named_buffers()) == []
    x = torch.rand(6, 1, 28, 28)
    train_out = model.train()(x)
    eval_out = model.eval()(x)
    torch.testing.assert_close(train_out, eval_out)
    # Transductive: one image's output depends on the other images of the batch.
    assert not torch.allclose(model(x[:3])[0], eval_out[0])


def test_batch_norm_equals_torch_batch_norm_without_running_stats():
    ours, theirs = BatchNorm(4), nn.BatchNorm2d(4, track_running_stats=False)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(4)), ours.bias.copy_(torch.randn(4))
        theirs.weight.copy_(ours.weight), theirs.bias.copy_(ours.bias)
    x = torch.randn(5, 4, 3, 3)
    torch.testing.assert_close(ours(x), theirs(x))
    assert set(dict(ours.named_parameters())) == set(dict(theirs.named_parameters()))


def test_batch_norm_second_derivative_under_vmap():
    """The reason BatchNorm exists: the derivative of an inner gradient, batched by vmap, must
    equal the per-task value (torch's fused affine batch norm gets this wrong under vmap)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), BatchNorm(4), nn.Linear(4, 2)).double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    params = dict(net.named_parameters())

    def inner_grad_norm(p: dict, task_x: torch.Tensor) -> torch.Tensor:
        g = grad(lambda p_: functional_call(net, p_, (task_x,)).pow(2).sum())(p)
        return sum((v ** 2).sum() for v in g.values())

    batched = torch.autograd.grad(vmap(inner_grad_norm, in_dims=(None, 0))(params, x).sum(),
                                  list(params.values()))
    looped = torch.autograd.grad(sum(inner_grad_norm(params, t) for t in x), list(params.values()))
    for b, w in zip(batched, looped):
        torch.testing.assert_close(b, w, rtol=1e-10, atol=1e-12)


def test_mlp_is_1_40_40_1():
    model = MLP()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]
    assert model(torch.rand(7, 1)).shape == (7, 1)


def test_resnet12_is_reexported_lazily():
    from mtl import models

    try:
        from mtl.models.resnet import ResNet12
    except ImportError:
        pytest.skip("mtl.models.resnet not written yet")
    assert models.ResNet12 is ResNet12
