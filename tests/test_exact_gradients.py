"""Meta-gradients of models built from standard torch layers, against oracles mtl did not write.

For every layer of the list (batch norm 1d/2d/3d affine or not, with or without running
statistics, train and eval mode; group, layer and instance norm; torchvision's ResNet-18) the
first- and second-order meta-gradient of ``mtl.maml_loss`` under every strategy (``loop``,
``vmap`` and the default ``auto``) must equal, in float64 to 1e-10 relative:

- a plain per-task loop of ``functional_call`` + ``torch.autograd.grad`` written here, and
- ``higher`` (Grefenstette et al.), a peer library that differentiates through an optimizer.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import mtl
from mtl.core import inner
from mtl.models import Conv4
from oracles import higher_meta_gradient, per_task_loop, random_tasks, randomise_stats
from mtl.errors import ConfigError

WAYS, B, LR = 3, 3, 0.3
TOL = 1e-10


def _conv_net(norm, *, dim: int = 2, channels: int = 1, side: int = 8) -> nn.Module:
    conv, pool = {2: (nn.Conv2d, nn.MaxPool2d), 3: (nn.Conv3d, nn.MaxPool3d)}[dim]
    layers, c = [], channels
    for _ in range(2):
        layers += [conv(c, 4, 3, padding=1), norm(4), nn.ReLU(), pool(2)]
        c = 4
    flat = 4 * (side // 4) ** dim
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, WAYS))


def _mlp(norm) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 6), norm(6), nn.ReLU(), nn.Linear(6, WAYS))


def _resnet18(channels: int) -> nn.Module:
    torchvision = pytest.importorskip("torchvision")
    net = torchvision.models.resnet18(num_classes=WAYS)
    if channels == 1:
        net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return net


MODELS = {
    "bn2d": (lambda: _conv_net(lambda c: nn.BatchNorm2d(c, track_running_stats=False)), "train"),
    "bn2d-no-affine": (lambda: _conv_net(lambda c: nn.BatchNorm2d(c, affine=False,
                                                                  track_running_stats=False)), "train"),
    "bn2d-running-train": (lambda: _conv_net(nn.BatchNorm2d), "train"),
    "bn2d-running-eval": (lambda: _conv_net(nn.BatchNorm2d), "eval"),
    "bn1d": (lambda: _mlp(nn.BatchNorm1d), "train"),
    "bn1d-eval": (lambda: _mlp(nn.BatchNorm1d), "eval"),
    "bn3d": (lambda: _conv_net(nn.BatchNorm3d, dim=3, side=4), "train"),
    "groupnorm": (lambda: _conv_net(lambda c: nn.GroupNorm(2, c)), "train"),
    "layernorm": (lambda: _mlp(nn.LayerNorm), "train"),
    "instancenorm": (lambda: _conv_net(lambda c: nn.InstanceNorm2d(c, affine=True)), "train"),
    "instancenorm-running-eval": (lambda: _conv_net(
        lambda c: nn.InstanceNorm2d(c, affine=True, track_running_stats=True)), "eval"),
    "mtl-conv4": (lambda: Conv4(1, WAYS, hidden=4, image_size=16), "train"),
}


def _tasks(shape: tuple[int, ...], shots: int = 2, queries: int = 2, seed: int = 0):
    return random_tasks(shape, tasks=B, ways=WAYS, shots=shots, queries=queries, seed=seed)


def _input_shape(name: str) -> tuple[int, ...]:
    if name == "bn3d":
        return (1, 4, 4, 4)
    if name == "mtl-conv4":
        return (1, 16, 16)
    return (1, 8, 8)


def _build(name: str) -> nn.Module:
    factory, mode = MODELS[name]
    torch.manual_seed(0)
    model = randomise_stats(factory()).double()
    return model.train(mode == "train")


def _mtl(model, params, sx, sy, qx, qy, steps, first_order, strategy, lr=LR):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # running statistics not updated under vmap: said elsewhere
        loss = mtl.maml_loss(model, params, sx, sy, qx, qy, steps=steps, lr=lr,
                             first_order=first_order, strategy=strategy)
    return torch.autograd.grad(loss, list(params.values()))


def _rel(a, b) -> float:
    num = sum(((x - y) ** 2).sum() for x, y in zip(a, b)) ** 0.5
    den = sum((y ** 2).sum() for y in b) ** 0.5
    return float(num / den)


STRATEGIES = ("loop", "vmap", "auto")


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("first_order", [False, True], ids=["second", "first"])
@pytest.mark.parametrize("steps", [1, 3])
def test_every_strategy_matches_a_plain_loop_and_higher(name, first_order, steps):
    model = _build(name)
    params = dict(model.named_parameters())
    sx, sy, qx, qy = _tasks(_input_shape(name))
    reference = _per_task_loop(model, params, sx, sy, qx, qy, steps, first_order)
    peer = _higher(model, sx, sy, qx, qy, steps, first_order)
    assert _rel(peer, reference) <= TOL, "the two oracles disagree"
    for strategy in STRATEGIES:
        got = _mtl(model, params, sx, sy, qx, qy, steps, first_order, strategy)
        error = _rel(got, reference)
        assert error <= TOL, f"{strategy}: relative error {error:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
def test_torchvision_resnet18_with_a_new_head(channels):
    model = _build_resnet(channels)
    params = dict(model.named_parameters())
    sx, sy, qx, qy = _tasks((channels, 32, 32), shots=2, queries=2)
    for first_order in (False, True):
        reference = _per_task_loop(model, params, sx, sy, qx, qy, 2, first_order, lr=0.01)
        for strategy in STRATEGIES:
            got = _mtl(model, params, sx, sy, qx, qy, 2, first_order, strategy, lr=0.01)
            error = _rel(got, reference)
            assert error <= TOL, f"{strategy} (first order {first_order}): {error:.1e}"


def _build_resnet(channels: int) -> nn.Module:
    torch.manual_seed(0)
    return _resnet18(channels).double().train()


def test_vmap_reads_but_does_not_update_running_statistics_and_says_so():
    model = _build("bn2d-running-train")
    before = model[1].running_mean.clone()
    sx, sy, qx, qy = _tasks(_input_shape("bn2d-running-train"))
    with pytest.warns(UserWarning, match="does not update"):
        mtl.maml_loss(model, dict(model.named_parameters()), sx, sy, qx, qy, steps=1, lr=LR,
                      strategy="vmap")
    assert torch.equal(model[1].running_mean, before)
    mtl.maml_loss(model, dict(model.named_parameters()), sx, sy, qx, qy, steps=1, lr=LR,
                  strategy="loop")
    assert not torch.equal(model[1].running_mean, before), "the loop updates them, as torch does"
    assert inner.resolve_strategy("auto", model, torch.device("cuda")) == "loop"


def test_norm_layers_get_their_own_forward_back():
    model = _build("bn2d")
    sx, sy, qx, qy = _tasks(_input_shape("bn2d"))
    mtl.maml_loss(model, dict(model.named_parameters()), sx, sy, qx, qy, steps=1, lr=LR,
                  strategy="vmap")
    assert all("forward" not in m.__dict__ for m in model.modules())


def test_dropout_draws_independent_masks_per_task_under_vmap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Dropout(0.5), nn.ReLU(),
                          nn.Linear(16, WAYS)).double()
    sx, sy, qx, qy = _tasks((1, 8, 8))
    same = [t[:1].expand(B, *t.shape[1:]) for t in (sx, sy, qx, qy)]  # B copies of one task
    params = dict(model.named_parameters())
    losses, _ = inner.maml_outputs(model, params, *same, steps=1, lr=LR, strategy="vmap")
    assert len(set(losses.tolist())) == B, "every task must get its own dropout mask"
    model.eval()  # no randomness: vmap equals the plain loop exactly
    reference = _per_task_loop(model, params, sx, sy, qx, qy, 2, False)
    assert _rel(_mtl(model, params, sx, sy, qx, qy, 2, False, "vmap"), reference) <= TOL


def test_a_layer_that_writes_a_buffer_in_place_gets_a_clear_vmap_error():
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x):
            self.calls += 1
            return x

    model = nn.Sequential(nn.Flatten(), nn.Linear(64, WAYS), Counter()).double()
    sx, sy, qx, qy = _tasks((1, 8, 8))
    with pytest.raises(ConfigError, match=r"(?s)Counter.*strategy='loop'"):
        mtl.maml_loss(model, dict(model.named_parameters()), sx, sy, qx, qy, steps=1, lr=LR,
                      strategy="vmap")


class _StandardConv(nn.Module):
    """A Conv4-like network of standard layers with the ``features``/``head`` split ANIL needs."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(*list(_conv_net(nn.BatchNorm2d))[:-1])
        self.head = nn.Linear(16, WAYS)

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("name", ["maml", "fomaml", "anil", "metasgd", "reptile", "protonet",
                                  "protomaml"])
