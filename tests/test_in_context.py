"""The in-context learner (``--algorithm in-context``): a transformer over the support set and the
queries. Shapes, what its architecture guarantees (support order, query independence), what
training on relabelled episodes teaches it (relabelling), the engine and the CLI on its checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from mtl.algorithms import ALGORITHMS
from mtl.algorithms.in_context import InContext
from mtl.cli import main
from mtl.data.episodes import FixedLabelTasks, TaskBatch
from mtl.engine.build import build_learner
from mtl.engine.classifier import FewShotClassifier
from mtl.engine.config import TrainConfig
from mtl.errors import ConfigError, MTLError
from mtl.models.in_context import InContextTransformer, context_mask, context_tokens
from test_folder import _draw, make_folder


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory):
    """Caches of this module's folders go to a temporary folder, not the repository's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTL_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def _image_learner(ways: int = 5, seed: int = 0) -> InContext:
    torch.manual_seed(seed)
    config = TrainConfig(algorithm="in-context", dataset="omniglot", ways=ways, hidden=8, image_size=16,
                         extra={"width": 32, "heads": 2, "layers": 2}).resolved()
    return build_learner(config, torch.device("cpu"))


def _images(ways=5, shots=2, queries=3, tasks=2, seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    qy = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    return TaskBatch(torch.rand(tasks, ways * shots, 1, 16, 16, generator=g), sy,
                     torch.rand(tasks, ways * queries, 1, 16, 16, generator=g), qy)


def test_registered_and_shapes_for_images_and_sinusoids():
    assert ALGORITHMS["in-context"] is InContext
    learner = _image_learner()
    assert learner.predict(_images()).shape == (2, 15, 5)
    assert learner.predict(_images(ways=3)).shape == (2, 9, 3)  # fewer ways than trained
    assert learner.per_task_parameters(5) == 0
    torch.manual_seed(0)
    sine = build_learner(TrainConfig(algorithm="in-context", dataset="sinusoid", shots=5, queries=7).resolved(),
                         torch.device("cpu"))
    x, y = torch.rand(3, 5, 1), torch.rand(3, 5, 1)
    batch = TaskBatch(x, y, torch.rand(3, 7, 1), torch.rand(3, 7, 1))
    assert sine.predict(batch).shape == (3, 7, 1)
    metrics = sine.meta_gradient(batch)
    assert set(metrics) == {"loss"} and all(p.grad is not None for p in sine.parameters())


def test_tokens_and_mask():
    sz, qz = torch.randn(1, 4, 3), torch.randn(1, 2, 3)
    code = torch.nn.functional.one_hot(torch.tensor([[0, 1, 1, 0]]), 2).float()
    tokens = context_tokens(sz, code, qz)
    assert tokens.shape == (1, 6, 5)
    assert torch.equal(tokens[0, :4, 3:], code[0]) and not tokens[0, 4:, 3:].any()
    mask = context_mask(4, 2)  # True: may not attend
    assert not mask[:, :4].any()  # everything sees the support
    assert mask[:4, 4:].all()  # the support sees no query
    assert mask[4:, 4:].all()  # no query sees a query, itself included


def test_the_order_of_the_support_set_does_not_matter():
    learner, batch = _image_learner(), _images()
    order = torch.randperm(batch.support_y.shape[1], generator=torch.Generator().manual_seed(1))
    shuffled = batch._replace(support_x=batch.support_x[:, order], support_y=batch.support_y[:, order])
    assert torch.allclose(learner.predict(batch), learner.predict(shuffled), atol=1e-5)


def test_a_query_does_not_change_another_querys_prediction():
    learner, batch = _image_learner(), _images()
    query_x = batch.query_x.clone()
    query_x[:, 0] = torch.rand_like(query_x[:, 0])
    before, after = learner.predict(batch), learner.predict(batch._replace(query_x=query_x))
    assert not torch.allclose(before[:, 0], after[:, 0], atol=1e-4)  # the replaced query changes
    assert torch.allclose(before[:, 1:], after[:, 1:], atol=1e-5)  # the others do not
    # a query predicted alone gets the same outputs as among the others
    alone = learner.predict(batch._replace(query_x=batch.query_x[:, 4:5], query_y=batch.query_y[:, 4:5]))
    assert torch.allclose(alone[:, 0], before[:, 4], atol=1e-5)


def _vector_tasks(tasks: int, generator: torch.Generator, ways=5, shots=1, queries=3, dim=16) -> TaskBatch:
    """Each class a random centre; examples are the centre plus noise; labels in a random order."""
    centres = torch.randn(tasks, ways, dim, generator=generator)
    labels = torch.stack([torch.randperm(ways, generator=generator) for _ in range(tasks)])  # class -> label
    s_cls = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    q_cls = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)

    def draw(cls):
        return (centres.gather(1, cls[..., None].expand(-1, -1, dim))
                + 0.3 * torch.randn(*cls.shape, dim, generator=generator))

    return TaskBatch(draw(s_cls), labels.gather(1, s_cls), draw(q_cls), labels.gather(1, q_cls))


