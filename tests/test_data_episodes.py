"""EpisodeSampler and TaskBatch on a synthetic dataset whose pixels say which image they are."""
from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch

from mtl.data import EpisodeSampler, FewShotDataset, TaskBatch
from mtl.data.episodes import _random_subsets
from mtl.errors import EpisodeError, MTLError

CLASSES, PER_CLASS = 12, 7


@pytest.fixture
def dataset() -> FewShotDataset:
    """uint8 [12, 7, 2, 3, 3]: channel 0 holds the class id, channel 1 the image id, everywhere."""
    images = torch.zeros(CLASSES, PER_CLASS, 2, 3, 3, dtype=torch.uint8)
    images[:, :, 0] = torch.arange(CLASSES).view(-1, 1, 1, 1)
    images[:, :, 1] = torch.arange(PER_CLASS).view(1, -1, 1, 1)
    return FewShotDataset(images, [f"c{i}" for i in range(CLASSES)], "synthetic", "train")


def _ids(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class id, image id) of each image of ``x`` [B, M, 2, 3, 3] (float in [0, 1])."""
    values = (x[:, :, :, 0, 0] * 255).round().long()
    return values[..., 0], values[..., 1]


def test_shapes_dtypes_and_range(dataset):
    batch = EpisodeSampler(dataset, ways=4, shots=2, queries=3).sample(5)
    assert isinstance(batch, TaskBatch)
    assert batch.support_x.shape == (5, 8, 2, 3, 3) and batch.query_x.shape == (5, 12, 2, 3, 3)
    assert batch.support_x.dtype == torch.float32 and batch.support_y.dtype == torch.int64
    assert 0 <= batch.support_x.min() and batch.query_x.max() <= 1
    assert batch.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert batch.query_y[3].tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3


def test_labels_follow_classes_and_support_query_disjoint(dataset):
    batch, classes = EpisodeSampler(dataset, ways=5, shots=3, queries=4, seed=3).sample(40, return_classes=True)
    assert classes.shape == (40, 5) and classes.dtype == torch.int64
    s_class, s_image = _ids(batch.support_x)
    q_class, q_image = _ids(batch.query_x)
    assert torch.equal(s_class, classes.gather(1, batch.support_y))  # label j <-> classes[:, j]
    assert torch.equal(q_class, classes.gather(1, batch.query_y))
    for task in range(40):
        assert len(set(classes[task].tolist())) == 5  # distinct classes
        for label in range(5):
            support = set(s_image[task][batch.support_y[task] == label].tolist())
            query = set(q_image[task][batch.query_y[task] == label].tolist())
            assert len(support) == 3 and len(query) == 4 and not support & query


def test_classes_are_balanced(dataset):
    _, classes = EpisodeSampler(dataset, ways=3, shots=1, queries=1, seed=1).sample(4000, return_classes=True)
    counts = torch.bincount(classes.flatten(), minlength=CLASSES).float()
    expected = 4000 * 3 / CLASSES
    assert (counts - expected).abs().max() < 0.1 * expected
    labels_of_class0 = (classes == 0).float().sum(0)  # which label class 0 gets: uniform too
    assert (labels_of_class0 - labels_of_class0.mean()).abs().max() < 0.2 * labels_of_class0.mean()


@pytest.mark.parametrize("k, n", [(2, 5), (3, 5)])  # redraw-on-repeat branch, then ranked-keys branch
def test_random_subsets_uniform_over_ordered_tuples(k, n):
    outcomes = len(list(itertools.permutations(range(n), k)))
    draws = _random_subsets(1000 * outcomes, k, n, torch.Generator().manual_seed(0))
    counts = Counter(map(tuple, draws.tolist()))
    assert set(counts) == set(itertools.permutations(range(n), k))
    assert max(counts.values()) < 1150 and min(counts.values()) > 850


def test_random_subsets_pinned_values():
    """The generator's stream is part of the contract: these ids must be the same on every machine."""
    assert _random_subsets(2, 5, 4400, torch.Generator().manual_seed(0)).tolist() == [
        [4268, 3114, 2021, 4051, 2838], [3481, 785, 1544, 2557, 1268]]
    assert _random_subsets(2, 3, 5, torch.Generator().manual_seed(0)).tolist() == [[2, 4, 1], [1, 4, 2]]


