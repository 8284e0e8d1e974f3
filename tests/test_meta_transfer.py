"""Meta-transfer learning: Scaling & Shifting on a frozen network, hard-task meta-batch, bad input."""
import pytest
import torch
from torch import nn

from mtl.algorithms.transfer.meta_transfer import (HardTaskError, MetaTransfer, ScalingShiftingError,
                                          hard_task_classes, hardest_classes, tied_hardest)
from mtl.data import EpisodeSampler, FewShotDataset, TaskBatch
from mtl.errors import CheckpointError, MTLError
from mtl.models import MLP
from mtl.models.resnet import ResNet12


def _class_coded_dataset(num_classes=12, per_class=6, size=8):
    """Every pixel of every image of class c is c: an image tells its class."""
    images = torch.arange(num_classes, dtype=torch.uint8).view(-1, 1, 1, 1, 1)
    images = images.expand(num_classes, per_class, 1, size, size).clone()
    images[:, :, :, 0, 0] += torch.randint(0, 2, (num_classes, per_class, 1), dtype=torch.uint8) * 100
    return FewShotDataset(images, [str(c) for c in range(num_classes)], "synthetic", "train")


def _template_dataset(num_classes=12, per_class=6, size=8, seed=0):
    """Each class: a random binary template plus a little noise (easy to tell apart)."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, 2, (num_classes, 1, 1, size, size), generator=g) * 200.0
    noise = torch.randn(num_classes, per_class, 1, size, size, generator=g) * 15
    images = (templates + noise).clamp(0, 255).to(torch.uint8)
    return FewShotDataset(images, [str(c) for c in range(num_classes)], "synthetic", "train")


def _backbone(seed=0):
    torch.manual_seed(seed)
    model = ResNet12(1, 10, hidden=2)
    model.train()
    model(torch.rand(16, 1, 8, 8))  # non-trivial running statistics
    return model.eval()


def _algo(**kwargs):
    kwargs.setdefault("ways", 5)
    kwargs.setdefault("inner_steps", 3)
    kwargs.setdefault("inner_lr", 0.5)
    return MetaTransfer(_backbone(), **kwargs)


def test_scaling_shifting_at_init_is_the_pretrained_network():
    model = _backbone()
    algo = MetaTransfer(model, ways=5, inner_steps=1, inner_lr=0.1)
    x = torch.rand(2, 7, 1, 8, 8)
    torch.testing.assert_close(algo.features(x), model.features(x.flatten(0, 1)).view(2, 7, -1))
    assert len(algo.conv_names) == 16  # 4 blocks x (3 convs + 1 shortcut)
    names = {n for n, _ in algo.named_parameters()}
    assert names == {f"scale.{c.replace('.', '_')}" for c in algo.conv_names} \
        | {f"shift.{c.replace('.', '_')}" for c in algo.conv_names}
    learned = MetaTransfer(model, ways=5, inner_steps=1, inner_lr=0.1, learn_head_init=True)
    assert {n for n, _ in learned.named_parameters()} == names | {"head_weight", "head_bias"}


def test_frozen_weights_never_change_but_scale_and_shift_do():
    model = _backbone()
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    sampler = EpisodeSampler(_class_coded_dataset(), ways=5, shots=1, queries=2, seed=0)
    algo = _algo(learn_head_init=True)
    algo.train()
    optimizer = torch.optim.Adam(algo.parameters(), lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        algo.meta_gradient(sampler.sample(2))
        optimizer.step()
    assert not algo.encoder.training
    assert not any(True for _ in algo.encoder.parameters())
    for name, value in algo.encoder.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
    for name, value in model.encoder.state_dict().items():  # the caller's network is untouched too
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)
    assert any((p - 1).abs().max() > 0 for p in algo.scale.values())
    assert any(p.abs().max() > 0 for p in algo.shift.values())
    assert algo.head_weight.abs().max() > 0


def test_meta_gradient_reaches_every_meta_parameter_second_and_first_order():
    sampler = EpisodeSampler(_class_coded_dataset(), ways=5, shots=1, queries=2, seed=0)
    batch = sampler.sample(2)
    for first_order in (False, True):
        algo = _algo(first_order=first_order, learn_head_init=True)
        metrics = algo.meta_gradient(batch)
        assert set(metrics) >= {"loss", "accuracy"}
        assert algo.head_weight.grad is not None and algo.head_weight.grad.abs().sum() > 0
        assert algo.scale["0_conv1"].grad.abs().sum() > 0 and algo.shift["3_conv3"].grad.abs().sum() > 0


def test_predict_adapts_the_head():
    sampler = EpisodeSampler(_template_dataset(), ways=5, shots=2, queries=2, seed=1)
    batch = sampler.sample(3)
    algo = _algo(inner_steps=30, inner_lr=2.0)
    logits = algo.predict(batch)
    assert logits.shape == (3, 10, 5) and not logits.requires_grad
    assert torch.allclose(algo.predict(batch, inner_steps=0), torch.zeros(()))  # zero-initialised head
    assert (logits.argmax(-1) == batch.query_y).float().mean() > 0.5


def test_hardest_class_is_the_one_with_lowest_query_accuracy():
    query_y = torch.arange(3).repeat_interleave(2).expand(2, 6)
    logits = torch.nn.functional.one_hot(query_y, 3).float()
    logits[0, 2:4] = torch.tensor([1.0, 0, 0])  # task 0: class label 1 always wrong
    logits[1, 4] = torch.tensor([1.0, 0, 0])    # task 1: class label 2 half wrong
    classes = torch.tensor([[7, 8, 9], [3, 4, 5]])
    assert hardest_classes(logits, query_y, classes).tolist() == [8, 5]
    assert tied_hardest(logits, query_y).tolist() == [False, False]
    perfect = torch.nn.functional.one_hot(query_y, 3).float()  # every query right: all three classes tie
    perfect[1, 0], perfect[1, 2] = torch.tensor([0, 1.0, 0]), torch.tensor([0, 0, 1.0])  # task 1: classes 0, 1 half
    assert tied_hardest(perfect, query_y).tolist() == [True, True]


def test_hard_tasks_contain_the_hard_classes():
    g = torch.Generator().manual_seed(0)
    few = hard_task_classes(torch.tensor([4, 9, 4]), num_tasks=6, ways=5, num_classes=20, generator=g)
    assert few.shape == (6, 5)
    for row in few.tolist():
        assert {4, 9} <= set(row) and len(set(row)) == 5
    many = hard_task_classes(torch.arange(10, 17), num_tasks=4, ways=5, num_classes=20, generator=g)
    assert all(set(row) <= set(range(10, 17)) and len(set(row)) == 5 for row in many.tolist())
    with pytest.raises(HardTaskError, match="ways"):
        hard_task_classes(torch.tensor([0]), num_tasks=1, ways=5, num_classes=3)


class _Spy:
    """An EpisodeSampler that records what it is asked for."""

    def __init__(self, sampler):
        self.inner, self.images, self.calls = sampler, sampler.images, []

    def sample(self, batch_size, *, classes=None, return_classes=False):
        batch, drawn = self.inner.sample(batch_size, classes=classes, return_classes=True)
        self.calls.append((classes, batch))
        return (batch, drawn) if return_classes else batch


def test_hard_task_meta_batch_resamples_the_failing_classes():
    spy = _Spy(EpisodeSampler(_class_coded_dataset(), ways=5, shots=1, queries=2, seed=0))
    algo = _algo(hard_tasks=3)
    sampler = algo.attach_sampler(spy)
    assert sampler is spy  # batches are drawn from the sampler itself: they carry their class ids
    batch = sampler.sample(4)
    classes = batch.classes
    algo.zero_grad()
    metrics = algo.meta_gradient(batch)
    assert "hard_accuracy" in metrics
    asked, hard_batch = spy.calls[-1]
    assert asked.shape == (3, 5)
    assert torch.equal(asked, algo.last_hard_classes)
    # the hard classes: the argmin of each task's per-class query accuracy, recomputed here
    logits = algo.predict(batch)
    correct = (logits.argmax(-1) == batch.query_y).float().view(4, 5, 2).mean(-1)
    worst_possible = [set(classes[t][correct[t] == correct[t].min()].tolist()) for t in range(4)]
    for row in asked.tolist():  # 4 tasks -> at most 4 hard classes -> every hard task holds them all
        assert all(len(s & set(row)) > 0 for s in worst_possible)
    # the re-sampled images really come from those classes (every pixel of class c equals c)
    pixel = (hard_batch.support_x[:, :, 0, 1, 1] * 255).round().long()
    assert torch.equal(pixel, asked)
    assert algo.scale["0_conv1"].grad is not None


def test_hard_tasks_need_class_ids_and_enough_classes():
    algo = _algo(hard_tasks=True)
    batch = EpisodeSampler(_class_coded_dataset(), ways=5, shots=1, queries=1).sample(2)
    with pytest.raises(HardTaskError, match="sampler"):
        algo.meta_gradient(batch)
    algo.attach_sampler(EpisodeSampler(_class_coded_dataset(), ways=5, shots=1, queries=1))
    with pytest.raises(HardTaskError, match="class ids"):
        algo.meta_gradient(TaskBatch(*batch))  # a batch made by hand, without class ids
    algo.meta_gradient(TaskBatch(*batch), classes=batch.classes)  # or given with it
    assert algo.meta_gradient(batch)["hard_loss"] > 0  # a batch of the sampler carries them

    class _Small:
        images = torch.zeros(3, 4, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(HardTaskError, match="ways=5"):
        algo.attach_sampler(_Small())


def test_scaling_shifting_needs_conv_layers():
    with pytest.raises(ScalingShiftingError, match="conv"):
        MetaTransfer(MLP(), ways=5, inner_steps=1, inner_lr=0.1)
    with pytest.raises(ScalingShiftingError, match="encoder"):
        MetaTransfer(nn.Linear(3, 4), ways=5, inner_steps=1, inner_lr=0.1)


def test_the_engine_starts_meta_transfer_from_the_pretraining_run(tmp_path):
    from mtl.engine.build import build_learner
    from mtl.engine.checkpoint import save_checkpoint
    from mtl.engine.config import TrainConfig

    narrow = ResNet12(1, 10, hidden=2)
    path = tmp_path / "pre.pt"
    save_checkpoint(path, {"config": {"algorithm": "pretrain"}, "step": 1,
                           "learner": {f"model.{k}": v for k, v in narrow.state_dict().items()}})
    config = TrainConfig(algorithm="mtl", dataset="omniglot", extra={"pretrained": str(path)}).resolved()
    algo = build_learner(config, torch.device("cpu"))
    torch.testing.assert_close(algo.encoder.state_dict()["0.conv1.weight"], narrow.encoder[0].conv1.weight)
    assert algo.ways == 5
    with pytest.raises(CheckpointError, match="pre-train"):
        build_learner(TrainConfig(algorithm="mtl", dataset="omniglot",
                                  extra={"pretrained": str(tmp_path / "missing.pt")}).resolved(), torch.device("cpu"))
    with pytest.raises(MTLError, match="needs a pre-trained network"):
        build_learner(TrainConfig(algorithm="mtl", dataset="omniglot").resolved(), torch.device("cpu"))
    assert issubclass(CheckpointError, MTLError)


def test_scaling_is_one_scalar_per_kernel_slice_as_in_the_paper():
    model = _backbone()
    algo = MetaTransfer(model, ways=5, inner_steps=1, inner_lr=0.1)
    for name in algo.conv_names:
        conv = algo.encoder.get_submodule(name)
        key = name.replace(".", "_")
        assert algo.scale[key].shape == (conv.out_channels, conv.in_channels, 1, 1)
        assert algo.shift[key].shape == (conv.out_channels,)
    counts = algo.meta_parameter_count()
    convs = [algo.encoder.get_submodule(n) for n in algo.conv_names]
    assert counts["scale"] == sum(c.out_channels * c.in_channels for c in convs)
    assert counts["shift"] == sum(c.out_channels for c in convs)
    assert counts["total"] == sum(p.numel() for p in algo.parameters())
    # one kernel slice scaled: only that (out, in) slice of the effective weight changes
    name = algo.conv_names[1]
    key = name.replace(".", "_")
    with torch.no_grad():
        algo.scale[key][1, 1] = 3.0
    frozen = algo.encoder.get_submodule(name).weight
    effective = algo.scaled_weights()[f"{name}.weight"]
    others = torch.ones(effective.shape[:2], dtype=torch.bool)
    others[1, 1] = False
    torch.testing.assert_close(effective[others], frozen[others])
    torch.testing.assert_close(effective[1, 1], 3.0 * frozen[1, 1])
    assert frozen[1, 1].abs().sum() > 0


def test_per_channel_variant():
    model = _backbone()
    channel = MetaTransfer(model, ways=5, inner_steps=1, inner_lr=0.1, scaling="channel")
    assert all(s.shape[1:] == (1, 1, 1) for s in channel.scale.values())
    with pytest.raises(ScalingShiftingError, match="scaling=kernel"):
        MetaTransfer(model, ways=5, inner_steps=1, inner_lr=0.1, scaling="filter")
    kernel = MetaTransfer(model, ways=5, inner_steps=1, inner_lr=0.1)
    with pytest.raises(RuntimeError, match="size mismatch"):  # no reader of another scale shape
        kernel.load_state_dict(channel.state_dict())
