"""benchmarks/core.py: every implementation runs one tiny configuration and agrees with mtl, the
baseline worker answers from another checkout, and the ratios are taken round by round."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "core.py"


def _core():
    spec = importlib.util.spec_from_file_location("bench_core", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("order", ["second", "first"])
def test_every_implementation_computes_the_same_meta_gradient(order):
    core = _core()
    grads = {}
    for impl in core.IMPLEMENTATIONS:
        if impl == "floor":
            continue
        model, tasks = core.setup("omniglot-5w1s-b8-s1", torch.device("cpu"), "standard", 2)
        model.double()
        tasks = tuple(t.double() if t.is_floating_point() else t for t in tasks)
        core.step_fn(impl, model, tasks, "omniglot-5w1s-b8-s1", order == "first")()
        grads[impl] = [p.grad for p in model.parameters()]
    for impl, got in grads.items():
        for g, want in zip(got, grads["functional"]):
            torch.testing.assert_close(g, want, rtol=1e-9, atol=1e-12, msg=impl)


def test_ratios_are_taken_round_by_round():
    rows = [{"config": "c", "order": "second", "impl": impl, "all_ms": ms}
            for impl, ms in [("mtl", [100, 200, 100]), ("l2l", [110, 230, 120]),
                             ("functional", [105, 190, 130]), ("floor", [50, 100, 50]),
                             ("baseline", [90, 220, 100])]]
    entry = _core().ratios(rows)["c/second"]
    assert entry["fastest_peer_over_mtl"] == {"median": 1.05, "min": 0.95, "max": 1.2, "rounds": 3}
    assert entry["baseline_over_mtl"]["median"] == 1.0
    assert entry["mtl_over_floor"]["median"] == 2.0


def test_a_tiny_run_writes_json_and_times_a_baseline_checkout(tmp_path):
    out = tmp_path / "core.json"
    subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--configs", "omniglot-5w1s-b8-s1",
                    "--orders", "first", "--meta-batch", "1", "--warmup", "1", "--rounds", "2",
                    "--impls", "mtl", "functional", "--baseline", str(ROOT), "--json", str(out)],
                   check=True, capture_output=True, text=True, timeout=300)
    report = json.loads(out.read_text())
    assert {r["impl"] for r in report["rows"]} == {"mtl", "functional", "baseline"}
    assert all(len(r["all_ms"]) == 2 and "error" not in r for r in report["rows"])
    assert report["ratios"]["omniglot-5w1s-b8-s1/first"]["baseline_over_mtl"]["rounds"] == 2
