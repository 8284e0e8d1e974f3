"""The dataset registry: a dataset is one file plus one registry entry, and everything reads its spec."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtl.data import DATASETS, TaskBatch, dataset_spec, load_dataset, register_dataset, task_source
from mtl.engine.config import TrainConfig
from mtl.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]

#: a whole dataset file, as a user would write one beside mtl/data/miniimagenet.py
TOY_FILE = '''
"""Toy shapes: class c is a bright square at a place of its own (a dataset in one file)."""
import torch

from mtl.data.dataset import FewShotDataset
from mtl.data.spec import DatasetSpec

SPLITS = {"train": 6, "val": 3, "test": 3}
PER_CLASS = 8
LOADS = []


def load(split, *, root=None, cache_dir=None, image_size=None, download=True, progress=True):
    LOADS.append(split)
    size = image_size or 16
    first = {"train": 0, "val": 6, "test": 9}[split]
    g = torch.Generator().manual_seed(first)
    images = (torch.rand(SPLITS[split], PER_CLASS, 1, size, size, generator=g) * 40).to(torch.uint8)
    for c in range(SPLITS[split]):
        at = 2 * ((first + c) % 6)
        images[c, :, :, at:at + 4, at:at + 4] = 255
    return FewShotDataset(images, [f"shape{first + c}" for c in range(SPLITS[split])], "toy", split)


SPEC = DatasetSpec(name="toy", load=load, splits=SPLITS, per_class=PER_CLASS, channels=(1,),
                   image_size=16, hidden=8)
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The toy dataset: its file written and imported, then registered (one line), removed after."""
    path = tmp_path / "toy.py"
    path.write_text(TOY_FILE)
    module_spec = importlib.util.spec_from_file_location("toy", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    monkeypatch.delitem(DATASETS, "toy", raising=False)
    register_dataset(module.SPEC)
    yield module
    DATASETS.pop("toy", None)


def test_a_toy_dataset_added_by_one_file_and_one_entry_trains(toy, tmp_path):
    from mtl.engine.train import train

    config = TrainConfig(algorithm="maml", dataset="toy", ways=3, shots=1, queries=2, meta_batch=2,
                         iterations=4, val_every=2, val_episodes=4, eval_batch=4, test_episodes=4,
                         inner_lr=0.1, device="cpu", strategy="loop")
    resolved = config.resolved()
    assert (resolved.model, resolved.hidden, resolved.image_size, resolved.channels) == ("conv4", 8, 16, 1)
    summary = train(config, out=tmp_path / "run", progress=False)
    assert summary.steps == 4 and 0 <= summary.test["mean"] <= 1
    assert set(toy.LOADS) == {"train", "val", "test"}
    # the config checks read its split sizes: no other dataset's are assumed
    with pytest.raises(ConfigError, match="'val' has 3"):
        TrainConfig(dataset="toy", ways=4, test_ways=5, queries=2)
    with pytest.raises(ConfigError, match="8 per class"):
        TrainConfig(dataset="toy", ways=3, shots=4, queries=5)
    with pytest.raises(ConfigError, match="must be 1 for toy"):
        TrainConfig(dataset="toy", ways=3, queries=2, channels=3)


def test_load_dataset_and_task_source_read_the_spec(toy):
    ds = load_dataset("toy", "val")
    assert ds.images.shape == (3, 8, 1, 16, 16)
    with pytest.raises(DataError, match="split 'all'"):
        load_dataset("toy", "all")
    with pytest.raises(DataError, match="toy has none"):
        load_dataset("toy", "train", rotations=True)
    with pytest.raises(DataError, match="not options of toy"):
        load_dataset("toy", "train", invert=True)
    sampler = task_source("toy", "train", ways=3, shots=1, queries=1, seed=0)
    batch = sampler.sample(2)
    assert batch.support_x.shape == (2, 3, 1, 16, 16) and batch.classes.shape == (2, 3)
    sinusoids = task_source("sinusoid", "val", ways=1, shots=5, queries=3, seed=0)
    assert sinusoids.sample(4).support_x.shape == (4, 5, 1)
    with pytest.raises(DataError, match="no images to load"):
        load_dataset("sinusoid", "train")


def test_unknown_names_and_paths_are_refused_with_the_choices():
    with pytest.raises(DataError, match="omniglot, mini-imagenet, folder:PATH"):
        dataset_spec("cifar")
    with pytest.raises(DataError, match="takes no path"):
        dataset_spec("omniglot:/tmp")
    with pytest.raises(ConfigError, match="folder:PATH"):
        TrainConfig(dataset="folder")
    with pytest.raises(ConfigError, match="unknown dataset"):
        TrainConfig(dataset="cifar")
    with pytest.raises(DataError, match="DatasetSpec"):
        register_dataset("toy")


def test_the_built_in_specs_hold_what_the_config_used_to_assume():
    omniglot, mini = dataset_spec("omniglot"), dataset_spec("mini-imagenet")
    assert omniglot.train_classes(rotations=True) == 4400 and omniglot.splits["test"] == 423
    assert (omniglot.per_class, omniglot.channels, omniglot.image_size, omniglot.inverted) == (20, (1,), 28, True)
    assert dict(mini.splits) == {"train": 64, "val": 16, "test": 20} and mini.per_class == 600
    assert dataset_spec("sinusoid").regression and not dataset_spec("folder:x").sizes_known
    assert TrainConfig(dataset="sinusoid").regression and not TrainConfig().regression
    with pytest.raises(ConfigError, match="'train' has 64"):  # mini-ImageNet's own sizes
        TrainConfig(dataset="mini-imagenet", ways=65)


def test_no_branch_on_a_dataset_name_outside_its_own_file():
    """``dataset == "sinusoid"`` and its kin: a dataset's facts come from its spec."""
    names = "|".join(re.escape(n) for n in ("sinusoid", "omniglot", "mini-imagenet", "folder"))
    pattern = re.compile(rf"""(==|!=)\s*["']({names})["']|["']({names})["']\s*(==|!=)|"""
                         rf"""in \(["']({names})["']|startswith\(["']({names})""")
    found = []
    for path in (ROOT / "mtl").rglob("*.py"):
        own = path.parent.name == "data" and path.stem in ("sinusoid", "omniglot", "miniimagenet", "folder")
        if not own:
            found += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                      if pattern.search(line)]
    assert not found, found
    assert "../shared" not in (ROOT / "mtl" / "engine" / "config.py").read_text()


