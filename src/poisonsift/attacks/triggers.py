"""Triggers: what an attack puts on an image. Each is a frozen dataclass with
``apply(images, rng) -> images`` on (B, H, W, 3) uint8 batches, ``for_test()`` (the trigger the
attack success rate is measured with) and a ``kind``; :func:`trigger_config` /
:func:`trigger_from_config` round-trip them through ``attack.json``.

* :class:`StickerTrigger` - an s x s solid sticker (default yellow-green (245, 255, 0), s = 3)
  pasted at a uniformly random position inside a window (default columns 8-22, rows 11-20).
* :class:`AmplitudeTrigger` - the paper's reduced-amplitude 3x3 pattern, +/- ``amp``.
* :class:`BlendTrigger` - Chen et al. (2017): ``(1 - alpha) x + alpha * pattern`` over the whole
  image, the pattern a seeded uniform-noise image or an image file.
* :class:`SinusoidTrigger` - Barni et al. (2019, SIG): ``x + delta sin(2 pi j f / W)`` in column j.
* :class:`WarpTrigger` - Nguyen and Tran (2021, WaNet): one fixed smooth warping field.

Every pixel value is rounded half up (``floor(v + 0.5)``) and clipped to [0, 255].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from poisonsift.data import IMAGE_SIZE
from poisonsift.errors import ConfigError

__all__ = ["AMPLITUDE_PATTERN", "StickerTrigger", "AmplitudeTrigger", "BlendTrigger", "SinusoidTrigger",
           "WarpTrigger", "Trigger", "trigger_config", "trigger_from_config", "to_uint8", "warp_field",
           "warp_images", "piece_masks"]

#: Sign of the amplitude added to each pixel of the 3x3 block (rows top to bottom), as in the paper's code.
AMPLITUDE_PATTERN = np.array([[-1, -1, 1], [-1, 1, -1], [1, -1, 1]], dtype=np.int16)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float pixel values on the 0-255 scale -> uint8, rounded half up and clipped."""
    return np.clip(np.floor(np.asarray(x, dtype=np.float64) + 0.5), 0, 255).astype(np.uint8)


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

    def for_test(self) -> "StickerTrigger":
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

    for_test = full_amplitude


def _check_alpha(value: float, what: str) -> None:
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"{what} must be in (0, 1], got {value}")


def piece_masks(n: int, h: int, w: int, pieces: int, keep: int, rng: np.random.Generator) -> np.ndarray:
    """(n, h, w) float masks: the image cut into a sqrt(pieces) x sqrt(pieces) grid of cells
    (boundaries ``round(i * h / g)``), ``keep`` cells of each mask 1 (a random subset per image),
    the others 0 - adaptive-blend's partial triggers."""
    g = int(round(np.sqrt(pieces)))
    rb = np.round(np.arange(g + 1) * h / g).astype(int)
    cb = np.round(np.arange(g + 1) * w / g).astype(int)
    out = np.zeros((n, h, w), dtype=np.float64)
    for i in range(n):
        for cell in rng.choice(pieces, size=keep, replace=False):
            r, c = divmod(int(cell), g)
            out[i, rb[r] : rb[r + 1], cb[c] : cb[c + 1]] = 1.0
    return out


