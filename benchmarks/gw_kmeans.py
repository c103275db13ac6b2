"""GW k-means: the fast engine against the pair-by-pair POT loop, on the same heatmaps.

    python benchmarks/gw_kmeans.py [--run DIR] [--n 200,1000,2000] [--engines pot,fast]
                                   [--pot-max 120] [--pot-init cloud|compressed] [--json]

Heatmaps: LRP heatmaps (zennit, as ``poisonsift detect --method hc``) of the
attacked class of a real run when ``--run DIR`` is given (a seeded random
subset of N images; N is capped at the class size), else synthetic 32x32
heatmaps - a sign-like ring, plus a bright trigger-like 3x3 blob at a random
place in the centre window for a third of them.

Both engines run with the same epsilon, iteration limits and seed. The POT
loop costs minutes per hundred images, so it runs on at most ``--pot-max``
images: for a larger N its seconds are extrapolated linearly in N (k-means
work per iteration is linear in N) and the table marks them with '~'; the
agreement (share of identical assignments, up to label swap) is then measured
on that subset, where both engines cluster the same images. The table also gives
each engine's agreement with the ground truth: the paper's whole-cloud seeding can
collapse to one cluster (measured on 300 real clouds: sizes 0 / 300), and
``--pot-init compressed`` seeds POT as the fast engine does (then the two agree exactly).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from poisonsift.explain import point_clouds
from poisonsift.gw import GWKMeansConfig, gw_kmeans
from poisonsift.utils import tune_allocator


def synthetic_heatmaps(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    heat = np.empty((n, 32, 32))
    poisoned = rng.random(n) < 1 / 3
    for i in range(n):
        cy, cx = 16 + rng.normal(0, 1.5, 2)
        r = np.hypot(yy - cy, xx - cx)
        h = np.exp(-((r - 9) ** 2) / 6) + 0.05 * rng.random((32, 32))
        if poisoned[i]:
            ty, tx = rng.integers(11, 19), rng.integers(8, 21)
            h[ty : ty + 3, tx : tx + 3] += 6.0
        heat[i] = h
    return heat, poisoned


def run_heatmaps(run: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from pathlib import Path

    from poisonsift.explain import cached_lrp_heatmaps
    from poisonsift.runs import load_poisoned, read_json
    from poisonsift.training import load_checkpoint

    run = Path(run)
    pd = load_poisoned(run / "poisoned.npz")
    rows = np.flatnonzero(pd.y_train == read_json(run / "attack.json")["target_class"])
    model, norm = load_checkpoint(run / "model.pt")
    # The whole class, as `poisonsift detect --method hc` computes it: shares its heatmap cache.
    heat = cached_lrp_heatmaps(model, pd.x_train[rows], pd.y_train[rows], norm, run / "cache")
    pick = np.sort(np.random.default_rng(seed).permutation(len(rows))[: min(n, len(rows))])
    return heat[pick], pd.poison_mask[rows][pick]


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    same = float(np.mean(a == b))
    return max(same, 1 - same)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="run directory (poisoned.npz, model.pt); default: synthetic heatmaps")
    ap.add_argument("--n", default="200,1000,2000")
    ap.add_argument("--engines", default="pot,fast")
    ap.add_argument("--pot-max", type=int, default=120, help="largest N the POT loop runs on (default 120)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=True,
                    help="both engines warm-start their barycenters (GWKMeansConfig.warm_start, the default)")
    ap.add_argument("--pot-init", default="cloud", choices=["cloud", "compressed"],
                    help="POT's k-means++ seeding: whole clouds (the paper's, default) or the fast engine's compressed clouds")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    tune_allocator()  # as the CLI does
    sizes = [int(v) for v in a.n.split(",")]
    engines = a.engines.split(",")
    heat, truth = run_heatmaps(a.run, max(sizes), a.seed) if a.run else synthetic_heatmaps(max(sizes), a.seed)
    clouds_all = point_clouds(heat)
    cfg = GWKMeansConfig(seed=a.seed, warm_start=a.warm_start)
    rows = []
    pot_cache: dict[int, tuple[np.ndarray, float, np.ndarray | None]] = {}  # m -> (labels, seconds, fast labels)
    for n in sizes:
        n = min(n, len(clouds_all))
        clouds = clouds_all[:n]
        row = {"n": n, "median_points": int(np.median([len(c) for c in clouds]))}
        fast_res = None
        if "fast" in engines:
            t = time.perf_counter()
            fast_res = gw_kmeans(clouds, cfg, "fast")
            row["fast_seconds"] = time.perf_counter() - t
            row["fast_iterations"] = fast_res.n_iter
            row["fast_purity"] = agreement(fast_res.labels, truth[:n])
        if "pot" in engines:
            m = min(n, a.pot_max)
            if m not in pot_cache:  # the same subset serves every larger N: run POT on it once
                t = time.perf_counter()
                pot_labels = gw_kmeans(clouds[:m], dataclasses.replace(cfg, init=a.pot_init), "pot").labels
                secs = time.perf_counter() - t
                ref = None
                if fast_res is not None:
                    ref = fast_res.labels if m == n else gw_kmeans(clouds[:m], cfg, "fast").labels
                pot_cache[m] = (pot_labels, secs, ref)
            pot_labels, secs, ref = pot_cache[m]
            row["pot_seconds"] = secs * n / m
            row["pot_extrapolated_from"] = m if m < n else None
            if truth is not None:
                row["pot_purity"] = agreement(pot_labels, truth[:m])
            if ref is not None:
                row["agreement"] = agreement(pot_labels, ref)
                row["speedup"] = row["pot_seconds"] / row["fast_seconds"]
        rows.append(row)
        if a.json:
            print(json.dumps({"n": row["n"], "pot_seconds": row.get("pot_seconds"), "fast_seconds": row.get("fast_seconds"),
                              "speedup": row.get("speedup"), "agreement": row.get("agreement"),
                              "pot_extrapolated_from": row.get("pot_extrapolated_from"), "pot_init": a.pot_init,
                              "pot_purity": row.get("pot_purity"), "fast_purity": row.get("fast_purity"),
                              "median_points": row["median_points"]}), flush=True)  # fmt: skip
    if not a.json:
        src = f"LRP heatmaps of {a.run}" if a.run else "synthetic heatmaps"
        print(f"GW k-means on {src}; epsilon {cfg.epsilon}, {cfg.n_support} support points, seed {cfg.seed}, "
              f"warm start {cfg.warm_start}, POT seeding {a.pot_init}")
        print("(pot / fast truth: share of assignments matching the poisoned/clean ground truth, up to label swap)")
        print(f"{'N':>6} {'points':>6} {'pot s':>10} {'fast s':>8} {'speed-up':>9} {'agree':>7} {'pot truth':>9} "
              f"{'fast truth':>10}  note")
        for r in rows:
            ext = r.get("pot_extrapolated_from")
            pot = f"{'~' if ext else ''}{r['pot_seconds']:.1f}" if "pot_seconds" in r else "-"
            note = f"pot timed on {ext} and extrapolated; agreement on those {ext}" if ext else ""
            def cell(key: str, fmt: str, width: int) -> str:  # "-" for an engine that was not run
                return f"{format(r[key], fmt):>{width}}" if key in r else f"{'-':>{width}}"

            print(f"{r['n']:>6} {r['median_points']:>6} {pot:>10} {cell('fast_seconds', '.1f', 8)} "
                  f"{cell('speedup', '.1f', 8) + ('x' if 'speedup' in r else ' ')} {cell('agreement', '.2%', 7)} "
                  f"{cell('pot_purity', '.2%', 9)} {cell('fast_purity', '.2%', 10)}  {note}")


if __name__ == "__main__":
    main()
