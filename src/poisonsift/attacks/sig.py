"""Barni et al. (2019)'s SIG: a label-consistent backdoor whose trigger is a horizontal sinusoid."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from poisonsift.attacks.base import Attack, PoisonedData, assemble, check_class, check_rate, control
from poisonsift.attacks.label_consistent import choose_target_rows
from poisonsift.attacks.triggers import SinusoidTrigger, trigger_config
from poisonsift.data import ImageData

__all__ = ["SIG"]


@dataclass
class SIG(Attack):
    """SIG (Barni, Kallas and Tondi 2019): a share ``p`` of the target class's training images
    (``round(p * n_target)``) gets ``delta * sin(2 pi j f / W)`` added to every pixel of column j
    (delta 20 on the 0-255 scale, f = 6: the paper's and BackdoorBench's), labels kept. No
    adversarial perturbation: the signal alone is learned as a feature of the target class. ASR:
    the same signal on every non-target test image."""

    p: float = 0.33
    target_class: int = 5
    trigger: SinusoidTrigger = field(default_factory=SinusoidTrigger)
    name: ClassVar[str] = "sig"

    def __post_init__(self) -> None:
        check_rate(self.p)

    def poison(self, data: ImageData, seed: int = 0) -> PoisonedData:
        check_class(self.target_class, data, "target")
        if self.p == 0:
            return control(data)
        chosen = choose_target_rows(data, self.p, self.target_class, np.random.default_rng(seed))
        x = data.x_train.copy()
        x[chosen] = self.trigger.apply(data.x_train[chosen])
        return assemble(data, x, data.y_train.copy(), chosen)

    def config(self) -> dict[str, Any]:
        return {"attack": self.name, "p": self.p, "target_class": self.target_class,
                "trigger": trigger_config(self.trigger)}  # fmt: skip
