"""Activation Clustering with the paper's PCA against whitened PCA, on real runs.

For the attacked class of each ``--run`` (its ``attack.json``'s target class): the activations of
``--layer`` (default: the model's, ``relu_fc2`` / ``avgpool``), then for each reduction
(:data:`poisonsift.defences.activation.AC_REDUCTIONS`) AC's clustering (k-means++, 10 starts,
``smaller``): AUROC of its split statistic, TPR / TNR of its flags. Also, to say why a reduction
fails: the AUROC of each of the 10 principal components alone, their share of the variance, and a
supervised 5-fold logistic-regression AUROC (how separable the poison is at all in that layer).

    python benchmarks/ac_reduction.py --run RUN [--run RUN ...] [--layer NAME] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict

from poisonsift.defences import AC_REDUCTIONS, ACConfig, ActivationClustering
from poisonsift.explain import activations
from poisonsift.metrics import detection_metrics
from poisonsift.runs import load_poisoned, read_json
from poisonsift.training import load_checkpoint


def _auroc(truth: np.ndarray, score: np.ndarray) -> float:
    """AUROC of a direction whose sign is arbitrary (a principal component): max(a, 1 - a)."""
    a = roc_auc_score(truth, score)
    return float(max(a, 1 - a))


def probe(run: str, layer: str | None) -> dict:
    data = load_poisoned(Path(run) / "poisoned.npz")
    target = read_json(Path(run) / "attack.json")["target_class"]
    rows = np.flatnonzero(data.y_train == target)
    truth = data.poison_mask[rows]
    model, norm = load_checkpoint(Path(run) / "model.pt")
    feats = activations(model, data.x_train[rows], layer, norm)
    out = {"run": run, "class": int(target), "n": len(rows), "n_poisoned": int(truth.sum()), "dim": feats.shape[1]}
    for reduce in AC_REDUCTIONS:
        res = ActivationClustering(ACConfig(layer=layer, reduce=reduce)).cluster(feats)
        m = detection_metrics(truth, res.is_poisoned)
        out[reduce] = {"auroc": float(roc_auc_score(truth, res.scores)), "tpr": m["tpr"], "tnr": m["tnr"]}
    pca = PCA(10, random_state=0).fit(feats)
    out["pc_auroc"] = [_auroc(truth, z) for z in pca.transform(feats).T]
    out["pc_variance"] = pca.explained_variance_ratio_.tolist()
    std = (feats - feats.mean(0)) / (feats.std(0) + 1e-6)
    p = cross_val_predict(LogisticRegression(max_iter=2000), std, truth, cv=5, method="predict_proba")[:, 1]
    out["supervised_auroc"] = float(roc_auc_score(truth, p))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="a run directory (repeatable)")
    ap.add_argument("--layer", default=None, help="hidden layer (default: the model's)")
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args()
    rows = [probe(r, args.layer) for r in args.run]
    for r in rows:
        cells = " | ".join(f"{k}: AUROC {r[k]['auroc']:.3f}, TPR {r[k]['tpr']:.3f} / TNR {r[k]['tnr']:.3f}"
                           for k in AC_REDUCTIONS)  # fmt: skip
        print(f"{r['run']} (class {r['class']}, {r['n_poisoned']} of {r['n']} poisoned, {r['dim']}-d) | {cells}")
        print(f"    per-PC AUROC {np.round(r['pc_auroc'], 2).tolist()}; variance {np.round(r['pc_variance'], 3).tolist()};"
              f" supervised AUROC {r['supervised_auroc']:.3f}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
