"""GW k-means with and without warm-started barycenters on the whole attacked class of a run.

    python benchmarks/warm_start.py --run DIR [--engine fast]

Clusters the LRP point clouds of the run's target class twice - cold (POT's random
barycenter start, the paper's way) and warm (``GWKMeansConfig.warm_start``) - and
prints seconds, k-means iterations, the share of identical assignments and
ACC/TPR/TNR/AUROC of each. Heatmaps come from (and go to) the run's LRP cache.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from poisonsift.defences import ClusterRule, result_from_distances
from poisonsift.explain import cached_lrp_heatmaps, point_clouds
from poisonsift.gw import GWKMeansConfig, gw_kmeans
from poisonsift.metrics import detection_metrics
from poisonsift.runs import load_poisoned, read_json
from poisonsift.training import load_checkpoint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--engine", default="fast", choices=["fast", "pot"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    run = Path(a.run)
    pd = load_poisoned(run / "poisoned.npz")
    rows = np.flatnonzero(pd.y_train == read_json(run / "attack.json")["target_class"])
    model, norm = load_checkpoint(run / "model.pt")
    heat = cached_lrp_heatmaps(model, pd.x_train[rows], pd.y_train[rows], norm, run / "cache")
    truth = pd.poison_mask[rows]
    clouds = point_clouds(heat)
    out = {}
    for name in ("cold", "warm"):
        t = time.perf_counter()
        km = gw_kmeans(clouds, GWKMeansConfig(seed=a.seed, warm_start=name == "warm"), a.engine)
        secs = time.perf_counter() - t
        res = result_from_distances(km.distances, ClusterRule())
        m = detection_metrics(truth, res.is_poisoned, res.scores)
        out[name] = {"seconds": secs, "n_iter": km.n_iter, "labels": km.labels,
                     **{k: m[k] for k in ("acc", "tpr", "tnr", "auroc")}}  # fmt: skip
    same = float(np.mean(out["cold"]["labels"] == out["warm"]["labels"]))
    print(f"{len(clouds)} clouds, engine {a.engine}; identical assignments {max(same, 1 - same):.2%}")
    for name, r in out.items():
        r.pop("labels")
        print(f"{name:<5} {json.dumps(r)}")


if __name__ == "__main__":
    main()
