"""The embedding rules on a pre-trained network, each with its test-time setting chosen on validation.

Lessons 07 and 09 score the same four rules on the same network; both choose their settings here,
with the same grids and validation episodes, so the two lessons test the same learners::

    chosen = choose_baselines(backbone, config, validation)   # validation: an EpisodeSet of "val"
    chosen.learners["linear probe"], chosen.C, chosen.probe_scores
    chosen.head, chosen.head_scores                             # fine-tune head's (steps, lr)
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from mtl.algorithms.transfer import finetune
from mtl.engine.config import TrainConfig
from mtl.engine.evaluate import EpisodeSet, choose_learner
from mtl.errors import ConfigError

__all__ = ["Baselines", "choose_baselines", "HEAD_STEPS", "HEAD_LRS", "PROBE_C"]

#: the CPU profile's grids: fine-tune head's steps x step sizes, the linear probe's C
HEAD_STEPS, HEAD_LRS, PROBE_C = (10, 20, 50), (0.01, 0.1), (1.0, 10.0, 100.0)


@dataclass
class Baselines:
    """``learners``: ``"nearest centroid"``, ``"linear probe"``, ``"fine-tune head"``, ``"fine-tune all"``
    with their chosen settings; ``head``: fine-tune head's ``(steps, lr)`` and ``head_scores`` every
    candidate's validation mean; ``C`` and ``probe_scores`` the same for the linear probe;
    ``all_steps``: fine-tune all's steps (the head's choice, at most the cap)."""

    learners: dict[str, nn.Module]
    head: tuple[int, float]
    head_scores: dict[tuple[int, float], float]
    C: float
    probe_scores: dict[float, float]
    all_steps: int


def choose_baselines(backbone: nn.Module, config: TrainConfig, validation: EpisodeSet, *,
                     head_steps=HEAD_STEPS, head_lrs=HEAD_LRS, probe_C=PROBE_C,
                     all_max_steps: int | None = None) -> Baselines:
    """The four rules on ``backbone`` for ``config``'s episodes (its ``test_ways``): fine-tune head's
    ``(steps, lr)`` chosen among ``head_steps x head_lrs`` and the linear probe's C among ``probe_C``
    by their mean on ``validation``; fine-tune all takes the head's choice (searching it on its own
    would cost a full network's adaptation per candidate), its steps capped at ``all_max_steps``."""
    if not head_steps or not head_lrs or not probe_C:
        raise ConfigError("choose_baselines needs at least one step count, step size and C to choose from")
    ways = config.resolved().test_ways
    heads = {(int(s), float(lr)): finetune.FineTuneHead(backbone, ways=ways, inner_steps=s, inner_lr=lr)
             for s in head_steps for lr in head_lrs}
    head, head_scores = choose_learner(heads, config, inner_steps={k: k[0] for k in heads}, episode_set=validation)
    probes = {float(C): finetune.LinearProbe(backbone, ways=ways, C=C) for C in probe_C}
    C, probe_scores = choose_learner(probes, config, inner_steps={C: p.inner_steps for C, p in probes.items()},
                                     episode_set=validation)
    all_steps = head[0] if all_max_steps is None else min(head[0], int(all_max_steps))
    learners = {"nearest centroid": finetune.NearestCentroid(backbone, ways=ways), "linear probe": probes[C],
                "fine-tune head": heads[head],
                "fine-tune all": finetune.FineTuneAll(backbone, ways=ways, inner_steps=all_steps, inner_lr=head[1])}
    return Baselines(learners, head, head_scores, C, probe_scores, all_steps)
