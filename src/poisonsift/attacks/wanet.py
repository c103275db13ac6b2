"""Nguyen and Tran (2021)'s WaNet: an imperceptible warp as the trigger, with its noise mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from poisonsift.attacks.base import ALL, PoisonedData, SourceClass, assemble, choose_covers
from poisonsift.attacks.standard import StandardBackdoor
from poisonsift.attacks.triggers import Trigger, WarpTrigger
from poisonsift.data import ImageData
from poisonsift.errors import ConfigError

__all__ = ["WaNet"]


@dataclass
class WaNet(StandardBackdoor):
    """WaNet: the payload (chosen as :class:`~poisonsift.attacks.standard.StandardBackdoor`'s,
    all-to-one by default with ``p`` = 5 % of the training set, backdoor-toolbox's GTSRB setting)
    is resampled through one fixed warping field (:class:`~poisonsift.attacks.triggers.WarpTrigger`:
    k = 4, strength 0.5, bilinear, the grid clamped) and relabelled. Noise mode: ``cross_ratio``
    times as many other images (2: backdoor-toolbox's 10 % cover at 5 % poison, BackdoorBench's
    cross_ratio) are warped by the field plus per-image random noise and keep their labels, so that
    the network learns the exact warp rather than any warp. They are ``cover_mask`` rows."""

    p: float = 0.05
    source_class: SourceClass = ALL
    trigger: Trigger = field(default_factory=WarpTrigger)
    cross_ratio: float = 2.0
    name: ClassVar[str] = "wanet"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.trigger, WarpTrigger):
            raise ConfigError("WaNet's trigger is a WarpTrigger")
        if not self.cross_ratio >= 0:
            raise ConfigError(f"--cross-ratio must be >= 0 (0: no noise mode), got {self.cross_ratio}")

    def _poison(self, data: ImageData, rng: np.random.Generator) -> PoisonedData:
        x, y, chosen = self._payload(data, rng)
        covers = choose_covers(len(y), int(round(self.cross_ratio * len(chosen))), chosen, rng)
        x[covers] = self.trigger.noisy(data.x_train[covers], rng)
        return assemble(data, x, y, chosen, covers)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "cross_ratio": self.cross_ratio}
