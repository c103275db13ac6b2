"""The paper's experiments (sections 6-7) as declarative, cached, resumable specs.

A :class:`TableSpec` lists rows; each row names the runs it needs (a
:class:`RunSpec`: attack + training) and the table's columns say which
metric of which run or detection (:class:`DetectSpec`) goes where.
:func:`reproduce` turns a set of tables into three stages of independent
units - clean surrogates, runs (poison -> train -> evaluate), detections -
executes them locally or as Ray tasks, and assembles every table beside the
paper's published values (``paper_results.json``, in percent as printed).

Cache. Every unit lives under a key derived from everything that determines
it: a run under ``CACHE/runs/<key>/`` (a :mod:`poisonsift.runs` directory)
with the key's material in ``spec.json``; a detection in that run's
``detections/<method>-<key>.json`` (+ ``.npz`` arrays); a surrogate under
``CACHE/surrogates/``. A second call, or another table that needs the same
model, finds them. Each step writes its artefact atomically and is skipped
when the artefact exists, so a killed run resumes at the step it was in
(a training that was interrupted starts again from its first epoch);
``force=True`` recomputes.

Choices where the paper is silent (stated once here):

* Table 5 follows the paper's text (label-consistent attack with the s = 3
  sticker; the caption's "standard sticker" is read as the sticker type): 10
  repeats with seeds 0..9, each seed a new random choice of images and new
  random trigger positions; one clean surrogate (seed 0) serves all repeats.
* Table 4 adds amplitude 255 (the issue's list) to the paper's 128 / 64 / 32.
* ``sizes``: the standard attack with s = 1, 2, 3 at p = 33 % (the paper
  mentions them, prints only s = 3).
* Spectral Signatures is an extra column ("SS") where AC and HC are shown.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from poisonsift.defences.spec import DetectSpec
from poisonsift.errors import ConfigError, DataError
from poisonsift.executors import LocalExecutor, RayExecutor, make_executor, unit as _unit
from poisonsift.utils import atomic_write_json, cache_dir, config_hash

__all__ = [
    "AttackSpec",
    "RunSpec",
    "DetectSpec",
    "Column",
    "Row",
    "TableSpec",
    "TABLES",
    "build_table",
    "paper_values",
    "reproduce",
    "LocalExecutor",
    "RayExecutor",
    "make_executor",
    "execute_run",
    "execute_detection",
    "execute_surrogate",
]

ATTACK_KINDS = ("standard", "label-consistent", "amplitude")
#: presets whose trainings want a GPU when one is offered (the Ray executor asks for one)
GPU_PRESETS = frozenset({"paper"})
TABLES = ("1", "2", "3", "4", "5", "fig6", "sizes")
KEY_VERSION = 1


# --------------------------------------------------------------------------- specs


@dataclass
class AttackSpec:
    """Which attack: ``kind`` (standard / label-consistent / amplitude), poison share
    ``p`` of the target class, sticker side ``size`` (pixels), trigger ``amp``
    (amplitude attack, 1..255) and the surrogate's epochs (None: the preset's)."""

    kind: str = "standard"
    p: float = 0.33
    size: int = 3
    amp: int = 255
    surrogate_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ATTACK_KINDS:
            raise ConfigError(f"unknown attack kind {self.kind!r}; use one of {', '.join(ATTACK_KINDS)}")
        if not 0.0 < self.p < 1.0:
            raise ConfigError(f"p is the poisoned share of the target class and must be in (0, 1), got {self.p}")
        if self.size < 1:
            raise ConfigError(f"trigger size must be >= 1 pixel, got {self.size}")
        if not 1 <= self.amp <= 255:
            raise ConfigError(f"trigger amplitude must be in 1..255, got {self.amp}")

    @property
    def needs_surrogate(self) -> bool:
        return self.kind != "standard"

    def build(self, surrogate=None, device: str = "cpu"):
        """The :class:`~poisonsift.attacks.Attack` (``surrogate``: a lazy provider for PGD)."""
        from poisonsift.attacks import AmplitudeTrigger, LabelConsistent, StandardBackdoor, StickerTrigger

        if self.kind == "standard":
            return StandardBackdoor(p=self.p, trigger=StickerTrigger(size=self.size))
        trigger = AmplitudeTrigger(amp=self.amp, size=self.size) if self.kind == "amplitude" else StickerTrigger(size=self.size)
        return LabelConsistent(p=self.p, trigger=trigger, surrogate=surrogate, device=device)


@dataclass
class RunSpec:
    """One poisoned training set and the model trained on it.

    ``train`` overrides fields of the preset (e.g. ``{"epochs": 2}``); ``seed``
    seeds the poisoning (which images, where the trigger goes) and the training.
    """

    attack: AttackSpec = field(default_factory=AttackSpec)
    preset: str = "cpu"
    seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    surrogate_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.attack, dict):
            self.attack = AttackSpec(**self.attack)
        self.train_config()  # validates preset and overrides

    def train_config(self):
        from poisonsift.training import get_preset

        try:
            return get_preset(self.preset, seed=self.seed, **self.train)
        except TypeError as exc:
            raise ConfigError(f"bad training override in {self.train}: {exc}") from None

    def surrogate_config(self):
        """The clean surrogate's training config (label-consistent attacks), else None."""
        if not self.attack.needs_surrogate:
            return None
        from poisonsift.training import get_preset

        over = {**self.train, "seed": self.surrogate_seed}
        if self.attack.surrogate_epochs is not None:
            over["epochs"] = self.attack.surrogate_epochs
        return get_preset(self.preset, **over)

    def key_material(self, data_fingerprint: str) -> dict[str, Any]:
        sur = self.surrogate_config()
        return {
            "version": KEY_VERSION,
            "data": data_fingerprint,
            "attack": self.attack.build().config(),
            "poison_seed": self.seed,
            "surrogate": sur.to_dict() if sur is not None else None,
            "train": self.train_config().to_dict(),
        }

    def key(self, data_fingerprint: str) -> str:
        """Cache key: changes with anything that changes the poisoned data or the model."""
        return config_hash(self.key_material(data_fingerprint))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def wants_gpu(self) -> bool:
        return self.preset in GPU_PRESETS


