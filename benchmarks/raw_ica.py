"""Raw-image clustering with FastICA against whitened PCA, and FastICA's component count (Table 3).

FastICA's output is a rotation of the whitened principal components, and k-means is invariant to
rotations, so FastICA(n) + k-means splits a class as whitened PCA(n) + k-means does (up to the
k-means start). This prints, for the attacked class of ``--run`` (its ``attack.json``'s target
class), the split of poisonsift's ``raw-ica`` defence (FastICA, 10 components, k-means++, the
paper's ``smaller`` rule) beside whitened PCA with 10 components, and ``raw-ica`` with other
component counts (the paper does not give its count): ACC / TPR / TNR in percent.

    python benchmarks/raw_ica.py --run RUN [--components 2 5 10 20 50 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from poisonsift.defences import RawClustering, RawConfig
from poisonsift.defences.base import _kmeans_split, _reduce
from poisonsift.defences.decision import ClusterRule
from poisonsift.metrics import detection_metrics
from poisonsift.runs import load_poisoned, read_json


def _rates(truth: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    m = detection_metrics(truth, flagged)
    return {k: round(100 * m[k], 2) for k in ("acc", "tpr", "tnr")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--components", type=int, nargs="+", default=[2, 5, 10, 20, 50, 100])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    data = load_poisoned(Path(args.run) / "poisoned.npz")
    target = read_json(Path(args.run) / "attack.json")["target_class"]
    rows = np.flatnonzero(data.y_train == target)
    images, truth = data.x_train[rows], data.poison_mask[rows]
    warnings.filterwarnings("ignore", message=".*FastICA did not converge.*")
    out = {}
    x = images.reshape(len(images), -1).astype(np.float32) / 255
    z = _reduce(x, "pca-whiten", 10, args.seed)
    out["pca-whiten 10"] = _rates(truth, _kmeans_split(z, args.seed, ClusterRule("smaller"), {}).is_poisoned)
    for n in args.components:
        res = RawClustering(RawConfig("ica", n_components=n, seed=args.seed, rule=ClusterRule("smaller"))).detect(
            None, images, data.y_train[rows])
        out[f"ica {n}"] = _rates(truth, res.is_poisoned)
    for k, v in out.items():
        print(f"{k:<14} ACC {v['acc']:6.2f}  TPR {v['tpr']:6.2f}  TNR {v['tnr']:6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
