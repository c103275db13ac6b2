"""report --merge: one reproduction from several sittings, each row from the newest sitting that has it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poisonsift.cli import main
from poisonsift.errors import DataError
from poisonsift.report import check_results, merge_results

SITTINGS = Path(__file__).resolve().parents[1] / "docs" / "reproduction"


def _sitting(d: Path, rows: dict[int, float], preset: str = "cpu", date: str | None = None) -> Path:
    """A one-table sitting: Table 1 with an ASR per p."""
    t = {"name": "1", "title": "Standard attack", "key": "p", "columns": ["ASR"], "note": None,
         "rows": [{"label": {"p": p}, "ours": {"ASR": v}, "paper": {"ASR": 100.0}, "diff": {"ASR": v - 100.0},
                   "runs": [f"runs/{d.name}-{p}"], "detections": {}, "seconds": {"train": [1.0]}} for p, v in rows.items()]}
    res = {"preset": preset, "poisonsift": {"version": "0", "commit": d.name}, "train_configs": [{"epochs": 4}],
           "executor": "local", "data": None, "cache": "cache", "tables": {"1": t}, "computed": {}, "seconds": 1.0}
    if date:
        res["date"] = date
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(check_results(res)))
    return d


def test_each_row_comes_from_the_newest_sitting_that_has_it(tmp_path):
    old = _sitting(tmp_path / "2026-01-01", {33: 90.0, 15: 80.0})
    new = _sitting(tmp_path / "later", {33: 99.0, 5: 70.0}, date="2026-02-01")
    m = merge_results([new, old], tmp_path / "merged")  # the order given does not matter across dates
    rows = m["tables"]["1"]["rows"]
    assert [(r["label"]["p"], r["ours"]["ASR"], r["sitting"]) for r in rows] == [
        (33, 99.0, "later"), (15, 80.0, "2026-01-01"), (5, 70.0, "later")]
    assert {s["name"]: s["rows"] for s in m["sittings"]} == {"later": {"1": [{"p": 33}, {"p": 5}]},
                                                              "2026-01-01": {"1": [{"p": 15}]}}
    on_disk = json.loads((tmp_path / "merged" / "results.json").read_text())
    assert check_results(on_disk) and on_disk["cache"] is None and on_disk["poisonsift"]["commits"] == ["2026-01-01", "later"]


def test_rows_of_different_presets_are_not_mixed(tmp_path):
    a = _sitting(tmp_path / "2026-01-01", {33: 90.0, 15: 80.0})
    b = _sitting(tmp_path / "2026-01-02", {5: 70.0}, preset="paper")
    with pytest.raises(DataError, match="table 1: its rows would come from sittings of presets cpu, paper; refusing"):
        merge_results([a, b], tmp_path / "m")
    c = _sitting(tmp_path / "2026-01-03", {33: 1.0, 15: 2.0}, preset="paper")  # supersedes all of a's rows
    assert {r["sitting"] for r in merge_results([a, b, c], tmp_path / "m")["tables"]["1"]["rows"]} == {"2026-01-02", "2026-01-03"}


def test_bad_sittings_are_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no results.json"):
        merge_results([tmp_path / "empty"], tmp_path / "m")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text(json.dumps({"preset": "cpu"}))
    with pytest.raises(DataError, match="lacks poisonsift, train_configs"):
        merge_results([tmp_path / "bad"], tmp_path / "m")
    assert main(["report", "--merge", str(tmp_path / "empty")]) != 0
    assert "--out OUT" in capsys.readouterr().err


def test_the_published_sittings_merge_into_one_report(tmp_path, capsys):
    dirs = [SITTINGS / n for n in ("2026-12-02", "2026-12-03", "2026-12-03c")]
    out = tmp_path / "merged"
    assert main(["report", "--merge", *map(str, dirs), "--out", str(out)]) == 0
    assert "from 3 sittings" in capsys.readouterr().out
    res = check_results(json.loads((out / "results.json").read_text()))
    t1 = {r["label"]["p"]: r["sitting"] for r in res["tables"]["1"]["rows"]}
    assert t1 == {33: "2026-12-03", 15: "2026-12-02", 10: "2026-12-02", 5: "2026-12-02", 2: "2026-12-03"}
    assert {r["label"]["p"]: r["sitting"] for r in res["tables"]["2"]["rows"]}[2] == "2026-12-03c"  # same date, given later
    assert set(res["tables"]) == {"1", "2", "3", "4", "5", "fig6", "sizes"}
    md = (out / "report.md").read_text()
    assert "| sitting |" in md and "Sitting 2026-12-03c (2026-12-03" in md
    assert (out / "figures" / "per-class-asr-fig6.png").is_file()
