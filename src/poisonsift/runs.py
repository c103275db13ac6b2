"""Run directories: the artefacts of one poison -> train -> evaluate pipeline.

A run directory holds

* ``poisoned.npz`` - ``x_train``, ``y_train``, ``poison_mask``, ``source_index``
  (-1 for clean rows), ``x_test``, ``y_test``, ``classes``, ``group_train``;
* ``attack.json`` - the full attack config (:meth:`Attack.config`) and seed;
* ``model.pt`` / ``train.json`` - the trained classifier and its history;
* ``metrics.json`` - clean accuracy, ASR (and per-class ASR / MASR).

Every file is written atomically, so an interrupted run never leaves a
half-written artefact, and each step can be re-run on its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from poisonsift.attacks import Attack, PoisonedData, attack_from_config
from poisonsift.data import ImageData, read_npz, save_npz
from poisonsift.errors import ConfigError, DataError
from poisonsift.metrics import attack_success_rate, clean_accuracy, mean_asr, per_class_asr
from poisonsift.training import (
    Normalizer,
    TrainConfig,
    load_checkpoint,
    predict,
    save_checkpoint,
    train,
)
from poisonsift.utils import atomic_write_json, atomic_write_npz, cache_dir, config_hash, default_device

if TYPE_CHECKING:
    from poisonsift.defences import DetectSpec

__all__ = [
    "save_poisoned",
    "load_poisoned",
    "poison_run",
    "train_run",
    "evaluate_run",
    "surrogate_provider",
    "surrogate_path",
    "read_json",
    "detect_run",
    "clean_run",
]


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"{path}: missing; run the step that writes it first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def save_poisoned(pd: PoisonedData, path: str | os.PathLike) -> None:
    """Write a :class:`PoisonedData` as ``poisoned.npz`` (atomically)."""
    extra = {} if pd.cover_mask is None else {"cover_mask": pd.cover_mask}
    save_npz(pd.as_image_data(), path, poison_mask=pd.poison_mask, source_index=pd.source_index, **extra)


def load_poisoned(path: str | os.PathLike) -> PoisonedData:
    """Read and validate ``poisoned.npz``."""
    path = Path(path)
    a = read_npz(path, {"x_train", "y_train", "poison_mask", "source_index", "x_test", "y_test", "classes"},
                 f"no poisoned data set here; run `poisonsift poison --out {path.parent}` first")  # fmt: skip
    clean = ImageData(a["x_train"], a["y_train"], a["x_test"], a["y_test"], [str(c) for c in a["classes"]],
                      a.get("group_train"), a.get("path_train"))  # fmt: skip
    if a["poison_mask"].shape != a["y_train"].shape or a["poison_mask"].dtype != bool:
        raise DataError(f"{path}: poison_mask must be a bool array aligned with y_train")
    cover = a.get("cover_mask")
    if cover is not None and (cover.shape != a["y_train"].shape or cover.dtype != bool):
        raise DataError(f"{path}: cover_mask must be a bool array aligned with y_train")
    return PoisonedData(
        clean.x_train, clean.y_train, a["poison_mask"], a["source_index"].astype(np.int64),
        clean.x_test, clean.y_test, clean.classes, clean.group_train, cover, clean.path_train,
    )  # fmt: skip


def surrogate_path(data: ImageData, cfg: TrainConfig, cache: Path | None = None) -> Path:
    """Where :func:`surrogate_provider` keeps the surrogate for (data, cfg)."""
    folder = cache or cache_dir() / "surrogates"
    return folder / f"surrogate-{config_hash([data.fingerprint(), cfg.to_dict()])}.pt"


def surrogate_provider(
    data: ImageData, cfg: TrainConfig, device: torch.device | str | None = None, cache: Path | None = None
) -> Callable[[], tuple[torch.nn.Module, Normalizer]]:
    """A lazy ``() -> (model, normalizer)`` for the label-consistent attack's surrogate.

    The surrogate is the same architecture trained on the clean data with
    ``cfg``; it is cached under the user cache keyed by the data's content hash
    and the training config, so it is trained once per (data, config).
    """

    def provide():
        path = surrogate_path(data, cfg, cache)
        if path.is_file():
            return load_checkpoint(path, device)
        res = train(data.x_train, data.y_train, data.num_classes, cfg, groups=data.group_train, device=device)
        save_checkpoint(path, res.model, res.normalizer)
        return res.model, res.normalizer

    return provide


def poison_run(data: ImageData, attack: Attack, out: str | os.PathLike, seed: int = 0) -> dict[str, Any]:
    """Poison ``data`` with ``attack`` and write ``poisoned.npz`` and ``attack.json`` into ``out``.

    Returns the summary: ``n_poisoned``, ``target_class_size`` (after the
    attack) and ``poison_share`` (poisoned share of the target class).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is an existing file; a run is a folder: choose a new or existing folder")
    if seed < 0:
        raise ConfigError(f"the seed must be a non-negative integer, got {seed}")
    pd = attack.poison(data, seed=seed)
    save_poisoned(pd, out / "poisoned.npz")
    target_size = int((pd.y_train == attack.target_class).sum())
    summary = {
        "n_poisoned": pd.n_poisoned,
        "n_cover": pd.n_cover,
        "target_class_size": target_size,
        "poison_share": pd.n_poisoned / target_size,
    }
    atomic_write_json(out / "attack.json", {**attack.config(), "seed": seed, **summary})
    return summary


