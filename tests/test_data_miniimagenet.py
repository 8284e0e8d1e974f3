"""mini-ImageNet: the real archives' CSVs and member names (no decoding), synthetic archives for the loader."""
from __future__ import annotations

from pathlib import PurePosixPath

import pytest
import torch

from archive_helpers import write_archive
from mtl.data import EpisodeSampler, load_dataset, miniimagenet
from mtl.data.archives import iter_files
from mtl.errors import DataError

# ---------------------------------------------------------------- real data: names and CSVs only


@pytest.fixture(scope="module")
def real_index(mini_imagenet_data):
    """{split: (source, member names, csv labels)}, one pass over each archive without decoding images."""
    index = {}
    for split in miniimagenet.SPLITS:
        source = miniimagenet.find_source_for(split, mini_imagenet_data)
        names, labels = [], None
        for name, data in iter_files(source, keep=lambda n: n.endswith(".csv")):
            names.append(name)
            if data is not None:
                labels = miniimagenet._read_csv(data)
        index[split] = (source, names, labels)
    return index


def test_ravi_split_is_64_16_20_by_600(real_index):
    wnids = {}
    for split, (source, names, labels) in real_index.items():
        classes = miniimagenet._classify(source, split, names, labels)
        assert len(classes) == miniimagenet.SPLITS[split]
        assert {len(members) for members in classes.values()} == {600}
        assert all(PurePosixPath(m).parts[-3:-1] == (split, wnid) for wnid, ms in classes.items() for m in ms)
        wnids[split] = set(classes)
    assert not wnids["train"] & wnids["val"] and not wnids["train"] & wnids["test"] and not wnids["val"] & wnids["test"]


# ---------------------------------------------------------------- synthetic archives, same layout

COLORS = {"n001": (250, 10, 10), "n002": (10, 250, 10), "n003": (10, 10, 250)}


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(miniimagenet, "SPLITS", {"train": 3, "val": 3, "test": 3})


def _split_members(split: str, make_jpeg, per_class: int = 4, size: int = 84, csv: bool = True) -> dict[str, bytes]:
    members, rows = {}, ["filename,label"]
    for wnid, rgb in COLORS.items():
        for i in range(per_class):
            filename = f"{wnid}{i:08d}.jpg"
            members[f"{split}/{wnid}/{filename}"] = make_jpeg(rgb, size)
            rows.append(f"{filename},{wnid}")
    if csv:
        members[f"{split}.csv"] = ("\n".join(rows) + "\n").encode()
    return members


def _check_colors(ds):
    assert ds.class_names == list(COLORS)
    mean = ds.images.float().mean(dim=(1, 3, 4))  # [classes, 3]
    for row, rgb in zip(mean, COLORS.values()):
        assert torch.allclose(row, torch.tensor(rgb, dtype=torch.float32), atol=6)


def test_synthetic_tar_with_the_real_layout(tmp_path, tiny, make_jpeg):
    root = tmp_path / "data"
    write_archive(root / "mini-imagenet" / "val.tar.gz", _split_members("val", make_jpeg))
    ds = load_dataset("mini-imagenet", "val", root=root, cache_dir=tmp_path / "cache", progress=False)
    assert ds.images.shape == (3, 4, 3, 84, 84) and ds.images.dtype == torch.uint8
    _check_colors(ds)
    batch = EpisodeSampler(ds, ways=3, shots=1, queries=2).sample(2)
    assert batch.support_x.shape == (2, 3, 3, 84, 84)
    warm = load_dataset("mini-imagenet", "val", root=tmp_path / "nowhere", cache_dir=tmp_path / "cache")
    assert torch.equal(warm.images, ds.images)  # served from the cache, sources no longer needed


def test_unpacked_folder_without_csv_and_resizing(tmp_path, tiny, make_jpeg):
    root = tmp_path / "data" / "mini-imagenet"
    for name, data in _split_members("test", make_jpeg, size=100, csv=False).items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    ds = load_dataset("mini-imagenet", "test", root=tmp_path / "data", cache_dir=tmp_path / "cache", progress=False)
    assert ds.images.shape == (3, 4, 3, 84, 84)
    _check_colors(ds)


def test_ravi_images_folder_with_csv(tmp_path, tiny, make_jpeg):
    root = tmp_path / "data" / "mini-imagenet"
    members = _split_members("train", make_jpeg, size=120)
    (root / "images").mkdir(parents=True)
    for name, data in members.items():
        target = root / name if name.endswith(".csv") else root / "images" / PurePosixPath(name).name
        target.write_bytes(data)
    ds = load_dataset("mini-imagenet", "train", root=tmp_path / "data", cache_dir=tmp_path / "cache",
                      image_size=32, progress=False)
    assert ds.images.shape == (3, 4, 3, 32, 32)
    _check_colors(ds)


def test_missing_images_and_wrong_layout(tmp_path, tiny, make_jpeg):
    root = tmp_path / "data"
    members = _split_members("val", make_jpeg)
    del members["val/n002/n00200000001.jpg"]
    write_archive(root / "mini-imagenet" / "val.tar.gz", members)
    with pytest.raises(DataError, match="incomplete.*11 of the 12 images its CSV lists"):
        load_dataset("mini-imagenet", "val", root=root, cache_dir=tmp_path / "cache", progress=False)
    write_archive(root / "mini-imagenet" / "test.tar.gz", {"photos/a.jpg": make_jpeg((1, 2, 3))})
    with pytest.raises(DataError, match="expected test/<wnid>/<image>.jpg"):
        load_dataset("mini-imagenet", "test", root=root, cache_dir=tmp_path / "cache", progress=False)
    assert not list((tmp_path / "cache").glob("*.pt")) if (tmp_path / "cache").exists() else True


def test_absent_data_explains_how_to_obtain_it(tmp_path):
    with pytest.raises(DataError, match="cannot be downloaded.*data/README.md"):
        load_dataset("mini-imagenet", "train", root=tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match="mini-imagenet has none"):
        load_dataset("mini-imagenet", "train", root=tmp_path, rotations=True)


def test_describe_reads_names_only(tmp_path, tiny, make_jpeg):
    root = tmp_path / "data"
    write_archive(root / "mini-imagenet" / "val.tar.gz", _split_members("val", make_jpeg, per_class=5))
    report = miniimagenet.describe(root=root, cache_dir=tmp_path / "cache")
    assert report["splits"]["val"] == {"classes": 3, "per_class": 5, "images": 15}
    assert "not found" in report["splits"]["train"]["error"]
    assert not (tmp_path / "cache").exists()
