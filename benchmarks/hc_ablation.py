"""What each part of Heatmap Clustering contributes, on real runs: LRP rule x clustering x decision.

For the attacked class of each ``--run``:

* LRP rule: ``paper`` (HC's default) and ``epsilon-gamma-box``;
* clustering of the top-99 % clouds: GW k-means at epsilon 0.1 (the paper's), GW k-means at a
  smaller ``--small-epsilon`` (barycenters keep their structure), and plain 1-D k-means on each
  cloud's relevance-weighted mean pairwise distance E[d] (what GW k-means reduces to at 0.1);
* decision: ``smaller`` (the paper's), ``mixture``, ``mixture-tail`` (poisonsift.defences.decision);
* Activation Clustering with the same three decisions, for comparison.

and, with ``--clean-classes K``, HC's defaults on the K largest classes of the run that hold no
poison (share flagged, called suspicious or not). Prints one table; ``--json`` writes the rows.

    python benchmarks/hc_ablation.py --run RUN [--run RUN ...] [--clean-classes 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

from poisonsift.defences import ClusterRule, DetectSpec, build_defence, result_from_distances
from poisonsift.explain import cached_lrp_heatmaps, point_clouds
from poisonsift.gw import GWKMeansConfig, gw_kmeans
from poisonsift.metrics import detection_metrics
from poisonsift.runs import load_poisoned, read_json
from poisonsift.training import load_checkpoint
from poisonsift.utils import tune_allocator

DECISIONS = ("smaller", "mixture", "mixture-tail")


def mean_distance(clouds) -> np.ndarray:
    """(N,) E[d] = p' C p of each cloud (relevance-weighted mean pairwise distance, C scaled to max 1)."""
    return np.array([float(c.p @ c.C @ c.p) for c in clouds])


def row(name, truth, dist, extra=None):
    out = {}
    for dec in DECISIONS:
        res = result_from_distances(dist, ClusterRule(dec))
        m = detection_metrics(truth, res.is_poisoned, res.scores)
        out[dec] = {k: m[k] for k in ("acc", "tpr", "tnr", "auroc")} | {"flagged": int(res.is_poisoned.sum())}
    return {"what": name, **out, **(extra or {})}


