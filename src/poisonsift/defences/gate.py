"""The paper's conclusion as a two-stage gate: AC first, HC only when AC finds the class suspicious."""

from __future__ import annotations

from dataclasses import dataclass, field

from poisonsift.defences.activation import ACConfig, ActivationClustering
from poisonsift.defences.base import _Base
from poisonsift.defences.decision import ClusterRule
from poisonsift.defences.heatmap import HCConfig, HeatmapClustering
from poisonsift.defences.base import DetectionResult

@dataclass
class GateConfig:
    """The paper's conclusion as a two-stage gate: AC first, HC only when AC finds the class suspicious."""

    ac: ACConfig = field(default_factory=lambda: ACConfig(rule=ClusterRule("relative-size")))
    hc: HCConfig = field(default_factory=HCConfig)


class GatedHeatmapClustering(_Base):
    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config or GateConfig()

    def detect(self, model, images, labels, normalizer=None) -> DetectionResult:
        ac = ActivationClustering(self.config.ac).detect(model, images, labels, normalizer)
        if not ac.suspicious:
            ac.analysis["gate"] = "AC found the class clean; HC not run"
            return ac
        hc = HeatmapClustering(self.config.hc).detect(model, images, labels, normalizer)
        hc.seconds = {**{f"ac_{k}": v for k, v in ac.seconds.items()}, **hc.seconds}
        hc.analysis["gate"] = "AC found the class suspicious; HC decided"
        return hc
