"""Evaluation: the 95% CI formula, fixed seeded episode sets, scoring of a learner."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from mtl.engine.config import TrainConfig
from mtl.engine.evaluate import (NO_BN, RUNNING_BN, TRANSDUCTIVE_BN, EpisodeSet, batch_norm_mode, confidence_interval,
                                 evaluate)


def test_ci_half_width_is_1_96_std_over_sqrt_n():
    mean, half = confidence_interval([1.0, 0.0, 1.0, 1.0])
    assert mean == pytest.approx(0.75)
    assert half == pytest.approx(1.96 * math.sqrt(0.1875) / 2)  # population std of {1,0,1,1}

    scores = np.random.default_rng(0).uniform(0.4, 1.0, size=600)
    mean, half = confidence_interval(scores.tolist())
    assert mean == pytest.approx(scores.mean())
    assert half == pytest.approx(1.96 * scores.std() / math.sqrt(600))


def test_ci_of_identical_scores_is_zero_and_empty_is_an_error():
    assert confidence_interval([0.2] * 10) == (pytest.approx(0.2), pytest.approx(0.0))
    with pytest.raises(Exception, match="episodes"):
        confidence_interval([])


def _sinusoid(**overrides) -> TrainConfig:
    values = dict(dataset="sinusoid", algorithm="joint", shots=5, queries=4, eval_batch=7, device="cpu")
    values.update(overrides)
    return TrainConfig(**values).resolved()


def _flat(episodes) -> list[torch.Tensor]:
    batches = list(episodes)
    return [torch.cat([b[i] for b in batches]) for i in range(4)]


def test_same_seed_gives_identical_episodes_whatever_the_batch_size():
    first = _flat(EpisodeSet(_sinusoid(), "test", n=60, seed=3, device="cpu"))
    again = _flat(EpisodeSet(_sinusoid(eval_batch=50), "test", n=60, seed=3, device="cpu"))
    other = _flat(EpisodeSet(_sinusoid(), "test", n=60, seed=4, device="cpu"))
    assert first[0].shape == (60, 5, 1) and first[2].shape == (60, 4, 1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    validation = _flat(EpisodeSet(_sinusoid(), "val", n=60, seed=3, device="cpu"))
    assert not torch.equal(first[0], validation[0])  # validation tasks are not the test tasks


class _Oracle(nn.Module):
    """Predicts the true query labels (``perfect``) or always class 0."""

    def __init__(self, perfect: bool):
        super().__init__()
        self.perfect = perfect

    def predict(self, batch, *, inner_steps=None):
        ways = int(batch.support_y.max()) + 1
        labels = batch.query_y if self.perfect else torch.zeros_like(batch.query_y)
        return torch.nn.functional.one_hot(labels, ways).float()


@pytest.fixture(scope="module")
def omniglot_config():
    pytest.importorskip("mtl.data")
    from mtl import data

    try:
        data.load_dataset("omniglot", "test", progress=False)
    except Exception as exc:  # no data on this machine: say so
        pytest.skip(f"Omniglot not available: {exc}")
    return TrainConfig(dataset="omniglot", ways=5, shots=1, queries=3, eval_batch=20, device="cpu").resolved()


def test_accuracy_of_a_perfect_and_a_constant_learner(omniglot_config):
    perfect = evaluate(_Oracle(True), omniglot_config, episodes=40, seed=1, progress=False)
    assert (perfect.mean, perfect.ci95, perfect.n) == (1.0, 0.0, 40)
    constant = evaluate(_Oracle(False), omniglot_config, episodes=40, seed=1, progress=False)
    assert constant.mean == pytest.approx(0.2) and constant.ci95 == pytest.approx(0.0)
    assert constant.protocol["batch_norm"] == NO_BN  # the oracle has no batch norm, and says so


def test_each_result_names_the_batch_norm_it_used():
    from mtl.algorithms import MAML
    from mtl.algorithms.transfer.meta_transfer import MetaTransfer
    from mtl.models import MLP, Conv4
    from mtl.models.resnet import ResNet12

    assert batch_norm_mode(MAML(Conv4(in_channels=1, num_classes=5, hidden=8))) == TRANSDUCTIVE_BN
    assert batch_norm_mode(MetaTransfer(ResNet12(1, 10, channels=(4, 4, 4, 4)), ways=5)) == RUNNING_BN
    assert batch_norm_mode(MAML(MLP())) == NO_BN
    assert batch_norm_mode(nn.BatchNorm2d(3, track_running_stats=False)) == TRANSDUCTIVE_BN


def test_omniglot_episodes_identical_across_two_runs(omniglot_config):
    a = _flat(EpisodeSet(omniglot_config, "test", n=30, seed=7, device="cpu"))
    b = _flat(EpisodeSet(omniglot_config, "test", n=30, seed=7, device="cpu"))
    assert a[0].shape == (30, 5, 1, 28, 28)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_the_summary_says_no_inner_loop_for_a_learner_without_one():
    """A learner that sets no weight per task (in-context, ProtoNet) is not said to take inner steps."""
    from mtl.engine.build import build_learner

    torch.manual_seed(0)
    results = {}
    for algorithm, steps in (("in-context", 0), ("maml", 1)):
        config = _sinusoid(algorithm=algorithm, inner_steps=steps, inner_lr=0.01 * steps)
        learner = build_learner(config, torch.device("cpu"))
        results[algorithm] = evaluate(learner, config, episodes=7, progress=False)
    in_context, maml = results["in-context"], results["maml"]
    assert not in_context.adapts and in_context.adaptation == "no inner loop"
    assert "no inner loop" in str(in_context) and "inner step" not in str(in_context)
    assert maml.adapts and ", 1 inner step," in str(maml)  # one step, not "1 inner steps"
    maml.inner_steps = 3
    assert ", 3 inner steps," in str(maml)
