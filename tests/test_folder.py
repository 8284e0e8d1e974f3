"""Your own images: folder datasets, training and evaluation on them, and adapting a trained model
to new classes through the CLI (`python -m mtl adapt`) and the Python API (FewShotClassifier)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from mtl.engine.classifier import FewShotClassifier
from mtl.cli import main
from mtl.data import EpisodeSampler, load_dataset
from mtl.data import folder as folder_data
from mtl.engine.config import TrainConfig
from mtl.errors import ConfigError, DataError, EpisodeError, MTLError


def _draw(path: Path, cls: int, k: int, size: int = 20, mode: str = "L") -> None:
    """Class ``cls``: a bar at an angle of its own; drawer ``k`` shifts and thickens it a little."""
    image = Image.new(mode, (size, size), "white")
    draw = ImageDraw.Draw(image)
    angle = cls * 3.14159 / 20
    cx, cy = size / 2 + (k % 3) - 1, size / 2 + (k % 2)
    dx, dy = 7 * torch.tensor(angle).cos().item(), 7 * torch.tensor(angle).sin().item()
    draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill="black", width=2 + k % 2)
    draw.ellipse([cx + dx - 2, cy + dy - 2, cx + dx + 2, cy + dy + 2], fill="black")
    image.save(path)


def make_folder(root: Path, classes: int = 8, per_class=(6, 9), mode: str = "L") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for c in range(classes):
        folder = root / f"class_{c:02d}"
        folder.mkdir()
        n = per_class[0] + (c % (per_class[1] - per_class[0] + 1))
        for k in range(n):
            _draw(folder / f"{k}.png", c, k, mode=mode)
    return root


@pytest.fixture(scope="module", autouse=True)
def _own_cache(tmp_path_factory):
    """Caches of this module's folders go to a temporary folder, not the repository's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MTL_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def symbols(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("symbols") / "symbols", classes=20)


def test_folder_dataset_splits_counts_and_cache(symbols, tmp_path):
    cache = tmp_path / "cache"
    splits = {s: load_dataset(f"folder:{symbols}", s, cache_dir=cache, image_size=16, channels=1,
                              progress=False) for s in ("train", "val", "test", "all")}
    names = {s: set(d.class_names) for s, d in splits.items()}
    assert names["train"] | names["val"] | names["test"] == names["all"]
    assert not names["train"] & names["val"] and not names["train"] & names["test"]
    assert splits["all"].images.shape[2:] == (1, 16, 16) and splits["all"].images.dtype == torch.uint8
    assert splits["all"].counts.tolist() == [6 + c % 4 for c in range(20)]
    assert splits["all"].per_class == 6
    again = load_dataset(f"folder:{symbols}", "train", cache_dir=cache, image_size=16, channels=1,
                         progress=False)
    assert again.class_names == splits["train"].class_names  # seeded, reproducible
    assert len(list((cache / "folder").glob("*.pt"))) == 1
    # a new image changes the listing: a new cache is built and holds it
    extra = symbols / "class_00" / "extra.png"
    _draw(extra, 0, 7)
    try:
        grown = load_dataset(f"folder:{symbols}", "all", cache_dir=cache, image_size=16, channels=1,
                             progress=False)
        assert grown.counts[0] == 7 and len(list((cache / "folder").glob("*.pt"))) == 2
    finally:
        extra.unlink()
    given = load_dataset("folder", "val", root=symbols, cache_dir=cache, image_size=16, channels=1,
                         progress=False, classes={"train": ["class_00", "class_01"],
                                                  "val": ["class_02", "class_03", "class_04"]})
    assert given.class_names == ["class_02", "class_03", "class_04"]


def test_episodes_never_draw_padding(symbols, tmp_path):
    ds = load_dataset(f"folder:{symbols}", "all", cache_dir=tmp_path, image_size=16, channels=1,
                      progress=False)
    sampler = EpisodeSampler(ds, ways=5, shots=2, queries=4, seed=0)
    for _ in range(20):
        batch = sampler.sample(8)
        for x in (batch.support_x, batch.query_x):
            assert (x.flatten(2).amax(-1) > 0).all(), "a padding (all-black) image was drawn"
    with pytest.raises(EpisodeError, match="6 per class"):
        EpisodeSampler(ds, ways=5, shots=2, queries=5)


