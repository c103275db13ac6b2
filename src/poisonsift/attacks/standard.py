"""Label-flipping backdoors: the paper's standard sticker attack (6.1.1) and Chen et al.'s blended
trigger, source -> target or all-to-one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from poisonsift.attacks.base import (Attack, PoisonedData, SourceClass, assemble, check_class, check_rate,
                                     check_source, choose_relabelled, control)  # fmt: skip
from poisonsift.attacks.triggers import BlendTrigger, StickerTrigger, Trigger, trigger_config
from poisonsift.data import ImageData

__all__ = ["StandardBackdoor", "Blended"]


@dataclass
class StandardBackdoor(Attack):
    """Standard (label-flipping) backdoor, paper 6.1.1.

    Source -> target (``source_class`` an index; the paper's 2 -> 5): ``n = round(p * n_target /
    (1 - p))`` randomly chosen source-class images get the trigger and the target label; they
    replace their clean originals, so the target class ends with a poisoned share of exactly ``p``
    (up to rounding) and the source class loses ``n`` images. All-to-one (``source_class="all"``,
    BackdoorBench's and backdoor-toolbox's setting): ``round(p * N)`` images of every other class,
    ``p`` a share of the whole training set; ASR is then measured on every non-target test image.
    """

    p: float = 0.33
    source_class: SourceClass = 2
    target_class: int = 5
    trigger: Trigger = field(default_factory=StickerTrigger)
    name: ClassVar[str] = "standard"

    def __post_init__(self) -> None:
        check_rate(self.p)
        check_source(self.source_class, self.target_class)

    def _payload(self, data: ImageData, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(x, y, rows): the training set with the payload stamped and relabelled."""
        chosen = choose_relabelled(data, self.p, self.source_class, self.target_class, rng)
        x, y = data.x_train.copy(), data.y_train.copy()
        x[chosen] = self.trigger.apply(data.x_train[chosen], rng)
        y[chosen] = self.target_class
        return x, y, chosen

    def poison(self, data: ImageData, seed: int = 0) -> PoisonedData:
        if self.p == 0:
            check_class(self.target_class, data, "target")
            return control(data)
        return self._poison(data, np.random.default_rng(seed))

    def _poison(self, data: ImageData, rng: np.random.Generator) -> PoisonedData:
        """The attack proper (``p > 0``); the families with covers add theirs here."""
        x, y, chosen = self._payload(data, rng)
        return assemble(data, x, y, chosen)

    def config(self) -> dict[str, Any]:
        return {
            "attack": self.name,
            "p": self.p,
            "source_class": self.source_class,
            "target_class": self.target_class,
            "trigger": trigger_config(self.trigger),
        }


@dataclass
class Blended(StandardBackdoor):
    """Chen et al. (2017)'s blended backdoor: :class:`StandardBackdoor` with a
    :class:`~poisonsift.attacks.triggers.BlendTrigger` (a seeded uniform-noise image blended over
    the whole image at alpha 0.2 by default) instead of the sticker."""

    trigger: Trigger = field(default_factory=BlendTrigger)
    name: ClassVar[str] = "blended"