@dataclass
class Column:
    """A table column: ``source`` is "metrics" (the run's metrics.json), "train", or a
    detection alias of the table (or "@row": the row's own detection); ``field`` the
    key there; ``percent`` scales a fraction to percent as the paper prints."""

    name: str
    source: str
    field: str
    percent: bool = True


@dataclass
class Row:
    """One table row: its label (e.g. ``{"p": 33}``), the runs it aggregates (one, or
    several repeats: mean and variance) and, for "@row" columns, its detection alias."""

    label: dict[str, Any]
    runs: list[RunSpec]
    detection: str | None = None

    def __post_init__(self) -> None:
        if not self.runs:
            raise ConfigError(f"row {self.label} has no runs")


@dataclass
class TableSpec:
    name: str
    title: str
    key: str
    rows: list[Row]
    columns: list[Column]
    detections: dict[str, DetectSpec] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.rows:
            raise ConfigError(f"table {self.name} has no rows")
        known = {"metrics", "train", "@row", *self.detections}
        for c in self.columns:
            if c.source not in known:
                raise ConfigError(f"table {self.name}: column {c.name!r} reads unknown source {c.source!r}")
        for r in self.rows:
            if r.detection is not None and r.detection not in self.detections:
                raise ConfigError(f"table {self.name}: row {r.label} names unknown detection {r.detection!r}")

    def run_specs(self) -> list[RunSpec]:
        return [rs for r in self.rows for rs in r.runs]

    def detections_for(self, row: Row) -> dict[str, DetectSpec]:
        used = {c.source for c in self.columns} | ({row.detection} if row.detection else set())
        return {a: d for a, d in self.detections.items() if a in used}


def _rates(alias: str, prefix: str) -> list[Column]:
    return [Column(f"{prefix} {m.upper()}", alias, m) for m in ("acc", "tpr", "tnr")]


def _ac_hc_ss(seed: int = 0) -> dict[str, DetectSpec]:
    """AC with the paper's ``smaller`` rule, AC with HC's rule (``AC*``), HC's defaults, Spectral Signatures."""
    from poisonsift.defences import HC_DEFAULT_RULE

    return {"AC": DetectSpec("ac", seed=seed), "AC*": DetectSpec("ac", seed=seed, rule=HC_DEFAULT_RULE),
            "HC": DetectSpec("hc", seed=seed), "SS": DetectSpec("spectral", seed=seed)}  # fmt: skip


PAPER_P = (0.33, 0.15, 0.10, 0.05, 0.02)