def train_run(run: str | os.PathLike, cfg: TrainConfig, device=None, on_epoch=None, model=None) -> dict[str, Any]:
    """Train on ``run/poisoned.npz``; writes ``model.pt`` and ``train.json``. Returns the train summary.

    ``on_epoch`` and ``model`` go to :func:`~poisonsift.training.train` (a callback per epoch, and a
    freshly built network of ``cfg.arch`` that the callback can evaluate)."""
    run = Path(run)
    pd = load_poisoned(run / "poisoned.npz")
    res = train(pd.x_train, pd.y_train, len(pd.classes), cfg, groups=pd.group_train, model=model, device=device,
                on_epoch=on_epoch)  # fmt: skip
    save_checkpoint(run / "model.pt", res.model, res.normalizer)
    last = res.history[-1]
    summary = {
        "epochs_run": len(res.history),
        "best_epoch": res.best_epoch,
        "stopped_early": res.stopped_early,
        "seconds": res.seconds,
        "val_loss": min(h["val_loss"] for h in res.history),
        "val_acc": res.history[res.best_epoch - 1]["val_acc"],
        "train_acc": last["train_acc"],
        "device": str(device or default_device()),
        "bf16_used": res.bf16_used,
        "config": cfg.to_dict(),
        "history": res.history,
    }
    atomic_write_json(run / "train.json", summary)
    return summary


def evaluate_run(run: str | os.PathLike, device=None, precision: str = "float32") -> dict[str, Any]:
    """Clean accuracy and ASR of ``run/model.pt``; writes ``metrics.json``.

    ASR follows paper 5.1: for the standard attack, the source class's test
    images with the trigger; for label-consistent attacks, the full-amplitude
    trigger on every non-target test image, with per-class ASR and MASR.
    ``precision``: the forward pass in ``float32`` (the tables'), ``bfloat16`` autocast or
    ``auto`` (:func:`~poisonsift.utils.resolve_precision`); ``metrics.json`` records it.
    """
    from poisonsift.utils import resolve_precision

    precision = resolve_precision(precision, device)
    run = Path(run)
    pd = load_poisoned(run / "poisoned.npz")
    cfg = read_json(run / "attack.json")
    attack = attack_from_config(cfg)
    model, norm = load_checkpoint(run / "model.pt", device)
    with torch.inference_mode():
        n_out = model(torch.zeros(1, 3, *pd.x_test.shape[1:3], device=next(model.parameters()).device)).shape[1]
    if n_out != len(pd.classes):
        raise DataError(f"{run / 'model.pt'}: model has {n_out} outputs but the data has {len(pd.classes)} classes")
    x_trig, y_true = attack.asr_images(pd, seed=cfg.get("seed", 0))
    dev = next(model.parameters()).device
    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=precision == "bfloat16"):
        acc = clean_accuracy(predict(model, pd.x_test, norm, desc="clean test"), pd.y_test)
        pred = predict(model, x_trig, norm, desc="triggered test")
    metrics: dict[str, Any] = {
        "attack": cfg["attack"],
        "clean_accuracy": acc,
        "asr": attack_success_rate(pred, attack.target_class),
        "n_triggered": int(len(pred)),
        "precision": precision,
    }
    if len(np.unique(y_true)) > 1:  # label-consistent and all-to-one attacks: every non-target class
        pc = per_class_asr(pred, y_true, attack.target_class)
        metrics["per_class_asr"] = {str(k): v for k, v in pc.items()}
        metrics["masr"] = mean_asr(pc)
    atomic_write_json(run / "metrics.json", metrics)
    return metrics


