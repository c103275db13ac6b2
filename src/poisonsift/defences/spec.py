"""One typed description of a detection (:class:`DetectSpec`), built once at the edge (CLI,
table spec) and passed down whole to :func:`build_defence` and ``runs.detect_run``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from poisonsift.defences.activation import ACConfig, ActivationClustering
from poisonsift.defences.decision import ClusterRule
from poisonsift.defences.gate import GateConfig, GatedHeatmapClustering
from poisonsift.defences.heatmap import HC_DEFAULT_RULE, HCConfig, HeatmapClustering, resolve_arch_fields
from poisonsift.defences.raw import RawClustering, RawConfig
from poisonsift.defences.spectral import SpectralConfig, SpectralSignatures
from poisonsift.errors import ConfigError
from poisonsift.gw import GWKMeansConfig
from poisonsift.models import model_arch
from poisonsift.utils import config_hash

__all__ = ["AUTO", "DetectSpec", "METHODS", "build_defence", "default_rule"]

METHODS = ("raw-pca", "raw-ica", "ac", "spectral", "hc", "ac-hc")
#: ``auto`` is a scan's method, not a defence: HC and AC side by side on every class (:meth:`DetectSpec.parts`)
AUTO = "auto"
_HC_METHODS = ("hc", "ac-hc", AUTO)


def default_rule(method: str) -> str:
    """The decision rule a method takes when none is given: HC's measured default for HC; the
    paper's ``smaller`` for AC and the raw-image clusterings (the paper's tables)."""
    return HC_DEFAULT_RULE if method in _HC_METHODS else "smaller"


@dataclass
class DetectSpec:
    """One defence on one class: every option of ``poisonsift detect``.

    ``rule`` None takes :func:`default_rule` of the method; ``decision`` holds the rule's
    parameters (:class:`~poisonsift.defences.decision.ClusterRule`, its ``rule`` and ``seed``
    are set from this spec). ``ac_reduce`` is AC's reduction (``pca-whiten``, or the paper's ``pca``;
    :data:`~poisonsift.defences.activation.AC_REDUCTIONS`), also the AC of ``ac-hc``. ``lrp_rule``, ``lrp_precision``, ``view_samples``, ``grid``,
    ``one_sided``, ``sample_score`` (None: ``concentration`` under the mixture rules, ``gw``
    under the others; see :mod:`poisonsift.defences.heatmap`), ``focus_ratio``, ``rough_ratio``,
    ``peak_ratio`` (the second to fourth class tests) and ``gw_alone`` (:class:`~poisonsift.defences.heatmap.HCConfig`) are HC's.
    """

    method: str
    layer: str | None = None
    engine: str = "fast"
    subset: int | None = None
    rule: str | None = None
    seed: int = 0
    warm_start: bool = True
    view_samples: int = 300
    lrp_precision: str = "float32"
    lrp_rule: str = "auto"
    decision: ClusterRule = field(default_factory=ClusterRule)
    grid: int = 32
    one_sided: bool = True
    sample_score: str | None = None
    ac_reduce: str = "pca-whiten"
    focus_ratio: float | None = 2.0
    rough_ratio: float | None = 2.0
    peak_ratio: float | str | None = "auto"
    gw_alone: bool | str = "auto"

    def __post_init__(self) -> None:
        if self.method not in (*METHODS, AUTO):
            raise ConfigError(f"unknown detection method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.subset is not None and self.subset < 2:
            raise ConfigError(f"subset must be >= 2 images, got {self.subset}")
        if self.view_samples < 0:
            raise ConfigError(f"view_samples must be >= 0, got {self.view_samples}")
        if isinstance(self.decision, dict):
            self.decision = ClusterRule(**self.decision)
        if self.rule is None:
            self.rule = default_rule(self.method)
        self.decision = dataclasses.replace(self.decision, rule=self.rule, seed=self.seed)  # validates the rule
        ACConfig(reduce=self.ac_reduce)  # validates the reduction
        if self.method in _HC_METHODS:
            self.sample_score = self.hc_config().sample_score  # validates; None -> the rule's default

    def hc_config(self, cache_dir: str | None = None) -> HCConfig:
        return HCConfig(gw=GWKMeansConfig(seed=self.seed, warm_start=self.warm_start), engine=self.engine,
                        subset=self.subset, rule=self.decision, cache_dir=cache_dir, view_samples=self.view_samples,
                        lrp_precision=self.lrp_precision, lrp_rule=self.lrp_rule, grid=self.grid,
                        one_sided=self.one_sided, sample_score=self.sample_score,
                        focus_ratio=self.focus_ratio, rough_ratio=self.rough_ratio,
                        peak_ratio=self.peak_ratio, gw_alone=self.gw_alone)  # fmt: skip

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def parts(self) -> list["DetectSpec"]:
        """The defences this spec runs: for ``auto`` (a scan's method) HC and AC with these
        options (AC with ``ac_reduce`` and the same decision rule), else the spec itself."""
        if self.method != AUTO:
            return [self]
        return [dataclasses.replace(self, method="hc"), dataclasses.replace(self, method="ac")]

    def for_arch(self, arch: str) -> "DetectSpec":
        """This spec with ``lrp_rule`` and HC's network-dependent fields (``peak_ratio``,
        ``gw_alone``) that are ``auto`` set for networks of ``arch``
        (:func:`poisonsift.explain.lrp_rule_for`, :func:`~poisonsift.defences.heatmap.hc_defaults_for`);
        what the spec names stays."""
        from poisonsift.explain import lrp_rule_for

        spec = dataclasses.replace(self, lrp_rule=lrp_rule_for(arch)) if self.lrp_rule == "auto" else self
        return resolve_arch_fields(spec, arch)

    def for_model(self, model) -> "DetectSpec":
        """:meth:`for_arch` of a loaded model (:func:`poisonsift.models.model_arch`)."""
        return self.for_arch(model_arch(model))

    def key(self) -> str:
        """Cache key of the detection: every field that changes its result, and nothing else
        (HC-only fields leave the keys of other defences alone)."""
        fields = self.to_dict()
        if self.method in _HC_METHODS:
            from poisonsift.explain import LRP_CONFIGS

            # new heatmaps, new HC results; "auto" keys apart from the rule it resolves to (resolve
            # first with for_arch / for_model to share a concrete rule's cache)
            fields["lrp"] = LRP_CONFIGS.get(self.lrp_rule) or " | ".join(LRP_CONFIGS[r] for r in sorted(LRP_CONFIGS))
        else:
            for k in ("view_samples", "lrp_precision", "lrp_rule", "grid", "one_sided", "sample_score", "focus_ratio",
                      "rough_ratio", "peak_ratio", "gw_alone"):
                del fields[k]
        if self.method not in ("ac", "ac-hc", AUTO):
            del fields["ac_reduce"]
        if fields.get("sample_score") != "concentration":  # the second to fourth class tests need it
            for k in ("focus_ratio", "rough_ratio", "peak_ratio", "gw_alone"):
                fields.pop(k, None)
        for k, before in (("rough_ratio", None), ("peak_ratio", None), ("gw_alone", True)):  # keys as before these existed
            if k in fields and fields[k] is before:
                del fields[k]
        for k, default in (("lrp_precision", "float32"), ("grid", 32), ("sample_score", "gw"),
                           ("ac_reduce", "pca")):  # keys as before the field existed  # fmt: skip
            if fields.get(k) == default:
                del fields[k]
        return config_hash({"version": 2, **fields})

    def filename(self) -> str:
        return f"{self.method}-{self.key()}.json"


def build_defence(spec: DetectSpec | str, cache_dir: str | None = None):
    """The defence object of a :class:`DetectSpec` (or of a method name with every default).

    ``cache_dir``: where HC caches its LRP heatmaps (None: no cache).
    """
    if isinstance(spec, str):
        spec = DetectSpec(spec)
    if spec.method == AUTO:
        raise ConfigError("'auto' (HC and AC side by side) is a method of scan, not one defence: detect runs one of "
                          + ", ".join(METHODS))
    r = spec.decision
    if spec.method in ("raw-pca", "raw-ica"):
        return RawClustering(RawConfig(reducer=spec.method[4:], seed=spec.seed, rule=r))
    layer = spec.layer  # None: the model's default (models.default_hidden_layer)
    if spec.method == "ac":
        return ActivationClustering(ACConfig(layer=layer, reduce=spec.ac_reduce, seed=spec.seed, rule=r))
    if spec.method == "spectral":
        return SpectralSignatures(SpectralConfig(layer=layer))
    hc = spec.hc_config(cache_dir)
    if spec.method == "hc":
        return HeatmapClustering(hc)
    gate_ac = ACConfig(layer=layer, reduce=spec.ac_reduce, seed=spec.seed,
                       rule=dataclasses.replace(r, rule="relative-size"))
    return GatedHeatmapClustering(GateConfig(ac=gate_ac, hc=hc))
