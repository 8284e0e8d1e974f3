"""The algorithm wrappers: the registry contract, Reptile's scaling, ANIL's frozen body,
Meta-SGD's learned rates, ProtoNet's prototypes, Proto-MAML's prototype head."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from mtl.algorithms import ALGORITHMS, ANIL, FOMAML, MAML, MetaSGD, ProtoMAML, ProtoNet, Reptile
from mtl.data.episodes import TaskBatch
from mtl.models import MLP, Conv4


def _batch(batch=2, ways=3, shots=2, queries=2, side=16, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    return TaskBatch(
        torch.randn(batch, ways * shots, 1, side, side, generator=g, dtype=torch.float64),
        torch.arange(ways).repeat_interleave(shots).expand(batch, -1),
        torch.randn(batch, ways * queries, 1, side, side, generator=g, dtype=torch.float64),
        torch.arange(ways).repeat_interleave(queries).expand(batch, -1))


def _model(ways=3):
    torch.manual_seed(0)
    return Conv4(1, ways, hidden=4, image_size=16).double()


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_registry_names_and_constructor_contract():
    assert set(ALGORITHMS) >= {"maml", "fomaml", "reptile", "anil", "metasgd", "protonet", "protomaml"}
    batch = _batch()
    for name, cls in ALGORITHMS.items():
        if name not in {"maml", "fomaml", "reptile", "anil", "metasgd", "protonet", "protomaml"}:
            continue
        inner = {} if name == "protonet" else dict(inner_steps=1, inner_lr=0.1, first_order=False)
        algo = cls(_model(), strategy="loop", **inner)  # ProtoNet refuses inner-loop settings
        metrics = algo.meta_gradient(batch)
        assert set(metrics) == {"loss", "accuracy"}, name
        assert 0.0 <= metrics["accuracy"] <= 1.0 and metrics["loss"] > 0, name
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.parameters()), name
        before = _grads(algo)
        logits = algo.predict(batch, inner_steps=2)
        assert logits.shape == (2, 6, 3) and logits.grad_fn is None, name
        assert all(torch.equal(before[n], g) for n, g in _grads(algo).items()), name


def test_regression_reports_loss_only():
    g = torch.Generator().manual_seed(0)
    batch = TaskBatch(*(torch.randn(3, 5, 1, generator=g) for _ in range(4)))
    for name in ("maml", "reptile", "anil", "metasgd"):
        algo = ALGORITHMS[name](MLP(), inner_steps=1, inner_lr=0.01, loss_fn=F.mse_loss)
        assert set(algo.meta_gradient(batch)) == {"loss"}, name
        assert algo.predict(batch).shape == (3, 5, 1)


def test_fomaml_is_maml_first_order():
    batch = _batch()
    settings = dict(inner_steps=2, inner_lr=0.3, strategy="loop")
    fo = FOMAML(_model(), **settings)
    ref = MAML(_model(), first_order=True, **settings)
    so = MAML(_model(), **settings)
    for algo in (fo, ref, so):
        algo.meta_gradient(batch)
    for n, g in _grads(ref).items():
        torch.testing.assert_close(_grads(fo)[n], g)
    assert any((_grads(so)[n] - g).abs().max() > 1e-6 for n, g in _grads(ref).items())


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_reptile_one_step_is_sgd_on_the_mean_task_loss(strategy):
    """theta - mean(phi) with phi = theta - lr * grad L_i  equals  lr * grad mean_i L_i(theta)."""
    batch, lr = _batch(batch=3), 0.05
    algo = Reptile(_model(), inner_steps=1, inner_lr=lr, strategy=strategy)
    algo.meta_gradient(batch)
    model = _model()
    mean_loss = sum(F.cross_entropy(model(batch.support_x[t]), batch.support_y[t])
                    for t in range(3)) / 3
    mean_loss.backward()
    for (n, p), (_, q) in zip(algo.model.named_parameters(), model.named_parameters()):
        torch.testing.assert_close(p.grad, lr * q.grad, rtol=1e-9, atol=1e-12, msg=n)
    # More steps: no longer joint training (the pseudo-gradient picks up within-task terms).
    algo2 = Reptile(_model(), inner_steps=3, inner_lr=lr, strategy=strategy)
    algo2.meta_gradient(batch)
    assert any((p.grad - 3 * lr * q.grad).abs().max() > 1e-6
               for p, q in zip(algo2.model.parameters(), model.parameters()))


def test_anil_adapts_the_head_only_and_trains_the_body():
    batch, lr, steps = _batch(), 0.3, 2
    algo = ANIL(_model(), inner_steps=steps, inner_lr=lr, strategy="vmap")
    model = algo.model
    # Reference: body features per task, head adapted by hand, body untouched.
    body = {n: p for n, p in model.named_parameters() if not n.startswith("head.")}
    total, logits = 0.0, []
    for t in range(2):
        head = {"weight": model.head.weight, "bias": model.head.bias}
        fs, fq = model.features(batch.support_x[t]), model.features(batch.query_x[t])
        for _ in range(steps):
            loss = F.cross_entropy(functional_call(model.head, head, (fs,)), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(head.values()), create_graph=True)
            head = {n: p - lr * g for (n, p), g in zip(head.items(), grads)}
        out = functional_call(model.head, head, (fq,))
        logits.append(out)
        total = total + F.cross_entropy(out, batch.query_y[t])
    want = torch.autograd.grad(total / 2, list(model.parameters()))
    torch.testing.assert_close(algo.predict(batch), torch.stack(logits).detach())
    algo.meta_gradient(batch)
    for (n, p), w in zip(model.named_parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-9, atol=1e-12, msg=n)
    assert all(p.grad.abs().sum() > 0 for p in body.values())  # the body is meta-learned


def test_metasgd_learning_rates_receive_the_right_gradient():
    batch = _batch()
    algo = MetaSGD(_model(), inner_steps=2, inner_lr=0.2, strategy="vmap")
    algo.meta_gradient(batch)
    lrs = algo.learning_rates()
    assert all(lr.grad is not None and lr.grad.abs().sum() > 0 for lr in lrs.values())
    # Finite difference along the head's learning rates.
    name, eps = "head.weight", 1e-6
    direction = torch.randn_like(lrs[name])
    analytic = (lrs[name].grad * direction).sum()
    losses = []
    for sign in (1, -1):
        with torch.no_grad():
            lrs[name].add_(sign * eps * direction)
            algo2_metrics = algo._outputs(batch, 2, first_order=False)[0].mean()
            lrs[name].sub_(sign * eps * direction)
        losses.append(algo2_metrics)
    numeric = (losses[0] - losses[1]) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_prototype_logits_by_hand():
    from mtl.core.heads import prototype_logits

    support = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]]])  # classes 0, 0, 1
    support_y = torch.tensor([[0, 0, 1]])
    query = torch.tensor([[[1.0, 1.0]]])
    logits = prototype_logits(support, support_y, query, ways=2)
    # prototypes (1, 0) and (0, 4): squared distances 1 and 10
    torch.testing.assert_close(logits, torch.tensor([[[-1.0, -10.0]]]))
    algo = ProtoNet(_model(), inner_steps=0, inner_lr=0.0)
    assert algo.predict(_batch()).shape == (2, 6, 3)


def test_prototype_head_is_prototype_logits_plus_a_per_query_constant():
    from mtl.core.heads import linear_logits, prototype_head, prototype_logits

    g = torch.Generator().manual_seed(5)
    support, query = torch.randn(2, 6, 4, generator=g, dtype=torch.float64), torch.randn(2, 5, 4, generator=g,
                                                                                      dtype=torch.float64)
    support_y = torch.tensor([0, 1, 2, 0, 1, 2]).expand(2, -1)
    weight, bias = prototype_head(support, support_y, 3)
    assert weight.shape == (2, 3, 4) and bias.shape == (2, 3)
    shift = linear_logits(query, weight, bias) - prototype_logits(support, support_y, query, 3)
    torch.testing.assert_close(shift, query.pow(2).sum(-1, keepdim=True).expand(-1, -1, 3))


@pytest.mark.parametrize("first_order", [False, True])
def test_protomaml_without_inner_steps_is_protonet(first_order):
    """0 steps: the same softmax as ProtoNet, and the same meta-gradient for the body (through the
    prototypes that initialise the head)."""
    batch = _batch()
    proto, protomaml = ProtoNet(_model()), ProtoMAML(_model(), inner_steps=0, inner_lr=0.4, first_order=first_order)
    torch.testing.assert_close(protomaml.predict(batch).softmax(-1), proto.predict(batch).softmax(-1))
    proto.meta_gradient(batch)
    protomaml.meta_gradient(batch)
    for name, g in _grads(proto).items():
        torch.testing.assert_close(_grads(protomaml)[name], g, msg=name)
    assert protomaml.model.head.weight.grad is None  # the head starts from the prototypes, not from its weights


def test_protomaml_adapts_the_whole_network_from_the_prototype_head():
    batch, lr = _batch(batch=1), 0.3
    algo = ProtoMAML(_model(), inner_steps=1, inner_lr=lr)
    model = algo.model
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    c = torch.stack([model.features(sx)[sy == k].mean(0) for k in range(3)]).detach()
    head = {"head.weight": (2 * c).requires_grad_(), "head.bias": (-(c * c).sum(-1)).requires_grad_()}
    params = {**dict(model.named_parameters()), **head}  # the head: its own variables in the inner loop
    loss = F.cross_entropy(functional_call(model, params, (sx,)), sy)
    grads = torch.autograd.grad(loss, list(params.values()))
    fast = {n: p - lr * g for (n, p), g in zip(params.items(), grads)}
    torch.testing.assert_close(algo.predict(batch)[0], functional_call(model, fast, (qx,)).detach())
    second = _grads(algo) if algo.meta_gradient(batch) else None
    algo.zero_grad(set_to_none=True)
    algo.first_order = True
    algo.meta_gradient(batch)
    assert all(g.abs().sum() > 0 for g in second.values())
    assert any((_grads(algo)[n] - g).abs().max() > 1e-6 for n, g in second.items())  # second order counts


def test_reptile_adam_inner_loop_matches_torch_adam_per_task():
    """The paper's inner loop: Adam (beta1 = 0) on mini-batches; checked against torch.optim.Adam."""
    batch = _batch(batch=2, shots=4)
    algo = Reptile(_model(), inner_steps=5, inner_lr=1e-2, inner_optimizer="adam", inner_batch=5,
                   strategy="loop")
    torch.manual_seed(7)
    adapted, _ = algo._adapt(batch, 5)
    torch.manual_seed(7)
    from mtl.algorithms.reptile import _minibatch_order
    order = _minibatch_order(2, batch[0].shape[1], 5, 5, batch[0].device)
    for task in range(2):
        model = _model()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.0, 0.999), eps=1e-8)
        for t in range(5):
            idx = order[task, t]
            opt.zero_grad()
            F.cross_entropy(model(batch[0][task][idx]), batch[1][task][idx]).backward()
            opt.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(adapted[name][task], p.detach(), rtol=1e-7, atol=1e-8)
    assert order.shape == (2, 5, 5) and all(len(set(order[0, t].tolist())) == 5 for t in range(5))


