"""SinusoidTasks: the MAML paper's task distribution."""
from __future__ import annotations

import math

import pytest
import torch

from mtl.data import SinusoidTasks
from mtl.errors import EpisodeError


def test_shapes_and_curve():
    batch, params = SinusoidTasks(shots=5, queries=7, seed=1).sample(30, return_params=True)
    assert batch.support_x.shape == (30, 5, 1) and batch.query_y.shape == (30, 7, 1)
    assert params.shape == (30, 2)
    amplitude, phase = params[:, 0, None, None], params[:, 1, None, None]
    expected = amplitude * torch.sin(batch.query_x - phase)
    torch.testing.assert_close(batch.query_y, expected)


def test_distribution_matches_the_paper():
    batch, params = SinusoidTasks(shots=10, queries=0, seed=0).sample(5000, return_params=True)
    amplitude, phase = params[:, 0], params[:, 1]
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0
    assert 0 <= phase.min() and phase.max() <= math.pi
    assert abs(amplitude.mean().item() - 2.55) < 0.1 and abs(phase.mean().item() - math.pi / 2) < 0.1
    assert -5 <= batch.support_x.min() and batch.support_x.max() <= 5
    assert abs(batch.support_x.mean().item()) < 0.1


def test_seeded_and_fixed_evaluation_set():
    a, b = SinusoidTasks(seed=3), SinusoidTasks(seed=3)
    assert torch.equal(a.sample(4).support_y, b.sample(4).support_y)
    assert not torch.equal(a.sample(4).support_y, SinusoidTasks(seed=4).sample(4).support_y)
    first = [t.query_y for t in a.episodes(7, 3, seed=1)]
    second = [t.query_y for t in b.episodes(7, 3, seed=1)]
    assert [len(t) for t in first] == [3, 3, 1]
    assert all(torch.equal(x, y) for x, y in zip(first, second))


def test_bad_arguments():
    with pytest.raises(EpisodeError, match="shots >= 1"):
        SinusoidTasks(shots=0)
    with pytest.raises(EpisodeError, match="batch_size"):
        SinusoidTasks().sample(0)
