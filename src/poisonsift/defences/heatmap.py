"""Heatmap Clustering (paper 5.3-5.5): LRP heatmaps -> top-99 % point clouds -> GW k-means."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from poisonsift.defences.base import _Base, _check_inputs, _check_model_outputs, _view2d, result_from_distances
from poisonsift.defences.decision import ClusterRule
from poisonsift.errors import ConfigError
from poisonsift.defences.base import DetectionResult
from poisonsift.explain import cached_lrp_heatmaps, point_clouds, pool_heatmaps
from poisonsift.gw import GWKMeansConfig, gw_kmeans, gw_mds

#: HC's decision rule by default (chosen by measurement; the README's ablation table)
HC_DEFAULT_RULE = "mixture-tail"


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
    cache_dir: str | None = None  # where LRP heatmaps are cached (keyed by model, images, labels)
    #: clouds in the 2-D view (``DetectionResult.embedding``): an MDS embedding of GW distances
    #: (:func:`poisonsift.gw.gw_mds`) of a seeded subset of this many clustered clouds and the k
    #: centres, always with the fast engine (a plot, not a decision); 0: each cloud's GW distances
    #: to the two centres instead (no extra cost).
    view_samples: int = 300
    #: ``float32`` (zennit's heatmaps) or ``bfloat16`` (faster LRP, epsilon-gamma-box only; see
    #: :func:`poisonsift.explain.lrp_heatmaps`)
    lrp_precision: str = "float32"
    #: ``paper`` (the paper's epsilon rule with exponent 2; default) or ``epsilon-gamma-box``
    #: (zennit's composite); see :data:`poisonsift.explain.LRP_RULES`
    lrp_rule: str = "paper"
    #: the decision on the split; HC's default reads the split statistic's distribution
    #: (measured in the README: it flags the poison that ``smaller`` leaves in)
    rule: ClusterRule = field(default_factory=lambda: ClusterRule(HC_DEFAULT_RULE))
    #: heatmaps larger than ``grid`` x ``grid`` are summed onto that raster before their point
    #: clouds (:func:`poisonsift.explain.pool_heatmaps`); 32 keeps GTSRB's maps as they are
    grid: int = 32
    #: the mixture rules call a class suspicious only if the minority mode is the one with the
    #: more concentrated heatmaps (its GW centre's mean pairwise distance p'Cp is the smaller):
    #: a trigger draws relevance onto a few pixels, while the diffuse minorities that clean
    #: classes show (measured on a real scan: 21 of 43 clean classes' second mode was the more
    #: diffuse one) are natural variation. False: either side (the plain mixture test).
    one_sided: bool = True

    def __post_init__(self) -> None:
        from poisonsift.explain import check_lrp_rule, lrp_dtype

        check_lrp_rule(self.lrp_rule)
        lrp_dtype(self.lrp_precision)
        if self.grid < 2:
            raise ConfigError(f"grid must be >= 2 pixels, got {self.grid}")
        if self.lrp_rule == "paper" and self.lrp_precision != "float32":
            raise ConfigError("the paper LRP rule runs in float32; bfloat16 is for --lrp-rule epsilon-gamma-box")


class HeatmapClustering(_Base):
    def __init__(self, config: HCConfig | None = None) -> None:
        self.config = config or HCConfig()

    def detect(self, model, images, labels, normalizer=None) -> DetectionResult:
        _check_inputs(images, labels)
        _check_model_outputs(model, labels, normalizer, images.shape[1:3])
        cfg = self.config
        idx = np.arange(len(images))
        if cfg.subset is not None and cfg.subset < len(images):
            idx = np.sort(np.random.default_rng(cfg.gw.seed).choice(len(images), cfg.subset, replace=False))
        t = time.perf_counter()
        heat = cached_lrp_heatmaps(model, images[idx], labels[idx], normalizer, cfg.cache_dir, cfg.batch_size,
                                   cfg.lrp_precision, cfg.lrp_rule)  # fmt: skip
        sub = self.cluster(heat, {"lrp": time.perf_counter() - t})
        seconds = sub.seconds
        if len(idx) == len(images):
            return sub
        full_labels = np.full(len(images), -1)
        full_labels[idx] = sub.cluster_labels
        scores = np.full(len(images), np.nan)
        scores[idx] = sub.scores
        flagged = np.zeros(len(images), dtype=bool)
        flagged[idx] = sub.is_poisoned
        sub.analysis.update(subset_index=idx.tolist())
        embedding = np.full((len(images), 2), np.nan)
        embedding[idx] = sub.embedding
        return DetectionResult(full_labels, scores, flagged, sub.cluster_sizes, sub.poisoned_clusters,
                               sub.suspicious, sub.analysis, seconds, embedding)  # fmt: skip

    def cluster(self, heatmaps: np.ndarray, seconds: dict[str, float] | None = None) -> DetectionResult:
        """The clustering half of HC on given (N, H, W) heatmaps: clouds -> GW k-means -> decision."""
        cfg = self.config
        seconds = dict(seconds or {})
        t = time.perf_counter()
        clouds = point_clouds(pool_heatmaps(heatmaps, cfg.grid), cfg.mass, cfg.fallback)
        seconds["clouds"] = time.perf_counter() - t
        t = time.perf_counter()
        km = gw_kmeans(clouds, cfg.gw, cfg.engine)
        seconds["clustering"] = time.perf_counter() - t
        sil = _silhouette_from_centres(km.distances, km.labels)
        sub = result_from_distances(km.distances, cfg.rule, sil, seconds)
        mt = sub.analysis.get("mixture")
        if mt is not None and "minority_centre" in mt:
            spread = [float(p @ C @ p) for C, p in km.centres]  # E[d] of each centre
            j = mt["minority_centre"]
            mt["centre_spread"] = spread
            mt["concentrated"] = bool(spread[j] < spread[1 - j])
            if cfg.one_sided and not mt["concentrated"] and sub.suspicious:
                _clear(sub, 1 - j)
                mt["suspicious"] = False
                mt["reason"] = "the minority mode is the more diffuse one (one_sided)"
        view = _view2d(km.distances)
        if cfg.view_samples > 0 and len(clouds) + cfg.gw.k >= 3:
            t = time.perf_counter()
            shown, emb, centre_emb = gw_mds(clouds, cfg.gw, "fast", cfg.view_samples, cfg.gw.seed, km.centres)
            view = np.full((len(clouds), 2), np.nan)
            view[shown] = emb
            sub.analysis["view"] = {"kind": "mds-gw", "n": len(shown), "centres": centre_emb.tolist()}
            seconds["view"] = time.perf_counter() - t
        sub.analysis["n_iter"] = km.n_iter
        sub.embedding = view
        return sub


def _clear(res: DetectionResult, clean_label: int) -> None:
    """A split that the class test rejects after all: nothing flagged, one clean group."""
    res.is_poisoned = np.zeros(len(res.is_poisoned), dtype=bool)
    res.cluster_labels = np.full(len(res.cluster_labels), clean_label)
    res.poisoned_clusters = []
    res.suspicious = False
    res.cluster_sizes = np.bincount(res.cluster_labels, minlength=len(res.cluster_sizes)).tolist()


def _silhouette_from_centres(dist: np.ndarray, labels: np.ndarray) -> float:
    # A centre-based silhouette (a = distance to own centre, b = to the other), cheap for GW where
    # all pairwise sample distances would cost O(N^2) GW solves.
    if len(set(labels.tolist())) < 2:
        return 0.0
    a = dist[np.arange(len(labels)), labels]
    b = np.where(labels == 0, dist[:, 1], dist[:, 0]) if dist.shape[1] == 2 else np.sort(dist, 1)[:, 1]
    return float(np.mean((b - a) / np.maximum(np.maximum(a, b), 1e-12)))
