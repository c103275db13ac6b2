"""Reproduce tables: plan the units, execute them, assemble each table beside the paper's values."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from poisonsift import __version__
from poisonsift.defences.spec import DetectSpec
from poisonsift.errors import ConfigError
from poisonsift.executors import make_executor
from poisonsift.experiments.specs import PAPER_TABLES, Column, Row, RunSpec, TableSpec, build_table, paper_values
from poisonsift.experiments.units import execute_detection, execute_training
from poisonsift.utils import atomic_write_json, cache_dir, config_hash, source_commit


def _for_run(d: DetectSpec, rs: RunSpec) -> DetectSpec:
    """The detection as it runs on ``rs``'s model: an ``auto`` LRP rule resolved by its network, so
    that the unit's key names the rule (SmallInception's keys as before ``auto`` existed)."""
    return d.for_arch(rs.train_config().arch)


def _value(col: Column, row: Row, run_res: dict, dets: dict[str, dict]) -> float | None:
    if col.source == "metrics":
        v = run_res["metrics"].get(col.field)
    elif col.source in ("train", "scan", "floor"):  # the scan's and the floor's records ride on the run's
        v = (run_res if col.source == "train" else run_res.get(col.source) or {}).get(col.field)
    else:
        alias = row.detection if col.source == "@row" else col.source
        v = dets[alias].get(col.field) if alias in dets else None
    if v is None:
        return None
    return float(v) * (100.0 if col.percent else 1.0)


def _paper_row(paper: dict[str, Any], table: TableSpec, row: Row) -> dict[str, Any] | None:
    for r in paper.get(table.name, {}).get("rows", []):
        if all(r.get(k) == v for k, v in row.label.items()):
            return r
    return None


def assemble(table: TableSpec, run_results: dict[str, dict], det_results: dict[tuple[str, str], dict],
             fingerprint: str, paper: dict[str, Any], scans: dict[tuple[str, str], dict] | None = None,
             floors: dict[tuple[str, str], dict] | None = None) -> dict[str, Any]:  # fmt: skip
    """One table's results: per row ``ours``, ``paper`` and ``diff`` (ours - paper), in percent.
    ``scans`` / ``floors``: the records of the table's scan and floor units (by :func:`_scan_units`'
    and :func:`_floor_units`' keys), read by its "scan" and "floor" columns."""
    rows_out = []
    for row in table.rows:
        per_run = []
        for rs in row.runs:
            key = rs.key(fingerprint)
            dets = {a: det_results[(key, _for_run(d, rs).key())] for a, d in table.detections_for(row).items()}
            rr = dict(run_results[key])
            if table.scan is not None:
                rr["scan"] = (scans or {})[(key, table.scan.key())]
            if table.needs_floor:
                rr["floor"] = (floors or {})[_floor_key(table, rs, fingerprint)]
            per_run.append((rr, dets))
        ours: dict[str, float | None] = {}
        by_col: dict[str, list[float | None]] = {}
        for col in table.columns:
            vals = by_col[col.name] = [_value(col, row, rr, dd) for rr, dd in per_run]
            if len(per_run) == 1:
                ours[col.name] = vals[0]
            else:
                ok = [v for v in vals if v is not None]
                ours[f"{col.name} mean"] = float(np.mean(ok)) if ok else None
                ours[f"{col.name} var"] = float(np.var(ok, ddof=1)) if len(ok) > 1 else None
        paper_row = _paper_row(paper, table, row)
        theirs = {k: v for k, v in paper_row.items() if k in ours} if paper_row else None
        diff = {k: ours[k] - v for k, v in (theirs or {}).items() if ours.get(k) is not None and v is not None}
        rows_out.append({
            "label": row.label, "ours": ours, "paper": theirs, "diff": diff,
            "runs": [_under_cache(rr["dir"]) for rr, _ in per_run],
            "detections": {a: [_under_cache(dd[a]["path"]) for _, dd in per_run] for a in table.detections_for(row)},
            "seconds": {"train": [rr["train_seconds"] for rr, _ in per_run],
                        **({"scan": [rr["scan"]["seconds"] for rr, _ in per_run]} if table.scan is not None else {}),
                        **{a: [dd[a]["seconds"] for _, dd in per_run] for a in table.detections_for(row)}},
            "per_class_asr": per_run[0][0]["metrics"].get("per_class_asr"),
        })  # fmt: skip
        if len(per_run) > 1:  # each repeat's own values, so a mean or a variance can be checked and merged
            rows_out[-1]["per_run"] = [{"seed": rs.seed, **{c: v[i] for c, v in by_col.items()}}
                                       for i, rs in enumerate(row.runs)]  # fmt: skip
    cols = list(rows_out[0]["ours"])
    return {"name": table.name, "title": table.title, "key": table.key, "columns": cols,
            "note": paper.get(table.name, {}).get("note"), "rows": rows_out}  # fmt: skip



