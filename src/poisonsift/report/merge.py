"""One reproduction out of several sittings: ``poisonsift report --merge DIR... --out OUT``.

A sitting is what one ``poisonsift reproduce`` wrote (``DIR/results.json``); a sitting's cache does
not outlive its machine, so each sitting computed the rows the earlier ones lacked. Units are keyed
by their config, so the rows of several sittings can stand in one table: for each table row (by its
label) the newest sitting that has it gives it, and the row says which (``row["sitting"]``). A table
whose rows would come from sittings of different presets is refused: its numbers would not be one
experiment. The merged ``results.json`` has a single sitting's keys (:func:`check_results`) plus
``sittings`` (name, date, commit, preset, epochs, and which rows each gave).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from poisonsift.errors import DataError
from poisonsift.utils import atomic_write_json

__all__ = ["RESULT_KEYS", "ROW_KEYS", "check_results", "merge_results"]

#: The keys every ``results.json`` holds (one sitting's, or merged), and every table row
#: (``unit_seconds`` and ``date`` came later: read where present).
RESULT_KEYS = ("preset", "poisonsift", "train_configs", "executor", "data", "cache", "tables", "computed", "seconds")
ROW_KEYS = ("label", "ours", "paper", "diff", "runs", "detections", "seconds")
_TABLE_KEYS = ("name", "title", "key", "columns", "rows")


def check_results(res: Any, where: str = "results.json") -> dict[str, Any]:
    """``res`` if it has the shape of a ``results.json`` (its keys, each table's and each row's, the
    rows' values for the table's columns), else a :class:`DataError` naming what is missing."""
    if not isinstance(res, dict):
        raise DataError(f"{where}: not a JSON object")
    missing = [k for k in RESULT_KEYS if k not in res]
    if missing:
        raise DataError(f"{where}: lacks {', '.join(missing)}; is it what `poisonsift reproduce` wrote?")
    if not isinstance(res["tables"], dict) or not res["tables"]:
        raise DataError(f"{where}: no tables")
    for name, t in res["tables"].items():
        lack = [k for k in _TABLE_KEYS if k not in t]
        if lack or t["name"] != name or not t["rows"]:
            raise DataError(f"{where}: table {name!r} is malformed (lacks {', '.join(lack) or 'rows'})")
        for r in t["rows"]:
            lack = [k for k in ROW_KEYS if k not in r]
            if lack:
                raise DataError(f"{where}: a row of table {name!r} lacks {', '.join(lack)}")
            if not set(r["ours"]) <= set(t["columns"]):
                raise DataError(f"{where}: table {name!r} row {r['label']} has values outside its columns")
    return res


def _read(d: Path) -> dict[str, Any]:
    path = d / "results.json"
    if not path.is_file():
        raise DataError(f"{d}: no results.json (a sitting is a folder that `poisonsift reproduce --out` wrote)")
    try:
        return check_results(json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def _date(d: Path, res: dict[str, Any]) -> str:
    """The sitting's date: the one it recorded, else the date its folder is named by, else the file's."""
    if res.get("date"):
        return str(res["date"])
    m = re.match(r"\d{4}-\d{2}-\d{2}", d.name)
    if m:
        return m.group(0)
    return _dt.datetime.fromtimestamp((d / "results.json").stat().st_mtime, _dt.timezone.utc).strftime("%Y-%m-%d")


def merge_results(dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> dict[str, Any]:
    """Merge the sittings in ``dirs`` into ``OUT/results.json`` (returned). Newest first by date;
    sittings of one date rank in the order given, the later one newer."""
    if not dirs:
        raise DataError("--merge needs at least one sitting folder")
    out = Path(out)
    sittings = []
    for i, d in enumerate(map(Path, dirs)):
        res = _read(d)
        made = res.get("poisonsift") or {}
        epochs = sorted({tc.get("epochs") for tc in res["train_configs"] if tc.get("epochs") is not None})
        sittings.append({"name": d.name, "dir": Path(os.path.relpath(d.resolve(), out.resolve())).as_posix(),
                         "date": _date(d, res), "commit": made.get("commit"), "version": made.get("version"),
                         "preset": res["preset"], "epochs": epochs, "order": i, "res": res, "rows": {}})  # fmt: skip
    if len({s["name"] for s in sittings}) != len(sittings):
        raise DataError("two sittings share a folder name; the rows would not say which they came from")
    newest_first = sorted(sittings, key=lambda s: (s["date"], s["order"]), reverse=True)
    tables: dict[str, dict[str, Any]] = {}
    names = list(dict.fromkeys(n for s in sittings for n in s["res"]["tables"]))
    for name in names:
        chosen: dict[str, tuple[dict, dict]] = {}  # label -> (sitting, row), the newest first
        order: list[str] = []
        for s in newest_first:
            t = s["res"]["tables"].get(name)
            for r in t["rows"] if t else []:
                lab = json.dumps(r["label"], sort_keys=True)
                if lab not in chosen:
                    chosen[lab] = (s, r)
                    order.append(lab)
        presets = sorted({s["preset"] for s, _ in chosen.values()})
        if len(presets) > 1:
            raise DataError(f"table {name}: its rows would come from sittings of presets {', '.join(presets)}; "
                            "refusing to mix them (merge sittings of one preset)")  # fmt: skip
        newest = next(s["res"]["tables"][name] for s in newest_first if name in s["res"]["tables"])
        rows, columns = [], list(newest["columns"])
        for lab in sorted(order, key=lambda k: _canonical(name, json.loads(k))):
            s, r = chosen[lab]
            rows.append({**r, "sitting": s["name"]})
            s["rows"].setdefault(name, []).append(r["label"])
            columns += [c for c in s["res"]["tables"][name]["columns"] if c not in columns]
        tables[name] = {**{k: v for k, v in newest.items() if k != "rows"}, "columns": columns, "rows": rows}
    used = [s for s in sittings if s["rows"]]
    merged = {
        "preset": "+".join(sorted({s["preset"] for s in used})),
        "poisonsift": {"version": newest_first[0]["version"], "commit": "merged",
                       "commits": sorted({str(s["commit"]) for s in used})},  # fmt: skip
        "train_configs": [tc for s in used for tc in s["res"]["train_configs"]],
        "executor": "merged",
        "data": None,
        "cache": None,  # each row's runs live in its own sitting's cache
        "tables": tables,
        "computed": {"runs": 0, "detections": 0, "units": 0},
        "unit_seconds": {k: sum(s["res"].get("unit_seconds", {}).get(k, 0.0) for s in used) for k in ("runs", "detections")},
        "seconds": sum(float(s["res"].get("seconds", 0.0)) for s in used),
        "sittings": [{k: s[k] for k in ("name", "dir", "date", "commit", "preset", "epochs", "rows")} for s in sittings],
    }
    check_results(merged, str(out / "results.json"))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", merged)
    return merged


def _canonical(table: str, label: dict[str, Any]) -> tuple:
    """Rows in the paper's order: poison shares and amplitudes from the largest, sizes and methods as printed."""
    key = []
    for k, v in sorted(label.items()):
        if k in ("p", "amplitude") and isinstance(v, (int, float)):
            key.append((0, -v, ""))
        elif isinstance(v, (int, float)):
            key.append((0, v, ""))
        else:
            key.append((1, 0, str(v)))
    return tuple(key)
