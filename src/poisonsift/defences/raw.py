"""Clustering raw images (paper 4, Table 3): flatten -> PCA / FastICA -> k-means++ (k = 2)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from poisonsift.defences.base import _Base, _check_inputs, _kmeans_split, _reduce
from poisonsift.defences.decision import ClusterRule
from poisonsift.defences.base import DetectionResult

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
