"""mtl.course.compare: the capstone table's measurements (memory, parameter counts, results files)."""
from __future__ import annotations

import dataclasses
import json
import math
import statistics

import pytest
import torch

from mtl.course import compare
from mtl.algorithms import ANIL, FOMAML, MAML, ProtoMAML, ProtoNet
from mtl.algorithms.transfer.finetune import FineTuneAll, FineTuneHead, NearestCentroid
from mtl.algorithms.transfer.meta_transfer import MetaTransfer
from mtl.data.episodes import TaskBatch
from mtl.engine.evaluate import evaluate
from mtl.errors import MTLError
from mtl.models import Conv4
from mtl.models.resnet import ResNet12


def _batch(tasks=2, ways=3):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(ways).repeat(tasks, 1)
    return TaskBatch(torch.rand(tasks, ways, 1, 16, 16, generator=g), labels,
                     torch.rand(tasks, ways, 1, 16, 16, generator=g), labels.clone())


def _learner(cls, **kw):
    torch.manual_seed(0)
    return cls(Conv4(1, 3, hidden=8, image_size=16), inner_steps=1, inner_lr=0.4, strategy="loop", **kw)


def test_second_order_holds_more_memory_than_first_order():
    batch = _batch()
    second = compare.backward_memory(lambda: _learner(MAML).meta_gradient(batch))
    first = compare.backward_memory(lambda: _learner(FOMAML, first_order=True).meta_gradient(batch))
    assert first > 0 and second > first


def test_backward_memory_grows_with_the_batch():
    small = compare.backward_memory(lambda: _learner(MAML).meta_gradient(_batch(tasks=1)))
    large = compare.backward_memory(lambda: _learner(MAML).meta_gradient(_batch(tasks=4)))
    assert large > small


def test_parameter_counts_follow_what_each_method_adapts():
    maml, anil = _learner(MAML), _learner(ANIL)
    torch.manual_seed(0)
    proto = ProtoNet(Conv4(1, 3, hidden=8, image_size=16), strategy="loop")  # no inner loop to set
    total = sum(p.numel() for p in maml.model.parameters())
    assert compare.per_task_parameters(maml, 3) == total == compare.meta_parameters(maml)
    assert compare.per_task_parameters(anil, 3) == sum(p.numel() for p in anil.model.head.parameters()) < total
    assert compare.per_task_parameters(proto, 3) == 0
    proto_head = sum(p.numel() for p in proto.model.head.parameters())  # never used: not meta-learned
    assert compare.meta_parameters(proto) == sum(p.numel() for p in proto.model.parameters()) - proto_head
    protomaml = _learner(ProtoMAML)  # adapts everything; its own head is never used, so not meta-learned
    head = sum(p.numel() for p in protomaml.model.head.parameters())
    assert compare.per_task_parameters(protomaml, 3) == total == compare.meta_parameters(protomaml) + head


