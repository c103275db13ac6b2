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

__all__ = ["clean_accuracy", "attack_success_rate", "per_class_asr", "mean_asr", "detection_metrics"]


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


# --------------------------------------------------------------------------- detection (paper 5.2)


def detection_metrics(is_poisoned_true: np.ndarray, flagged: np.ndarray, scores: np.ndarray | None = None) -> dict[str, float]:
    """ACC, TPR, TNR (paper 5.2; positive = poisoned), precision, F1 and AUROC.

    Conventions that keep every metric defined on degenerate classes: with no
    poisoned sample TPR = 1 (nothing to miss); with no clean sample TNR = 1;
    with nothing flagged precision = 1 if there was no poison, else 0; F1 is
    the harmonic mean of precision and TPR (0 when both are 0); AUROC is 0.5
    when only one kind of sample is present or no score is finite. Samples
    whose score is NaN (not clustered) count with their flag but are left out
    of AUROC.
    """
    t = np.asarray(is_poisoned_true, dtype=bool)
    f = np.asarray(flagged, dtype=bool)
    if t.shape != f.shape or t.ndim != 1 or len(t) == 0:
        raise DataError(f"ground truth {t.shape} and decisions {f.shape} must be equal-length, non-empty 1-D arrays")
    tp, tn = int(np.sum(t & f)), int(np.sum(~t & ~f))
    fp, fn = int(np.sum(~t & f)), int(np.sum(t & ~f))
    tpr = tp / (tp + fn) if tp + fn else 1.0
    tnr = tn / (tn + fp) if tn + fp else 1.0
    precision = tp / (tp + fp) if tp + fp else (1.0 if tp + fn == 0 else 0.0)
    f1 = 2 * precision * tpr / (precision + tpr) if precision + tpr else 0.0
    auroc = 0.5
    if scores is not None:
        s = np.asarray(scores, dtype=np.float64)
        ok = np.isfinite(s)
        if ok.any() and 0 < t[ok].sum() < ok.sum():
            from sklearn.metrics import roc_auc_score

            auroc = float(roc_auc_score(t[ok], s[ok]))
    return {
        "acc": (tp + tn) / len(t),
        "tpr": tpr,
        "tnr": tnr,
        "precision": precision,
        "f1": f1,
        "auroc": auroc,
        "tp": tp,
        "tn": tn,
        "fp": fp,
        "fn": fn,
    }
