"""LRP in float32 against bfloat16: speed, heatmap error and Heatmap Clustering decisions.

    python benchmarks/lrp_precision.py --run DIR [--run DIR ...] [--class 5] [--rule paper|epsilon-gamma-box] [--json]

For the attacked class of each run (``poisoned.npz`` + ``model.pt``): LRP heatmaps in
both precisions (computed afresh, in a temporary cache that HC then reads), each map's largest
difference relative to its peak, and HC (fast engine, whole class, no view) on each;
prints seconds, ACC / TPR / TNR / AUROC per precision and the share of identical
decisions. With ``--json`` one object per run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from poisonsift.defences import HCConfig, HeatmapClustering
from poisonsift.explain import cached_lrp_heatmaps
from poisonsift.metrics import detection_metrics
from poisonsift.runs import load_poisoned, read_json
from poisonsift.training import load_checkpoint
from poisonsift.utils import native_bfloat16, tune_allocator


def compare(run: Path, cls: int | None, rule: str = "paper") -> dict:
    pd = load_poisoned(run / "poisoned.npz")
    cls = cls if cls is not None else int(read_json(run / "attack.json")["target_class"])
    rows = np.flatnonzero(pd.y_train == cls)
    x, y, truth = pd.x_train[rows], pd.y_train[rows], pd.poison_mask[rows]
    model, norm = load_checkpoint(run / "model.pt")
    out: dict = {"run": str(run), "class": cls, "n": int(len(rows)), "rule": rule}
    heat, decisions = {}, {}
    with tempfile.TemporaryDirectory() as cache:  # timed once here, then HC reads them back
        for pr in ("float32", "bfloat16"):
            t = time.perf_counter()
            heat[pr] = cached_lrp_heatmaps(model, x, y, norm, cache, precision=pr, rule=rule)
            lrp_s = time.perf_counter() - t
            res = HeatmapClustering(HCConfig(lrp_precision=pr, lrp_rule=rule, view_samples=0, cache_dir=cache)).detect(model, x, y, norm)
            m = detection_metrics(truth, res.is_poisoned, res.scores)
            decisions[pr] = res.is_poisoned
            out[pr] = {"lrp_seconds": lrp_s, **{k: m[k] for k in ("acc", "tpr", "tnr", "auroc")}}
    peak = np.abs(heat["float32"]).max(axis=(1, 2))
    err = np.abs(heat["bfloat16"] - heat["float32"]).max(axis=(1, 2)) / np.where(peak > 0, peak, 1)
    out["heatmap_error_max"], out["heatmap_error_median"] = float(err.max()), float(np.median(err))
    out["identical_decisions"] = float(np.mean(decisions["float32"] == decisions["bfloat16"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="a run directory (repeatable)")
    ap.add_argument("--class", dest="cls", type=int, default=None)
    ap.add_argument("--rule", default="paper", choices=["paper", "epsilon-gamma-box"], help="LRP rule (default paper, HC's)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    tune_allocator()  # as the CLI does
    if not a.json:
        print(f"native bfloat16 on this CPU: {native_bfloat16('cpu')}")
    for run in a.run:
        r = compare(Path(run), a.cls, a.rule)
        if a.json:
            print(json.dumps(r))
            continue
        print(f"{run}: {r['rule']} rule, class {r['class']}, {r['n']} images; bfloat16 heatmaps within {r['heatmap_error_max']:.2%} of "
              f"their peak (median {r['heatmap_error_median']:.2%}); identical HC decisions {r['identical_decisions']:.4%}")
        for pr in ("float32", "bfloat16"):
            m = r[pr]
            print(f"  {pr:<9} LRP {m['lrp_seconds']:6.1f} s  ACC {m['acc']:.4f} TPR {m['tpr']:.4f} TNR {m['tnr']:.4f} "
                  f"AUROC {m['auroc']:.4f}")


if __name__ == "__main__":
    main()
