"""mtl.course.baselines: the embedding rules with their settings chosen on validation episodes."""
from __future__ import annotations

import pytest
import torch

from mtl.course.baselines import choose_baselines
from mtl.engine.config import preset
from mtl.engine.evaluate import EpisodeSet, evaluate
from mtl.errors import ConfigError
from mtl.models.resnet import ResNet12


@pytest.fixture(scope="module")
def setting():
    torch.manual_seed(0)
    backbone = ResNet12(1, 5, channels=(4, 4, 4, 4)).eval()
    config = preset("cpu-maml-omniglot-5w1s").resolved()
    return backbone, config, EpisodeSet(config, "val", n=4, seed=0, device="cpu", progress=False)


def test_each_setting_is_the_best_on_validation_and_fine_tune_all_takes_the_heads(setting):
    backbone, config, validation = setting
    chosen = choose_baselines(backbone, config, validation, head_steps=(1, 5), head_lrs=(0.01, 0.5),
                              probe_C=(0.01, 10.0), all_max_steps=2)
    assert set(chosen.head_scores) == {(1, 0.01), (1, 0.5), (5, 0.01), (5, 0.5)}
    assert set(chosen.probe_scores) == {0.01, 10.0}
    assert chosen.head_scores[chosen.head] == max(chosen.head_scores.values())
    assert chosen.probe_scores[chosen.C] == max(chosen.probe_scores.values())
    head, every, probe = (chosen.learners[k] for k in ("fine-tune head", "fine-tune all", "linear probe"))
    assert (head.inner_steps, head.inner_lr) == chosen.head and probe.C == chosen.C
    assert every.inner_lr == chosen.head[1] and every.inner_steps == chosen.all_steps == min(chosen.head[0], 2)
    again = evaluate(head, config, inner_steps=head.inner_steps, episode_set=validation)
    assert again.mean == pytest.approx(chosen.head_scores[chosen.head])
    assert set(chosen.learners) == {"nearest centroid", "linear probe", "fine-tune head", "fine-tune all"}


def test_an_empty_grid_is_refused(setting):
    with pytest.raises(ConfigError, match="at least one"):
        choose_baselines(*setting, probe_C=())
