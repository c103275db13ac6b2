"""Label-consistent backdoors (Turner et al. 2019; paper 3.1, 6.1.2 and 6.1.3): PGD on a surrogate
network against a share of the target class's own images, then the trigger; labels untouched."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from poisonsift.attacks.base import Attack, PoisonedData, assemble, check_class, check_rate, control
from poisonsift.attacks.triggers import AmplitudeTrigger, StickerTrigger, Trigger, trigger_config
from poisonsift.data import ImageData
from poisonsift.errors import ConfigError
from poisonsift.utils import progress

__all__ = ["PGDConfig", "pgd_attack", "LabelConsistent", "choose_target_rows"]


def choose_target_rows(data: ImageData, p: float, target_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted rows of ``round(p * n_target)`` random target-class images: a label-consistent
    attack's poison, ``p`` a share of the target class."""
    check_class(target_class, data, "target")
    tgt = np.flatnonzero(data.y_train == target_class)
    n = int(round(p * len(tgt)))
    if n == 0:
        raise ConfigError(f"p={p} of {len(tgt)} target-class images yields 0 poisoned samples; raise --p")
    return np.sort(rng.choice(tgt, size=n, replace=False))


@dataclass
class PGDConfig:
    """Projected gradient ascent on the surrogate's loss (paper 6.1.2).

    Default ball: L-infinity with radius 16/255 - the larger of the two radii
    Turner et al. (2019) use for their adversarial perturbations (8/255 and
    16/255), and the one that 5 steps of 0.015 can actually reach (5 * 0.015 = 0.075).
    ``norm='l2'`` uses normalised-gradient steps and an L2 ball.
    """

    steps: int = 5
    step_size: float = 0.015
    eps: float = 16 / 255
    norm: str = "linf"
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise ConfigError(f"PGD norm must be 'linf' or 'l2', got {self.norm!r}")
        if self.eps <= 0 or self.step_size <= 0 or self.steps < 1:
            raise ConfigError("PGD eps, step_size and steps must be positive")


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    flat = delta.flatten(1)
    factor = (eps / flat.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
    return (flat * factor[:, None]).view_as(delta)


def pgd_attack(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    cfg: PGDConfig,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Perturb images to increase ``model``'s cross-entropy, inside a norm ball.

    Args:
        model: surrogate classifier, switched to eval mode.
        images: (B, 32, 32, 3) uint8.
        labels: (B,) int64 true labels.
        cfg: PGD settings; distances on the [0, 1] pixel scale.
        preprocess: maps a (B, 3, 32, 32) float batch in [0, 1] to the model's input.

    Returns:
        (B, 32, 32, 3) uint8 perturbed images. Deterministic (no random start,
        as in Turner et al.'s released code). Rounding to uint8 can move a pixel
        by at most 0.5/255 beyond the ball.
    """
    model.eval()
    out = np.empty_like(images)
    with progress(total=len(images), desc="PGD", unit="img") as bar:
        for s in range(0, len(images), cfg.batch_size):
            x0 = torch.from_numpy(images[s : s + cfg.batch_size]).to(device).permute(0, 3, 1, 2).float() / 255
            y = torch.from_numpy(labels[s : s + cfg.batch_size]).to(device)
            delta = torch.zeros_like(x0)
            for _ in range(cfg.steps):
                delta.requires_grad_(True)
                loss = nn.functional.cross_entropy(model(preprocess(x0 + delta)), y)
                (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    if cfg.norm == "linf":
                        step = cfg.step_size * grad.sign()
                    else:
                        step = cfg.step_size * grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                    delta = _project(delta + step, cfg.eps, cfg.norm)
                    delta = (x0 + delta).clamp(0, 1) - x0
            x = ((x0 + delta) * 255).round().clamp(0, 255).to(torch.uint8)
            out[s : s + len(x)] = x.permute(0, 2, 3, 1).cpu().numpy()
            bar.update(len(x))
    return out


@dataclass
class LabelConsistent(Attack):
    """Label-consistent backdoor (Turner et al. 2019; paper 3.1, 6.1.2).

    A share ``p`` of the target class's training images (``round(p * n_target)``,
    chosen at random) is pushed away from its class by PGD on a surrogate
    network trained on the clean data, then stamped with the trigger. Labels
    stay correct. ``surrogate`` is a callable returning ``(model, preprocess)``
    so that the expensive surrogate is trained (or loaded from cache) only when
    needed.
    """

    p: float = 0.33
    target_class: int = 5
    trigger: Trigger = field(default_factory=StickerTrigger)
    pgd: PGDConfig = field(default_factory=PGDConfig)
    surrogate: Callable[[], tuple[nn.Module, Callable]] | None = field(default=None, repr=False, compare=False)
    device: str = "cpu"
    name: ClassVar[str] = "label-consistent"

    def __post_init__(self) -> None:
        check_rate(self.p)

    def poison(self, data: ImageData, seed: int = 0) -> PoisonedData:
        check_class(self.target_class, data, "target")
        if self.p == 0:
            return control(data)  # no surrogate needed
        rng = np.random.default_rng(seed)
        chosen = choose_target_rows(data, self.p, self.target_class, rng)
        if self.surrogate is None:
            raise ConfigError("the label-consistent attack needs a surrogate model (surrogate=...)")
        model, preprocess = self.surrogate()
        perturbed = pgd_attack(model, data.x_train[chosen], data.y_train[chosen], self.pgd, preprocess, self.device)
        x = data.x_train.copy()
        x[chosen] = self.trigger.apply(perturbed, rng)
        return assemble(data, x, data.y_train.copy(), chosen)

    def config(self) -> dict[str, Any]:
        return {
            "attack": "amplitude" if isinstance(self.trigger, AmplitudeTrigger) else self.name,
            "p": self.p,
            "target_class": self.target_class,
            "trigger": trigger_config(self.trigger),
            "pgd": dataclasses.asdict(self.pgd),
        }