def build_table(name: str, preset: str = "cpu", repeats: int | None = None, train: dict[str, Any] | None = None,
                ps: Sequence[float] | None = None) -> TableSpec:  # fmt: skip
    """The spec of one of the paper's tables (``1``-``5``, ``fig6``, ``sizes``).

    ``repeats`` (table 5 only; default 10), ``train`` (preset overrides for every
    run) and ``ps`` (poison shares instead of the paper's) are for quick or
    smaller reproductions; the defaults are the paper's.
    """
    name = str(name)
    train = dict(train or {})
    if repeats is not None and repeats < 1:
        raise ConfigError(f"repeats must be >= 1, got {repeats}")

    def run(kind: str, p: float, seed: int = 0, **kw) -> RunSpec:
        return RunSpec(AttackSpec(kind, p, **kw), preset=preset, seed=seed, train=train)

    det = _ac_hc_ss()
    cols = [*_rates("AC", "AC"), *_rates("AC*", "AC*"), *_rates("HC", "HC"), *_rates("SS", "SS")]
    plist = tuple(ps) if ps is not None else PAPER_P
    if name == "1":
        rows = [Row({"p": round(p * 100)}, [run("standard", p)]) for p in plist]
        return TableSpec("1", "Standard attack (s = 3): ASR and detection by AC, HC (and SS)", "p", rows,
                         [Column("ASR", "metrics", "asr"), *cols], det)  # fmt: skip
    if name == "2":
        rows = [Row({"p": round(p * 100)}, [run("label-consistent", p)]) for p in plist]
        return TableSpec("2", "Label-consistent attack (s = 3): MASR and detection", "p", rows,
                         [Column("MASR", "metrics", "masr"), *cols], det)  # fmt: skip
    if name == "3":
        r = run("standard", 0.33)
        dets = {"PCA": DetectSpec("raw-pca"), "FastICA": DetectSpec("raw-ica")}
        rows = [Row({"method": m}, [r], detection=m) for m in ("PCA", "FastICA")]
        return TableSpec("3", "Clustering raw images (standard attack, s = 3, p = 33 %)", "method", rows,
                         [Column(m.upper(), "@row", m) for m in ("acc", "tpr", "tnr")], dets)  # fmt: skip
    if name in ("4", "fig6"):
        rows = [Row({"amplitude": a}, [run("amplitude", 0.33, amp=a)]) for a in (255, 128, 64, 32)]
        if name == "fig6":
            return TableSpec("fig6", "Per-class ASR, amplitude sticker, p = 33 %", "amplitude", rows,
                             [Column("MASR", "metrics", "masr")], {})  # fmt: skip
        return TableSpec("4", "Label-consistent attack with reduced trigger amplitude (p = 33 %)", "amplitude", rows,
                         [Column("MASR", "metrics", "masr"), *cols], det)  # fmt: skip
    if name == "5":
        n = 10 if repeats is None else repeats
        p5 = tuple(ps) if ps is not None else (0.33, 0.15)
        rows = [Row({"p": round(p * 100)}, [run("label-consistent", p, seed=s) for s in range(n)]) for p in p5]
        ac_hc = {k: v for k, v in det.items() if k in ("AC", "HC")}
        return TableSpec("5", f"Detection over {n} repeats (label-consistent, s = 3): mean and variance", "p", rows,
                         [*_rates("AC", "AC"), *_rates("HC", "HC")], ac_hc)  # fmt: skip
    if name == "sizes":
        rows = [Row({"s": s}, [run("standard", 0.33, size=s)]) for s in (1, 2, 3)]
        return TableSpec("sizes", "Standard attack with sticker side s = 1, 2, 3 (p = 33 %)", "s", rows,
                         [Column("ASR", "metrics", "asr"), *cols], det)  # fmt: skip
    raise ConfigError(f"unknown table {name!r}; choose from {', '.join(TABLES)} or all")


def paper_values() -> dict[str, Any]:
    """The paper's published numbers (percent, as printed), by table name."""
    text = resources.files("poisonsift").joinpath("paper_results.json").read_text()
    return json.loads(text)["tables"]


# --------------------------------------------------------------------------- units (run anywhere: plain dicts in, dicts out)


def _load_data(path: str):
    from poisonsift.data import load_npz

    return load_npz(path)


@_unit
def execute_surrogate(task: dict[str, Any]) -> str:
    """Train (or find) the clean surrogate of ``task["spec"]``; returns its checkpoint path."""
    from poisonsift.runs import surrogate_path, surrogate_provider

    spec = RunSpec(**task["spec"])
    data = _load_data(task["data"])
    folder = Path(task["cache"]) / "surrogates"
    path = surrogate_path(data, spec.surrogate_config(), folder)
    if task.get("force") and path.exists():
        path.unlink()
    surrogate_provider(data, spec.surrogate_config(), task.get("device"), cache=folder)()
    return str(path)


