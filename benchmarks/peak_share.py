"""Local relevance peaks per class, from a scan's cached heatmaps: does a window share see a trigger
that the whole-image concentration misses, and what do clean classes show?

For every class of ``--run`` (its scan's heatmaps of all training images, ``run/cache``), and each
window side ``w`` of ``--windows``: the log share of positive relevance on the w x w square that holds
the most (:func:`poisonsift.explain.relevance_peak`), then the mixture test HC's class tests use
(one-sided: the minority mode on the higher share; ``mixture-tail`` flags) and its mode gap (log ratio
of the two modes' shares). Prints, per window: the attacked class's gap, AUROC, TPR / TNR of the flags,
and the largest gap of a suspicious mode on any clean class (the false-alarm margin).

    python benchmarks/peak_share.py --run RUN [--windows 2,3,4,5,6,8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from poisonsift.defences import ClusterRule
from poisonsift.defences.decision import mixture_flags, mode_gap
from poisonsift.explain import relevance_concentration, relevance_peak
from poisonsift.runs import load_poisoned, read_json


def scan_heatmaps(run: Path, n: int) -> tuple[Path, np.ndarray]:
    """The scan's heatmaps of all ``n`` training images (the newest cache file of that many rows)."""
    files = sorted((run / "cache").glob("heatmaps-*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
    for f in files:
        h = np.load(f, mmap_mode="r")
        if h.shape[0] == n:
            return f, h
    raise SystemExit(f"{run}/cache holds no heatmaps of all {n} training images: run `poisonsift scan --run {run}`")


def class_row(stat: np.ndarray, truth: np.ndarray, rule: ClusterRule) -> dict:
    flagged, _, mt = mixture_flags(stat, rule, 1)
    row = {"gap": mode_gap(mt) if mt.get("suspicious") else None, "separation": mt.get("separation"),
           "flagged": int(flagged.sum())}  # fmt: skip
    if truth.any() and not truth.all():
        row.update(auroc=float(roc_auc_score(truth, stat)), tpr=float(flagged[truth].mean()),
                   tnr=float(1 - flagged[~truth].mean()))  # fmt: skip
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--windows", default="2,3,4,5,6,8")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    pd = load_poisoned(args.run / "poisoned.npz")
    attack = read_json(args.run / "attack.json")
    target = attack.get("target_class")
    path, heat = scan_heatmaps(args.run, len(pd.y_train))
    rule = ClusterRule("mixture-tail")
    stats = {"concentration": lambda h: relevance_concentration(h)}
    for w in (int(v) for v in args.windows.split(",")):
        stats[f"peak {w}x{w}"] = lambda h, w=w: relevance_peak(h, w)
    out = {"run": str(args.run), "heatmaps": path.name, "target": target, "stats": {}}
    for name, fn in stats.items():
        rows = {}
        for c in np.unique(pd.y_train):
            idx = np.flatnonzero(pd.y_train == c)
            rows[int(c)] = class_row(fn(np.asarray(heat[idx], dtype=np.float32)), pd.poison_mask[idx], rule)
        clean = {c: r for c, r in rows.items() if c != target and r["gap"] is not None}
        worst = max(clean, key=lambda c: clean[c]["gap"], default=None)
        out["stats"][name] = {"classes": rows, "worst_clean": worst}
        t = rows.get(target, {})
        gap = f"{t['gap']:.2f}" if t.get("gap") is not None else "-"
        wc = f"class {worst}: {clean[worst]['gap']:.2f} ({clean[worst]['flagged']} flagged)" if worst is not None else "none"
        print(f"{name:14s} target gap {gap:>5s} AUROC {t.get('auroc', float('nan')):.3f} "
              f"TPR {t.get('tpr', float('nan')):.3f} TNR {t.get('tnr', float('nan')):.4f} | "
              f"clean classes with a high mode: {len(clean)}, largest gap {wc}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