def _scan_heatmaps(run: Path, spec: "DetectSpec", model, pd: "PoisonedData", norm) -> np.ndarray | None:
    """The heatmaps of every training image that a scan of ``run`` left in ``run/cache`` with this
    model, rule and precision (a read-only memory map), or None."""
    from poisonsift.explain import lrp_cache_path

    if not (run / "scan.json").is_file():  # no scan: skip hashing every training image
        return None
    path = lrp_cache_path(model, pd.x_train, pd.y_train, norm, run / "cache", spec.lrp_precision, spec.lrp_rule)
    return np.load(path, mmap_mode="r") if path.is_file() else None


def detect_run(
    run: str | os.PathLike,
    spec: "DetectSpec | str",
    cls: int | str | None = None,
    device=None,
    out: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the defence of ``spec`` (a :class:`~poisonsift.defences.DetectSpec`, or a method name
    with every default) on one class of ``run/poisoned.npz`` with ``run/model.pt``.

    ``cls``: a class index, ``"auto"`` (the top of :func:`~poisonsift.defences.rank_classes`),
    or None (the attack's target class from ``attack.json``). Metrics are
    computed against ``poison_mask`` on the rows of that class.

    Writes the summary to ``out`` (default ``run/detection-METHOD.json``) and,
    beside it (same name, ``.npz``), the per-sample arrays of the class's rows:
    ``rows`` (indices into ``y_train``), ``truth``, ``is_poisoned``, ``scores``,
    ``cluster_labels`` and ``embedding`` ((N, 2), NaN where not available; for HC an MDS
    embedding of GW distances of ``view_samples`` seeded clouds, see ``HCConfig.view_samples``).
    The summary's ``config`` is the whole spec. ``extra`` entries are added before it is written.
    """
    from poisonsift.defences import DetectSpec, build_defence, rank_classes
    from poisonsift.metrics import detection_metrics

    if isinstance(spec, str):
        spec = DetectSpec(spec)
    method, seed, subset = spec.method, spec.seed, spec.subset
    run = Path(run)
    pd = load_poisoned(run / "poisoned.npz")
    model, norm = load_checkpoint(run / "model.pt", device)
    spec = spec.for_model(model)  # lrp_rule "auto" -> the rule for this network
    summary: dict[str, Any] = {"method": method}
    ranking = None
    if cls == "auto":
        ranking = rank_classes(model, pd.x_train, pd.y_train, norm, seed=seed)
        cls = ranking[0]["class"]
    elif cls is None:
        cls = int(read_json(run / "attack.json")["target_class"])
    cls = int(cls)
    if not 0 <= cls < len(pd.classes):
        raise DataError(f"class {cls} does not exist (classes 0..{len(pd.classes) - 1})")
    rows = np.flatnonzero(pd.y_train == cls)
    if len(rows) < 2:
        raise DataError(f"class {cls} has {len(rows)} training images; a defence needs at least 2")
    defence = build_defence(spec, cache_dir=str(run / "cache"))  # LRP heatmaps, reused by later hc / ac-hc runs
    heat = _scan_heatmaps(run, spec, model, pd, norm) if method == "hc" else None
    if heat is not None:
        res = defence.detect(model, pd.x_train[rows], pd.y_train[rows], norm, heatmaps=heat[rows])
        summary["heatmaps"] = "scan"  # sliced from the scan's heatmaps of every training image
    else:
        res = defence.detect(model, pd.x_train[rows], pd.y_train[rows], norm)
    truth = pd.poison_mask[rows]
    considered = np.isfinite(res.scores) if subset is not None else np.ones(len(rows), dtype=bool)
    m = detection_metrics(truth[considered], res.is_poisoned[considered], res.scores[considered])
    summary.update(
        {
            "class": cls,
            "n": int(considered.sum()),
            "n_class": int(len(rows)),
            "n_poisoned_true": int(truth[considered].sum()),
            "n_flagged": int(res.is_poisoned[considered].sum()),
            **{k: m[k] for k in ("acc", "tpr", "tnr", "precision", "f1", "auroc")},
            "cluster_sizes": res.cluster_sizes,
            "suspicious": res.suspicious,
            "seconds": res.seconds,
            "seed": seed,
        }
    )
    if method in ("hc", "ac-hc"):
        summary["engine"] = spec.engine
        summary["warm_start"] = spec.warm_start
        summary["lrp_precision"] = spec.lrp_precision
        summary["lrp_rule"] = spec.lrp_rule
        # which class test called the class: gw, concentration, peak, roughness (None: not suspicious)
        summary["class_test"] = res.analysis.get("class_test") if res.suspicious else None
        if "view" in res.analysis:
            summary["view"] = res.analysis["view"]
    if subset is not None:
        summary["subset"] = subset
    if ranking is not None:
        summary["ranking"] = ranking
    summary["rule"] = spec.rule
    if "mixture" in res.analysis:
        summary["mixture"] = res.analysis["mixture"]
    summary["config"] = {**spec.to_dict(), "class": cls}
    summary.update(extra or {})
    path = Path(out) if out is not None else run / f"detection-{method}.json"
    emb = res.embedding if res.embedding is not None else np.full((len(rows), 2), np.nan)
    atomic_write_npz(path.with_suffix(".npz"), rows=rows, truth=truth, is_poisoned=res.is_poisoned,
                scores=res.scores, cluster_labels=res.cluster_labels, embedding=emb)  # fmt: skip
    atomic_write_json(path, summary)
    return summary


def _flagged_rows(run: Path, source: str) -> np.ndarray:
    """Training rows a scan (``scan``) or a detection (``detection-METHOD``) of ``run`` flagged."""
    if source == "scan":
        path = run / "scan.npz"
        hint = f"run `poisonsift scan --run {run}` first"
    elif source.startswith("detection-"):
        path = run / f"{source}.npz"
        hint = f"run `poisonsift detect --run {run} --method {source[len('detection-'):]}` first"
    else:
        raise ConfigError(f"--from must be scan or detection-METHOD (e.g. detection-hc), got {source!r}")
    a = read_npz(path, {"rows", "is_poisoned"}, hint)
    rows, flagged = np.asarray(a["rows"]), np.asarray(a["is_poisoned"], dtype=bool)
    if rows.shape != flagged.shape:
        raise DataError(f"{path}: rows and is_poisoned differ in length")
    return rows[flagged]


def clean_run(run: str | os.PathLike, out: str | os.PathLike, source: str = "scan",
              relabel_from: str | os.PathLike | None = None, device=None) -> dict[str, Any]:  # fmt: skip
    """Write a new run directory ``out`` holding ``run``'s training set without the rows that
    ``source`` (``scan`` or ``detection-METHOD``) flagged.

    ``relabel_from``: a run whose model was trained without those rows (e.g. the ``out`` of an
    earlier clean and retrain). A flagged image that this model puts in another class than its
    label is kept with the model's label instead of removed (a label-flipping backdoor's images
    go back to their own class, and teach the retrained model that the trigger means nothing);
    one that it puts in its own labelled class is removed (a label-consistent poison keeps its
    label, so relabelling could not defuse it).

    ``out/poisoned.npz`` keeps ``poison_mask``, ``source_index`` and ``group_train`` of the rows
    that are left (so ``evaluate`` and ``detect`` still know the truth) and the same test set;
    ``out/attack.json`` is ``run``'s. ``out/clean.json`` records the source run, ``from``,
    ``removed`` (count), ``removed_poisoned``, ``poisoned_left`` (poisoned rows still in the set,
    relabelled ones included), ``removed_rows`` (indices into ``run``'s training set) and, with
    ``relabel_from``, ``relabelled``, ``relabelled_poisoned``, ``relabelled_to`` (count per new
    label) and ``relabelled_rows``. Returns that record.
    """
    run, out = Path(run), Path(out)
    if out.resolve() == run.resolve():
        raise ConfigError("--out must be a new run directory, not the run being cleaned")
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is an existing file; a run is a folder")
    pd = load_poisoned(run / "poisoned.npz")
    flagged = np.unique(_flagged_rows(run, source))
    if len(flagged) and (flagged.min() < 0 or flagged.max() >= len(pd.y_train)):
        raise DataError(f"{source} of {run} names rows outside its training set: it belongs to another run")
    y = pd.y_train.copy()
    relabelled = flagged[:0]
    if relabel_from is not None:
        ckpt = Path(relabel_from) / "model.pt"
        if not ckpt.is_file():
            raise DataError(f"--relabel-from {relabel_from} has no model.pt: train it first (e.g. clean ... --retrain)")
        model, norm = load_checkpoint(ckpt, device)
        pred = predict(model, pd.x_train[flagged], norm, desc="relabel") if len(flagged) else flagged[:0]
        if len(pred) and pred.max() >= len(pd.classes):
            raise DataError(f"{ckpt} predicts class {int(pred.max())}, but {run} has {len(pd.classes)} classes")
        moved = pred != pd.y_train[flagged]
        relabelled = flagged[moved]
        y[relabelled] = pred[moved]
    removed = np.setdiff1d(flagged, relabelled)
    keep = np.ones(len(pd.y_train), dtype=bool)
    keep[removed] = False
    group = pd.group_train[keep] if pd.group_train is not None else None
    left = PoisonedData(pd.x_train[keep], y[keep], pd.poison_mask[keep], pd.source_index[keep],
                        pd.x_test, pd.y_test, pd.classes, group,
                        None if pd.cover_mask is None else pd.cover_mask[keep],
                        None if pd.path_train is None else pd.path_train[keep])  # fmt: skip
    save_poisoned(left, out / "poisoned.npz")
    atomic_write_json(out / "attack.json", read_json(run / "attack.json"))
    record = {
        "source_run": str(run),
        "from": source,
        "removed": int(len(removed)),
        "removed_poisoned": int(pd.poison_mask[removed].sum()),
        "poisoned_left": int(left.poison_mask.sum()),
        "n_train_left": int(len(left.y_train)),
        "removed_rows": removed.tolist(),
    }
    if pd.path_train is not None:  # data read from a folder: the files, not only the rows
        record["removed_files"] = pd.path_train[removed].tolist()
    if relabel_from is not None:
        labels, counts = np.unique(y[relabelled], return_counts=True)
        record.update(relabel_from=str(relabel_from), relabelled=int(len(relabelled)),
                      relabelled_poisoned=int(pd.poison_mask[relabelled].sum()),
                      relabelled_to={str(int(c)): int(n) for c, n in zip(labels, counts)},
                      relabelled_rows=relabelled.tolist())  # fmt: skip
    atomic_write_json(out / "clean.json", record)
    return record


def retrain_cleaned(run: str | os.PathLike, out: str | os.PathLike, device=None) -> dict[str, Any]:
    """Train the cleaned run ``out`` (from :func:`clean_run`) with ``run``'s preset and seed and
    evaluate both on the same test set.

    Returns ``clean_accuracy_before``, ``clean_accuracy_after``, ``asr_before``, ``asr_after``
    (rates in [0, 1]; ASR on the test images of the attack's source classes with the trigger),
    ``epochs`` and ``seed``.
    """
    from poisonsift.training import TrainConfig

    run, out = Path(run), Path(out)
    if not (run / "train.json").is_file():
        raise DataError(f"{run} has no trained model (train.json): train it first, to retrain with its preset")
    before = read_json(run / "metrics.json") if (run / "metrics.json").is_file() else evaluate_run(run, device=device)
    cfg = TrainConfig(**read_json(run / "train.json")["config"])  # the same preset and seed
    train_run(out, cfg, device=device)
    after = evaluate_run(out, device=device, precision=before.get("precision", "float32"))  # as before was
    return {"clean_accuracy_before": before["clean_accuracy"], "clean_accuracy_after": after["clean_accuracy"],
            "asr_before": before["asr"], "asr_after": after["asr"], "epochs": cfg.epochs, "seed": cfg.seed}  # fmt: skip