def _relative(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """``path`` relative to ``base`` (both made absolute first), POSIX separators."""
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def _under_cache(path: str | os.PathLike) -> str:
    """A run or detection path relative to its cache root (the folder above ``runs/``)."""
    parts = Path(path).resolve().parts
    i = len(parts) - 1 - parts[::-1].index("runs")
    return Path(*parts[i:]).as_posix()


def _data_file(data: str | None, cache: Path):
    """A ``.npz`` path every worker can read, and the data's fingerprint."""
    from poisonsift.data import resolve_data, save_npz

    d = resolve_data(data)
    fp = d.fingerprint()
    if data is not None and Path(data).suffix == ".npz":
        return str(Path(data).resolve()), fp
    path = cache / "data" / f"{fp}.npz"
    if not path.exists():
        save_npz(d, path)
    return str(path), fp


def _train_configs(run_specs) -> list[dict[str, Any]]:
    """The distinct training settings of the runs (each run's own seed left out), in order."""
    out: list[dict[str, Any]] = []
    for rs in run_specs:
        cfg = {k: v for k, v in rs.train_config().to_dict().items() if k != "seed"}
        if cfg not in out:
            out.append(cfg)
    return out


def _total(seconds: Any) -> float:
    """Seconds of a unit's record: a number, or the sum of its stages (``total`` where given)."""
    if isinstance(seconds, dict):
        return float(seconds["total"]) if "total" in seconds else float(sum(_total(v) for v in seconds.values()))
    return float(seconds or 0.0)


def _table_specs(tables, preset, repeats, train, ps, rows=None) -> list[TableSpec]:
    names: list[str | TableSpec] = []
    for t in tables:
        names.extend(PAPER_TABLES if t == "all" else [t])
    if rows is not None and "attacks" not in names:
        raise ConfigError("rows are chosen by name only in the attacks table: add --table attacks or leave out --rows")
    return [t if isinstance(t, TableSpec) else build_table(t, preset, repeats, train, ps,
                                                          rows if t == "attacks" else None) for t in names]  # fmt: skip


def _run_units(specs: list[TableSpec], fp: str) -> tuple[dict[str, RunSpec], dict[str, RunSpec]]:
    """The distinct runs of the tables by key, and one run per distinct surrogate (by config hash)."""
    runs: dict[str, RunSpec] = {}
    for ts in specs:
        for rs in ts.run_specs():
            runs.setdefault(rs.key(fp), rs)
    for floor_rs, _ in _floor_units(specs, fp).values():
        runs.setdefault(floor_rs.key(fp), floor_rs)
    surrogates: dict[str, RunSpec] = {}
    for rs in runs.values():
        if rs.attack.needs_surrogate:
            surrogates.setdefault(config_hash(rs.surrogate_config().to_dict()), rs)
    return runs, surrogates


def _floor_key(table: TableSpec, rs: RunSpec, fp: str) -> tuple[str, str]:
    """(floor model's run key, the attack's config hash): one floor unit per attack and model."""
    return table.floor_run(rs).key(fp), config_hash(rs.attack.build().config())


def _floor_units(specs: list[TableSpec], fp: str) -> dict[tuple[str, str], tuple[RunSpec, RunSpec]]:
    """The distinct floors of the tables: key -> (the floor model's run, the attacked run)."""
    units: dict[tuple[str, str], tuple[RunSpec, RunSpec]] = {}
    for ts in specs:
        if ts.needs_floor:
            for rs in ts.run_specs():
                units.setdefault(_floor_key(ts, rs, fp), (ts.floor_run(rs), rs))
    return units


def _scan_units(specs: list[TableSpec], fp: str) -> dict[tuple[str, str], tuple[RunSpec, DetectSpec, bool]]:
    """The distinct (run key, scan key) scans of the tables: (run, scan spec, retrain after it)."""
    units: dict[tuple[str, str], tuple[RunSpec, DetectSpec, bool]] = {}
    for ts in specs:
        if ts.scan is not None:
            for rs in ts.run_specs():
                k = (rs.key(fp), ts.scan.key())
                prev = units.get(k)
                units[k] = (rs, ts.scan, ts.retrain or bool(prev and prev[2]))
    return units


def _detection_units(specs: list[TableSpec], fp: str) -> dict[tuple[str, str], tuple[RunSpec, DetectSpec]]:
    """The distinct (run key, detection key) units of the tables."""
    units: dict[tuple[str, str], tuple[RunSpec, DetectSpec]] = {}
    for ts in specs:
        for row in ts.rows:
            for d in ts.detections_for(row).values():
                for rs in row.runs:
                    dr = _for_run(d, rs)
                    units.setdefault((rs.key(fp), dr.key()), (rs, dr))
    return units


def plan(
    tables: Sequence[str | TableSpec],
    data: str | None = None,
    preset: str = "cpu",
    repeats: int | None = None,
    cache: str | Path | None = None,
    train: dict[str, Any] | None = None,
    ps: Sequence[float] | None = None,
    rows: Sequence[str] | None = None,
) -> dict[str, Any]:
    """What :func:`reproduce` with the same arguments would find in the cache and what it would
    compute, without computing or writing anything.

    Returns ``runs`` (one entry per distinct run: ``key``, ``attack``, ``p``, ``size``, ``amp``,
    ``seed``, ``epochs``, ``tables`` and ``status``: ``cached``, ``evaluate``, ``train`` or
    ``poison``, the first step still to do), ``surrogates`` (``epochs``, ``cached``) and
    ``to_compute``: ``surrogates``, ``trainings``, ``training_epochs`` (the sum of their epochs,
    what the time scales with), ``evaluations`` and ``detections`` (of ``detections_total``).
    """
    from poisonsift.data import resolve_data
    from poisonsift.experiments.units import _stored_spec, run_dir
    from poisonsift.runs import read_json, surrogate_path

    specs = _table_specs(tables, preset, repeats, train, ps, rows)
    cache = Path(cache) if cache is not None else cache_dir() / "experiments"
    d = resolve_data(data)
    fp = d.fingerprint()
    runs, surrogates = _run_units(specs, fp)
    in_tables: dict[str, list[str]] = {}
    for ts in specs:
        for rs in ts.run_specs():
            names = in_tables.setdefault(rs.key(fp), [])
            if ts.name not in names:
                names.append(ts.name)
    entries = []
    for key, rs in runs.items():
        folder = run_dir(cache, key)
        status = next((step for step, f in (("poison", "attack.json"), ("train", "train.json"),
                                            ("evaluate", "metrics.json")) if not (folder / f).exists()), "cached")  # fmt: skip
        a = rs.attack
        entries.append({"key": key, "attack": a.kind, "label": a.label, "p": a.p, "size": a.size, "amp": a.amp, "seed": rs.seed,
                        "epochs": rs.train_config().epochs, "tables": in_tables.get(key, ["floor"]),
                        "status": status})  # fmt: skip
    surs = []
    for rs in surrogates.values():
        cfg = rs.surrogate_config()
        surs.append({"epochs": cfg.epochs, "cached": surrogate_path(d, cfg, cache / "surrogates").exists()})
    dets = _detection_units(specs, fp)
    missing = 0
    for (key, _), (_, spec) in dets.items():
        path = run_dir(cache, key) / "detections" / spec.filename()
        ok = path.exists() and path.with_suffix(".npz").exists() and _stored_spec(read_json(path).get("spec")) == spec
        missing += not ok
    scans = _scan_units(specs, fp)
    scans_missing = sum(not (run_dir(cache, k) / "scans" / sk / "row.json").exists() for k, sk in scans)
    to_train = [e for e in entries if e["status"] in ("poison", "train")]
    return {
        "cache": str(cache),
        "runs": entries,
        "surrogates": surs,
        "to_compute": {
            "surrogates": sum(not s["cached"] for s in surs),
            "trainings": len(to_train),
            "training_epochs": sum(e["epochs"] for e in to_train),
            "evaluations": sum(e["status"] != "cached" for e in entries),
            "detections": missing,
            "detections_total": len(dets),
            "scans": scans_missing,  # each with its clean --retrain where the table asks for it
            "retrainings": sum(rt for k, (_, _, rt) in scans.items()
                               if not (run_dir(cache, k[0]) / "scans" / k[1] / "row.json").exists()),
        },
    }


def reproduce(
    tables: Sequence[str | TableSpec],
    data: str | None = None,
    preset: str = "cpu",
    repeats: int | None = None,
    out: str | Path = "runs/reproduce",
    cache: str | Path | None = None,
    executor: str | Any = "local",
    ray_address: str | None = None,
    jobs: int = 1,
    force: bool = False,
    device: str | None = None,
    threads: int | None = None,
    report: bool = True,
    train: dict[str, Any] | None = None,
    ps: Sequence[float] | None = None,
    rows: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run (or find in the cache) every unit the tables need and write ``OUT/results.json``
    (and, with ``report``, ``OUT/report.html`` / ``report.md``).

    ``tables``: names (``"1"``..``"5"``, ``"fig6"``, ``"sizes"``, ``"all"``) or
    :class:`TableSpec` objects; ``ps``: poison shares (fractions) for the tables with a ``p`` row
    (1, 2, 5) instead of the paper's, e.g. to run only the rows a cache lacks; ``rows``: the attacks
    table's rows by name (:func:`~poisonsift.experiments.specs.attack_row_name`), one sitting
    at a time, to be merged with ``report --merge``. ``cache`` defaults
    to ``$POISONSIFT_CACHE/experiments``, shared by every output folder. Returns the results dict.
    """
    t0 = time.perf_counter()
    specs = _table_specs(tables, preset, repeats, train, ps, rows)
    out = Path(out)
    cache = Path(cache) if cache is not None else cache_dir() / "experiments"
    cache.mkdir(parents=True, exist_ok=True)
    data_path, fp = _data_file(data, cache)
    ex = make_executor(executor, ray_address, jobs=jobs) if isinstance(executor, str) else executor
    if threads is None:
        import torch

        # A Ray task or a local job gets cpus_per_task CPUs: more torch threads would oversubscribe them.
        threads = getattr(ex, "cpus_per_task", None) or torch.get_num_threads()
    base = {"data": data_path, "fingerprint": fp, "cache": str(cache), "force": force, "device": device,
            "threads": threads}  # fmt: skip

    runs, surrogates = _run_units(specs, fp)
    # Two stages: the surrogates with every run that needs none, then the runs that need one.
    # Longest trainings first in each, so that with several jobs no worker waits on a long tail.
    run_list = list(runs.items())
    first = [("surrogate", rs.surrogate_config().epochs, None, rs) for rs in surrogates.values()]
    first += [("run", rs.train_config().epochs, k, rs) for k, rs in run_list if not rs.attack.needs_surrogate]
    second = [("run", rs.train_config().epochs, k, rs) for k, rs in run_list if rs.attack.needs_surrogate]
    run_results: dict[str, Any] = {}
    for stage, desc in ((first, "surrogates and runs"), (second, "runs on a surrogate")):
        stage.sort(key=lambda u: -u[1])
        out_stage = ex.map(execute_training, [{**base, "unit": u, "spec": rs.to_dict()} for u, _, _, rs in stage],
                           [rs.wants_gpu for *_, rs in stage], desc=desc)  # fmt: skip
        run_results.update({k: r for (u, _, k, _), r in zip(stage, out_stage) if u == "run"})

    det_list = list(_detection_units(specs, fp).items())
    det_out = ex.map(
        execute_detection,
        [{**base, "dir": run_results[k[0]]["dir"], "detect": dataclasses.asdict(d)} for k, (_, d) in det_list],
        [rs.wants_gpu for _, (rs, _) in det_list], desc="detections",
    )  # fmt: skip
    det_results = dict(zip([k for k, _ in det_list], det_out))
    from poisonsift.experiments.units import execute_floor, execute_scan

    scan_list = list(_scan_units(specs, fp).items())
    scan_out = ex.map(execute_scan, [{**base, "dir": run_results[k[0]]["dir"], "scan": d.to_dict(), "retrain": rt}
                                     for k, (_, d, rt) in scan_list],
                      [rs.wants_gpu for _, (rs, _, _) in scan_list], desc="scans (and retrainings)")  # fmt: skip
    scans = dict(zip([k for k, _ in scan_list], scan_out))
    floor_list = list(_floor_units(specs, fp).items())
    floor_out = ex.map(execute_floor, [{**base, "dir": run_results[k[0]]["dir"], "attack": dataclasses.asdict(rs.attack),
                                        "seed": rs.seed} for k, (_, rs) in floor_list],
                       [False] * len(floor_list), desc="floors")  # fmt: skip
    floors = dict(zip([k for k, _ in floor_list], floor_out))

    paper = paper_values()
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),  # UTC; report --merge ranks sittings by it
        "preset": preset,
        # what produced the numbers: the code and the training settings every run started from
        "poisonsift": {"version": __version__, "commit": source_commit()},
        "train_configs": _train_configs(runs.values()),
        "executor": ex.name,
        # no absolute paths of this machine: the report can be published as it is. Run and
        # detection paths are relative to the cache, the cache and the data relative to ``out``.
        "data": _relative(data_path, out) if data_path else None,
        "cache": _relative(cache, out),
        "tables": {ts.name: assemble(ts, run_results, det_results, fp, paper, scans, floors) for ts in specs},
        "computed": {
            "runs": sum(bool(r["computed"]) for r in run_results.values()),
            "detections": sum(bool(r["computed"]) for r in det_results.values()),
            **({"scans": sum(bool(r["computed"]) for r in scans.values())} if scans else {}),
            **({"floors": sum(bool(r["computed"]) for r in floors.values())} if floors else {}),
            "units": len(run_results) + len(det_results) + len(scans) + len(floors),
        },
        # What the units cost when they were computed (this call or an earlier one, from their
        # records): a report assembled from the cache still says what the reproduction took.
        "unit_seconds": {
            "runs": sum(_total(r["seconds"]) for r in run_results.values()),
            "detections": sum(_total(r.get("seconds")) for r in det_results.values()),
            **({"scans": sum(_total(r.get("seconds")) for r in scans.values())} if scans else {}),
        },
    }
    res["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", res)
    if report:
        from poisonsift.report import write_report

        write_report(out)
    return res
