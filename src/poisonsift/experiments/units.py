"""The units :func:`~poisonsift.experiments.reproduce` executes - clean surrogates, runs (poison ->
train -> evaluate), detections - as plain dicts in, dicts out, so they run in this process or as Ray tasks."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from poisonsift.defences.spec import DetectSpec
from poisonsift.errors import ConfigError, DataError
from poisonsift.executors import unit as _unit
from poisonsift.experiments.specs import RunSpec
from poisonsift.utils import atomic_write_json, config_hash


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


def execute_training(task: dict[str, Any]) -> Any:
    """A surrogate (``task["unit"] == "surrogate"``) or a run: one stage can mix both, so the
    runs that need no surrogate train beside the surrogates instead of after them."""
    return execute_surrogate(task) if task.get("unit") == "surrogate" else execute_run(task)