def test_seed_fixes_every_episode(dataset):
    a = EpisodeSampler(dataset, ways=3, shots=2, queries=2, seed=7)
    b = EpisodeSampler(dataset, ways=3, shots=2, queries=2, seed=7)
    c = EpisodeSampler(dataset, ways=3, shots=2, queries=2, seed=8)
    first, second = a.sample(6), a.sample(6)
    assert all(torch.equal(x, y) for x, y in zip(first, b.sample(6)))
    assert not torch.equal(first.support_x, second.support_x)
    assert not torch.equal(first.support_x, c.sample(6).support_x)


def test_evaluation_episodes_are_fixed(dataset):
    sampler = EpisodeSampler(dataset, ways=3, shots=1, queries=2, seed=0)
    reference = list(sampler.episodes(10, batch_size=4, seed=5))
    sampler.sample(3)  # advancing the training generator must not change the evaluation set
    again = list(EpisodeSampler(dataset, ways=3, shots=1, queries=2, seed=99).episodes(10, 4, seed=5))
    assert [len(b.support_x) for b in reference] == [4, 4, 2]
    for x, y in zip(reference, again):
        assert all(torch.equal(u, v) for u, v in zip(x, y))
    other = next(sampler.episodes(10, batch_size=4, seed=6))
    assert not torch.equal(other.support_x, reference[0].support_x)


def test_given_classes_are_used(dataset):
    sampler = EpisodeSampler(dataset, ways=2, shots=1, queries=1)
    classes = torch.tensor([[3, 9], [11, 0], [5, 6]])
    batch, returned = sampler.sample(3, classes=classes, return_classes=True)
    assert torch.equal(returned, classes)
    assert torch.equal(_ids(batch.support_x)[0], classes)


@pytest.mark.parametrize("classes, match", [
    (torch.tensor([[1, 2, 3]]), "shape"),
    (torch.tensor([[1, 12]]), "class ids"),
    (torch.tensor([[4, 4]]), "distinct"),
])
def test_bad_classes_are_refused(dataset, classes, match):
    with pytest.raises(EpisodeError, match=match):
        EpisodeSampler(dataset, ways=2, shots=1, queries=1).sample(1, classes=classes)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ways=13, shots=1, queries=1), "ways <= 12"),
    (dict(ways=5, shots=4, queries=4), "shots \\+ queries <= 7"),
    (dict(ways=0, shots=1, queries=1), "ways >= 1"),
])
def test_impossible_episodes_name_the_fix(dataset, kwargs, match):
    with pytest.raises(EpisodeError, match=match) as info:
        EpisodeSampler(dataset, **kwargs)
    assert isinstance(info.value, MTLError)


def test_support_only_tasks(dataset):
    batch = EpisodeSampler(dataset, ways=3, shots=2, queries=0).sample(4)
    assert batch.query_x.shape == (4, 0, 2, 3, 3) and batch.query_y.shape == (4, 0)
    assert batch.support_x.shape == (4, 6, 2, 3, 3)


def test_dataset_to_device_and_batch_to(dataset):
    assert dataset.to("cpu") is dataset and dataset.to(None) is dataset
    batch = EpisodeSampler(dataset, ways=2, shots=1, queries=1, device="cpu").sample(2)
    assert batch.to("cpu").support_x.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU sampling not tested here")
def test_gpu_sampling_matches_cpu(dataset):
    cpu = EpisodeSampler(dataset, ways=3, shots=2, queries=2, seed=4).sample(8)
    gpu = EpisodeSampler(dataset, ways=3, shots=2, queries=2, seed=4, device="cuda").sample(8)
    assert gpu.support_x.device.type == "cuda"
    for x, y in zip(cpu, gpu):  # the same images and labels (CUDA divides by 255 within 1 ulp)
        y = y.cpu()
        assert torch.equal((x * 255).round(), (y * 255).round()) if x.is_floating_point() else torch.equal(x, y)
