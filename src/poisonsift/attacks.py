"""Backdoor poisoning attacks (paper sections 3 and 6.1).

An attack is an object with one method, :meth:`Attack.poison`, that turns a
clean :class:`~poisonsift.data.ImageData` into a :class:`PoisonedData` (the
poisoned training set, a boolean ``poison_mask`` aligned with it, and
``source_index``, the row of the clean original of every poisoned row or -1),
plus :meth:`Attack.stamp_test`, which puts the (full-amplitude) trigger on
test images for attack-success-rate evaluation. The same seed gives
bit-identical output.

Triggers:

* :class:`StickerTrigger` - an s x s solid sticker (default yellow-green
  (245, 255, 0), s = 3) pasted at a uniformly random position with the whole
  sticker inside a window (default columns 8-22, rows 11-20: 15 wide, 10 high,
  centred in the 32x32 image).
* :class:`AmplitudeTrigger` - the reduced-amplitude 3x3 pattern of the paper's
  code, +/- ``amp`` on all channels, clipped to [0, 255], lower-right pixel at
  (row 21, column 21): 10 pixels from the right and bottom edges.

Attacks:

* :class:`StandardBackdoor` - relabels stamped source-class images (speed limit
  50 -> 80) so that the target class holds a share ``p`` of poison.
* :class:`LabelConsistent` - PGD on a surrogate network against a share ``p``
  of the target class's own images, then the trigger; labels untouched.
  ``--attack amplitude`` is this attack with an :class:`AmplitudeTrigger`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from poisonsift.data import IMAGE_SIZE, ImageData
from poisonsift.errors import ConfigError
from poisonsift.utils import progress

__all__ = [
    "PoisonedData",
    "StickerTrigger",
    "AmplitudeTrigger",
    "Attack",
    "StandardBackdoor",
    "LabelConsistent",
    "AMPLITUDE_PATTERN",
    "n_poison_standard",
    "pgd_attack",
    "attack_from_config",
]

#: Sign of the amplitude added to each pixel of the 3x3 block (rows top to bottom), as in the paper's code.
AMPLITUDE_PATTERN = np.array([[-1, -1, 1], [-1, 1, -1], [1, -1, 1]], dtype=np.int16)


@dataclass
class PoisonedData:
    """A poisoned training set with its ground truth.

    Attributes:
        x_train: (N, 32, 32, 3) uint8, poisoned rows in place of their clean originals.
        y_train: (N,) int64 training labels after the attack.
        poison_mask: (N,) bool, True for poisoned rows.
        source_index: (N,) int64, index of the clean original in the input set, -1 for clean rows.
        x_test, y_test: the untouched test set.
        classes, group_train: carried over from the clean data.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    poison_mask: np.ndarray
    source_index: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    group_train: np.ndarray

    @property
    def n_poisoned(self) -> int:
        return int(self.poison_mask.sum())

    def as_image_data(self) -> ImageData:
        return ImageData(self.x_train, self.y_train, self.x_test, self.y_test, self.classes, self.group_train)


# --------------------------------------------------------------------------- triggers


