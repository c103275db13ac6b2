"""Qi et al. (ICLR 2023)'s adaptive-blend: a blend trigger cut into pieces, built to defeat
latent-separation defences (Activation Clustering, Spectral Signatures)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from poisonsift.attacks.base import (ALL, PoisonedData, SourceClass, assemble, choose_covers,
                                     choose_relabelled)  # fmt: skip
from poisonsift.attacks.standard import StandardBackdoor
from poisonsift.attacks.triggers import BlendTrigger, Trigger, piece_masks
from poisonsift.data import ImageData
from poisonsift.errors import ConfigError

__all__ = ["AdaptiveBlend"]


@dataclass
class AdaptiveBlend(StandardBackdoor):
    """Adaptive-blend ("Revisiting the assumption of latent separability for backdoor defenses").

    The blend pattern is cut into ``pieces`` cells (a 4 x 4 grid); every poisoned image carries a
    random subset of them - ``mask_rate`` of the cells left out (0.5) - blended at the training
    ``alpha`` (0.15). Payload images (``p`` of the training set, all-to-one by default: 0.3 %, as
    backdoor-toolbox's GTSRB example) are relabelled to the target; *cover* images (``cover_rate``
    of the training set, 0.3 %, disjoint from the payload) carry the same partial triggers and
    keep their labels, so that the poisoned images do not form a clean cluster of their own in
    the latent space. At test time the whole pattern is blended at ``test_alpha`` (0.2), above
    the training alpha. Covers are ``cover_mask`` rows."""

    p: float = 0.003
    source_class: SourceClass = ALL
    trigger: Trigger = field(default_factory=lambda: BlendTrigger(alpha=0.15, test_alpha=0.2))
    cover_rate: float = 0.003
    pieces: int = 16
    mask_rate: float = 0.5
    name: ClassVar[str] = "adaptive-blend"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.trigger, BlendTrigger):
            raise ConfigError("adaptive-blend's trigger is a BlendTrigger")
        if not 0 <= self.cover_rate < 1:
            raise ConfigError(f"--cover-rate must be in [0, 1) (a share of the training set), got {self.cover_rate}")
        g = round(self.pieces**0.5)
        if self.pieces < 1 or g * g != self.pieces:
            raise ConfigError(f"--pieces must be a square number (the trigger cut into a g x g grid), got {self.pieces}")
        if not 0 <= self.mask_rate < 1:
            raise ConfigError(f"--mask-rate must be in [0, 1) (the share of pieces left out), got {self.mask_rate}")

    @property
    def kept_pieces(self) -> int:
        return self.pieces - int(round(self.mask_rate * self.pieces))

    def _partial(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        n, h, w = images.shape[:3]
        return self.trigger.apply(images, mask=piece_masks(n, h, w, self.pieces, self.kept_pieces, rng))

    def _poison(self, data: ImageData, rng: np.random.Generator) -> PoisonedData:
        chosen = choose_relabelled(data, self.p, self.source_class, self.target_class, rng)
        covers = choose_covers(len(data.y_train), int(round(self.cover_rate * len(data.y_train))), chosen, rng)
        x, y = data.x_train.copy(), data.y_train.copy()
        x[chosen] = self._partial(data.x_train[chosen], rng)
        x[covers] = self._partial(data.x_train[covers], rng)
        y[chosen] = self.target_class
        return assemble(data, x, y, chosen, covers)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "cover_rate": self.cover_rate, "pieces": self.pieces, "mask_rate": self.mask_rate}
