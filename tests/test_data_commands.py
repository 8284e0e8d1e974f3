"""`python -m mtl data info [--json]` and `python -m mtl data prepare` (in-process, synthetic data)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mtl.cli import main
from mtl.data import omniglot

from archive_helpers import write_archive
from test_data_omniglot import _members


@pytest.fixture
def tiny_root(tmp_path, monkeypatch, make_png):
    monkeypatch.setattr(omniglot, "PARTS", {"images_background": 3, "images_evaluation": 2})
    monkeypatch.setattr(omniglot, "DRAWERS", 2)
    root = tmp_path / "data"
    for part in omniglot.PARTS:
        write_archive(root / "omniglot" / f"{part}.tar.gz", _members(part, make_png))
    return root


def test_info_json_reports_counts_and_reasons(tiny_root, tmp_path, capsys):
    assert main(["data", "info", "--json", "--root", str(tiny_root), "--cache-dir", str(tmp_path / "c")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["omniglot"]["splits"]["all"] == {"found": True, "classes": 5, "per_class": 2, "images": 10,
                                                   "error": None}
    assert report["omniglot"]["splits"]["background"]["classes"] == 3
    assert report["omniglot"]["found"] and not report["mini-imagenet"]["found"]
    assert report["mini-imagenet"]["source"] is None
    assert report["mini-imagenet"]["splits"]["train"] == {
        "found": False, "classes": None, "per_class": None, "images": None,
        "error": report["mini-imagenet"]["splits"]["train"]["error"]}
    assert "cannot be downloaded" in report["mini-imagenet"]["splits"]["train"]["error"]


def test_info_json_has_the_same_keys_for_every_split_found_or_not(tmp_path, tiny_root, capsys):
    from mtl.data.info import ROW_KEYS

    for root in (tiny_root, tmp_path / "empty"):
        assert main(["data", "info", "--json", "--root", str(root), "--cache-dir", str(tmp_path / "c")]) == 0
        report = json.loads(capsys.readouterr().out)
        for name in ("omniglot", "mini-imagenet"):
            assert set(report[name]) == {"found", "source", "splits"}
            assert all(tuple(row) == ROW_KEYS for row in report[name]["splits"].values()), report[name]
    assert report["omniglot"]["splits"]["val"]["error"].startswith("Omniglot's images_background was not found")


def test_prepare_builds_the_cache_then_info_reads_it(tiny_root, tmp_path, capsys):
    cache = tmp_path / "c"
    args = ["--root", str(tiny_root), "--cache-dir", str(cache)]
    assert main(["data", "prepare", "--dataset", "omniglot", "--no-progress", "--no-download", *args]) == 0
    assert "5 characters x 2 drawers" in capsys.readouterr().out
    assert (cache / "omniglot-28-all.pt").is_file()
    assert main(["data", "info", *args]) == 0
    out = capsys.readouterr().out
    assert "omniglot-28-all.pt" in out and "evaluation      2 classes" in out


def test_prepare_without_data_fails_with_the_fix(tmp_path, capsys):
    code = main(["data", "prepare", "--dataset", "mini-imagenet", "--root", str(tmp_path), "--cache-dir",
                 str(tmp_path / "c")])
    assert code == 1
    assert "mini-imagenet/" in capsys.readouterr().err


def test_module_entry_point_runs(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mtl", "data", "info", "--root", str(tmp_path / "none"),
                             "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "omniglot: not available" in result.stdout


@pytest.mark.parametrize("size", ["0", "-3"])
def test_prepare_refuses_a_bad_image_size_as_a_usage_error(tmp_path, capsys, size):
    code = main(["data", "prepare", "--dataset", "omniglot", "--image-size", size, "--no-download",
                 "--root", str(tmp_path), "--cache-dir", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "image size" in err and "Traceback" not in err
    assert not (tmp_path / "c").exists()
