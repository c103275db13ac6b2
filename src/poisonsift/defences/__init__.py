"""Defences that split one class into clean and poisoned samples (paper 4, 5.3-5.5, 6.2).

Every defence is built from a typed config and offers scikit-learn-style
``fit(model, images, labels)`` (returns ``self``, the result in ``result_``)
and ``detect(model, images, labels)`` (fit, then return the
:class:`DetectionResult`). ``model`` is any ``nn.Module`` classifier taking
normalised (B, 3, 32, 32) inputs; pass its :class:`~poisonsift.training.Normalizer`
as ``normalizer`` (None: the model takes [0, 1] pixels). ``images`` are
(N, 32, 32, 3) uint8, all of one class; ``labels`` (N,) their (training) labels.

One module per defence (``raw``, ``activation``, ``spectral``, ``heatmap``, ``gate``), the
decision on a split in ``decision``, the typed detection spec in ``spec`` and the
suspicious-class search in ``ranking``.
"""

from poisonsift.defences.activation import AC_REDUCTIONS, ACConfig, ActivationClustering
from poisonsift.defences.base import DetectionResult, result_from_distances
from poisonsift.defences.decision import MIXTURE_RULES, RULES, ClusterRule, decide_split, mixture_test
from poisonsift.defences.gate import GateConfig, GatedHeatmapClustering
from poisonsift.defences.heatmap import HC_DEFAULT_RULE, SAMPLE_SCORES, HCConfig, HeatmapClustering
from poisonsift.defences.ranking import rank_classes
from poisonsift.defences.raw import RawClustering, RawConfig
from poisonsift.defences.spec import AUTO, METHODS, DetectSpec, build_defence, default_rule
from poisonsift.defences.spectral import SpectralConfig, SpectralSignatures

__all__ = [
    "ClusterRule",
    "RULES",
    "MIXTURE_RULES",
    "decide_split",
    "mixture_test",
    "result_from_distances",
    "DetectionResult",
    "RawClustering",
    "RawConfig",
    "ActivationClustering",
    "ACConfig",
    "AC_REDUCTIONS",
    "SpectralSignatures",
    "SpectralConfig",
    "HeatmapClustering",
    "HCConfig",
    "HC_DEFAULT_RULE",
    "SAMPLE_SCORES",
    "GatedHeatmapClustering",
    "GateConfig",
    "AUTO",
    "DetectSpec",
    "build_defence",
    "default_rule",
    "METHODS",
    "rank_classes",
]
