"""What every defence shares: the result type, input checks, k-means splits and reductions."""

from __future__ import annotations


import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.metrics import silhouette_score
from torch import nn

from poisonsift.defences.decision import ClusterRule, decide_split
from poisonsift.errors import ConfigError, DataError
from poisonsift.training import Normalizer

__all__ = ["DetectionResult", "result_from_distances"]


@dataclass
class DetectionResult:
    """What a defence says about one class.

    Attributes:
        cluster_labels: (N,) int cluster of each sample.
        scores: (N,) float suspicion (higher = more likely poisoned).
        is_poisoned: (N,) bool decision.
        cluster_sizes: samples per cluster.
        poisoned_clusters: clusters called poisoned (empty: the class looks clean).
        suspicious: whether the class is judged to contain poison.
        analysis: rule inputs (relative sizes, silhouette score).
        seconds: wall time per stage.
        embedding: (N, 2) a 2-D view of what was clustered, for plots: the first two
            reduced components (raw / AC), or the entropic GW distances to the two
            centres (HC); NaN rows for samples not clustered; None if not available.
    """

    cluster_labels: np.ndarray
    scores: np.ndarray
    is_poisoned: np.ndarray
    cluster_sizes: list[int]
    poisoned_clusters: list[int]
    suspicious: bool
    analysis: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    embedding: np.ndarray | None = None


def _check_inputs(images: np.ndarray, labels: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise DataError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    if len(images) < 2:
        raise DataError(f"a class needs at least 2 images to be split into clusters, got {len(images)}")


def _check_model_outputs(model: nn.Module, labels: np.ndarray, normalizer, size: tuple[int, int] = (32, 32)) -> None:
    import torch

    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.inference_mode():
        x = torch.zeros(1, 3, *size, device=dev)
        k = model(normalizer(x) if normalizer is not None else x).shape[1]
    model.train(was)
    if labels.max() >= k:
        raise DataError(f"the model has {k} outputs but a label is {int(labels.max())}: model and data do not match")


def result_from_distances(dist: np.ndarray, rule: ClusterRule, silhouette: float | None = None,
                          seconds: dict[str, float] | None = None, poison_centre: int | None = None) -> DetectionResult:  # fmt: skip
    """The decision of ``rule`` on a clustering given as (N, k) squared distances (or GW losses)
    of each sample to each centre (``poison_centre``: see :func:`~poisonsift.defences.decision.decide_split`)."""
    labels, scores, flagged, poisoned, suspicious, analysis = decide_split(dist, rule, silhouette, poison_centre)
    return DetectionResult(
        cluster_labels=labels,
        scores=scores,
        is_poisoned=flagged,
        cluster_sizes=np.bincount(labels, minlength=dist.shape[1]).tolist(),
        poisoned_clusters=poisoned,
        suspicious=suspicious,
        analysis=analysis,
        seconds={} if seconds is None else seconds,
    )


def _view2d(z: np.ndarray) -> np.ndarray:
    """(N, 2): the first two columns of z (N, d), a zero column added when d = 1."""
    return z[:, :2] if z.shape[1] >= 2 else np.column_stack([z[:, 0], np.zeros(len(z))])


def _kmeans_split(z: np.ndarray, seed: int, rule: ClusterRule, seconds: dict) -> DetectionResult:
    t = time.perf_counter()
    km = KMeans(n_clusters=2, init="k-means++", n_init=10, random_state=seed).fit(z)
    dist = km.transform(z) ** 2  # squared: the split statistic is then a projection on the centre axis
    sil = float(silhouette_score(z, km.labels_)) if len(set(km.labels_)) == 2 else 0.0
    seconds["clustering"] = time.perf_counter() - t
    res = result_from_distances(dist, rule, sil, seconds)
    res.embedding = _view2d(z)
    return res


def _reduce(x: np.ndarray, method: str, n_components: int, seed: int) -> np.ndarray:
    """(N, D) -> (N, n_components): ``pca``, ``pca-whiten`` (the components scaled to unit variance)
    or ``ica`` (FastICA)."""
    n_components = min(n_components, x.shape[0], x.shape[1])
    if method in ("pca", "pca-whiten"):
        return PCA(n_components=n_components, whiten=method == "pca-whiten", random_state=seed).fit_transform(x)
    if method == "ica":
        return FastICA(n_components=n_components, random_state=seed, max_iter=1000, tol=0.005).fit_transform(x)
    raise ConfigError(f"unknown reducer {method!r}; use pca, pca-whiten or ica")


class _Base:
    result_: DetectionResult

    def fit(self, model, images, labels, normalizer: Normalizer | None = None):
        self.result_ = self.detect(model, images, labels, normalizer)
        return self