@pytest.fixture(scope="module")
def trained_on_vectors() -> InContext:
    """A small transformer trained on relabelled vector tasks (a few seconds on one core)."""
    torch.manual_seed(0)
    learner = InContext(InContextTransformer(nn.Identity(), 16, 5, 5, width=32, heads=2, layers=2))
    optimizer = torch.optim.Adam(learner.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        optimizer.zero_grad()
        learner.meta_gradient(_vector_tasks(16, g))
        optimizer.step()
    return learner


def test_a_tiny_run_learns_well_above_chance(trained_on_vectors):
    batch = _vector_tasks(200, torch.Generator().manual_seed(99))
    accuracy = (trained_on_vectors.predict(batch).argmax(-1) == batch.query_y).float().mean()
    assert accuracy > 0.8, float(accuracy)  # chance: 0.2


def test_relabelling_the_support_permutes_the_outputs_once_trained(trained_on_vectors):
    """Not built in (a label's one-hot slot has its own weights): learned from relabelled episodes."""
    batch = _vector_tasks(200, torch.Generator().manual_seed(7))
    perm = torch.tensor([3, 0, 4, 1, 2])  # label k -> perm[k]
    relabelled = batch._replace(support_y=perm[batch.support_y])
    before = trained_on_vectors.predict(batch).softmax(-1)
    after = trained_on_vectors.predict(relabelled).softmax(-1)
    agree = (after.argmax(-1) == perm[before.argmax(-1)]).float().mean()
    assert agree > 0.9, float(agree)
    assert (after[..., perm] - before).abs().mean() < 0.05


def test_more_ways_than_trained_is_refused_with_the_fix():
    learner = _image_learner(ways=3)
    with pytest.raises(MTLError, match=r"3 label slots.*--ways 5"):
        learner.predict(_images(ways=5))
    with pytest.raises(MTLError, match="--ways 5"):
        learner.set_ways(5)
    learner.set_ways(2)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="use --model conv4"):
        build_learner(TrainConfig(algorithm="in-context", dataset="omniglot", model="resnet12").resolved(),
                      torch.device("cpu"))
    with pytest.raises(ConfigError, match="not a setting of --algorithm in-context"):
        TrainConfig(algorithm="in-context", extra={"inner_rate": 1})
    with pytest.raises(ConfigError, match="fixed_labels applies to image"):
        learner = build_learner(TrainConfig(algorithm="in-context", dataset="sinusoid",
                                            extra={"fixed_labels": True}).resolved(), torch.device("cpu"))
        learner.attach_sampler(object())


def test_fixed_label_tasks_give_every_class_one_label(symbols):
    from mtl.data import EpisodeSampler, load_dataset

    dataset = load_dataset(f"folder:{symbols}", "all", image_size=16, channels=1, progress=False)
    sampler = EpisodeSampler(dataset, ways=4, shots=1, queries=1, seed=0)
    fixed = FixedLabelTasks(sampler)
    flat = dataset.images.flatten(2).float().div(255)  # [classes, per_class, pixels]; padding is never drawn
    seen: dict[int, set[int]] = {}
    for _ in range(5):
        batch = fixed.sample(8)
        for image, label in zip(batch.support_x.flatten(0, 1).flatten(1), batch.support_y.flatten()):
            cls = int((flat == image).all(-1).any(-1).nonzero()[0])  # the class holding this image
            seen.setdefault(cls, set()).add(int(label))
    assert all(labels == {c % 4} for c, labels in seen.items()) and len(seen) > 4


@pytest.fixture(scope="module")
def symbols(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("symbols") / "symbols", classes=20)