@dataclass(frozen=True)
class StickerTrigger:
    """Solid ``size`` x ``size`` sticker of ``color`` at a random place inside a window.

    The window is given by inclusive 0-based bounds; every pixel of the sticker
    lies inside it, so the top-left corner is uniform over
    ``[row_min, row_max - size + 1] x [col_min, col_max - size + 1]``.
    """

    size: int = 3
    color: tuple[int, int, int] = (245, 255, 0)
    rows: tuple[int, int] = (11, 20)
    cols: tuple[int, int] = (8, 22)
    kind: ClassVar[str] = "sticker"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ConfigError(f"sticker size must be >= 1, got {self.size}")
        if len(self.color) != 3 or not all(0 <= int(c) <= 255 for c in self.color):
            raise ConfigError(f"sticker color must be three values in 0..255, got {self.color}")
        for name, (lo, hi) in (("rows", self.rows), ("cols", self.cols)):
            if not (0 <= lo <= hi < IMAGE_SIZE):
                raise ConfigError(f"sticker window {name}={lo}..{hi} must lie inside 0..{IMAGE_SIZE - 1}")
            if hi - lo + 1 < self.size:
                raise ConfigError(f"sticker of size {self.size} does not fit in window {name}={lo}..{hi}")

    def placement(self, h: int = IMAGE_SIZE, w: int = IMAGE_SIZE) -> tuple[int, tuple[int, int], tuple[int, int]]:
        """(side, rows, cols) of the sticker on an ``h`` x ``w`` image.

        ``size``, ``rows`` and ``cols`` are given for 32 x 32 (the paper's) and scale with the
        image: side ``round(size * h / 32)`` (at least 1), window bounds scaled to cover the same
        share of the image. At 32 x 32 they are the fields themselves.
        """
        if (h, w) == (IMAGE_SIZE, IMAGE_SIZE):
            return self.size, self.rows, self.cols
        s = max(1, round(self.size * min(h, w) / IMAGE_SIZE))

        def window(lo: int, hi: int, n: int) -> tuple[int, int]:
            a, b = int(np.floor(lo * n / IMAGE_SIZE)), min(n - 1, int(np.ceil((hi + 1) * n / IMAGE_SIZE)) - 1)
            return a, max(b, min(n - 1, a + s - 1))

        return s, window(*self.rows, h), window(*self.cols, w)

    def positions(self, n: int, rng: np.random.Generator, h: int = IMAGE_SIZE, w: int = IMAGE_SIZE) -> np.ndarray:
        """(n, 2) top-left (row, col) corners on an ``h`` x ``w`` image, uniform over the allowed places."""
        s, rows, cols = self.placement(h, w)
        r = rng.integers(rows[0], rows[1] - s + 2, size=n)
        c = rng.integers(cols[0], cols[1] - s + 2, size=n)
        return np.stack([r, c], axis=1)

    def apply(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Return a copy of (B, H, W, 3) uint8 ``images`` with one sticker each (:meth:`placement`)."""
        out = images.copy()
        h, w = images.shape[1:3]
        pos = self.positions(len(out), rng, h, w)
        s = self.placement(h, w)[0]
        offs = np.arange(s)
        rows = pos[:, 0, None, None] + offs[None, :, None]  # (B, s, 1)
        cols = pos[:, 1, None, None] + offs[None, None, :]  # (B, 1, s)
        out[np.arange(len(out))[:, None, None], rows, cols] = np.asarray(self.color, dtype=np.uint8)
        return out

    def full_amplitude(self) -> "StickerTrigger":
        return self


@dataclass(frozen=True)
class AmplitudeTrigger:
    """The paper's reduced-amplitude 3x3 trigger at a fixed place.

    Each pixel of the 3x3 block gets ``+amp`` or ``-amp`` on all three channels
    by :data:`AMPLITUDE_PATTERN`, clipped to [0, 255]. ``bottom_right`` is the
    (row, col) of the block's lower-right pixel (default (21, 21): 10 pixels
    from the right and bottom edges of a 32x32 image).
    """

    amp: int = 255
    bottom_right: tuple[int, int] = (21, 21)
    size: int = 3
    kind: ClassVar[str] = "amplitude"

    def __post_init__(self) -> None:
        if not 1 <= self.amp <= 255:
            raise ConfigError(f"amplitude must be in 1..255, got {self.amp}")
        if self.size != 3:
            raise ConfigError("the amplitude trigger is the paper's 3x3 pattern; size must be 3")
        r, c = self.bottom_right
        if not (2 <= r < IMAGE_SIZE and 2 <= c < IMAGE_SIZE):
            raise ConfigError(f"amplitude trigger corner {self.bottom_right} puts the block outside the image")

    def apply(self, images: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Return a copy of (B, H, W, 3) uint8 ``images`` with the pattern added (deterministic).

        On an image other than 32 x 32 each of the 3 x 3 cells covers k x k pixels,
        k = ``round(H / 32)`` (at least 1), and the block's lower-right corner moves to the same
        share of the image.
        """
        out = images.copy()
        h, w = images.shape[1:3]
        k = max(1, round(min(h, w) / IMAGE_SIZE))
        r = min(h - 1, round((self.bottom_right[0] + 1) * h / IMAGE_SIZE) - 1)
        c = min(w - 1, round((self.bottom_right[1] + 1) * w / IMAGE_SIZE) - 1)
        pattern = np.kron(AMPLITUDE_PATTERN, np.ones((k, k), dtype=np.int16))
        n = 3 * k
        block = out[:, r - n + 1 : r + 1, c - n + 1 : c + 1, :].astype(np.int16)
        block += (self.amp * pattern)[None, :, :, None]
        out[:, r - n + 1 : r + 1, c - n + 1 : c + 1, :] = np.clip(block, 0, 255).astype(np.uint8)
        return out

    def full_amplitude(self) -> "AmplitudeTrigger":
        """The evaluation trigger: the same pattern at amplitude 255 (paper 5.1, after Turner et al.)."""
        return dataclasses.replace(self, amp=255)


