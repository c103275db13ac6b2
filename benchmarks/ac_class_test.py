"""How Activation Clustering's class test ranks the attacked class among all classes of a run.

    python benchmarks/ac_class_test.py --run RUN [--run RUN ...] [--reduce pca pca-whiten]

For each run (a ``poisonsift poison`` + ``train`` folder; an unpoisoned one too) and each AC
reduction, every class of the training set is split as ``scan --method ac`` splits it (hidden-layer
activations from the run's cache, PCA(10), 2-means, the ``mixture`` rule), and the scan's two
cross-class statistics are printed for the attacked class beside the clean classes' largest: its
evidence (the mixture's per-image log-likelihood ratio where the minority is big enough) and its
modified z-score against every class's plain ratio. A class is called where its own class test
fires and its z-score exceeds 3.5 (``scan_run``'s rule). One JSON line per run and reduction:
the attacked classes' rank, evidence, z and class test, the clean classes called, and the top
five classes by evidence. Not a test: it measures which AC statistic can gate a scan.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from poisonsift.defences import DetectSpec
from poisonsift.runs import load_poisoned
from poisonsift.scan import _features, outlier_scores, scan_class
from poisonsift.training import load_checkpoint


def class_table(run: Path, spec: DetectSpec, min_size: int = 10) -> list[dict]:
    """Every class's AC split statistics (``scan_class`` on the run's cached activations)."""
    pd = load_poisoned(run / "poisoned.npz")
    model, norm = load_checkpoint(run / "model.pt")
    spec = spec.for_model(model)
    feats = _features(run, spec, pd, model, norm)
    rows = []
    for c in np.unique(pd.y_train):
        idx = np.flatnonzero(pd.y_train == c)
        if len(idx) < min_size:
            continue
        r = scan_class({"features": str(feats), "rows": idx.tolist(), "spec": spec.to_dict()})
        mt = r["mixture"]
        pois = pd.poison_mask[idx]
        rows.append({"class": int(c), "n": len(idx), "n_poisoned": int(pois.sum()), "evidence": r["evidence"],
                     "llr": r["llr"], "class_test": r["suspicious"], "separation": mt.get("separation"),
                     "minority_weight": min(mt["weights"]) if "weights" in mt else None,
                     "flag_tpr": float(np.asarray(r["is_poisoned"])[pois].mean()) if pois.any() else None,
                     "flag_fpr": float(np.asarray(r["is_poisoned"])[~pois].mean())})  # fmt: skip
    z, _, _ = outlier_scores(np.array([r["evidence"] for r in rows]), np.array([r["llr"] for r in rows]))
    for r, zc in zip(rows, z):
        r["z"] = float(zc)
        r["called"] = bool(r["class_test"] and zc > 3.5)
    return sorted(rows, key=lambda r: -r["evidence"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, type=Path)
    ap.add_argument("--reduce", nargs="+", default=["pca", "pca-whiten"])
    ap.add_argument("--all", action="store_true", help="print every class's statistics, not the top five")
    a = ap.parse_args()
    for run in a.run:
        for reduce in a.reduce:
            spec = DetectSpec("ac", rule="mixture", ac_reduce=reduce)
            rows = class_table(run, spec)
            attacked = [r for r in rows if r["n_poisoned"]]
            order = [r["class"] for r in rows]
            print(json.dumps({
                "run": str(run), "reduce": reduce,
                "attacked": [{**r, "rank": order.index(r["class"]) + 1} for r in attacked],
                "clean_called": [r["class"] for r in rows if r["called"] and not r["n_poisoned"]],
                "top5": [{k: r[k] for k in ("class", "n", "n_poisoned", "evidence", "z", "class_test", "separation",
                                   "minority_weight")}
                         for r in (rows if a.all else rows[:5])],
            }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
