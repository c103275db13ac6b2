"""Defences that split one class into clean and poisoned samples (paper 4, 5.3-5.5, 6.2).

Every defence is built from a typed config and offers scikit-learn-style
``fit(model, images, labels)`` (returns ``self``, the result in ``result_``)
and ``detect(model, images, labels)`` (fit, then return the
:class:`DetectionResult`). ``model`` is any ``nn.Module`` classifier taking
normalised (B, 3, 32, 32) inputs; pass its :class:`~poisonsift.training.Normalizer`
as ``normalizer`` (None: the model takes [0, 1] pixels). ``images`` are
(N, 32, 32, 3) uint8, all of one class; ``labels`` (N,) their (training) labels.

Which cluster is called poisoned (:class:`ClusterRule`):

* ``smaller`` (default, as Activation Clustering): the smaller cluster;
* ``relative-size``: clusters holding less than ``size_threshold`` of the
  class (ART's default 0.35); if none, the class looks clean;
* ``silhouette``: the smaller cluster, but only if the silhouette score of the
  split reaches ``silhouette_threshold``; below it the class looks clean.

Scores (higher = more likely poisoned, for AUROC): for a two-way split,
distance to the clean centre minus distance to the poisoned centre (Euclidean
in the reduced space, entropic GW for Heatmap Clustering); Spectral
Signatures' own outlier score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.metrics import silhouette_score
from torch import nn

from poisonsift.errors import ConfigError, DataError
from poisonsift.explain import activations, cached_lrp_heatmaps, point_clouds
from poisonsift.gw import GWKMeansConfig, gw_kmeans, gw_mds
from poisonsift.models import DEFAULT_HIDDEN_LAYER
from poisonsift.training import Normalizer

__all__ = [
    "ClusterRule",
    "result_from_distances",
    "DetectionResult",
    "RawClustering",
    "RawConfig",
    "ActivationClustering",
    "ACConfig",
    "SpectralSignatures",
    "SpectralConfig",
    "HeatmapClustering",
    "HCConfig",
    "GatedHeatmapClustering",
    "GateConfig",
    "build_defence",
    "METHODS",
    "rank_classes",
]


@dataclass
class ClusterRule:
    """How a two-way split becomes a poisoned/clean decision (see module docstring)."""

    rule: str = "smaller"
    size_threshold: float = 0.35
    silhouette_threshold: float = 0.10

    def __post_init__(self) -> None:
        if self.rule not in ("smaller", "relative-size", "silhouette"):
            raise ConfigError(f"unknown cluster rule {self.rule!r}; use smaller, relative-size or silhouette")


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
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise DataError(f"images must be uint8 (N, 32, 32, 3), got {images.dtype} {images.shape}")
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    if len(images) < 2:
        raise DataError(f"a class needs at least 2 images to be split into clusters, got {len(images)}")


def _check_model_outputs(model: nn.Module, labels: np.ndarray, normalizer) -> None:
    import torch

    dev = next(model.parameters()).device
    was = model.training
    model.eval()
    with torch.inference_mode():
        x = torch.zeros(1, 3, 32, 32, device=dev)
        k = model(normalizer(x) if normalizer is not None else x).shape[1]
    model.train(was)
    if labels.max() >= k:
        raise DataError(f"the model has {k} outputs but a label is {int(labels.max())}: model and data do not match")


def decide(dist: np.ndarray, rule: ClusterRule, silhouette: float | None) -> tuple[np.ndarray, list[int], bool, dict]:
    """Turn (N, 2) distances to two centres into (labels, poisoned clusters, suspicious, analysis)."""
    labels = dist.argmin(1)
    sizes = np.bincount(labels, minlength=dist.shape[1])
    rel = sizes / sizes.sum()
    analysis: dict[str, Any] = {"relative_sizes": rel.tolist(), "silhouette": silhouette}
    smaller = int(np.argmin(sizes))
    if rule.rule == "smaller":
        poisoned = [smaller]
    elif rule.rule == "relative-size":
        poisoned = [int(j) for j in np.flatnonzero(rel < rule.size_threshold)]
    else:
        poisoned = [smaller] if (silhouette is not None and silhouette >= rule.silhouette_threshold) else []
    return labels, poisoned, bool(poisoned), analysis


def result_from_distances(dist: np.ndarray, rule: ClusterRule, silhouette: float | None = None,
                          seconds: dict[str, float] | None = None) -> DetectionResult:  # fmt: skip
    """The decision of ``rule`` on a clustering given as (N, k) distances of each sample to each centre.

    Clusters are the nearest centres. With k = 2 the score of a sample is its distance to
    the clean centre minus its distance to the poisoned one (higher: more likely poisoned).
    """
    seconds = {} if seconds is None else seconds
    labels, poisoned, suspicious, analysis = decide(dist, rule, silhouette)
    sizes = np.bincount(labels, minlength=dist.shape[1]).tolist()
    target = poisoned[0] if poisoned else int(np.argmin(sizes))
    clean = 1 - target if dist.shape[1] == 2 else None
    scores = dist[:, clean] - dist[:, target] if clean is not None else -dist[:, target]
    return DetectionResult(
        cluster_labels=labels,
        scores=scores,
        is_poisoned=np.isin(labels, poisoned),
        cluster_sizes=sizes,
        poisoned_clusters=poisoned,
        suspicious=suspicious,
        analysis=analysis,
        seconds=seconds,
    )


def _view2d(z: np.ndarray) -> np.ndarray:
    """(N, 2): the first two columns of z (N, d), a zero column added when d = 1."""
    return z[:, :2] if z.shape[1] >= 2 else np.column_stack([z[:, 0], np.zeros(len(z))])


def _kmeans_split(z: np.ndarray, seed: int, rule: ClusterRule, seconds: dict) -> DetectionResult:
    t = time.perf_counter()
    km = KMeans(n_clusters=2, init="k-means++", n_init=10, random_state=seed).fit(z)
    dist = km.transform(z)
    sil = float(silhouette_score(z, km.labels_)) if len(set(km.labels_)) == 2 else 0.0
    seconds["clustering"] = time.perf_counter() - t
    res = result_from_distances(dist, rule, sil, seconds)
    res.embedding = _view2d(z)
    return res


def _reduce(x: np.ndarray, method: str, n_components: int, seed: int) -> np.ndarray:
    n_components = min(n_components, x.shape[0], x.shape[1])
    if method == "pca":
        return PCA(n_components=n_components, random_state=seed).fit_transform(x)
    if method == "ica":
        return FastICA(n_components=n_components, random_state=seed, max_iter=1000, tol=0.005).fit_transform(x)
    raise ConfigError(f"unknown reducer {method!r}; use pca or ica")


class _Base:
    result_: DetectionResult

    def fit(self, model, images, labels, normalizer: Normalizer | None = None):
        self.result_ = self.detect(model, images, labels, normalizer)
        return self


@dataclass
class RawConfig:
    """Raw-image clustering (paper 4, Table 3): flatten -> PCA / FastICA -> k-means++ (k = 2)."""

    reducer: str = "pca"
    n_components: int = 10
    seed: int = 0
    rule: ClusterRule = field(default_factory=ClusterRule)


class RawClustering(_Base):
    def __init__(self, config: RawConfig | None = None) -> None:
        self.config = config or RawConfig()

    def detect(self, model, images, labels, normalizer=None) -> DetectionResult:
        _check_inputs(images, labels)
        t = time.perf_counter()
        x = images.reshape(len(images), -1).astype(np.float32) / 255
        z = _reduce(x, self.config.reducer, self.config.n_components, self.config.seed)
        return _kmeans_split(z, self.config.seed, self.config.rule, {"reduce": time.perf_counter() - t})


@dataclass
class ACConfig:
    """Activation Clustering (Chen et al.): a hidden layer -> PCA(10) -> k-means++ (k = 2)."""

    layer: str = DEFAULT_HIDDEN_LAYER
    n_components: int = 10
    seed: int = 0
    batch_size: int | None = None  # None: utils.auto_batch_size (31 for SmallInception on CPU)
    rule: ClusterRule = field(default_factory=ClusterRule)


class ActivationClustering(_Base):
    def __init__(self, config: ACConfig | None = None) -> None:
        self.config = config or ACConfig()

    def detect(self, model, images, labels, normalizer=None) -> DetectionResult:
        _check_inputs(images, labels)
        _check_model_outputs(model, labels, normalizer)
        t = time.perf_counter()
        feats = activations(model, images, self.config.layer, normalizer, self.config.batch_size)
        return self.cluster(feats, {"activations": time.perf_counter() - t})

    def cluster(self, features: np.ndarray, seconds: dict[str, float] | None = None) -> DetectionResult:
        """The clustering half of AC on given (N, D) activations: PCA -> k-means++ (k = 2)."""
        seconds = dict(seconds or {})
        t = time.perf_counter()
        z = _reduce(features, "pca", self.config.n_components, self.config.seed)
        seconds["reduce"] = time.perf_counter() - t
        return _kmeans_split(z, self.config.seed, self.config.rule, seconds)


@dataclass
class SpectralConfig:
    """Spectral Signatures (Tran et al. 2018): flag the top 1.5 * eps_hat of the outlier scores.

    ``eps_hat`` is the assumed upper bound on the poisoned share (ART's default 0.33).
    """

    layer: str = DEFAULT_HIDDEN_LAYER
    eps_hat: float = 0.33
    batch_size: int | None = None  # None: utils.auto_batch_size


class SpectralSignatures(_Base):
    def __init__(self, config: SpectralConfig | None = None) -> None:
        self.config = config or SpectralConfig()

    def detect(self, model, images, labels, normalizer=None) -> DetectionResult:
        _check_inputs(images, labels)
        _check_model_outputs(model, labels, normalizer)
        t = time.perf_counter()
        feats = activations(model, images, self.config.layer, normalizer, self.config.batch_size).astype(np.float64)
        seconds = {"activations": time.perf_counter() - t}
        t = time.perf_counter()
        centred = feats - feats.mean(0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        scores = (centred @ vt[0]) ** 2
        n_flag = min(len(scores), int(np.ceil(1.5 * self.config.eps_hat * len(scores))))
        flagged = np.zeros(len(scores), dtype=bool)
        flagged[np.argsort(-scores, kind="stable")[:n_flag]] = True
        seconds["scores"] = time.perf_counter() - t
        labels_ = flagged.astype(np.int64)
        return DetectionResult(
            cluster_labels=labels_, scores=scores, is_poisoned=flagged,
            cluster_sizes=np.bincount(labels_, minlength=2).tolist(), poisoned_clusters=[1],
            suspicious=bool(n_flag), analysis={"eps_hat": self.config.eps_hat}, seconds=seconds,
            embedding=_view2d(centred @ vt[:2].T),
        )  # fmt: skip


@dataclass
class HCConfig:
    """Heatmap Clustering (paper 5.3-5.5): zennit LRP -> top-99 % point clouds -> GW k-means.

    ``engine``: ``fast`` (batched torch, :mod:`poisonsift.gw_fast`) or ``pot``
    (the paper's pair-by-pair POT loop, the reference). ``subset``: cluster a
    seeded random subset of this many images only (for the slow ``pot``
    engine); the rest are not labelled and get ``is_poisoned=False``, score NaN.
    """

    mass: float = 0.99
    gw: GWKMeansConfig = field(default_factory=GWKMeansConfig)
    engine: str = "fast"
    subset: int | None = None
    batch_size: int | None = None  # LRP batch; None: utils.auto_batch_size (31 for SmallInception on CPU)
    fallback: str = "uniform"
    rule: ClusterRule = field(default_factory=ClusterRule)
    cache_dir: str | None = None  # where LRP heatmaps are cached (keyed by model, images, labels)
    #: clouds in the 2-D view (``DetectionResult.embedding``): an MDS embedding of GW distances
    #: (:func:`poisonsift.gw.gw_mds`) of a seeded subset of this many clustered clouds and the k
    #: centres, always with the fast engine (a plot, not a decision); 0: each cloud's GW distances
    #: to the two centres instead (no extra cost).
    view_samples: int = 300
    #: ``float32`` (zennit's heatmaps) or ``bfloat16`` (faster LRP; see
    #: :func:`poisonsift.explain.lrp_heatmaps`)
    lrp_precision: str = "float32"


class HeatmapClustering(_Base):
    def __init__(self, config: HCConfig | None = None) -> None:
        self.config = config or HCConfig()

    def detect(self, model, images, labels, normalizer=None) -> DetectionResult:
        _check_inputs(images, labels)
        _check_model_outputs(model, labels, normalizer)
        cfg = self.config
        idx = np.arange(len(images))
        if cfg.subset is not None and cfg.subset < len(images):
            idx = np.sort(np.random.default_rng(cfg.gw.seed).choice(len(images), cfg.subset, replace=False))
        t = time.perf_counter()
        heat = cached_lrp_heatmaps(model, images[idx], labels[idx], normalizer, cfg.cache_dir, cfg.batch_size,
                                   cfg.lrp_precision)  # fmt: skip
        seconds = {"lrp": time.perf_counter() - t}
        t = time.perf_counter()
        clouds = point_clouds(heat, cfg.mass, cfg.fallback)
        seconds["clouds"] = time.perf_counter() - t
        t = time.perf_counter()
        km = gw_kmeans(clouds, cfg.gw, cfg.engine)
        seconds["clustering"] = time.perf_counter() - t
        sil = _silhouette_from_centres(km.distances, km.labels)
        sub = result_from_distances(km.distances, cfg.rule, sil, seconds)
        view = _view2d(km.distances)
        if cfg.view_samples > 0 and len(clouds) + cfg.gw.k >= 3:
            t = time.perf_counter()
            shown, emb, centre_emb = gw_mds(clouds, cfg.gw, "fast", cfg.view_samples, cfg.gw.seed, km.centres)
            view = np.full((len(clouds), 2), np.nan)
            view[shown] = emb
            sub.analysis["view"] = {"kind": "mds-gw", "n": len(shown), "centres": centre_emb.tolist()}
            seconds["view"] = time.perf_counter() - t
        if len(idx) == len(images):
            sub.analysis["n_iter"] = km.n_iter
            sub.embedding = view
            return sub
        full_labels = np.full(len(images), -1)
        full_labels[idx] = sub.cluster_labels
        scores = np.full(len(images), np.nan)
        scores[idx] = sub.scores
        flagged = np.zeros(len(images), dtype=bool)
        flagged[idx] = sub.is_poisoned
        sub.analysis.update(n_iter=km.n_iter, subset_index=idx.tolist())
        embedding = np.full((len(images), 2), np.nan)
        embedding[idx] = view
        return DetectionResult(full_labels, scores, flagged, sub.cluster_sizes, sub.poisoned_clusters,
                               sub.suspicious, sub.analysis, seconds, embedding)  # fmt: skip


def _silhouette_from_centres(dist: np.ndarray, labels: np.ndarray) -> float:
    # A centre-based silhouette (a = distance to own centre, b = to the other), cheap for GW where
    # all pairwise sample distances would cost O(N^2) GW solves.
    if len(set(labels.tolist())) < 2:
        return 0.0
    a = dist[np.arange(len(labels)), labels]
    b = np.where(labels == 0, dist[:, 1], dist[:, 0]) if dist.shape[1] == 2 else np.sort(dist, 1)[:, 1]
    return float(np.mean((b - a) / np.maximum(np.maximum(a, b), 1e-12)))


@dataclass
class GateConfig:
    """The paper's conclusion as a two-stage gate: AC first, HC only when AC finds the class suspicious."""

    ac: ACConfig = field(default_factory=lambda: ACConfig(rule=ClusterRule("relative-size")))
    hc: HCConfig = field(default_factory=HCConfig)


class GatedHeatmapClustering(_Base):
    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()

    def detect(self, model, images, labels, normalizer=None) -> DetectionResult:
        ac = ActivationClustering(self.config.ac).detect(model, images, labels, normalizer)
        if not ac.suspicious:
            ac.analysis["gate"] = "AC found the class clean; HC not run"
            return ac
        hc = HeatmapClustering(self.config.hc).detect(model, images, labels, normalizer)
        hc.seconds = {**{f"ac_{k}": v for k, v in ac.seconds.items()}, **hc.seconds}
        hc.analysis["gate"] = "AC found the class suspicious; HC decided"
        return hc


METHODS = ("raw-pca", "raw-ica", "ac", "spectral", "hc", "ac-hc")


def build_defence(method: str, seed: int = 0, layer: str | None = None, engine: str = "fast",
                  subset: int | None = None, rule: str = "smaller", cache_dir: str | None = None,
                  warm_start: bool = True, view_samples: int = 300, lrp_precision: str = "float32"):  # fmt: skip
    """The defence object behind a CLI ``--method`` name."""
    r = ClusterRule(rule)
    if method in ("raw-pca", "raw-ica"):
        return RawClustering(RawConfig(reducer=method[4:], seed=seed, rule=r))
    layer = layer or DEFAULT_HIDDEN_LAYER
    if method == "ac":
        return ActivationClustering(ACConfig(layer=layer, seed=seed, rule=r))
    if method == "spectral":
        return SpectralSignatures(SpectralConfig(layer=layer))
    hc = HCConfig(gw=GWKMeansConfig(seed=seed, warm_start=warm_start), engine=engine, subset=subset, rule=r,
                  cache_dir=cache_dir, view_samples=view_samples, lrp_precision=lrp_precision)  # fmt: skip
    if method == "hc":
        return HeatmapClustering(hc)
    if method == "ac-hc":
        return GatedHeatmapClustering(GateConfig(ac=ACConfig(layer=layer, seed=seed, rule=ClusterRule("relative-size")), hc=hc))
    raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def rank_classes(model, images: np.ndarray, labels: np.ndarray, normalizer=None, seed: int = 0,
                 layer: str = DEFAULT_HIDDEN_LAYER, min_size: int = 10) -> list[dict[str, Any]]:  # fmt: skip
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
