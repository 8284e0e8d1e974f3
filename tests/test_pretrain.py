"""Pre-training: augmentation, learning on an easy problem, checkpoints, resume, bad checkpoints."""
import pytest
import torch

from mtl.data import FewShotDataset
from mtl.errors import CheckpointError
from mtl.algorithms.transfer.pretrain import LabelledBatches, Pretrain, augment, load_pretrained, pretrain
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


def test_pretrain_learns_checkpoints_and_resumes(tmp_path):
    data = _template_dataset()
    path = tmp_path / "pre.pt"
    torch.manual_seed(0)
    first = pretrain(data, channels=(4, 8, 8, 8), epochs=8, batch_size=20, lr=0.1, holdout=2,
                     checkpoint=path, progress=False, bn_batches=4)
    history = first.history
    assert len(history) == 8 and history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["holdout_accuracy"] > 0.5  # chance: 1/6
    assert {"images_per_s", "lr", "seconds", "train_accuracy"} <= set(history[0])
    loaded = load_pretrained(path, num_classes=6)
    x = torch.rand(3, 1, 12, 12)
    torch.testing.assert_close(loaded(x), first.model(x))
    torch.manual_seed(0)
    resumed = pretrain(data, channels=(4, 8, 8, 8), epochs=9, batch_size=20, lr=0.1, holdout=2,
                       checkpoint=path, resume=True, progress=False, bn_batches=4)
    assert len(resumed.history) == 9 and resumed.history[:8] == history


def test_checkpoint_for_another_network_or_class_count_is_refused(tmp_path):
    path = tmp_path / "pre.pt"
    pretrain(_template_dataset(), channels=(2, 2, 2, 2), epochs=1, batch_size=36, checkpoint=path,
             progress=False, max_steps_per_epoch=1)
    with pytest.raises(CheckpointError, match="num_classes=6"):
        load_pretrained(path, num_classes=64)
    with pytest.raises(CheckpointError, match="channels"):
        load_pretrained(path, channels=(64, 160, 320, 640))
    with pytest.raises(CheckpointError, match="num_classes=5"):  # a 6-class network on 5 classes
        pretrain(_template_dataset(num_classes=5), model=load_pretrained(path), epochs=1, progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="pre-train again"):
        load_pretrained(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="algorithm pretrain"):
        load_pretrained(tmp_path / "other.pt")


def test_engine_learner_trains_and_validates_by_nearest_centroid():
    data = _template_dataset()
    torch.manual_seed(0)
    learner = Pretrain(ResNet12(1, 6, channels=(4, 8, 8, 8)))

    class _Sampler:
        images = data.images
    batches = learner.attach_sampler(_Sampler())
    assert isinstance(batches, LabelledBatches)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        losses.append(learner.meta_gradient(batches.sample(24))["loss"])
        optimizer.step()
    assert sum(losses[-3:]) < sum(losses[:3])
    from mtl.data import EpisodeSampler

    episodes = EpisodeSampler(_template_dataset(seed=1), ways=5, shots=1, queries=3, seed=0).sample(4)
    logits = learner.predict(episodes)
    assert logits.shape == (4, 15, 5) and (logits.argmax(-1) == episodes.query_y).float().mean() > 0.4