Trigger = StickerTrigger | AmplitudeTrigger


def _trigger_config(t: Trigger) -> dict[str, Any]:
    return {"kind": t.kind, **dataclasses.asdict(t)}


def _trigger_from_config(cfg: dict[str, Any]) -> Trigger:
    cfg = dict(cfg)
    kind = cfg.pop("kind")
    if kind == "sticker":
        return StickerTrigger(size=cfg["size"], color=tuple(cfg["color"]), rows=tuple(cfg["rows"]), cols=tuple(cfg["cols"]))
    if kind == "amplitude":
        return AmplitudeTrigger(amp=cfg["amp"], bottom_right=tuple(cfg["bottom_right"]), size=cfg.get("size", 3))
    raise ConfigError(f"unknown trigger kind {kind!r}")


# --------------------------------------------------------------------------- attacks


def n_poison_standard(p: float, n_target: int) -> int:
    """Poisoned copies to add so that they make a share ``p`` of the target class.

    n / (n_target + n) = p  =>  n = round(p * n_target / (1 - p)).
    """
    return int(round(p * n_target / (1.0 - p)))


def _check_rate(p: float) -> None:
    # p = 0 is the control run: nothing poisoned, the trigger kept so that ASR measures the floor.
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"poison rate p must be in [0, 1) (0: an unpoisoned control run), got {p}")


def _control(data: ImageData) -> PoisonedData:
    """The unpoisoned control run of ``p = 0``: the data as it is, no row poisoned."""
    n = len(data.y_train)
    return PoisonedData(
        data.x_train.copy(), data.y_train.copy(), np.zeros(n, dtype=bool), np.full(n, -1, dtype=np.int64),
        data.x_test, data.y_test, list(data.classes), data.group_train,
    )  # fmt: skip


def _check_class(c: int, data: ImageData, what: str) -> None:
    if not 0 <= c < data.num_classes:
        raise ConfigError(f"{what} class {c} does not exist (data has classes 0..{data.num_classes - 1})")