def test_batches_carry_their_class_ids_and_unpack_as_four_tensors(toy):
    sampler = task_source("toy", "train", ways=3, shots=2, queries=1, seed=0)
    batch, classes = sampler.sample(4, return_classes=True)
    assert torch.equal(batch.classes, classes) and len(batch) == 4
    sx, sy, qx, qy = batch
    assert sx.shape == (4, 6, 1, 16, 16) and qy.shape == (4, 3)
    # every support image shows its class's square: the ids are those of the images drawn
    at = 2 * (classes % 6)
    for t in range(4):
        for label in range(3):
            a = int(at[t, label])
            assert (sx[t, 2 * label, 0, a:a + 4, a:a + 4] == 1).all()
    moved = batch.to("cpu")
    assert moved.classes is batch.classes
    part = batch.tasks(1, 3)
    assert torch.equal(part.classes, classes[1:3]) and torch.equal(part.support_x, sx[1:3])
    assert TaskBatch(sx, sy, qx, qy).classes is None


def test_cli_data_and_train_help_list_the_registry():
    out = subprocess.run([sys.executable, "-m", "mtl", "train", "--help"], capture_output=True, text=True,
                         cwd=ROOT).stdout
    flat = "".join(out.split())  # argparse wraps lines, at spaces and hyphens
    assert "folder:PATH" in flat and "mini-imagenet" in flat
    assert "mtl(analiasofmeta-transfer)" in flat
    assert "protonet(unlessset:--ways20,--meta-batch1," in flat
    prepare = subprocess.run([sys.executable, "-m", "mtl", "data", "prepare", "--help"], capture_output=True,
                             text=True, cwd=ROOT).stdout
    assert "{omniglot,mini-imagenet}" in prepare
