"""Spectral Signatures (Tran et al. 2018): outlier scores on the top singular vector of the activations."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from poisonsift.defences.base import _Base, _check_inputs, _check_model_outputs, _view2d
from poisonsift.defences.base import DetectionResult
from poisonsift.explain import activations

@dataclass
class SpectralConfig:
    """Spectral Signatures (Tran et al. 2018): flag the top 1.5 * eps_hat of the outlier scores.

    ``eps_hat`` is the assumed upper bound on the poisoned share (ART's default 0.33).
    """

    layer: str | None = None  # None: models.default_hidden_layer (relu_fc2 on SmallInception)
    eps_hat: float = 0.33
    batch_size: int | None = None  # None: utils.auto_batch_size


class SpectralSignatures(_Base):
    def __init__(self, config: SpectralConfig | None = None) -> None:
        self.config = config or SpectralConfig()

    def detect(self, model, images, labels, normalizer=None) -> DetectionResult:
        _check_inputs(images, labels)
        _check_model_outputs(model, labels, normalizer, images.shape[1:3])
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
