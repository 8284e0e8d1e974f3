"""Omniglot: the real archives (built once per session) and small synthetic ones for bad input."""
from __future__ import annotations

import io
import random
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from archive_helpers import write_archive
from mtl.data import EpisodeSampler, load_dataset, omniglot
from mtl.data.archives import iter_files
from mtl.errors import DataError, EpisodeError

# ---------------------------------------------------------------- real data (MTL_DATA)


@pytest.fixture(scope="module")
def everything(omniglot_cache):
    return load_dataset("omniglot", "all", cache_dir=omniglot_cache, download=False)


def test_all_characters_and_drawers(everything):
    assert everything.images.shape == (1623, 20, 1, 28, 28) and everything.images.dtype == torch.uint8
    assert len(set(everything.class_names)) == 1623


def test_splits_partition_the_characters(omniglot_cache):
    names = {s: load_dataset("omniglot", s, cache_dir=omniglot_cache).class_names
             for s in ("train", "val", "test", "background", "evaluation")}
    assert [len(names[s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    assert [len(names[s]) for s in ("background", "evaluation")] == [964, 659]
    for a, b in (("train", "val"), ("train", "test"), ("val", "test"), ("background", "evaluation")):
        assert not set(names[a]) & set(names[b])
    assert len(set(names["train"]) | set(names["val"]) | set(names["test"])) == 1623


def test_maml_split_does_not_depend_on_listing_order(everything):
    names = list(everything.class_names)
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    for split in ("train", "val", "test"):
        a = {names[i] for i in omniglot.split_indices(names, split, 964)}
        b = {shuffled[i] for i in omniglot.split_indices(shuffled, split, 964)}
        assert a == b


def test_background_alphabets_come_from_images_background(everything, omniglot_sources):
    names = {n.rsplit("/", 1)[0] for n in everything.class_names[:964]}
    members = [m for m, _ in iter_files(omniglot_sources["images_background"], keep=lambda m: False)]
    assert names == {m.split("/")[-3] for m in members if m.endswith(".png")}


def test_pixels_are_the_resized_inverted_originals(everything, omniglot_sources):
    """Character 3 of the background set, drawer 2, decoded independently of mtl (read by the standard
    library's zipfile/tarfile, or from the unpacked folder)."""
    character = everything.class_names[3]
    source = omniglot_sources["images_background"]
    prefix = f"images_background/{character}/"
    if source.is_dir():
        image = Image.open(sorted((source / character).glob("*.png"))[1])
    elif source.name.endswith(".zip"):
        with zipfile.ZipFile(source) as archive:
            member = sorted(n for n in archive.namelist() if n.startswith(prefix) and n.endswith(".png"))[1]
            image = Image.open(io.BytesIO(archive.read(member)))
    else:
        with tarfile.open(source) as tar:
            member = sorted(m.name for m in tar if m.name.startswith(prefix))[1]
            image = Image.open(io.BytesIO(tar.extractfile(member).read()))
    assert image.size == (105, 105)
    expected = 255 - np.asarray(image.convert("L").resize((28, 28), Image.Resampling.BOX))
    assert np.array_equal(everything.images[3, 1, 0].numpy(), expected)


def test_ink_is_bright_on_black_and_smooth(everything):
    images = everything.images[:200].float()
    assert images.median() == 0 and images.max() == 255 and images.mean() < 60  # sparse bright ink
    assert len(torch.unique(everything.images[:50])) > 20  # grey levels (area filter), not just 0/255


def test_rotations_are_extra_classes(omniglot_cache):
    plain = load_dataset("omniglot", "val", cache_dir=omniglot_cache)
    rotated = load_dataset("omniglot", "val", cache_dir=omniglot_cache, rotations=True)
    assert rotated.images.shape == (400, 20, 1, 28, 28)
    assert torch.equal(rotated.images[:100], plain.images)
    assert torch.equal(rotated.images[100 + 7], plain.images[7].rot90(1, dims=(-2, -1)))
    assert torch.equal(rotated.images[300 + 7], plain.images[7].rot90(3, dims=(-2, -1)))
    assert rotated.class_names[107] == plain.class_names[7] + "/rot090"


def test_sampling_real_episodes(omniglot_cache):
    test = load_dataset("omniglot", "test", cache_dir=omniglot_cache)
    batch = EpisodeSampler(test, ways=20, shots=5, queries=15, seed=0).sample(2)
    assert batch.support_x.shape == (2, 100, 1, 28, 28) and batch.query_x.shape == (2, 300, 1, 28, 28)
    with pytest.raises(EpisodeError, match="shots \\+ queries <= 20"):
        EpisodeSampler(test, ways=5, shots=5, queries=16)


def test_unknown_names_are_refused(omniglot_cache):
    with pytest.raises(DataError, match="use one of sinusoid, omniglot, mini-imagenet, folder:PATH"):
        load_dataset("omniglott", "train")
    with pytest.raises(DataError, match="use one of train, val, test"):
        load_dataset("omniglot", "training", cache_dir=omniglot_cache)


# ---------------------------------------------------------------- synthetic archives

ALPHABETS = {"images_background": {"Latin": 2, "Greek": 1}, "images_evaluation": {"Runic": 2}}


@pytest.fixture
def tiny(monkeypatch):
    """Shrink Omniglot to 3 + 2 characters x 2 drawers so synthetic archives stay small."""
    monkeypatch.setattr(omniglot, "PARTS", {"images_background": 3, "images_evaluation": 2})
    monkeypatch.setattr(omniglot, "DRAWERS", 2)


def _members(part: str, make_png) -> dict[str, bytes]:
    members = {}
    for alphabet, count in ALPHABETS[part].items():
        for c in range(1, count + 1):
            for d in (1, 2):
                members[f"{part}/{alphabet}/character{c:02d}/0{c}00_{d:02d}.png"] = make_png(10 * c + d)
    return members


@pytest.mark.parametrize("form", [".tar.gz", ".zip", "folder"])
def test_synthetic_archives_and_folders_load(tmp_path, tiny, make_png, form):
    root = tmp_path / "data"
    for part in omniglot.PARTS:
        members = _members(part, make_png)
        if form == "folder":
            for name, data in members.items():
                (root / "omniglot" / name).parent.mkdir(parents=True, exist_ok=True)
                (root / "omniglot" / name).write_bytes(data)
        else:
            write_archive(root / "omniglot" / f"{part}{form}", members)
    ds = load_dataset("omniglot", "all", root=root, cache_dir=tmp_path / "cache", download=False, progress=False)
    assert ds.images.shape == (5, 2, 1, 28, 28)
    assert ds.class_names == ["Greek/character01", "Latin/character01", "Latin/character02",
                              "Runic/character01", "Runic/character02"]
    assert load_dataset("omniglot", "evaluation", root=root, cache_dir=tmp_path / "cache").num_classes == 2
    assert (tmp_path / "cache" / "omniglot-28-all.pt").is_file()


def test_wrong_layout_names_the_expected_one(tmp_path, tiny, make_png):
    root = tmp_path / "data"
    write_archive(root / "omniglot" / "images_background.tar.gz", {"Latin/character01/x.png": make_png()})
    write_archive(root / "omniglot" / "images_evaluation.tar.gz", _members("images_evaluation", make_png))
    with pytest.raises(DataError, match="expected images_background/<Alphabet>/<characterNN>"):
        load_dataset("omniglot", "all", root=root, cache_dir=tmp_path / "cache", download=False)
    assert not list((tmp_path / "cache").glob("*.pt")) if (tmp_path / "cache").exists() else True


def test_incomplete_or_undecodable_archives(tmp_path, tiny, make_png):
    root = tmp_path / "data"
    background = _members("images_background", make_png)
    write_archive(root / "omniglot" / "images_evaluation.tar.gz", _members("images_evaluation", make_png))
    first = next(iter(background))
    write_archive(root / "omniglot" / "images_background.tar.gz", {k: v for k, v in background.items() if k != first})
    with pytest.raises(DataError, match="incomplete.*has 1 images \\(expected 2\\)"):
        load_dataset("omniglot", "all", root=root, cache_dir=tmp_path / "cache", download=False)
    write_archive(root / "omniglot" / "images_background.tar.gz", {**background, first: b"not a png"})
    with pytest.raises(DataError, match="could not be decoded"):
        load_dataset("omniglot", "all", root=root, cache_dir=tmp_path / "cache", download=False)
    assert not (tmp_path / "cache" / "omniglot-28-all.pt").exists()


def test_no_data_and_no_download_says_where_to_put_files(tmp_path, tiny):
    with pytest.raises(DataError, match=r"\$MTL_DATA/omniglot/"):
        load_dataset("omniglot", "train", root=tmp_path / "empty", cache_dir=tmp_path / "cache", download=False)
