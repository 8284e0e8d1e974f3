"""Lesson 04's diagnosis of first-order MAML, against oracles written here: the per-task loop of
``oracles.py`` for both meta-gradients, and the closed-form Hessian of softmax cross-entropy for
the head's curvature (float64)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mtl.course.diagnostics import first_order_agreement, head_curvature, meta_gradients
from mtl.data import TaskBatch
from mtl.errors import MTLError
from oracles import per_task_loop, random_tasks

WAYS = 3


class BodyHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Linear(4, 5), nn.Tanh())
        self.head = nn.Linear(5, WAYS)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return BodyHead().double()


@pytest.fixture
def batch():
    return TaskBatch(*random_tasks((4,), tasks=3, ways=WAYS, shots=2, queries=3, seed=1))


def _cosine(a, b):
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("steps", [1, 2])
def test_meta_gradients_match_a_per_task_loop(model, batch, steps):
    params = dict(model.named_parameters())
    exact, first = meta_gradients(model, batch, steps=steps, lr=0.5)
    for found, first_order in ((exact, False), (first, True)):
        _, expected = per_task_loop(model, params, *batch, steps, first_order, 0.5)
        for name, e in zip(params, expected):
            torch.testing.assert_close(found[name], e, rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in model.parameters())


def test_agreement_is_the_cosine_of_the_two_meta_gradients(model, batch):
    exact, first = meta_gradients(model, batch, steps=1, lr=0.5)
    found = first_order_agreement(model, batch, steps=1, lr=0.5)
    head = ["head.weight", "head.bias"]
    body = [n for n in exact if n not in head]
    assert found["all"] == pytest.approx(_cosine(first.values(), exact.values()), abs=1e-12)
    assert found["head"] == pytest.approx(_cosine([first[n] for n in head], [exact[n] for n in head]), abs=1e-12)
    assert found["body"] == pytest.approx(_cosine([first[n] for n in body], [exact[n] for n in body]), abs=1e-12)
    assert found["length"] == pytest.approx(
        float(torch.cat([g.flatten() for g in first.values()]).norm()
              / torch.cat([g.flatten() for g in exact.values()]).norm()), rel=1e-12)
    assert found["all"] < 0.999  # a step of 0.5 is not small here: the two directions differ


def test_agreement_tends_to_one_as_the_inner_step_shrinks(model, batch):
    found = first_order_agreement(model, batch, steps=1, lr=1e-5)
    assert min(found["all"], found["body"], found["head"], found["length"]) > 1 - 1e-3


def test_head_curvature_is_the_closed_form_hessian_of_cross_entropy(model, batch):
    x, y = batch.support_x[0], batch.support_y[0]
    z = torch.cat([model.features(x), torch.ones(len(x), 1, dtype=x.dtype)], 1).detach()  # features and bias
    p = F.softmax(model(x), -1).detach()
    # d^2 CE / d(W_c, b_c) d(W_c', b_c') = mean_i (diag(p_i) - p_i p_i^T)[c, c'] z_i z_i^T
    h = sum(torch.kron(torch.diag(p_i) - torch.outer(p_i, p_i), torch.outer(z_i, z_i)) for p_i, z_i in zip(p, z))
    expected = torch.linalg.eigvalsh(h / len(x))[-1]
    assert head_curvature(model, x, y) == pytest.approx(float(expected), rel=1e-10)
    assert all(p.grad is None for p in model.parameters())


def test_head_curvature_leaves_batch_norm_statistics_alone():
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5)))
    net.add_module("head", nn.Linear(5, WAYS))
    net = net.double()
    before = net.features[1].running_mean.clone()
    head_curvature(net, torch.randn(6, 4, dtype=torch.float64), torch.arange(WAYS).repeat(2))
    torch.testing.assert_close(net.features[1].running_mean, before)


def test_a_missing_head_prefix_names_the_fix(model, batch):
    with pytest.raises(MTLError, match="head="):
        first_order_agreement(model, batch, steps=1, lr=0.1, head="classifier")
    with pytest.raises(MTLError, match="head="):
        head_curvature(model, batch.support_x[0], batch.support_y[0], head="classifier")