def test_cli_train_evaluate_adapt_and_the_classifier(symbols, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{symbols}", "--algorithm", "in-context", "--ways", "3",
                 "--shots", "1", "--queries", "2", "--meta-batch", "2", "--iterations", "3", "--val-every", "3",
                 "--val-episodes", "4", "--eval-batch", "4", "--hidden", "8", "--image-size", "16",
                 "--channels", "1", "--set", "width=16", "--set", "layers=1", "--device", "cpu",
                 "--no-progress", "--out", str(run)]) == 0
    assert main(["evaluate", "--checkpoint", str(run), "--episodes", "6", "--no-progress"]) == 0
    assert "accuracy" in capsys.readouterr().out
    support, query = tmp_path / "support", tmp_path / "query"
    for c in (1, 4, 9):
        (support / f"new{c}").mkdir(parents=True)
        (query / f"new{c}").mkdir(parents=True)
        _draw(support / f"new{c}" / "a.png", c, 0)
        _draw(query / f"new{c}" / "b.png", c, 1)
    out = tmp_path / "pred.json"
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--query", str(query),
                 "--json", str(out)]) == 0
    assert len(json.loads(out.read_text())["predictions"]) == 3
    assert "no inner loop" in capsys.readouterr().out  # not "N inner steps": nothing is adapted
    (support / "new11").mkdir()
    _draw(support / "new11" / "a.png", 11, 0)
    assert main(["adapt", "--checkpoint", str(run), "--support", str(support), "--query", str(query)]) == 1
    assert "--ways 4" in capsys.readouterr().err
    clf = FewShotClassifier.from_checkpoint(run)
    clf.fit([support / f"new{c}" / "a.png" for c in (1, 4)], ["one", "four"])
    assert clf.predict_proba([query / "new1" / "b.png"]).shape == (1, 2)



def test_cli_trains_and_evaluates_it_on_sinusoids(tmp_path, capsys):
    """Regression end to end: the label token is the y value; the summary names no inner loop."""
    run = tmp_path / "sine"
    assert main(["train", "--dataset", "sinusoid", "--algorithm", "in-context", "--shots", "10", "--queries", "10",
                 "--meta-batch", "4", "--inner-steps", "0", "--inner-lr", "0", "--test-inner-steps", "0",
                 "--iterations", "3", "--val-every", "3", "--val-episodes", "4", "--test-episodes", "5",
                 "--set", "width=16", "--set", "layers=1", "--device", "cpu", "--no-progress",
                 "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test"]["metric"] == "mse" and summary["test"]["n"] == 5 and not summary["test"]["adapts"]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(run), "--episodes", "6", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("mse ") and "no inner loop" in out and "inner step" not in out

# ------------------------------------------------------------------- the lesson's exercise checker

def _context(support_z, support_y, query_z, ways, *, label=None, query_label=False, queries_first=False,
             mask_of=None):
    m, q = len(support_z), len(query_z)
    code = torch.nn.functional.one_hot(support_y, ways).float() if label is None else label(support_y, ways)
    empty = torch.zeros(q, code.shape[1])
    if query_label:
        empty[:, 0] = 1.0
    parts = [torch.cat([support_z, code], 1), torch.cat([query_z, empty], 1)]
    tokens = torch.cat(parts[::-1] if queries_first else parts)
    mask = torch.zeros(m + q, m + q, dtype=torch.bool)
    mask[:, m:] = True
    return tokens, (mask if mask_of is None else mask_of(mask, m))


def test_context_checker_accepts_the_reference(capsys):
    from mtl.course import exercises

    exercises.check_context(_context)
    assert "Correct" in capsys.readouterr().out


def _unblock_queries(mask, m):
    mask = mask.clone()
    mask[m:, m:] = False
    return mask


def _support_sees_queries(mask, m):
    mask = mask.clone()
    mask[:m, m:] = False
    return mask


def _self(mask, m):
    mask = mask.clone()
    mask[range(m, len(mask)), range(m, len(mask))] = False
    return mask


@pytest.mark.parametrize("wrong, message", [
    (lambda s, y, q, n: _context(s, y, q, n, label=lambda y, n: y[:, None].float()), "not one-hot"),
    (lambda s, y, q, n: _context(s, y, q, n, label=lambda y, n: torch.nn.functional.one_hot(y, n).float() * 0.5),
     "not one-hot"),
    (lambda s, y, q, n: _context(s, y, q, n, query_label=True), "query tokens carry a label"),
    (lambda s, y, q, n: _context(s, y, q, n, queries_first=True), "support and queries are mixed"),
    (lambda s, y, q, n: _context(s, y, q, n, mask_of=_unblock_queries), "queries attend to each other"),
    (lambda s, y, q, n: _context(s, y, q, n, mask_of=_support_sees_queries), "support tokens attend to queries"),
    (lambda s, y, q, n: _context(s, y, q, n, mask_of=_self), "a query attends to itself"),
    (lambda s, y, q, n: _context(s, y, q, n, mask_of=lambda mask, m: ~mask), "inverted"),
    (lambda s, y, q, n: _context(s, y, q, n, mask_of=lambda mask, m: mask.float()), "bool mask"),
    (lambda s, y, q, n: _context(s, y, q, n)[0], "pair"),
])
def test_context_checker_names_the_mistake(wrong, message):
    from mtl.course import exercises

    with pytest.raises(exercises.ExerciseError, match=message):
        exercises.check_context(wrong)