def test_bad_folders_are_refused_with_the_culprit_named(tmp_path):
    one = make_folder(tmp_path / "one", classes=1)
    with pytest.raises(DataError, match="at least 2"):
        folder_data.scan(one)
    empty = make_folder(tmp_path / "empty", classes=2)
    (empty / "class_02").mkdir()
    with pytest.raises(DataError, match="class_02 holds no images"):
        folder_data.scan(empty)
    bad = make_folder(tmp_path / "bad", classes=2)
    (bad / "class_01" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="notes.txt is not an image"):
        load_dataset(f"folder:{bad}", "all", cache_dir=tmp_path / "c", image_size=16, progress=False)
    linked = make_folder(tmp_path / "linked", classes=2)
    outside = tmp_path / "outside.png"
    _draw(outside, 0, 0)
    os.symlink(outside, linked / "class_00" / "link.png")
    with pytest.raises(DataError, match="outside"):
        folder_data.scan(linked)
    loose = make_folder(tmp_path / "loose", classes=2)
    _draw(loose / "stray.png", 0, 0)
    with pytest.raises(DataError, match="sub-folder named after its class"):
        folder_data.scan(loose)


def test_mixed_sizes_and_modes_are_converted_and_counted(tmp_path):
    root = make_folder(tmp_path / "mixed", classes=3, per_class=(4, 4))
    Image.new("RGB", (31, 17), "red").save(root / "class_01" / "odd.png")
    content = folder_data.build(root, size=20, mode="L", progress=False)
    assert content["converted"] == 1 and content["counts"].tolist() == [4, 5, 4]
    with pytest.warns(UserWarning, match="1 of 13 images .* were converted"):
        folder_data.prepare(root, cache_dir=tmp_path / "c", image_size=20, channels=1, progress=False)


