"""python -m mtl bench's report: the ratios and the round-by-round comparison, from rows made by hand."""
from __future__ import annotations

from mtl.cli import bench


def _row(impl: str, all_ms: list[float], **extra) -> dict:
    ordered = sorted(all_ms)
    return {"config": "c", "order": "second", "impl": impl, "ms": ordered[len(ordered) // 2],
            "all_ms": all_ms, **extra}


def test_ratios_compare_auto_with_the_fastest_peer_overall_and_round_by_round():
    # round 1 is slow for everyone (load): paired by round, auto wins every round
    rows = [_row("auto", [100, 200, 100], strategy_chosen="loop"), _row("l2l", [110, 230, 120]),
            _row("functional", [105, 250, 150]), _row("higher", [130, 210, 140]),
            _row("floor", [50, 90, 60])]
    entry = bench.ratios(rows)["c/second"]
    assert entry["fastest_peer"] == "l2l"  # medians: l2l 120, functional 150, higher 140; auto 100
    assert entry["auto_vs_fastest_peer"] == 1.2
    assert entry["auto_over_floor"] == round(100 / 60, 3)
    assert entry["auto_chose"] == "loop"
    assert entry["auto_vs_fastest_peer_by_round"] == {
        "median": 1.05, "min": 1.05, "max": 1.2, "auto_faster": 3, "rounds": 3}  # 105/100, 210/200, 120/100
    table = bench.markdown_table({"rows": rows})
    assert "1.05x (1.05-1.20), 3 of 3" in table


def test_no_round_by_round_figure_without_rounds_of_equal_count():
    rows = [_row("auto", [100, 200, 100]), _row("l2l", [110, 230])]
    assert "auto_vs_fastest_peer_by_round" not in bench.ratios(rows)["c/second"]
