"""``poisonsift audit``: from a user's image folder to the list of files to remove.

The data set's poison is unknown (no attack made it), so the audit trains its own model on the
data as given, scans every class (the scan's defaults) and names the flagged images by their
source files:

    DIR (ImageFolder tree or GTSRB) -> OUT/run/poisoned.npz (every image, no ground truth)
      -> OUT/run/model.pt (``cpu`` preset by default) -> OUT/run/scan.json, scan-report.html
      -> OUT/flagged.csv (``path``, ``class``, ``class_name``, ``class_evidence``, ``score``)
      -> OUT/clean/ (``write_clean``: the tree without the flagged files)
      -> OUT/audit.json (the summary)

A flat ImageFolder tree (``DIR/<class>/*``) is scanned whole: no test split is held out, since a
held-out file would never be scanned. GTSRB and ``train/`` + ``test/`` trees scan their training
images. Re-running with the same data and config reuses the trained model (resumable).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from poisonsift.attacks.base import control
from poisonsift.data import IMAGE_SIZE, prepare
from poisonsift.defences import DetectSpec
from poisonsift.errors import ConfigError, DataError
from poisonsift.runs import load_poisoned, read_json, save_poisoned, train_run
from poisonsift.scan import HC_DEFAULT_RULE, SCAN_AC_REDUCE, scan_run
from poisonsift.training import TrainConfig, get_preset
from poisonsift.utils import atomic_write_bytes, atomic_write_json, config_hash

__all__ = ["AuditConfig", "audit", "write_clean_tree", "FLAGGED_COLUMNS"]

#: ``flagged.csv``'s columns: the file (relative to DIR), its class, the class's scan evidence and
#: the image's score (comparable within a class only).
FLAGGED_COLUMNS = ("path", "class", "class_name", "class_evidence", "score")


@dataclass
class AuditConfig:
    """Everything an audit does, built once at the edge (CLI) and passed down whole.

    ``train``: the audit model's training config (``cpu`` preset by default); ``spec``: the scan's
    defence (the scan default: HC); ``size``: the side images are resized to; ``write_clean``:
    where to write the tree without the flagged files (inside ``out``), or None.
    """

    train: TrainConfig = field(default_factory=lambda: get_preset("cpu"))
    spec: DetectSpec = field(default_factory=lambda: DetectSpec("hc", rule=HC_DEFAULT_RULE, ac_reduce=SCAN_AC_REDUCE))
    size: int = IMAGE_SIZE
    write_clean: Path | None = None
    jobs: int = 1


def _inside(path: Path, root: Path) -> bool:
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def check_audit(source: Path, out: Path, cfg: AuditConfig) -> None:
    """Every check that can fail, before any work: the source folder, the output, the clean tree."""
    if not source.is_dir():
        raise DataError(f"{source}: no such folder (audit reads an ImageFolder tree or GTSRB)")
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is an existing file; the audit writes a folder")
    if _inside(out, source):
        raise ConfigError(f"--out {out} lies inside the audited folder {source}: choose a folder outside it")
    if cfg.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {cfg.jobs}")
    wc = cfg.write_clean
    if wc is not None:
        if not _inside(wc, out) or wc.resolve() == out.resolve():
            raise ConfigError(f"--write-clean {wc} must be a folder inside --out {out} (the audit never writes outside it)")
        if wc.exists() and (not wc.is_dir() or any(wc.iterdir())):
            raise DataError(f"--write-clean {wc} exists and is not empty: choose a new folder")


def _prepared(source: Path, run: Path, cfg: AuditConfig) -> tuple[Any, bool]:
    """The run's data (every image, paths kept) and whether its trained model can be reused."""
    data = prepare(source, size=cfg.size, test_fraction=0.0)
    key = {"data": data.fingerprint(), "train": cfg.train.to_dict()}
    stamp = run / "audit-key.json"
    if (run / "model.pt").is_file() and stamp.is_file() and read_json(stamp) == {"key": config_hash(key)}:
        return load_poisoned(run / "poisoned.npz"), True
    for f in ("model.pt", "train.json", "scan.json", "scan.npz"):  # another data set or config: start over
        (run / f).unlink(missing_ok=True)
    pd = control(data)
    save_poisoned(pd, run / "poisoned.npz")
    atomic_write_json(stamp, {"key": config_hash(key)})
    return pd, False