def _train(folder: Path, out: Path, algorithm: str, ways: int = 4) -> Path:
    inner = [] if algorithm == "protonet" else ["--inner-lr", "0.1"]  # ProtoNet has no inner loop
    code = main(["train", "--dataset", f"folder:{folder}", "--algorithm", algorithm, "--ways",
                 str(ways), "--shots", "1", "--queries", "2", "--meta-batch", "2", "--iterations", "3",
                 "--val-every", "3", "--val-episodes", "4", "--eval-batch", "4", "--hidden", "8",
                 "--image-size", "16", "--channels", "1", *inner, "--device", "cpu",
                 "--no-progress", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def trained(symbols, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {name: _train(symbols, root / name, name) for name in ("maml", "protonet", "protomaml")}


def test_train_and_evaluate_on_a_folder(trained, capsys):
    assert main(["evaluate", "--checkpoint", str(trained["maml"]), "--episodes", "8",
                 "--no-progress"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_adapt_cli_prints_predictions_and_accuracy(trained, symbols, tmp_path, capsys):
    support, query = tmp_path / "support", tmp_path / "query"
    for c in (0, 3, 5, 7):
        (support / f"new{c}").mkdir(parents=True)
        (query / f"new{c}").mkdir(parents=True)
        _draw(support / f"new{c}" / "a.png", c, 0)
        for k in (1, 2):
            _draw(query / f"new{c}" / f"{k}.png", c, k)
    out = tmp_path / "pred.json"
    assert main(["adapt", "--checkpoint", str(trained["maml"]), "--support", str(support),
                 "--query", str(query), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy:" in printed and "4-way" in printed and "inner step" in printed
    result = json.loads(out.read_text())
    assert len(result["predictions"]) == 8 and set(result["classes"]) == {"new0", "new3", "new5", "new7"}
    assert all(0 <= r["probability"] <= 1 for r in result["predictions"])
    # loose query files, no labels
    files = [str(query / "new0" / "1.png"), str(query / "new5" / "2.png")]
    assert main(["adapt", "--checkpoint", str(trained["protonet"]), "--support", str(support),
                 "--query", *files]) == 0
    assert "accuracy" not in capsys.readouterr().out


def test_few_shot_classifier_python_api(trained, tmp_path):
    paths, labels = [], []
    for c in (1, 2, 6):
        for k in range(2):
            path = tmp_path / f"{c}-{k}.png"
            _draw(path, c, k)
            paths.append(path)
            labels.append(f"shape {c}")
    proto = FewShotClassifier.from_checkpoint(trained["protonet"]).fit(paths, labels)
    probabilities = proto.predict_proba(paths)
    assert probabilities.shape == (6, 3)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(6))
    assert set(proto.predict(paths)) <= set(labels)
    protomaml = FewShotClassifier.from_checkpoint(trained["protomaml"]).fit(paths, labels)  # 4-way trained
    assert protomaml.predict_proba(paths).shape == (6, 3)
    maml = FewShotClassifier.from_checkpoint(trained["maml"])
    with pytest.raises(MTLError, match="predicts 4 classes.*--ways 3"):
        maml.fit(paths, labels)  # a 4-way head, 3 classes
    with pytest.raises(MTLError, match=r"does not fit this checkpoint, which takes \(1, 16, 16\)"):
        proto.predict_proba(torch.rand(2, 3, 16, 16))
    with pytest.raises(MTLError, match="one label per image"):
        proto.fit(paths, labels[:-1])


def test_config_refuses_a_missing_folder(tmp_path, capsys):
    code = main(["train", "--dataset", f"folder:{tmp_path / 'nothing'}", "--out",
                 str(tmp_path / "r"), "--no-progress"])
    assert code == 2 and "is not a folder" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_generated_alphabet_is_a_folder_dataset_and_reproducible(tmp_path):
    from mtl.data.alphabet import CHARACTERS, write_alphabet

    a = write_alphabet(tmp_path / "a", characters=CHARACTERS[:6], drawers=4, size=40, seed=3)
    b = write_alphabet(tmp_path / "b", characters=CHARACTERS[:6], drawers=4, size=40, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 24 and files == sorted(p.relative_to(b) for p in b.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    ds = load_dataset(f"folder:{a}", "all", image_size=28, channels=1, invert=True, progress=False)
    assert ds.images.shape == (6, 4, 1, 28, 28)
    ink = ds.images.float().mean((1, 2, 3, 4))
    assert (ink > 5).all() and (ink < 128).all(), "inverted: bright strokes on a dark background"


def test_a_checkpoint_loads_after_its_training_folder_moved(symbols, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(symbols, folder)
    run = _train(folder, tmp_path / "run", "protonet")
    folder.rename(tmp_path / "moved")
    clf = FewShotClassifier.from_checkpoint(run)
    support = torch.rand(4, 1, 16, 16)
    clf.fit(support, ["a", "b", "c", "d"])
    assert clf.predict_proba(support).shape == (4, 4)


def test_sixteen_bit_and_float_images_are_scaled_by_their_range_once(tmp_path, trained):
    import numpy as np

    from mtl.data._decode import decode_images, to_8bit

    ramp = (np.arange(16 * 16, dtype=np.uint32).reshape(16, 16) * 257).astype(np.uint16)  # 0..65535
    path = tmp_path / "ramp16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as opened:
        assert opened.mode.startswith("I")
        eight, rescaled = to_8bit(opened, "L")
    assert rescaled and np.array_equal(np.asarray(eight), (ramp / 257).round().astype(np.uint8))
    decoded = decode_images([path.read_bytes()], size=16, mode="L", progress=False)[0]
    assert np.array_equal(decoded, np.asarray(eight)) and (decoded == 255).mean() < 0.01
    floats = Image.fromarray(np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16), "F")
    assert np.asarray(to_8bit(floats, "L")[0]).max() == 255
    clf = FewShotClassifier.from_checkpoint(trained["protonet"])
    with pytest.warns(UserWarning, match="scaled by their range"):
        x = clf.prepare([path])
    assert abs(float(x.mean()) - 0.5) < 0.02  # the ramp's mean, not white
    with pytest.raises(MTLError, match=r"values in \[0, 1\]"):
        clf.prepare(torch.full((1, 16, 16), 2.0))
    assert torch.equal(clf.prepare(torch.full((1, 16, 16), 255, dtype=torch.uint8)), torch.ones(1, 1, 16, 16))


def test_an_image_that_claims_too_many_pixels_is_refused_before_decoding(tmp_path, trained):
    from mtl.data import _decode

    bomb = tmp_path / "bomb.png"
    Image.new("L", (8000, 8000)).save(bomb)  # 64 M pixels in a few hundred KB
    assert bomb.stat().st_size < 2**20
    with pytest.raises(DataError, match="more than the 50,000,000"):
        _decode.decode_images([bomb.read_bytes()], size=16, mode="L", progress=False)
    clf = FewShotClassifier.from_checkpoint(trained["protonet"])
    with pytest.raises(MTLError, match="pixels"):
        clf.prepare([bomb])


def test_a_run_records_its_split_and_evaluation_follows_it_when_the_folder_changes(symbols, tmp_path, capsys):
    folder = tmp_path / "images"
    shutil.copytree(symbols, folder)
    run = _train(folder, tmp_path / "run", "protonet")
    recorded = json.loads((run / "config.json").read_text())["folder_classes"]
    for split in ("train", "val", "test"):
        dataset = load_dataset(f"folder:{folder}", split, cache_dir=tmp_path / "c", image_size=16,
                               channels=1, progress=False)
        assert recorded[split] == list(dataset.class_names)
    capsys.readouterr()
    shutil.copytree(folder / recorded["train"][0], folder / "zz_new_class")  # the folder gains a class
    assert main(["evaluate", "--checkpoint", str(run), "--episodes", "4", "--no-progress", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["split"] == "test"
    from mtl.engine.checkpoint import load_checkpoint
    from mtl.engine.config import TrainConfig

    saved = TrainConfig.from_saved(load_checkpoint(run / "last.pt")["config"], run)
    followed = load_dataset(saved.dataset, "test", cache_dir=tmp_path / "c", image_size=16, progress=False,
                            **saved.dataset_options())
    assert list(followed.class_names) == recorded["test"]
    shutil.rmtree(folder / recorded["test"][0])  # and loses one of its test classes
    code = main(["evaluate", "--checkpoint", str(run), "--episodes", "4", "--no-progress", "--json", "-"])
    err = capsys.readouterr().err
    assert code == 1 and recorded["test"][0] in err and "Traceback" not in err


def test_a_split_that_cannot_form_its_episodes_fails_before_training(symbols, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", f"folder:{symbols}", "--ways", "2", "--test-ways", "40", "--shots", "1",
                 "--queries", "1", "--meta-batch", "2", "--iterations", "1000", "--val-every", "1000",
                 "--test-episodes", "4", "--hidden", "8", "--image-size", "16", "--channels", "1",
                 "--device", "cpu", "--no-progress", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "error:" in err and "40" in err and "Traceback" not in err, err
    assert not out.exists()


def make_nested(root: Path, alphabets: int = 4, characters: int = 5, drawers: int = 6) -> Path:
    """Omniglot's own layout: ``root/<alphabet>/<character>/<drawing>.png``."""
    for a in range(alphabets):
        for c in range(characters):
            folder = root / f"alphabet_{a}" / f"character{c:02d}"
            folder.mkdir(parents=True)
            for k in range(drawers):
                _draw(folder / f"{k}.png", a * characters + c, k)
    return root


def test_nested_class_folders_train_as_omniglot_ships_them_and_are_listed_once(tmp_path, monkeypatch,
                                                                                capsys):
    root = make_nested(tmp_path / "images_background")
    walks = []
    walk = folder_data._walk
    monkeypatch.setattr(folder_data, "_walk", lambda *args: walks.append(args[0]) or walk(*args))
    classes = folder_data.scan(root)
    assert len(classes) == 20 and list(classes)[:2] == ["alphabet_0/character00", "alphabet_0/character01"]
    assert all(len(files) == 6 and files[0].parent.name == name.split("/")[1] for name, files in classes.items())
    code = main(["train", "--dataset", f"folder:{root}", "--ways", "3", "--shots", "1", "--queries", "2",
                 "--meta-batch", "2", "--iterations", "2", "--val-every", "2", "--val-episodes", "3",
                 "--test-episodes", "3", "--eval-batch", "3", "--hidden", "8", "--image-size", "16",
                 "--channels", "1", "--inner-lr", "0.1", "--device", "cpu", "--no-progress",
                 "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    assert walks == [root], "the folder was listed more than once in one process"
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["folder_classes"]
    assert sorted(sum(recorded.values(), [])) == sorted(classes)
    # a folder that changes is listed again: an image beside class folders is refused, naming both
    _draw(root / "alphabet_1" / "stray.png", 0, 0)
    with pytest.raises(DataError, match=r"alphabet_1 holds both images \(stray.png, ...\) and folders"):
        folder_data.scan(root)
    with pytest.raises(ConfigError, match="holds both images"):
        TrainConfig(dataset=f"folder:{root}", ways=3)
    (root / "alphabet_1" / "stray.png").unlink()
    (root / "alphabet_2" / "character00" / "6.png").write_bytes((root / "alphabet_2" / "character00" / "0.png")
                                                              .read_bytes())
    assert [len(f) for f in folder_data.scan(root).values()].count(7) == 1 and len(walks) == 4