def test_reptile_adam_under_vmap_equals_the_loop_and_presets_follow_the_paper():
    from mtl.engine.config import preset

    batch = _batch(batch=3, shots=4)
    outs = {}
    for strategy in ("loop", "vmap"):
        algo = Reptile(_model(), inner_steps=4, inner_lr=1e-2, inner_optimizer="adam",
                       inner_batch=6, strategy=strategy)
        torch.manual_seed(3)
        algo.meta_gradient(batch)
        outs[strategy] = [p.grad.clone() for p in algo.parameters()]
    for a, b in zip(outs["loop"], outs["vmap"]):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)
    config = preset("reptile-omniglot-5w1s").resolved()
    assert config.extra == {"inner_optimizer": "adam", "inner_batch": 25}
    assert (config.shots, config.test_shots, config.lr_schedule, config.meta_lr) == (15, 1, "linear", 1.0)
    assert config.test_inner_steps > config.inner_steps


def test_every_registered_learner_implements_the_contract():
    """The engine, evaluation, FewShotClassifier and the capstone's table call only these hooks."""
    from mtl.algorithms import Learner

    built_in = {name: cls for name, cls in ALGORITHMS.items() if cls.__module__.startswith("mtl.")}
    assert len(built_in) >= 14  # (other tests register classes of their own)
    for name, cls in built_in.items():
        assert issubclass(cls, Learner), name
        for hook in ("meta_gradient", "predict", "per_task_parameters"):
            assert getattr(cls, hook) is not getattr(Learner, hook), f"{name} does not define {hook}"


def test_per_task_parameters_follow_what_each_learner_adapts():
    from mtl.algorithms import ANIL, MAML, ProtoNet, Reptile

    model = _model()
    whole = sum(p.numel() for p in model.parameters())
    head = sum(p.numel() for p in model.head.parameters())
    assert MAML(model).per_task_parameters(3) == whole == Reptile(model).per_task_parameters(3)
    assert ANIL(model).per_task_parameters(3) == head < whole
    assert ProtoNet(model).per_task_parameters(3) == 0


def test_register_algorithm_refuses_a_class_outside_the_contract():
    import pytest

    from mtl.algorithms import register_algorithm
    from mtl.errors import ConfigError

    with pytest.raises(ConfigError, match="subclass of mtl.algorithms.Learner"):
        register_algorithm("plain", torch.nn.Linear)
