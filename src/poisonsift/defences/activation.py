"""Activation Clustering (Chen et al.): a hidden layer's activations -> PCA(10), whitened by default -> k-means++ (k = 2)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from poisonsift.defences.base import DetectionResult, _Base, _check_inputs, _check_model_outputs, _kmeans_split, _reduce
from poisonsift.defences.decision import ClusterRule
from poisonsift.errors import ConfigError
from poisonsift.explain import activations

#: AC's reductions: ``pca`` (paper 6.2: PCA to 10 dimensions) and ``pca-whiten`` (the same
#: components scaled to unit variance). Unwhitened, 2-means splits along the largest-variance
#: direction, which need not be the poison's: on real GTSRB (class 5, 2 epochs) the poison lay
#: along the 2nd component of ResNet-20's avgpool (AUROC 0.94; the 1st, 29 % of the variance,
#: 0.58) and AC's AUROC was 0.445; whitened, 2-means follows the bimodal direction: AUROC 0.984
#: there, and SmallInception p = 10 % 0.126 -> 0.996 (benchmarks/ac_reduction.py). k-means on whitened components equals
#: k-means on Chen et al.'s FastICA (a rotation of them; measured the same flags), ART's default.
#: Whitening needs images: on a toy of 32 random ReLU features it split noise at 40 and 120
#: images, found the poison from 200 (tests/test_defences.py); ``pca`` for small classes.
AC_REDUCTIONS = ("pca-whiten", "pca")


@dataclass
class ACConfig:
    """Activation Clustering (Chen et al.): a hidden layer -> PCA(10), whitened by default -> k-means++ (k = 2)."""

    layer: str | None = None  # None: models.default_hidden_layer (relu_fc2 on SmallInception)
    n_components: int = 10
    reduce: str = "pca-whiten"  # AC_REDUCTIONS; "pca" is the paper's
    seed: int = 0
    batch_size: int | None = None  # None: utils.auto_batch_size (31 for SmallInception on CPU)
    rule: ClusterRule = field(default_factory=ClusterRule)

    def __post_init__(self) -> None:
        if self.reduce not in AC_REDUCTIONS:
            raise ConfigError(f"unknown AC reduction {self.reduce!r}; use one of {', '.join(AC_REDUCTIONS)}")


class ActivationClustering(_Base):
    def __init__(self, config: ACConfig | None = None) -> None:
        self.config = config or ACConfig()

    def detect(self, model, images, labels, normalizer=None) -> DetectionResult:
        _check_inputs(images, labels)
        _check_model_outputs(model, labels, normalizer, images.shape[1:3])
        t = time.perf_counter()
        feats = activations(model, images, self.config.layer, normalizer, self.config.batch_size)
        return self.cluster(feats, {"activations": time.perf_counter() - t})

    def cluster(self, features: np.ndarray, seconds: dict[str, float] | None = None) -> DetectionResult:
        """The clustering half of AC on given (N, D) activations: PCA (whitened or not) -> k-means++ (k = 2)."""
        seconds = dict(seconds or {})
        t = time.perf_counter()
        z = _reduce(features, self.config.reduce, self.config.n_components, self.config.seed)
        seconds["reduce"] = time.perf_counter() - t
        return _kmeans_split(z, self.config.seed, self.config.rule, seconds)