class Attack:
    """Interface: ``poison(data, seed) -> PoisonedData`` and ``stamp_test(images, seed)``."""

    name: ClassVar[str]
    target_class: int
    trigger: Trigger

    def poison(self, data: ImageData, seed: int = 0) -> PoisonedData:
        raise NotImplementedError

    def stamp_test(self, images: np.ndarray, seed: int = 0) -> np.ndarray:
        """Put the full-amplitude trigger on (B, 32, 32, 3) uint8 test images (seeded positions)."""
        rng = np.random.default_rng([seed, 1])
        return self.trigger.full_amplitude().apply(images, rng)

    def asr_images(self, data: ImageData | PoisonedData, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Test images to measure ASR on, stamped, with their true labels."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass
class StandardBackdoor(Attack):
    """Standard (label-flipping) backdoor, paper 6.1.1.

    ``n = round(p * n_target / (1 - p))`` randomly chosen source-class images
    get the sticker and the target label; they replace their clean originals,
    so the target class ends with a poisoned share of exactly ``p`` (up to
    rounding) and the source class loses ``n`` images.
    """

    p: float = 0.33
    source_class: int = 2
    target_class: int = 5
    trigger: Trigger = field(default_factory=StickerTrigger)
    name: ClassVar[str] = "standard"

    def __post_init__(self) -> None:
        _check_rate(self.p)
        if self.source_class == self.target_class:
            raise ConfigError("source and target class must differ for the standard attack")

    def poison(self, data: ImageData, seed: int = 0) -> PoisonedData:
        _check_class(self.source_class, data, "source")
        _check_class(self.target_class, data, "target")
        if self.p == 0:
            return _control(data)
        rng = np.random.default_rng(seed)
        src = np.flatnonzero(data.y_train == self.source_class)
        n_target = int((data.y_train == self.target_class).sum())
        n = n_poison_standard(self.p, n_target)
        if n == 0:
            raise ConfigError(
                f"p={self.p} with {n_target} target-class images yields 0 poisoned samples; raise --p"
            )
        if n > len(src):
            raise ConfigError(
                f"p={self.p} needs {n} source-class images but class {self.source_class} has only {len(src)}; "
                "lower --p"
            )
        chosen = np.sort(rng.choice(src, size=n, replace=False))
        x = data.x_train.copy()
        y = data.y_train.copy()
        x[chosen] = self.trigger.apply(data.x_train[chosen], rng)
        y[chosen] = self.target_class
        mask = np.zeros(len(y), dtype=bool)
        mask[chosen] = True
        source_index = np.full(len(y), -1, dtype=np.int64)
        source_index[chosen] = chosen
        return PoisonedData(x, y, mask, source_index, data.x_test, data.y_test, list(data.classes), data.group_train)

    def asr_images(self, data, seed: int = 0):
        idx = np.flatnonzero(data.y_test == self.source_class)
        return self.stamp_test(data.x_test[idx], seed), data.y_test[idx]

    def config(self) -> dict[str, Any]:
        return {
            "attack": self.name,
            "p": self.p,
            "source_class": self.source_class,
            "target_class": self.target_class,
            "trigger": _trigger_config(self.trigger),
        }


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
        _check_rate(self.p)

    def poison(self, data: ImageData, seed: int = 0) -> PoisonedData:
        _check_class(self.target_class, data, "target")
        if self.p == 0:
            return _control(data)  # no surrogate needed
        rng = np.random.default_rng(seed)
        tgt = np.flatnonzero(data.y_train == self.target_class)
        n = int(round(self.p * len(tgt)))
        if n == 0:
            raise ConfigError(f"p={self.p} of {len(tgt)} target-class images yields 0 poisoned samples; raise --p")
        if self.surrogate is None:
            raise ConfigError("the label-consistent attack needs a surrogate model (surrogate=...)")
        chosen = np.sort(rng.choice(tgt, size=n, replace=False))
        model, preprocess = self.surrogate()
        perturbed = pgd_attack(model, data.x_train[chosen], data.y_train[chosen], self.pgd, preprocess, self.device)
        x = data.x_train.copy()
        x[chosen] = self.trigger.apply(perturbed, rng)
        mask = np.zeros(len(x), dtype=bool)
        mask[chosen] = True
        source_index = np.full(len(x), -1, dtype=np.int64)
        source_index[chosen] = chosen
        return PoisonedData(
            x, data.y_train.copy(), mask, source_index, data.x_test, data.y_test, list(data.classes), data.group_train
        )

    def asr_images(self, data, seed: int = 0):
        # Paper 5.1: the full-amplitude trigger on every non-target test image.
        idx = np.flatnonzero(data.y_test != self.target_class)
        return self.stamp_test(data.x_test[idx], seed), data.y_test[idx]

    def config(self) -> dict[str, Any]:
        return {
            "attack": "amplitude" if isinstance(self.trigger, AmplitudeTrigger) else self.name,
            "p": self.p,
            "target_class": self.target_class,
            "trigger": _trigger_config(self.trigger),
            "pgd": dataclasses.asdict(self.pgd),
        }


def attack_from_config(cfg: dict[str, Any], surrogate=None, device: str = "cpu") -> Attack:
    """Rebuild an attack from :meth:`Attack.config` (as stored in ``attack.json``)."""
    trigger = _trigger_from_config(cfg["trigger"])
    if cfg["attack"] == "standard":
        return StandardBackdoor(p=cfg["p"], source_class=cfg["source_class"], target_class=cfg["target_class"], trigger=trigger)
    if cfg["attack"] in ("label-consistent", "amplitude"):
        return LabelConsistent(
            p=cfg["p"], target_class=cfg["target_class"], trigger=trigger, pgd=PGDConfig(**cfg["pgd"]),
            surrogate=surrogate, device=device,
        )  # fmt: skip
    raise ConfigError(f"unknown attack {cfg['attack']!r}; expected standard, label-consistent or amplitude")