def _show(r: dict) -> None:
    cells = "  ".join(f"{d}: TPR {r[d]['tpr']:.4f} TNR {r[d]['tnr']:.4f}" for d in DECISIONS)
    secs = f" ({r['cluster_seconds']:.1f} s)" if "cluster_seconds" in r else ""
    print(f"  {r['what']}{secs}: {cells}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", required=True)
    ap.add_argument("--small-epsilon", type=float, default=0.01)
    ap.add_argument("--clean-classes", type=int, default=3)
    ap.add_argument("--subset", type=int, default=300, help="clouds for the epsilon comparison (0: skip it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    tune_allocator()
    rows = []
    for run in a.run:
        run = Path(run)
        pd = load_poisoned(run / "poisoned.npz")
        model, norm = load_checkpoint(run / "model.pt")
        metrics = read_json(run / "metrics.json")
        cls = int(read_json(run / "attack.json")["target_class"])
        idx = np.flatnonzero(pd.y_train == cls)
        x, y, truth = pd.x_train[idx], pd.y_train[idx], pd.poison_mask[idx]
        head = {"run": str(run), "p": float(truth.mean()), "asr": metrics["asr"], "n": len(idx)}
        print(f"\n{run}: class {cls}, {len(idx)} images, {truth.sum()} poisoned, ASR {metrics['asr']:.3f}", flush=True)
        # AC's split as squared distances to its two k-means centres, re-decided by each rule
        feats_dist = _ac_distances(model, x, norm, a.seed)
        rows.append({**head, **row("AC (relu_fc2, PCA 10)", truth, feats_dist)})
        _show(rows[-1])
        for lrp_rule in ("paper", "epsilon-gamma-box"):
            t = time.perf_counter()
            heat = cached_lrp_heatmaps(model, x, y, norm, str(run / "cache"), rule=lrp_rule)
            lrp_s = time.perf_counter() - t
            clouds = point_clouds(heat)
            ed = mean_distance(clouds)
            sizes = np.array([len(c) for c in clouds])
            info = {"lrp_seconds": lrp_s, "median_points_poisoned": float(np.median(sizes[truth])) if truth.any() else None,
                    "median_points_clean": float(np.median(sizes[~truth])),
                    "mean_Ed_poisoned": float(ed[truth].mean()) if truth.any() else None,
                    "mean_Ed_clean": float(ed[~truth].mean())}  # fmt: skip
            print(f"  {lrp_rule}: median cloud {info['median_points_clean']:.0f} clean / "
                  f"{info['median_points_poisoned']} poisoned points; E[d] clean {info['mean_Ed_clean']:.3f}, "
                  f"poisoned {info['mean_Ed_poisoned']}", flush=True)  # fmt: skip
            t = time.perf_counter()
            km = gw_kmeans(clouds, GWKMeansConfig(seed=a.seed), "fast")
            rows.append({**head, **row(f"HC {lrp_rule}, GW eps 0.1", truth, km.distances,
                                       {**info, "cluster_seconds": time.perf_counter() - t})})  # fmt: skip
            _show(rows[-1])
            km1 = KMeans(2, n_init=10, random_state=a.seed).fit(ed[:, None])
            rows.append({**head, **row(f"HC {lrp_rule}, k-means on E[d]", truth, km1.transform(ed[:, None]) ** 2, info)})
            _show(rows[-1])
            if a.subset and lrp_rule == "paper":
                # the smaller epsilon converges slowly (many more Sinkhorn iterations): a seeded subset
                sub = np.sort(np.random.default_rng(a.seed).choice(len(clouds), min(a.subset, len(clouds)), replace=False))
                for eps in (0.1, a.small_epsilon):
                    t = time.perf_counter()
                    km = gw_kmeans([clouds[i] for i in sub], GWKMeansConfig(seed=a.seed, epsilon=eps), "fast")
                    rows.append({**head, **row(f"HC {lrp_rule}, GW eps {eps}, {len(sub)} subset", truth[sub],
                                               km.distances, {"cluster_seconds": time.perf_counter() - t})})  # fmt: skip
                    _show(rows[-1])
        if a.clean_classes:
            clean = [int(c) for c in np.argsort(-np.bincount(pd.y_train)) if not pd.poison_mask[pd.y_train == c].any()
                     and c != cls and c != 2][: a.clean_classes]  # fmt: skip
            for c in clean:
                ci = np.flatnonzero(pd.y_train == c)
                for dec in DECISIONS:
                    res = build_defence(DetectSpec("hc", rule=dec, seed=a.seed, view_samples=0), str(run / "cache")).detect(
                        model, pd.x_train[ci], pd.y_train[ci], norm)
                    rows.append({**head, "what": f"clean class {c} ({len(ci)} images), HC {dec}",
                                 "flagged_share": float(res.is_poisoned.mean()), "suspicious": res.suspicious,
                                 "separation": res.analysis.get("mixture", {}).get("separation")})  # fmt: skip
                    print(f"  clean class {c}: HC {dec}: flags {res.is_poisoned.mean():.4f}, suspicious {res.suspicious}", flush=True)
    print()
    print(f"{'run':<10} {'what':<40} " + " ".join(f"{d + ' TPR/TNR':>22}" for d in DECISIONS))
    for r in rows:
        if "smaller" not in r:
            continue
        cells = " ".join(f"{r[d]['tpr']:>10.4f} / {r[d]['tnr']:<9.4f}" for d in DECISIONS)
        print(f"{r['p']:<10.3f} {r['what']:<40} {cells}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=float))


def _ac_distances(model, x, norm, seed):
    from sklearn.decomposition import PCA

    from poisonsift.explain import activations
    from poisonsift.models import DEFAULT_HIDDEN_LAYER

    f = activations(model, x, DEFAULT_HIDDEN_LAYER, norm)
    z = PCA(n_components=10, random_state=seed).fit_transform(f)
    return KMeans(2, n_init=10, random_state=seed).fit(z).transform(z) ** 2


if __name__ == "__main__":
    main()
