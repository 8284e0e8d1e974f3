"""Baselines on a pre-trained backbone: they beat chance on an easy problem and leave it unchanged."""
import copy
import math

import pytest
import torch

from mtl.algorithms import ALGORITHMS
from mtl.algorithms.transfer.finetune import FineTuneAll, FineTuneHead, LinearProbe, NearestCentroid
from mtl.data import EpisodeSampler, FewShotDataset
from mtl.errors import InnerLoopError, MTLError
from mtl.models import MLP
from mtl.algorithms.transfer.pretrain import Pretrain, recalibrate_batch_norm
from mtl.models.resnet import ResNet12

BASELINES = {name: ALGORITHMS[name] for name in ("finetune-head", "finetune-all", "linear-probe", "nearest-centroid")}


def _gratings(seed, classes=20, per_class=8):
    """Classes = stripe gratings of their own orientation and frequency (random phase, noise)."""
    g = torch.Generator().manual_seed(seed)
    angle = torch.rand(classes, 1, 1, 1, 1, generator=g) * torch.pi
    freq = 0.15 + 0.35 * torch.rand(classes, 1, 1, 1, 1, generator=g)
    phase = torch.rand(classes, per_class, 1, 1, 1, generator=g) * 2 * torch.pi
    yy, xx = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    waves = torch.sin(2 * torch.pi * freq * (xx * angle.cos() + yy * angle.sin()) + phase)
    noise = 10 * torch.randn(classes, per_class, 1, 12, 12, generator=g)
    images = (127 + 100 * waves + noise).clamp(0, 255).to(torch.uint8)
    return FewShotDataset(images, [str(c) for c in range(classes)], "synthetic", f"seed{seed}")


def _easy_episodes(seed=0, ways=5, shots=1, queries=4, tasks=6):
    """New grating classes, unseen in pre-training: an easy problem for a pre-trained backbone."""
    return EpisodeSampler(_gratings(seed), ways=ways, shots=shots, queries=queries, seed=seed).sample(tasks)


@pytest.fixture(scope="module")
def pretrained():
    """A tiny ResNet-12 pre-trained on 30 other grating classes (6 epochs, a few seconds on one
    core): the pre-training learner's own steps over its epoch-ordered batches, cosine rate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    learner = Pretrain(ResNet12(1, 30, channels=(4, 8, 16, 32)))
    batches = learner.attach_sampler(EpisodeSampler(_gratings(100, classes=30, per_class=16), ways=5, shots=1,
                                                    queries=1))
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = 6 * batches.steps_per_epoch(32)
    for step in range(steps):
        optimizer.param_groups[0]["lr"] = 0.1 * 0.5 * (1 + math.cos(math.pi * step / steps))
        optimizer.zero_grad()
        learner.meta_gradient(batches.sample_step(step, 32))
        optimizer.step()
    recalibrate_batch_norm(learner.model, batches.flat, batches=5, batch_size=32)
    torch.set_num_threads(threads)
    return learner.model.eval()


def _backbone(pretrained):
    return copy.deepcopy(pretrained)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baselines_beat_chance_and_leave_the_backbone_alone(name, pretrained):
    model = _backbone(pretrained)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    steps, lr = (10, 0.05) if name == "finetune-all" else (30, 0.5)
    learner = BASELINES[name](model, inner_steps=steps, inner_lr=lr, ways=5)
    batch = _easy_episodes()
    logits = learner.predict(batch)
    assert logits.shape == (6, 20, 5) and not logits.requires_grad
    accuracy = (logits.argmax(-1) == batch.query_y).float().mean().item()
    assert accuracy > 0.6, f"{name}: {accuracy:.2f} (chance 0.2)"
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert all(torch.equal(v, before[f"encoder.{k}"]) for k, v in learner.encoder.state_dict().items())


def test_fine_tuning_all_layers_moves_away_from_fine_tuning_the_head(pretrained):
    batch = _easy_episodes(tasks=2)
    head = FineTuneHead(_backbone(pretrained), inner_steps=5, inner_lr=0.05, ways=5).predict(batch)
    full = FineTuneAll(_backbone(pretrained), inner_steps=5, inner_lr=0.05, ways=5).predict(batch)
    assert not torch.allclose(head, full, atol=1e-4)  # the backbone's copies were really trained


def test_linear_probe_fits_its_support_set_and_centroids_are_the_class_means(pretrained):
    batch = _easy_episodes(shots=3, tasks=2)
    own = batch._replace(query_x=batch.support_x, query_y=batch.support_y)
    assert (LinearProbe(_backbone(pretrained), ways=5, C=1e4).predict(own).argmax(-1) == own.query_y).all()
    logits = NearestCentroid(_backbone(pretrained), ways=5).predict(own)
    assert (logits.argmax(-1) == own.query_y).float().mean() > 0.9


def test_baselines_are_not_meta_trained_and_diverging_fine_tuning_is_reported(pretrained):
    with pytest.raises(MTLError, match="evaluate"):
        NearestCentroid(_backbone(pretrained), ways=5).meta_gradient(_easy_episodes(tasks=1))
    with pytest.raises(InnerLoopError, match="inner_lr"):
        torch.manual_seed(0)  # a network whose gradients are far from zero: a step of 1e30 overflows
        FineTuneAll(ResNet12(1, 30, channels=(4, 8, 16, 32)), inner_steps=30, inner_lr=1e30,
                    ways=5).predict(_easy_episodes(tasks=1))
    with pytest.raises(MTLError, match="encoder"):
        FineTuneHead(torch.nn.Linear(2, 2), ways=5)
    assert NearestCentroid(MLP(), ways=5)  # no conv needed for a frozen feature extractor