def test_every_algorithm_gives_the_same_meta_gradient_under_vmap_and_the_loop(name):
    from mtl.algorithms import ALGORITHMS
    from mtl.data.episodes import TaskBatch

    batch = TaskBatch(*_tasks((1, 8, 8)))
    grads = {}
    for strategy in ("loop", "vmap"):
        torch.manual_seed(0)
        model = _StandardConv().double().eval()  # eval: running statistics read, identical
        inner = {} if name == "protonet" else dict(inner_steps=2, inner_lr=LR)  # ProtoNet: no inner loop
        algo = ALGORITHMS[name](model, strategy=strategy, **inner)
        algo.meta_gradient(batch)
        grads[strategy] = [p.grad for p in algo.parameters() if p.grad is not None]
    assert grads["loop"], "no meta-gradient at all"
    assert _rel(grads["vmap"], grads["loop"]) <= TOL


def _per_task_loop(model, params, sx, sy, qx, qy, steps, first_order, lr=LR):
    """The oracle: one task at a time, plain autograd, written without mtl."""
    return per_task_loop(model, params, sx, sy, qx, qy, steps, first_order, lr)[1]


def _higher(model, sx, sy, qx, qy, steps, first_order):
    return higher_meta_gradient(model, sx, sy, qx, qy, steps, first_order, LR)
