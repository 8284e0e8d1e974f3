"""Pre-training: augmentation, epoch-ordered batches, the learner, and pre-training through the
engine's loop (checkpoints, exact resume, the network that transfer starts from)."""
import json

import pytest
import torch

from mtl.data import EpisodeSampler, FewShotDataset
from mtl.engine.checkpoint import load_checkpoint, load_pretrained
from mtl.engine.config import TrainConfig
from mtl.engine.train import train
from mtl.errors import CheckpointError, ConfigError, MTLError
from mtl.algorithms.transfer.pretrain import EpochBatches, Pretrain, augment
from mtl.models.resnet import ResNet12


def _template_dataset(num_classes=6, per_class=12, size=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    templates = torch.randint(0, 2, (num_classes, 1, 1, size, size), generator=g) * 200.0
    noise = torch.randn(num_classes, per_class, 1, size, size, generator=g) * 15
    images = (templates + noise).clamp(0, 255).to(torch.uint8)
    return FewShotDataset(images, [str(c) for c in range(num_classes)], "synthetic", "train")


def test_augment_crops_a_shifted_window_and_flips():
    x = torch.arange(1, 2 * 3 * 6 * 6 + 1, dtype=torch.float32).view(2, 3, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = augment(x, pad=2, flip=False, generator=g)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for b in range(2):
        windows = [padded[b, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[b], w) for w in windows)
    flipped = augment(x[:1].expand(64, 3, 6, 6), pad=0, flip=True, generator=g)
    is_flip = [torch.equal(f, x[0].flip(-1)) for f in flipped]
    assert all(is_flip[i] or torch.equal(flipped[i], x[0]) for i in range(64)) and 5 < sum(is_flip) < 59


def test_epoch_batches_visit_every_image_once_per_epoch_and_depend_only_on_the_step():
    images = torch.arange(5 * 4, dtype=torch.uint8).view(5, 4, 1, 1, 1).expand(5, 4, 1, 2, 2).contiguous()
    counts = torch.tensor([4, 4, 2, 4, 3])  # classes 2 and 4 are padded: the padding is never drawn
    batches = EpochBatches(images, counts=counts, seed=3)
    assert batches.steps_per_epoch(4) == 17 // 4
    for epoch in range(2):
        seen = []
        for i in range(4):
            batch = batches.sample_step(epoch * 4 + i, 4)
            values = (batch.x[:, 0, 0, 0] * 255).round().long()
            assert torch.equal(batch.y, values // 4)  # each image with its own class
            seen += values.tolist()
        assert len(set(seen)) == 16 and not {10, 11, 19} & set(seen)  # 16 of the 17: the rest dropped
    again = EpochBatches(images, counts=counts, seed=3)
    for step in (5, 0, 7):  # any order, a fresh object: the same batch for the same step
        assert torch.equal(again.sample_step(step, 4).x, batches.sample_step(step, 4).x)
    assert not torch.equal(batches.sample_step(0, 4).y, batches.sample_step(4, 4).y) or \
        not torch.equal(batches.sample_step(1, 4).y, batches.sample_step(5, 4).y)  # a new order per epoch
    with pytest.raises(MTLError, match="meta-batch"):
        batches.sample_step(0, 18)
    with pytest.raises(MTLError, match="uint8"):
        EpochBatches(images.float())


def test_learner_trains_validates_by_nearest_centroid_and_refuses_unknown_settings():
    data = _template_dataset()
    torch.manual_seed(0)
    learner = Pretrain(ResNet12(1, 6, channels=(4, 8, 8, 8)), bn_batches=4)
    batches = learner.attach_sampler(EpisodeSampler(data, ways=5, shots=1, queries=1))
    assert isinstance(batches, EpochBatches)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(15):
        optimizer.zero_grad()
        losses.append(learner.meta_gradient(batches.sample_step(step, 24))["loss"])
        optimizer.step()
    assert sum(losses[-3:]) < sum(losses[:3])
    episodes = EpisodeSampler(_template_dataset(seed=1), ways=5, shots=1, queries=3, seed=0).sample(4)
    logits = learner.predict(episodes)
    assert logits.shape == (4, 15, 5) and (logits.argmax(-1) == episodes.query_y).float().mean() > 0.4
    with pytest.raises(TypeError, match="inner_steps"):
        Pretrain(ResNet12(1, 6, channels=(4, 8, 8, 8)), inner_steps=1)  # no setting is swallowed
    with pytest.raises(ConfigError, match="inner_lr.*not a setting of --algorithm pretrain"):
        TrainConfig(algorithm="pretrain", extra={"inner_lr": 0.1})
    with pytest.raises(MTLError, match="classes must be"):
        Pretrain(ResNet12(1, 6, channels=(4, 8, 8, 8)), classes=1)
    with pytest.raises(MTLError, match="outputs but the training split has 5 classes"):
        Pretrain(ResNet12(1, 6, channels=(4, 8, 8, 8))).attach_sampler(
            EpisodeSampler(_template_dataset(num_classes=5), ways=5, shots=1, queries=1))


def _pretrain_config(**overrides) -> TrainConfig:
    """Pre-training of a tiny ResNet-12 on Omniglot's first 8 training classes, 20 images each:
    5 batches of 32 per epoch, validated by nearest centroid every epoch."""
    values = dict(algorithm="pretrain", dataset="omniglot", rotations=False, meta_batch=32, meta_lr=0.05,
                  iterations=20, val_every=5, log_every=5, val_episodes=4, eval_batch=4, device="cpu",
                  extra={"classes": 8, "channels": [2, 4, 4, 4], "bn_batches": 2})
    values.update(overrides)
    return TrainConfig(**values)


def _rows(run):
    return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pretraining_runs_through_the_engine_and_resumes_bit_exactly(tmp_path, monkeypatch, omniglot_cache):
    monkeypatch.setenv("MTL_CACHE", str(omniglot_cache))
    monkeypatch.setenv("MTL_PROGRESS", "0")
    whole = train(_pretrain_config(), out=tmp_path / "whole")
    assert whole.steps == 20 and len([r for r in whole.history if r["kind"] == "val"]) == 4
    assert isinstance(whole.learner, Pretrain) and whole.learner.model.config["num_classes"] == 8

    # interrupted after two epochs (a shorter run), then resumed to the end: the same run
    train(_pretrain_config(iterations=10), out=tmp_path / "cut")
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["step"] == 10
    resumed = train(_pretrain_config(), out=tmp_path / "cut", resume=True)
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    final, expected = load_checkpoint(tmp_path / "cut" / "last.pt"), load_checkpoint(tmp_path / "whole" / "last.pt")
    for name, tensor in expected["learner"].items():
        assert torch.equal(final["learner"][name], tensor), name
    strip = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in resumed.history]
    assert strip == [{k: v for k, v in r.items() if k != "elapsed_s"} for r in whole.history]

    # the network that transfer learning starts from
    network = load_pretrained(tmp_path / "whole" / "last.pt")
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(network(x), whole.learner.model.eval()(x))


def test_pretrained_networks_load_only_from_pretraining_runs(tmp_path, monkeypatch, omniglot_cache):
    monkeypatch.setenv("MTL_CACHE", str(omniglot_cache))
    monkeypatch.setenv("MTL_PROGRESS", "0")
    with pytest.raises(CheckpointError, match="no pre-training checkpoint"):
        load_pretrained(tmp_path / "missing")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="pre-train again"):
        load_pretrained(tmp_path / "junk.pt")
    with pytest.raises(MTLError, match="classes=5000, but the training split has"):
        train(_pretrain_config(extra={"classes": 5000}), out=None)
    maml = train(TrainConfig(algorithm="maml", dataset="omniglot", iterations=1, meta_batch=1, val_every=1,
                             val_episodes=2, eval_batch=2, hidden=4, device="cpu"), out=tmp_path / "maml")
    assert maml.steps == 1
    with pytest.raises(CheckpointError, match="not a pre-training run"):
        load_pretrained(tmp_path / "maml")