def flagged_rows(summary: dict[str, Any], run: Path, pd) -> list[dict[str, Any]]:
    """``flagged.csv``'s rows: by class (suspicious classes first, as the scan lists them), then score."""
    with np.load(run / "scan.npz") as z:
        flagged, scores = z["is_poisoned"].astype(bool), z["scores"]
    evidence = {e["class"]: e["evidence"] for e in summary["classes"]}
    out = []
    for e in summary["classes"]:
        rows = np.flatnonzero(flagged & (pd.y_train == e["class"]))
        for i in rows[np.argsort(-scores[rows], kind="stable")]:
            out.append({"path": str(pd.path_train[i]), "class": int(e["class"]), "class_name": pd.classes[e["class"]],
                        "class_evidence": round(float(evidence[e["class"]]), 6), "score": round(float(scores[i]), 6)})  # fmt: skip
    return out


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FLAGGED_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def write_clean_tree(source: Path, target: Path, remove: set[str]) -> dict[str, int]:
    """Copy the tree ``source`` to ``target`` without the files ``remove`` (POSIX paths relative to
    ``source``), as hard links where the file system allows (else copies).

    A symlink is followed only where it resolves inside ``source`` (its file is then copied); one
    that points out of it is skipped. GTSRB's annotation CSVs (``;``-separated, a ``Filename``
    column) lose the rows of removed files, so the cleaned tree reads as GTSRB again. Returns the
    counts ``files``, ``removed``, ``linked``, ``copied``, ``skipped_links``.
    """
    source = source.resolve()
    target.mkdir(parents=True, exist_ok=True)
    counts = {"files": 0, "removed": 0, "linked": 0, "copied": 0, "skipped_links": 0}
    for dirpath, dirnames, filenames in os.walk(source, followlinks=False):
        d = Path(dirpath)
        rel_dir = d.relative_to(source)
        for name in list(dirnames):  # a symlinked folder is not walked into
            if (d / name).is_symlink():
                dirnames.remove(name)
                counts["skipped_links"] += 1
        (target / rel_dir).mkdir(parents=True, exist_ok=True)
        for name in filenames:
            src, rel = d / name, (rel_dir / name).as_posix()
            if rel in remove:
                counts["removed"] += 1
                continue
            if src.is_symlink():
                real = src.resolve()
                if not (_inside(real, source) and real.is_file()):
                    counts["skipped_links"] += 1
                    continue
                src = real
            dst = target / rel_dir / name
            counts["files"] += 1
            if name.lower().endswith(".csv") and _filter_gtsrb_csv(src, dst, rel_dir, remove):
                counts["copied"] += 1
                continue
            try:
                os.link(src, dst)
                counts["linked"] += 1
            except OSError:  # another file system, or links not allowed
                shutil.copy2(src, dst)
                counts["copied"] += 1
    return counts


def _filter_gtsrb_csv(src: Path, dst: Path, rel_dir: Path, remove: set[str]) -> bool:
    """Write a GTSRB annotation CSV without the rows of removed files; False if it is none."""
    try:
        text = src.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    lines = text.splitlines()
    if not lines or "Filename" not in lines[0].split(";"):
        return False
    col = lines[0].split(";").index("Filename")
    kept = [lines[0]] + [ln for ln in lines[1:]
                         if not ln.strip() or (rel_dir / ln.split(";")[col]).as_posix() not in remove]  # fmt: skip
    dst.write_text("\n".join(kept) + "\n")
    return True


def audit(source: str | os.PathLike, out: str | os.PathLike, cfg: AuditConfig | None = None,
          device=None) -> dict[str, Any]:  # fmt: skip
    """Audit the image folder ``source``: train, scan, name the flagged files; see the module docstring.

    Returns the ``audit.json`` summary: ``source``, ``n_images``, ``n_classes``, ``suspicious_classes``,
    ``n_flagged``, ``flagged_csv``, ``scan_report``, ``model_reused``, ``seconds`` (per step),
    ``clean`` (the clean tree's counts, with ``write_clean``) and ``config``.
    """
    from poisonsift.report import write_scan_report

    cfg = cfg or AuditConfig()
    source, out = Path(source).expanduser(), Path(out).expanduser()
    check_audit(source, out, cfg)
    seconds: dict[str, float] = {}
    t0 = t = time.perf_counter()
    run = out / "run"
    run.mkdir(parents=True, exist_ok=True)
    pd, reused = _prepared(source, run, cfg)
    seconds["data"] = time.perf_counter() - t
    if len(np.unique(pd.y_train)) < 2:
        raise DataError(f"{source}: one class only; an audit needs a labelled data set of two classes or more")
    t = time.perf_counter()
    if not reused:
        train_run(run, cfg.train, device=device)
    seconds["train"] = time.perf_counter() - t
    t = time.perf_counter()
    summary = scan_run(run, cfg.spec, jobs=cfg.jobs, device=device)
    report = write_scan_report(run)
    seconds["scan"] = time.perf_counter() - t
    rows = flagged_rows(summary, run, pd)
    _write_csv(out / "flagged.csv", rows)
    result: dict[str, Any] = {
        "source": str(source), "n_images": int(len(pd.y_train)), "n_classes": len(pd.classes),
        "suspicious_classes": summary["suspicious_classes"], "n_flagged": len(rows),
        "flagged_csv": str(out / "flagged.csv"), "scan_report": str(report["html"]), "model_reused": reused,
        "val_acc": read_json(run / "train.json").get("val_acc"),
    }  # fmt: skip
    if cfg.write_clean is not None:
        t = time.perf_counter()
        result["clean"] = {"out": str(cfg.write_clean),
                           **write_clean_tree(source, cfg.write_clean, {r["path"] for r in rows})}  # fmt: skip
        seconds["write_clean"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    result.update(seconds=seconds, config={
        "train": cfg.train.to_dict(), "spec": cfg.spec.to_dict(), "size": cfg.size, "jobs": cfg.jobs,
        "write_clean": None if cfg.write_clean is None else str(cfg.write_clean)})  # fmt: skip
    atomic_write_json(out / "audit.json", result)
    return result
