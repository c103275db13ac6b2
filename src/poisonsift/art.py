"""Heatmap Clustering as an Adversarial Robustness Toolbox (ART) poison-filtering defence.

ART users run ``ActivationDefence(classifier, x_train, y_train).detect_poison(...)``; the same
call with :class:`HeatmapClusteringDefence` runs poisonsift's HC (the paper's LRP rule, GW
k-means, the ``mixture-tail`` decision) on every class, or on the classes named::

    from poisonsift.art import HeatmapClusteringDefence
    defence = HeatmapClusteringDefence(classifier, x_train, y_train)
    report, is_clean_lst = defence.detect_poison(classes=[5])
    print(defence.evaluate_defence(is_clean))   # ART's confusion-matrix JSON

It takes ART's layouts: ``x_train`` as the ``PyTorchClassifier`` takes it (float, channels first
unless the classifier says otherwise, within its ``clip_values``), ``y_train`` one-hot or class
indices, and the classifier's mean/std ``preprocessing``. The images are mapped back to the
uint8 (N, H, W, 3) layout poisonsift works on, the preprocessing to a
:class:`~poisonsift.training.Normalizer`, and each class goes through the same
:class:`~poisonsift.defences.HeatmapClustering` that ``poisonsift detect --method hc`` builds from
the same :class:`~poisonsift.defences.DetectSpec`: the same flags on the same model and data.

ART is an optional extra: ``pip install "poisonsift[art]"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from poisonsift.defences import DetectSpec, build_defence
from poisonsift.errors import ConfigError, DataError
from poisonsift.scan import class_evidence
from poisonsift.training import Normalizer

try:
    from art.defences.detector.poison import PoisonFilteringDefence
    from art.defences.detector.poison.ground_truth_evaluator import GroundTruthEvaluator
except ImportError as exc:  # pragma: no cover - exercised only without ART
    raise ImportError("poisonsift.art needs the Adversarial Robustness Toolbox: pip install 'poisonsift[art]'") from exc

__all__ = ["HeatmapClusteringDefence"]


class HeatmapClusteringDefence(PoisonFilteringDefence):
    """Heatmap Clustering (Schulth et al.) on an ART ``PyTorchClassifier``.

    ``detect_poison`` parameters (also accepted by the constructor): ``classes`` (class indices
    to examine; None: every class with at least ``min_size`` images), ``min_size`` (10), and any
    field of :class:`~poisonsift.defences.DetectSpec` for HC (``rule``, ``lrp_rule``, ``seed``,
    ``engine``, ``grid``, ...).
    """

    defence_params = ["classifier", "classes", "min_size", "spec"]

    def __init__(self, classifier, x_train: np.ndarray, y_train: np.ndarray, **params: Any) -> None:
        super().__init__(classifier, x_train, y_train)
        self.classes: list[int] | None = None
        self.min_size = 10
        self.spec = DetectSpec("hc", view_samples=0)
        self.is_clean_lst: list[int] = []
        self.report: dict[str, Any] = {}
        self._set(**params)

    # ------------------------------------------------------------------ ART's interface

    def detect_poison(self, **kwargs: Any) -> tuple[dict[str, Any], list[int]]:
        """Run HC on each examined class.

        Returns ``(report, is_clean_lst)``: ``report`` maps ``"Class_<c>"`` to that class's
        ``n``, ``n_flagged``, ``suspicious`` and ``evidence`` (:func:`poisonsift.scan.class_evidence`:
        the per-image log-likelihood ratio of two modes against one, 0 where no mode could be poison); ``is_clean_lst[i]`` is 1 where
        ``x_train[i]`` is judged clean, 0 where poisoned (classes not examined stay 1).
        """
        self._set(**kwargs)
        images = self._images()
        labels = self._labels()
        model, norm = self._model_and_normalizer()
        defence = build_defence(self.spec)
        counts = np.bincount(labels, minlength=self.classifier.nb_classes)
        classes = self.classes if self.classes is not None else [c for c in range(len(counts)) if counts[c] >= self.min_size]
        is_clean = np.ones(len(labels), dtype=int)
        report: dict[str, Any] = {}
        for c in classes:
            rows = np.flatnonzero(labels == c)
            if len(rows) < 2:
                raise DataError(f"class {c} has {len(rows)} training images; HC needs at least 2 to split")
            res = defence.detect(model, images[rows], labels[rows], norm)
            is_clean[rows[res.is_poisoned]] = 0
            report[f"Class_{c}"] = {"n": len(rows), "n_flagged": int(res.is_poisoned.sum()), "suspicious": bool(res.suspicious),
                                    "evidence": class_evidence(res.analysis, self.spec)[0]}  # fmt: skip
        self.report = report
        self.is_clean_lst = is_clean.tolist()
        return report, self.is_clean_lst

    def evaluate_defence(self, is_clean: np.ndarray, **kwargs: Any) -> str:
        """ART's confusion-matrix JSON (per class: true/false positives/negatives and rates) of the
        last :meth:`detect_poison` (run now if it has not run) against ``is_clean`` (1 clean, 0 poison)."""
        if is_clean is None or len(is_clean) == 0:
            raise ValueError("is_clean was not provided while invoking evaluate_defence.")
        if kwargs or not self.is_clean_lst:
            self.detect_poison(**kwargs)
        labels = self._labels()
        is_clean = np.asarray(is_clean, dtype=int)
        assigned = np.asarray(self.is_clean_lst, dtype=int)
        n = self.classifier.nb_classes
        by_class = [np.flatnonzero(labels == c) for c in range(n)]
        _, conf_matrix_json = GroundTruthEvaluator().analyze_correctness(
            [assigned[r] for r in by_class], [is_clean[r] for r in by_class]
        )
        return conf_matrix_json

    # ------------------------------------------------------------------ ART -> poisonsift layouts

    def _set(self, **params: Any) -> None:
        spec_fields = {k: params.pop(k) for k in list(params) if k in DetectSpec.__dataclass_fields__}
        if spec_fields:
            self.spec = DetectSpec(**{**self.spec.to_dict(), **spec_fields, "method": "hc"})
        unknown = set(params) - set(self.defence_params)
        if unknown:
            raise ConfigError(f"unknown HeatmapClusteringDefence parameter(s) {sorted(unknown)}")
        self.set_params(**params)

    def _check_params(self) -> None:
        if self.min_size < 2:
            raise ConfigError(f"min_size must be >= 2, got {self.min_size}")

    def _labels(self) -> np.ndarray:
        y = np.asarray(self.y_train)
        y = y.argmax(1) if y.ndim == 2 else y
        if y.ndim != 1 or len(y) != len(self.x_train):
            raise DataError(f"y_train must be (N,) class indices or (N, classes) one-hot for {len(self.x_train)} images")
        return y.astype(np.int64)

    def _images(self) -> np.ndarray:
        """x_train as uint8 (N, H, W, 3): channels last, the clip range mapped onto 0..255."""
        x = np.asarray(self.x_train, dtype=np.float64)
        if x.ndim != 4:
            raise DataError(f"x_train must be a batch of images (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
        if getattr(self.classifier, "channels_first", True):
            x = x.transpose(0, 2, 3, 1)
        if x.shape[3] != 3:
            raise DataError(f"HC explains RGB images; x_train has {x.shape[3]} channels")
        lo, hi = self._clip()
        return np.clip(np.rint((x - lo) / (hi - lo) * 255), 0, 255).astype(np.uint8)

    def _clip(self) -> tuple[float, float]:
        clip = getattr(self.classifier, "clip_values", None)
        if clip is not None:
            return float(np.min(clip[0])), float(np.max(clip[1]))
        top = float(np.max(self.x_train))
        return 0.0, (255.0 if top > 1.0 else 1.0)

    def _model_and_normalizer(self):
        """The classifier's torch module (in eval mode) and its mean/std preprocessing as a
        :class:`Normalizer` on [0, 1] inputs."""
        import torch

        model = self.classifier.model
        if not isinstance(model, torch.nn.Module):
            raise ConfigError("HeatmapClusteringDefence needs an ART PyTorchClassifier (its model a torch.nn.Module)")
        lo, hi = self._clip()
        mean, std = np.zeros(3), np.ones(3)
        for op in getattr(self.classifier, "preprocessing_operations", []) or []:
            if not (hasattr(op, "mean") and hasattr(op, "std")):
                raise ConfigError(f"ART preprocessing {type(op).__name__} is not a mean/std standardisation; "
                                  "HC supports only that one")  # fmt: skip
            mean = np.broadcast_to(np.asarray(op.mean, dtype=np.float64).reshape(-1), 3)
            std = np.broadcast_to(np.asarray(op.std, dtype=np.float64).reshape(-1), 3)
        # ART feeds (x - mean) / std with x in [lo, hi]; poisonsift feeds (u - m) / s with u in [0, 1]
        # and x = lo + (hi - lo) u, so m = (mean - lo) / (hi - lo) and s = std / (hi - lo).
        m = tuple(float(v) for v in (mean - lo) / (hi - lo))
        s = tuple(float(v) for v in std / (hi - lo))
        return model.eval(), Normalizer(m, s)