def run_dir(cache: str | Path, key: str) -> Path:
    return Path(cache) / "runs" / key


@_unit
def execute_run(task: dict[str, Any]) -> dict[str, Any]:
    """Poison -> train -> evaluate one :class:`RunSpec`, skipping every step whose artefact exists.

    Returns ``{"key", "dir", "metrics", "train_seconds", "seconds", "computed"}``.
    """
    from poisonsift.runs import evaluate_run, poison_run, read_json, surrogate_provider, train_run

    spec = RunSpec(**task["spec"])
    data = _load_data(task["data"])
    material = spec.key_material(task["fingerprint"])
    key = config_hash(material)
    d = run_dir(task["cache"], key)
    if task.get("force") and d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)
    spec_file = d / "spec.json"
    if spec_file.exists():
        if read_json(spec_file).get("material") != json.loads(json.dumps(material, default=str)):
            raise DataError(f"{d}: cached run does not match its key; delete the folder or use --force")
    else:
        atomic_write_json(spec_file, {"key": key, "spec": spec.to_dict(), "material": material})
    timings = read_json(d / "timings.json") if (d / "timings.json").exists() else {}
    computed = []
    device = task.get("device")
    if not (d / "attack.json").exists():
        t = time.perf_counter()
        sur = None
        if spec.attack.needs_surrogate:
            sur = surrogate_provider(data, spec.surrogate_config(), device, cache=Path(task["cache"]) / "surrogates")
        poison_run(data, spec.attack.build(sur, str(device or "cpu")), d, seed=spec.seed)
        timings["poison"] = time.perf_counter() - t
        computed.append("poison")
        atomic_write_json(d / "timings.json", timings)
    if not (d / "train.json").exists():
        s = train_run(d, spec.train_config(), device)
        timings["train"] = s["seconds"]
        computed.append("train")
        atomic_write_json(d / "timings.json", timings)
    if not (d / "metrics.json").exists():
        t = time.perf_counter()
        evaluate_run(d, device)
        timings["evaluate"] = time.perf_counter() - t
        computed.append("evaluate")
        atomic_write_json(d / "timings.json", timings)
    train = read_json(d / "train.json")
    return {"key": key, "dir": str(d), "metrics": read_json(d / "metrics.json"), "train_seconds": train["seconds"],
            "seconds": timings, "computed": computed}  # fmt: skip


def _stored_spec(stored: Any) -> DetectSpec | None:
    """The DetectSpec a cached detection was computed for; fields added since take their
    defaults (which key as before), so adding a field does not recompute every detection."""
    try:
        return DetectSpec(**stored)
    except (TypeError, ConfigError):
        return None


@_unit
def execute_detection(task: dict[str, Any]) -> dict[str, Any]:
    """One :class:`DetectSpec` on the attacked class of the run in ``task["dir"]`` (cached in its ``detections/``)."""
    from poisonsift.runs import detect_run, read_json

    spec = DetectSpec(**task["detect"])
    path = Path(task["dir"]) / "detections" / spec.filename()
    if task.get("force"):
        path.unlink(missing_ok=True)
        path.with_suffix(".npz").unlink(missing_ok=True)
    if path.exists() and path.with_suffix(".npz").exists():
        res = read_json(path)
        if _stored_spec(res.get("spec")) == spec:
            return {**res, "path": str(path), "computed": False}
    res = detect_run(task["dir"], spec, device=task.get("device"), out=path, extra={"spec": spec.to_dict()})
    return {**res, "path": str(path), "computed": True}


# --------------------------------------------------------------------------- assembling tables


def _value(col: Column, row: Row, run_res: dict, dets: dict[str, dict]) -> float | None:
    if col.source == "metrics":
        v = run_res["metrics"].get(col.field)
    elif col.source == "train":
        v = run_res.get(col.field)
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
             fingerprint: str, paper: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One table's results: per row ``ours``, ``paper`` and ``diff`` (ours - paper), in percent."""
    rows_out = []
    for row in table.rows:
        per_run = []
        for rs in row.runs:
            key = rs.key(fingerprint)
            dets = {a: det_results[(key, d.key())] for a, d in table.detections_for(row).items()}
            per_run.append((run_results[key], dets))
        ours: dict[str, float | None] = {}
        for col in table.columns:
            vals = [_value(col, row, rr, dd) for rr, dd in per_run]
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
                        **{a: [dd[a]["seconds"] for _, dd in per_run] for a in table.detections_for(row)}},
            "per_class_asr": per_run[0][0]["metrics"].get("per_class_asr"),
        })  # fmt: skip
    cols = list(rows_out[0]["ours"])
    return {"name": table.name, "title": table.title, "key": table.key, "columns": cols,
            "note": paper.get(table.name, {}).get("note"), "rows": rows_out}  # fmt: skip


