"""Suspicious-class search (beyond the paper): which class of a training set splits most cleanly."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from poisonsift.explain import activations

def rank_classes(model, images: np.ndarray, labels: np.ndarray, normalizer=None, seed: int = 0,
                 layer: str | None = None, min_size: int = 10) -> list[dict[str, Any]]:  # fmt: skip
    """Suspicious-class search (beyond the paper): Activation Clustering on every class.

    Classes are ranked by the silhouette score of their two-way split (a class
    with a planted backdoor splits cleanly into two groups; a clean class does
    not). Returns [{"class", "n", "silhouette", "smaller_share"}], most suspicious first.
    Classes with fewer than ``min_size`` images are skipped.
    """
    feats = activations(model, images, layer, normalizer, desc="activations (all classes)")
    out = []
    for c in np.unique(labels):
        f = feats[labels == c]
        if len(f) < min_size:
            continue
        z = PCA(n_components=min(10, *f.shape), random_state=seed).fit_transform(f)
        km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(z)
        sil = float(silhouette_score(z, km.labels_)) if len(set(km.labels_)) == 2 else 0.0
        sizes = np.bincount(km.labels_, minlength=2)
        out.append({"class": int(c), "n": int(len(f)), "silhouette": sil, "smaller_share": float(sizes.min() / sizes.sum())})
    return sorted(out, key=lambda r: -r["silhouette"])