@dataclass(frozen=True)
class BlendTrigger:
    """Chen et al.'s blended trigger: ``x' = (1 - a) x + a * pattern`` on every pixel.

    ``pattern``: ``"noise"`` (a uniform-noise image in 0..255, seeded by ``pattern_seed``, of the
    images' size) or the path of an image file (resized to the images' size, bilinear).
    ``alpha`` blends the training poison, ``test_alpha`` (None: ``alpha``) the test images.
    """

    alpha: float = 0.2
    test_alpha: float | None = None
    pattern: str = "noise"
    pattern_seed: int = 0
    kind: ClassVar[str] = "blend"

    def __post_init__(self) -> None:
        _check_alpha(self.alpha, "--alpha")
        if self.test_alpha is not None:
            _check_alpha(self.test_alpha, "--test-alpha")
        if self.pattern != "noise" and not Path(self.pattern).is_file():
            raise ConfigError(f"--pattern {self.pattern}: no such image file (give an image, or 'noise')")

    def pattern_image(self, h: int, w: int) -> np.ndarray:
        """(h, w, 3) float64 pattern on the 0-255 scale."""
        if self.pattern == "noise":
            return np.random.default_rng(self.pattern_seed).integers(0, 256, size=(h, w, 3)).astype(np.float64)
        from PIL import Image

        try:
            with Image.open(self.pattern) as im:
                return np.asarray(im.convert("RGB").resize((w, h), Image.BILINEAR), dtype=np.float64)
        except OSError as exc:
            raise ConfigError(f"--pattern {self.pattern}: not a readable image ({exc})") from None

    def apply(self, images: np.ndarray, rng: np.random.Generator | None = None,
              mask: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """Blend the pattern into (B, H, W, 3) uint8 ``images``; ``mask`` (B, H, W) in [0, 1]
        limits it to part of each image (adaptive-blend's pieces). Deterministic."""
        h, w = images.shape[1:3]
        a = self.alpha if mask is None else self.alpha * mask[..., None]
        x = images.astype(np.float64)
        return to_uint8(x + a * (self.pattern_image(h, w)[None] - x))

    def for_test(self) -> "BlendTrigger":
        return dataclasses.replace(self, alpha=self.test_alpha or self.alpha, test_alpha=None)


@dataclass(frozen=True)
class SinusoidTrigger:
    """Barni et al.'s SIG: ``x' = x + delta * sin(2 pi j f / W)`` on all channels of column j
    (a horizontal sinusoid, constant along each column), on the 0-255 scale."""

    delta: float = 20.0
    freq: float = 6.0
    kind: ClassVar[str] = "sinusoid"

    def __post_init__(self) -> None:
        if not 0 < self.delta <= 255:
            raise ConfigError(f"--delta must be in (0, 255] (0-255 pixel scale), got {self.delta}")
        if not self.freq > 0:
            raise ConfigError(f"--freq must be > 0, got {self.freq}")

    def signal(self, w: int) -> np.ndarray:
        """(w,) the added value of each column."""
        return self.delta * np.sin(2 * np.pi * np.arange(w) * self.freq / w)

    def apply(self, images: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return to_uint8(images.astype(np.float64) + self.signal(images.shape[2])[None, None, :, None])

    def for_test(self) -> "SinusoidTrigger":
        return self


def warp_field(h: int, w: int, k: int, strength: float, seed: int) -> np.ndarray:
    """WaNet's warping grid, (h, w, 2) float32 in grid_sample's [-1, 1] (x, y) coordinates.

    A (2, k, k) field uniform in [-1, 1], divided by its mean absolute value, upsampled bicubically
    to (h, w) (align_corners), scaled by ``strength / h`` and added to the identity grid, clamped
    to [-1, 1] (the released code's ``s`` = 0.5, ``k`` = 4, ``grid_rescale`` = 1).
    """
    import torch

    ins = np.random.default_rng(seed).uniform(-1, 1, size=(1, 2, k, k))
    ins = ins / np.mean(np.abs(ins))
    noise = torch.nn.functional.interpolate(torch.from_numpy(ins), size=(h, w), mode="bicubic", align_corners=True)
    noise = noise.permute(0, 2, 3, 1)[0].numpy()
    ys, xs = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    identity = np.stack([xs, ys], axis=-1)
    return np.clip(identity + strength * noise / h, -1, 1).astype(np.float32)


def warp_images(images: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Resample (B, H, W, 3) uint8 ``images`` at ``grid`` ((H, W, 2) shared, or (B, H, W, 2)),
    bilinear, align_corners, as WaNet's ``grid_sample``; rounded to uint8."""
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).double()
    g = torch.from_numpy(np.asarray(grid, dtype=np.float64))
    g = g.expand(len(images), *g.shape) if g.ndim == 3 else g
    out = torch.nn.functional.grid_sample(x, g, mode="bilinear", padding_mode="zeros", align_corners=True)
    return to_uint8(out.permute(0, 2, 3, 1).numpy())


@dataclass(frozen=True)
class WarpTrigger:
    """WaNet's trigger: every image resampled through one fixed warping field (:func:`warp_field`
    with ``k``, ``strength``, seeded by ``field_seed``)."""

    k: int = 4
    strength: float = 0.5
    field_seed: int = 0
    kind: ClassVar[str] = "warp"

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or int(self.k) != self.k or self.k < 2:
            raise ConfigError(f"--k (the warping field's control grid) must be a whole number >= 2, got {self.k}")
        if not self.strength > 0:
            raise ConfigError(f"--strength must be > 0, got {self.strength}")

    def field(self, h: int, w: int) -> np.ndarray:
        return warp_field(h, w, self.k, self.strength, self.field_seed)

    def apply(self, images: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return warp_images(images, self.field(*images.shape[1:3]))

    def noisy(self, images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """WaNet's noise mode: the field plus per-image uniform noise in [-1, 1] / H, clamped."""
        n, h, w = images.shape[:3]
        grid = self.field(h, w)[None] + rng.uniform(-1, 1, size=(n, h, w, 2)) / h
        return warp_images(images, np.clip(grid, -1, 1))

    def for_test(self) -> "WarpTrigger":
        return self


Trigger = StickerTrigger | AmplitudeTrigger | BlendTrigger | SinusoidTrigger | WarpTrigger
_KINDS = {t.kind: t for t in (StickerTrigger, AmplitudeTrigger, BlendTrigger, SinusoidTrigger, WarpTrigger)}


def trigger_config(t: Trigger) -> dict[str, Any]:
    return {"kind": t.kind, **dataclasses.asdict(t)}


def trigger_from_config(cfg: dict[str, Any]) -> Trigger:
    cfg = dict(cfg)
    kind = cfg.pop("kind")
    if kind not in _KINDS:
        raise ConfigError(f"unknown trigger kind {kind!r}; expected one of {', '.join(_KINDS)}")
    cls = _KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    # JSON gives lists where the dataclasses hold tuples (colour, window, corner)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in names})
