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



def floor_attack(attack: dict[str, Any]) -> dict[str, Any]:
    """An :class:`AttackSpec` dict with nothing poisoned and no covers: its training set is the
    clean one, its test trigger the attack's (the floor's ASR)."""
    params = dict(attack.get("params") or {})
    if "cover_rate" in params or attack.get("kind") == "adaptive-blend":
        params["cover_rate"] = 0.0
    return {**attack, "p": 0.0, "params": params}


@_unit
def execute_floor(task: dict[str, Any]) -> dict[str, Any]:
    """The floor of an attack: ASR of the unpoisoned model in ``task["dir"]`` (a run of ``p = 0``)
    with the test trigger of ``task["attack"]`` (an :class:`AttackSpec` dict). The floor run lives
    in ``DIR/floors/<key>/``: the attack at ``p = 0`` (the same clean training set, checked) and
    the unpoisoned model, evaluated. Returns ``{"asr", "clean_accuracy", "dir", "computed"}``."""
    import numpy as np

    from poisonsift.experiments.specs import AttackSpec
    from poisonsift.runs import evaluate_run, load_poisoned, poison_run, read_json

    spec = AttackSpec(**floor_attack(task["attack"]))
    model_run = Path(task["dir"])
    d = model_run / "floors" / config_hash(spec.build().config())
    if task.get("force") and d.exists():
        shutil.rmtree(d)
    if (d / "metrics.json").exists():
        m = read_json(d / "metrics.json")
        return {"asr": m["asr"], "clean_accuracy": m["clean_accuracy"], "dir": str(d), "computed": False}
    poison_run(_load_data(task["data"]), spec.build(), d, seed=task.get("seed", 0))
    a, b = load_poisoned(d / "poisoned.npz"), load_poisoned(model_run / "poisoned.npz")
    if not (np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)):
        raise DataError(f"{model_run}: its model was not trained on the clean set the floor of {spec.kind} needs")
    for f in ("model.pt", "train.json"):
        shutil.copyfile(model_run / f, d / f)
    m = evaluate_run(d, task.get("device"))
    return {"asr": m["asr"], "clean_accuracy": m["clean_accuracy"], "dir": str(d), "computed": True}


@_unit
def execute_scan(task: dict[str, Any]) -> dict[str, Any]:
    """The scan of the run in ``task["dir"]`` (``task["scan"]``: a :class:`DetectSpec` dict) and,
    with ``task["retrain"]``, ``clean --retrain`` after it: the flagged images removed and the
    model trained again with the run's preset and seed. Kept in ``DIR/scans/<key>/`` (``scan.json``,
    ``scan.npz``, ``row.json``, the cleaned run ``clean/``); a finished one is read back.

    ``row.json``: the attacked class's (the attack's target) ``acc``, ``tpr``, ``tnr``, ``auroc``
    (the scan's flags and scores on that class), its ``rank`` in the scan (1: first), whether it is
    ``suspicious``, the ``suspicious_classes``, whole-set ``whole_tpr`` / ``whole_tnr``, ``n_flagged``
    and, retrained, ``asr_after`` and ``clean_accuracy_after``."""
    import numpy as np

    from poisonsift.metrics import detection_metrics
    from poisonsift.runs import clean_run, load_poisoned, read_json, retrain_cleaned
    from poisonsift.scan import scan_run

    spec = DetectSpec(**task["scan"])
    run = Path(task["dir"])
    d = run / "scans" / spec.key()
    if task.get("force") and d.exists():
        shutil.rmtree(d)
    if (d / "row.json").exists():
        return {**read_json(d / "row.json"), "dir": str(d), "computed": False}
    d.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    s = scan_run(run, spec, device=task.get("device"))
    for f in ("scan.json", "scan.npz"):
        shutil.copyfile(run / f, d / f)
    target = int(read_json(run / "attack.json")["target_class"])
    pd = load_poisoned(run / "poisoned.npz")
    rows = np.flatnonzero(pd.y_train == target)
    with np.load(d / "scan.npz") as z:
        m = detection_metrics(pd.poison_mask[rows], z["is_poisoned"][rows], z["scores"][rows])
    order = [e["class"] for e in s["classes"]]
    row = {**{k: m[k] for k in ("acc", "tpr", "tnr", "auroc")}, "rank": order.index(target) + 1,
           "suspicious": target in s["suspicious_classes"], "suspicious_classes": s["suspicious_classes"],
           "whole_tpr": s["tpr"], "whole_tnr": s["tnr"], "n_flagged": s["n_flagged"],
           "seconds": {"scan": time.perf_counter() - t}}  # fmt: skip
    if task.get("retrain"):
        t = time.perf_counter()
        cleaned = d / "clean"
        if cleaned.exists():  # an interrupted retraining: start it again from the scan's flags
            shutil.rmtree(cleaned)
        clean_run(run, cleaned, "scan")
        r = retrain_cleaned(run, cleaned, device=task.get("device"))
        row.update(asr_after=r["asr_after"], clean_accuracy_after=r["clean_accuracy_after"])
        row["seconds"]["retrain"] = time.perf_counter() - t
    atomic_write_json(d / "row.json", row)
    return {**row, "dir": str(d), "computed": True}