def test_pretrained_baselines_and_meta_transfer_counts():
    net = ResNet12(1, 10, (4, 4, 4, 8))
    frozen = sum(p.numel() for p in net.encoder.parameters())
    assert compare.per_task_parameters(NearestCentroid(net, ways=5), 5) == 0
    assert compare.per_task_parameters(FineTuneHead(net, ways=5), 5) == 5 * 8 + 5
    assert compare.per_task_parameters(FineTuneAll(net, ways=5), 5) == frozen + 5 * 8 + 5
    assert compare.meta_parameters(NearestCentroid(net, ways=5)) == 0
    mtl = MetaTransfer(net, ways=5)
    convs = [m for m in net.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    head_init = sum(p.numel() for n, p in mtl.named_parameters() if n.startswith("head_"))  # learn_head_init
    # the paper's Scaling: one scalar per (output, input) kernel slice; Shifting: one per output channel
    scaling = sum(c.out_channels * c.in_channels for c in convs)
    assert compare.meta_parameters(mtl) == scaling + sum(c.out_channels for c in convs) + head_init
    assert compare.meta_parameters(mtl) == mtl.meta_parameter_count()["total"]
    assert compare.per_task_parameters(mtl, 5) == 5 * 8 + 5


def test_results_need_provenance(tmp_path):
    row = {"method": "MAML", "dataset": "mini-imagenet", "accuracy": 0.48, "ci95": 0.018, "episodes": 600,
           "train_s": 3600.0, "memory_bytes": None, "meta_learned": 10, "per_task": 10}
    (tmp_path / "a.json").write_text(json.dumps({"row": row, "provenance": {"command": "python -m mtl train ..."}}))
    with pytest.raises(compare.ResultsError, match="hardware"):
        compare.load_results(tmp_path)
    good = {"command": "python -m mtl train ...", "hardware": "H100", "date": "2026-11-26"}
    (tmp_path / "a.json").write_text(json.dumps({"row": row, "provenance": good}))
    (loaded,) = compare.load_results(tmp_path)
    assert loaded.accuracy == 0.48 and loaded.provenance["hardware"] == "H100" and loaded.source == "a.json"
    (tmp_path / "b.json").write_text("{not json")
    with pytest.raises(compare.ResultsError, match="b.json"):
        compare.load_results(tmp_path)


def test_table_shows_rows_and_unmeasured_runs():
    row = compare.Row("MAML", "omniglot", 0.9, 0.01, 100, 12.0, 3 * 2**20, 1000, 1000)
    planned = compare.PlannedRun("MAML", "mini-imagenet", "python -m mtl train --preset maml-miniimagenet-5w1s")
    text = compare.format_table([row], [planned])
    assert "90.0 +-  1.0%" in text and "3.0 MiB" in text and "not yet measured" in text
    assert "maml-miniimagenet-5w1s" in text
    assert math.isnan(float("nan"))  # rows may carry nan accuracies: formatting must not fail
    compare.format_table([compare.Row("x", "y", float("nan"), 0.0, 0, 0.0, None, 0, 0)])


def test_paired_difference_is_tighter_than_the_two_intervals():
    import pytest

    from mtl.errors import MTLError
    from mtl.engine.evaluate import confidence_interval

    g = torch.Generator().manual_seed(0)
    difficulty = torch.rand(200, generator=g)          # episodes vary a lot in difficulty
    a = (difficulty + 0.05).tolist()
    b = (difficulty + 0.02 * torch.randn(200, generator=g)).tolist()
    mean, ci = compare.paired_difference(a, b)
    assert mean == pytest.approx(0.05, abs=0.01)
    assert ci < 0.2 * confidence_interval(a)[1]
    with pytest.raises(MTLError, match="same episodes"):
        compare.paired_difference(a, b[:-1])


def test_record_keeps_provenance_scores_and_the_validation_curve(tmp_path):
    """`python -m mtl compare record` turns a finished run into a row that lesson 09 can pair and plot."""
    from mtl.cli import main
    from mtl.engine.train import train

    run = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the run's thread count is what the provenance names, not the recorder's
    try:
        train(dict(dataset="sinusoid", algorithm="maml", meta_batch=4, inner_steps=1, inner_lr=0.01, iterations=4,
                   val_every=2, val_episodes=4, test_episodes=6, strategy="loop", device="cpu"), out=run,
                  progress=False)
        torch.set_num_threads(3)
        code = main(["compare", "record", str(run), "--method", "MAML", "--command", "python -m mtl train ...",
                     "--out", str(tmp_path / "results" / "cpu-maml.json"), "--weights", str(tmp_path / "maml.pt")])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    (tmp_path / "results" / "other.json").write_text((tmp_path / "results" / "cpu-maml.json").read_text())
    assert len(compare.load_results(tmp_path / "results")) == 2
    (row,) = compare.load_results(tmp_path / "results", "cpu-*.json")
    assert ", 1 thread (torch" in row.provenance["hardware"] or torch.cuda.is_available()
    assert row.method == "MAML" and row.episodes == 6 and len(row.scores) == 6
    assert [r["step"] for r in row.curve] == [2, 4] and all("elapsed_s" in r for r in row.curve)
    assert row.provenance["command"] == "python -m mtl train ..." and row.provenance["date"]
    from mtl.engine.build import load_learner

    assert load_learner(tmp_path / "maml.pt").step == 4  # the tested model, weights only
    before = (tmp_path / "maml.pt").read_bytes()
    with pytest.raises(compare.ResultsError, match="already exists"):  # checked before the results file is read
        compare.record(run, method="MAML", command="...", out=tmp_path / "new.json", weights=tmp_path / "maml.pt")
    assert not (tmp_path / "new.json").exists() and (tmp_path / "maml.pt").read_bytes() == before


def test_verdict_reads_the_paired_interval():
    assert compare.verdict(0.03, 0.01) == "ahead"
    assert compare.verdict(-0.03, 0.01) == "behind"
    assert compare.verdict(0.005, 0.01) == compare.verdict(-0.01, 0.01) == "no difference detected"
    with pytest.raises(compare.MTLError, match="finite"):
        compare.verdict(float("nan"), 0.01)
    with pytest.raises(compare.MTLError, match=">= 0"):
        compare.verdict(0.1, -0.01)


def test_paired_words_the_difference_from_the_first_method():
    g = torch.Generator().manual_seed(1)
    difficulty = torch.rand(300, generator=g)
    a = (difficulty + 0.04 + 0.01 * torch.randn(300, generator=g)).tolist()
    b = difficulty.tolist()
    ahead, behind = compare.paired("A", a, "B", b), compare.paired("B", b, "A", a)
    assert (ahead.verdict, behind.verdict) == ("ahead", "behind") and ahead.n == 300
    assert ahead.mean == pytest.approx(-behind.mean) and ahead.ci95 == pytest.approx(behind.ci95)
    assert ahead.phrase() == "A ahead of B" and behind.phrase() == "B behind A"
    line = ahead.sentence()
    assert line.startswith("A - B: +4.0 points, 95% interval [+")
    assert line.endswith("over the same 300 episodes: A ahead of B")
    same = compare.paired("A", b, "B", b)
    assert same.verdict == "no difference detected" and same.phrase() == "no difference detected between A and B"
    # overlapping per-method intervals, separated paired interval: the paired one decides
    from mtl.engine.evaluate import confidence_interval
    (_, ci_a), (_, ci_b) = confidence_interval(a), confidence_interval(b)
    assert ahead.mean < ci_a + ci_b and ahead.verdict == "ahead"


def test_markdown_table_of_recorded_rows_names_each_command(tmp_path, capsys):
    row = {"method": "Reptile", "dataset": "omniglot", "accuracy": 0.807, "ci95": 0.008, "episodes": 600,
           "train_s": 1877.2, "memory_bytes": None, "meta_learned": 10, "per_task": 10}
    provenance = {"command": "python -m mtl train --preset x\n    --algorithm reptile", "hardware": "Xeon, 1 thread",
                  "date": "2026-12-01", "steps": 1500}
    (tmp_path / "cpu-reptile.json").write_text(json.dumps({"row": row, "provenance": provenance}))
    table = compare.markdown_table(compare.load_results(tmp_path))
    expected = ("| Reptile | omniglot | 80.7 ± 0.8 % | 600 | 1,500 steps, 1,877 s | Xeon, 1 thread | 2026-12-01 | "
                "`python -m mtl train --preset x --algorithm reptile` |")
    assert table.splitlines()[2] == expected
    from mtl.cli import main
    assert main(["compare", "table", str(tmp_path), "--pattern", "cpu-*.json"]) == 0
    assert capsys.readouterr().out.strip() == table
    assert main(["compare", "table", str(tmp_path), "--pattern", "gpu-*.json"]) != 0
    assert "record one with" in capsys.readouterr().err


def test_record_can_choose_the_test_steps_on_validation(tmp_path):
    """``--choose-steps``: the step count with the best validation score, then the same test episodes."""
    from mtl.cli import main
    from mtl.engine.build import load_learner
    from mtl.engine.evaluate import evaluate
    from mtl.engine.train import train

    run = tmp_path / "run"
    train(dict(dataset="sinusoid", algorithm="maml", meta_batch=4, inner_steps=1, inner_lr=0.01, iterations=4,
               val_every=2, val_episodes=4, test_episodes=6, strategy="loop", device="cpu"), out=run, progress=False)
    target = tmp_path / "maml.json"
    command = ["compare", "record", str(run), "--method", "MAML", "--command", "...", "--out", str(target)]
    with pytest.raises(SystemExit):  # refused before anything is read or written
        main([*command, "--choose-steps", "a,b"])
    assert main([*command, "--choose-steps", "1,-3"]) != 0
    with pytest.raises(compare.ResultsError, match="whole numbers"):
        compare.record(run, method="MAML", command="...", out=target, choose_steps=())
    assert not target.exists()
    assert main([*command, "--choose-steps", "0,2,8", "--select-episodes", "5"]) == 0
    (row,) = compare.load_results(tmp_path, "maml.json")
    tested = load_learner(run / "last.pt")
    on_val = {k: evaluate(tested.learner, tested.config, split="val", episodes=5, inner_steps=k,
                          progress=False).mean for k in (0, 2, 8)}
    assert row.test_steps["validation"] == pytest.approx(on_val)
    assert row.test_steps["chosen"] == min(on_val, key=on_val.get)  # MSE: the lowest
    assert row.test_steps["trained_default"] == tested.config.test_inner_steps and row.test_steps["episodes"] == 5
    test = evaluate(tested.learner, tested.config, split="test", episodes=6, inner_steps=row.test_steps["chosen"],
                    progress=False)
    assert row.scores == pytest.approx(test.scores, abs=1e-6) and row.accuracy == pytest.approx(test.mean)
    assert "test step" in compare.markdown_table([row]) and "chosen on validation" in compare.markdown_table([row])


def test_choosing_steps_takes_the_fewest_on_a_tie():
    """A learner that adapts nothing scores the same at every step count: the fewest steps win."""
    from mtl.engine.config import TrainConfig
    from mtl.engine.evaluate import choose_inner_steps

    config = TrainConfig(dataset="sinusoid", algorithm="maml", inner_steps=1, inner_lr=0.0, device="cpu")
    from mtl.engine.build import build_learner

    learner = build_learner(config.resolved(), "cpu")  # inner_lr 0: every step leaves the weights alone
    steps, on_val = choose_inner_steps(learner, config, choices=(5, 2, 9), episodes=4)
    assert steps == 2 and len(set(on_val.values())) == 1
    with pytest.raises(Exception, match="whole number"):
        choose_inner_steps(learner, config, choices=(1, -1), episodes=4)


def test_choosing_a_learner_scores_each_on_the_same_validation_episodes():
    """Two sinusoid learners that differ only in their inner step: the lower MSE wins, the scores
    are those of `evaluate` on the validation episodes, and a tie goes to the first."""
    from mtl.engine.build import build_learner
    from mtl.engine.config import TrainConfig
    from mtl.engine.evaluate import EpisodeSet, choose_learner

    config = TrainConfig(dataset="sinusoid", algorithm="maml", inner_steps=1, inner_lr=0.01, device="cpu").resolved()
    torch.manual_seed(0)
    still = build_learner(dataclasses.replace(config, inner_lr=0.0), "cpu")
    moving = build_learner(config, "cpu")
    moving.load_state_dict(still.state_dict())
    val = EpisodeSet(config, "val", n=6, seed=0, device="cpu", progress=False)
    best, on_val = choose_learner({"still": still, "moving": moving}, config, inner_steps={"still": 3, "moving": 3},
                                  episode_set=val)
    assert on_val["moving"] != on_val["still"] and best == min(on_val, key=on_val.get)  # MSE: the lowest
    assert on_val["moving"] == pytest.approx(evaluate(moving, config, inner_steps=3, episode_set=val).mean)
    tie, _ = choose_learner({"b": still, "a": still}, config, episode_set=val)
    assert tie == "b"
    with pytest.raises(MTLError, match="not candidates"):
        choose_learner({"still": still}, config, inner_steps={"other": 1}, episode_set=val)
    with pytest.raises(MTLError, match="at least one"):
        choose_learner({}, config, episode_set=val)


def test_an_interval_over_seeds_is_students_t_on_the_seed_means():
    mean, half = compare.over_seeds([0.015, 0.004, 0.012])  # lesson 05's ProtoNet - MAML, three seeds
    sd = statistics.stdev([0.015, 0.004, 0.012])
    assert mean == pytest.approx(0.031 / 3) and half == pytest.approx(4.303 * sd / 3 ** 0.5)
    assert compare.verdict(mean, half) == compare.NO_DIFFERENCE
    assert compare.t_quantile(30) == 2.042 and abs(compare.t_quantile(31) - 2.040) < 1e-3
    assert abs(compare.t_quantile(120) - 1.980) < 1e-3
    with pytest.raises(MTLError, match="two seeds"):
        compare.over_seeds([0.01])
