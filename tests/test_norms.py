"""The torch defect ``mtl.core.norms`` works around, reduced to a few lines, and the workaround itself.

``test_torch_defect_is_still_there`` is the reproduction written up in
``docs/torch-batchnorm-vmap.md``. It *passes while torch is wrong*; when a torch release computes
the batched second derivative right, it fails with a message saying the workaround in
``mtl/core/norms.py`` can be retired (and this test deleted with it).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from mtl.core import norms


def _meta_gradient(norm, *, batched: bool) -> torch.Tensor:
    """d/dA of the loss after one inner step of x -> norm(x @ A, w), 3 tasks, float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 4, generator=g, dtype=torch.float64)
    params = {"a": torch.randn(4, 4, generator=g, dtype=torch.float64, requires_grad=True),
              "w": torch.randn(4, generator=g, dtype=torch.float64, requires_grad=True)}

    def loss(p, task_x):
        return (norm(task_x @ p["a"], p["w"]) ** 3).sum()

    def after_one_step(p, task_x, functional):
        if functional:
            step = grad(loss)(p, task_x)
        else:
            step = dict(zip(p, torch.autograd.grad(loss(p, task_x), list(p.values()),
                                                   create_graph=True)))
        return loss({k: p[k] - 0.1 * step[k] for k in p}, task_x)

    if batched:
        total = vmap(lambda p, t: after_one_step(p, t, True), in_dims=(None, 0))(params, x).sum()
    else:
        total = sum(after_one_step(params, t, False) for t in x)
    return torch.autograd.grad(total, params["a"])[0]


def _torch_batch_norm(h, w):
    return F.batch_norm(h, None, None, w, None, training=True)


def _mtl_batch_norm(h, w):
    return norms.batch_norm(h, None, None, w, None, training=True)


def _relative_error(norm) -> float:
    looped, batched = _meta_gradient(norm, batched=False), _meta_gradient(norm, batched=True)
    return float((batched - looped).norm() / looped.norm())


def test_torch_defect_is_still_there():
    error = _relative_error(_torch_batch_norm)
    if error < 1e-10:
        pytest.fail(f"torch {torch.__version__} now gets the second derivative of affine batch norm "
                    "under vmap right: retire the workaround in mtl/core/norms.py (exact_norms) and "
                    "this test, and update docs/torch-batchnorm-vmap.md")
    assert error > 1e-3


def test_the_workaround_is_exact():
    assert _relative_error(_mtl_batch_norm) < 1e-12


@pytest.mark.parametrize("training", [True, False])
def test_same_numbers_as_torch_on_plain_tensors(training):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 4, 4, generator=g)
    mean, var = torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5
    w, b = torch.randn(3, generator=g), torch.randn(3, generator=g)
    expected = F.batch_norm(x, mean.clone(), var.clone(), w, b, training=training)
    # the transformed path, taken under a trivial vmap
    got = vmap(lambda t: norms.batch_norm(t, mean, var, w, b, training=training))(x[None])[0]
    torch.testing.assert_close(got, expected)
    inst = vmap(lambda t: norms.instance_norm(t, None, None, w, b, use_input_stats=True))(x[None])[0]
    torch.testing.assert_close(inst, F.instance_norm(x, None, None, w, b, True))
    ln = vmap(lambda t: norms.layer_norm(t, (4, 4), None, None))(x[None])[0]
    torch.testing.assert_close(ln, F.layer_norm(x, (4, 4)))
