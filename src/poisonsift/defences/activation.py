"""Activation Clustering (Chen et al.): a hidden layer's activations -> PCA(10) -> k-means++ (k = 2)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from poisonsift.defences.base import _Base, _check_inputs, _check_model_outputs, _kmeans_split, _reduce
from poisonsift.defences.decision import ClusterRule
from poisonsift.defences.base import DetectionResult
from poisonsift.explain import activations

@dataclass
class ACConfig:
    """Activation Clustering (Chen et al.): a hidden layer -> PCA(10) -> k-means++ (k = 2)."""

    layer: str | None = None  # None: models.default_hidden_layer (relu_fc2 on SmallInception)
    n_components: int = 10
    seed: int = 0
    batch_size: int | None = None  # None: utils.auto_batch_size (31 for SmallInception on CPU)
    rule: ClusterRule = field(default_factory=ClusterRule)


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
        """The clustering half of AC on given (N, D) activations: PCA -> k-means++ (k = 2)."""
        seconds = dict(seconds or {})
        t = time.perf_counter()
        z = _reduce(features, "pca", self.config.n_components, self.config.seed)
        seconds["reduce"] = time.perf_counter() - t
        return _kmeans_split(z, self.config.seed, self.config.rule, seconds)
