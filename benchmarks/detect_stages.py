"""Seconds per stage of Activation Clustering and Heatmap Clustering on the same class.

    python benchmarks/detect_stages.py --run DIR [--class 5] [--engine fast] [--subset N]
                                       [--lrp-precision float32|bfloat16] [--repeat R]

Runs AC (activations, PCA, k-means) and HC (LRP, point clouds, GW k-means) on
the attacked class of a run (``poisoned.npz`` + ``model.pt``) and prints each
stage's seconds, both totals and the ratio whole-HC / whole-AC. HC's ``view``
stage (the MDS plot of GW distances, ``HCConfig.view_samples``) is printed but not
counted: it draws a picture and decides nothing. Libraries are imported before the
clock starts, for both defences: scikit-learn comes in with poisonsift.defences, and
zennit (imported lazily by LRP) is imported here - it pulls in torchvision, ~0.9 s
once per process, which a fresh ``poisonsift detect --method hc`` pays on top.

``--repeat R`` runs AC and HC alternately R times in this process and reports each
stage's minimum over the repeats (timeit's rule: on a shared machine noise only ever
adds time; AC alone moved between 4.2 and 5.6 s between identical single runs here).
The first repeat is the fresh-process cost; the JSON keeps every repeat.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from poisonsift.defences import ACConfig, ActivationClustering, HCConfig, HeatmapClustering
from poisonsift.explain import LRP_PRECISIONS, LRP_RULES
from poisonsift.gw import GWKMeansConfig
from poisonsift.metrics import detection_metrics
from poisonsift.runs import load_poisoned, read_json
from poisonsift.training import load_checkpoint
from poisonsift.utils import tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--class", dest="cls", type=int, default=None)
    ap.add_argument("--engine", default="fast", choices=["fast", "pot"])
    ap.add_argument("--subset", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lrp-precision", default="float32", choices=LRP_PRECISIONS)
    ap.add_argument("--lrp-rule", default="paper", choices=LRP_RULES)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")
    tune_allocator()  # as the CLI does
    import zennit.attribution  # noqa: F401  (see the module docstring)

    run = Path(a.run)
    pd = load_poisoned(run / "poisoned.npz")
    cls = a.cls if a.cls is not None else read_json(run / "attack.json")["target_class"]
    rows = np.flatnonzero(pd.y_train == cls)
    x, y, truth = pd.x_train[rows], pd.y_train[rows], pd.poison_mask[rows]
    model, norm = load_checkpoint(run / "model.pt")
    hc_cfg = HCConfig(gw=GWKMeansConfig(seed=a.seed), engine=a.engine, subset=a.subset, lrp_precision=a.lrp_precision,
                      lrp_rule=a.lrp_rule)  # fmt: skip
    ac_runs, hc_runs, decisions = [], [], set()
    for _ in range(a.repeat):
        ac = ActivationClustering(ACConfig(seed=a.seed)).detect(model, x, y, norm)
        hc = HeatmapClustering(hc_cfg).detect(model, x, y, norm)
        ac_runs.append(ac.seconds)
        hc_runs.append(hc.seconds)
        decisions.add((ac.is_poisoned.tobytes(), hc.is_poisoned.tobytes()))
    if len(decisions) > 1:
        raise SystemExit("repeats gave different decisions: the timings would not compare like with like")
    ac_s = {k: min(r[k] for r in ac_runs) for k in ac_runs[0]}
    hc_s = {k: min(r[k] for r in hc_runs) for k in hc_runs[0]}
    res = {"class": int(cls), "n": int(len(rows)), "engine": a.engine, "subset": a.subset, "lrp_precision": a.lrp_precision, "lrp_rule": a.lrp_rule,
           "repeat": a.repeat, "ac_seconds": ac_s, "hc_seconds": hc_s, "ac_runs": ac_runs, "hc_runs": hc_runs,
           "ac_total": sum(ac_s.values()),
           "hc_total": sum(v for k, v in hc_s.items() if k != "view")}  # fmt: skip
    res["ratio"] = res["hc_total"] / res["ac_total"]
    ok = np.isfinite(hc.scores)
    res["ac_metrics"] = {k: v for k, v in detection_metrics(truth, ac.is_poisoned, ac.scores).items() if k in ("acc", "tpr", "tnr")}
    res["hc_metrics"] = {k: v for k, v in detection_metrics(truth[ok], hc.is_poisoned[ok], hc.scores[ok]).items() if k in ("acc", "tpr", "tnr")}
    if a.json:
        print(json.dumps(res))
        return
    print(f"class {cls}: {len(rows)} images ({int(truth.sum())} poisoned); HC engine {a.engine}, LRP {a.lrp_rule} {a.lrp_precision}"
          + (f", subset {a.subset}" if a.subset else "") + (f"; each stage the minimum of {a.repeat} runs" if a.repeat > 1 else ""))
    print(f"{'stage':<24} {'seconds':>8}")
    for k, v in ac_s.items():
        print(f"{'AC ' + k:<24} {v:8.2f}")
    print(f"{'AC total':<24} {res['ac_total']:8.2f}")
    for k, v in hc_s.items():
        print(f"{'HC ' + k:<24} {v:8.2f}" + ("  (a plot; not in the total)" if k == "view" else ""))
    print(f"{'HC total':<24} {res['hc_total']:8.2f}")
    print(f"{'ratio HC / AC':<24} {res['ratio']:8.2f}")
    print(f"AC  ACC {res['ac_metrics']['acc']:.4f} TPR {res['ac_metrics']['tpr']:.4f} TNR {res['ac_metrics']['tnr']:.4f}")
    print(f"HC  ACC {res['hc_metrics']['acc']:.4f} TPR {res['hc_metrics']['tpr']:.4f} TNR {res['hc_metrics']['tnr']:.4f}")


if __name__ == "__main__":
    main()