# --------------------------------------------------------------------------- reproduce


def _relative(path: str | os.PathLike, base: str | os.PathLike) -> str:
    """``path`` relative to ``base`` (both made absolute first), POSIX separators."""
    return Path(os.path.relpath(Path(path).resolve(), Path(base).resolve())).as_posix()


def _under_cache(path: str | os.PathLike) -> str:
    """A run or detection path relative to its cache root (the folder above ``runs/``)."""
    parts = Path(path).resolve().parts
    i = len(parts) - 1 - parts[::-1].index("runs")
    return Path(*parts[i:]).as_posix()


def resolve_result_path(results_dir: str | os.PathLike, res: dict, path: str) -> Path:
    """A run / detection path from ``results.json`` (relative to the cache, or absolute in
    results written before this) as a path on this machine."""
    p = Path(path)
    return p if p.is_absolute() else Path(results_dir) / res["cache"] / p


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
) -> dict[str, Any]:
    """Run (or find in the cache) every unit the tables need and write ``OUT/results.json``
    (and, with ``report``, ``OUT/report.html`` / ``report.md``).

    ``tables``: names (``"1"``..``"5"``, ``"fig6"``, ``"sizes"``, ``"all"``) or
    :class:`TableSpec` objects. ``cache`` defaults to ``$POISONSIFT_CACHE/experiments``,
    shared by every output folder. Returns the results dict.
    """
    t0 = time.perf_counter()
    names: list[str | TableSpec] = []
    for t in tables:
        names.extend(TABLES if t == "all" else [t])
    specs = [t if isinstance(t, TableSpec) else build_table(t, preset, repeats, train) for t in names]
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

    runs: dict[str, RunSpec] = {}
    for ts in specs:
        for rs in ts.run_specs():
            runs.setdefault(rs.key(fp), rs)
    surrogates: dict[str, RunSpec] = {}
    for rs in runs.values():
        if rs.attack.needs_surrogate:
            surrogates.setdefault(config_hash(rs.surrogate_config().to_dict()), rs)
    if surrogates:
        ex.map(execute_surrogate, [{**base, "spec": rs.to_dict()} for rs in surrogates.values()],
               [rs.wants_gpu for rs in surrogates.values()], desc="surrogates")  # fmt: skip
    run_list = list(runs.items())
    results = ex.map(execute_run, [{**base, "spec": rs.to_dict()} for _, rs in run_list],
                     [rs.wants_gpu for _, rs in run_list], desc="runs")  # fmt: skip
    run_results = {k: r for (k, _), r in zip(run_list, results)}

    det_units: dict[tuple[str, str], tuple[RunSpec, DetectSpec]] = {}
    for ts in specs:
        for row in ts.rows:
            for d in ts.detections_for(row).values():
                for rs in row.runs:
                    det_units.setdefault((rs.key(fp), d.key()), (rs, d))
    det_list = list(det_units.items())
    det_out = ex.map(
        execute_detection,
        [{**base, "dir": run_results[k[0]]["dir"], "detect": dataclasses.asdict(d)} for k, (_, d) in det_list],
        [rs.wants_gpu for _, (rs, _) in det_list], desc="detections",
    )  # fmt: skip
    det_results = dict(zip([k for k, _ in det_list], det_out))

    paper = paper_values()
    res = {
        "preset": preset,
        "executor": ex.name,
        # no absolute paths of this machine: the report can be published as it is. Run and
        # detection paths are relative to the cache, the cache and the data relative to ``out``.
        "data": _relative(data_path, out) if data_path else None,
        "cache": _relative(cache, out),
        "tables": {ts.name: assemble(ts, run_results, det_results, fp, paper) for ts in specs},
        "computed": {
            "runs": sum(bool(r["computed"]) for r in run_results.values()),
            "detections": sum(bool(r["computed"]) for r in det_results.values()),
            "units": len(run_results) + len(det_results),
        },
    }
    res["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", res)
    if report:
        from poisonsift.report import write_report

        write_report(out)
    return res
