"""Attack metrics (paper 5.1).

* clean accuracy - share of (untouched) test images classified correctly;
* ASR - share of triggered test images classified as the target class;
* per-class ASR - the ASR of each non-target class's triggered test images;
* MASR - the mean of the per-class ASRs (classes weighted equally).

All rates are fractions in [0, 1].
"""

from __future__ import annotations

import numpy as np

from poisonsift.errors import DataError

__all__ = ["clean_accuracy", "attack_success_rate", "per_class_asr", "mean_asr"]


def _check(pred: np.ndarray, labels: np.ndarray) -> None:
    if pred.shape != labels.shape or pred.ndim != 1:
        raise DataError(f"predictions {pred.shape} and labels {labels.shape} must be equal-length 1-D arrays")
    if len(pred) == 0:
        raise DataError("cannot compute a rate over zero images")


def clean_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Share of ``pred == labels``; both (N,) integer arrays."""
    _check(pred, labels)
    return float(np.mean(pred == labels))


def attack_success_rate(pred_triggered: np.ndarray, target_class: int) -> float:
    """Share of triggered images predicted as ``target_class``; ``pred_triggered`` is (N,)."""
    pred_triggered = np.asarray(pred_triggered)
    _check(pred_triggered, pred_triggered)
    return float(np.mean(pred_triggered == target_class))


def per_class_asr(pred_triggered: np.ndarray, true_labels: np.ndarray, target_class: int) -> dict[int, float]:
    """ASR of each true class present in ``true_labels`` except the target: {class: rate}."""
    _check(pred_triggered, true_labels)
    return {
        int(c): float(np.mean(pred_triggered[true_labels == c] == target_class))
        for c in np.unique(true_labels)
        if c != target_class
    }


def mean_asr(per_class: dict[int, float]) -> float:
    """MASR: the unweighted mean of per-class ASRs."""
    if not per_class:
        raise DataError("MASR needs at least one non-target class")
    return float(np.mean(list(per_class.values())))
