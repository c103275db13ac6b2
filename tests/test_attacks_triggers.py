"""The new triggers, pixel by pixel on tiny images (values worked out by hand)."""

import numpy as np
import pytest
from PIL import Image

from poisonsift.attacks import BlendTrigger, SinusoidTrigger, WarpTrigger, trigger_config, trigger_from_config
from poisonsift.attacks.triggers import piece_masks, to_uint8, warp_field, warp_images
from poisonsift.errors import ConfigError


def test_rounding_is_half_up_and_clipped():
    assert to_uint8(np.array([10.5, 10.49, -3.0, 255.6, 2.5])).tolist() == [11, 10, 0, 255, 3]


def test_blend_with_a_pattern_file(tmp_path):
    pattern = np.zeros((8, 8, 3), dtype=np.uint8)
    pattern[:, :4] = 11  # left half 11, right half 0
    Image.fromarray(pattern).save(tmp_path / "p.png")
    img = np.full((1, 8, 8, 3), 10, dtype=np.uint8)
    out = BlendTrigger(alpha=0.5, pattern=str(tmp_path / "p.png")).apply(img)
    # 0.5 * 10 + 0.5 * 11 = 10.5 -> 11 (half up); 0.5 * 10 + 0.5 * 0 = 5
    assert np.all(out[0, :, :4] == 11) and np.all(out[0, :, 4:] == 5)
    out = BlendTrigger(alpha=0.2, pattern=str(tmp_path / "p.png")).apply(np.full((1, 8, 8, 3), 100, np.uint8))
    assert np.all(out[0, :, :4] == 82) and np.all(out[0, :, 4:] == 80)  # 80 + 2.2 -> 82; 80 + 0


def test_blend_noise_pattern_is_seeded_and_alpha_one_is_the_pattern():
    img = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    full = BlendTrigger(alpha=1.0).apply(img)
    expected = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3))
    assert np.array_equal(full[0], expected) and np.array_equal(full[1], expected)
    assert not np.array_equal(BlendTrigger(alpha=1.0, pattern_seed=1).apply(img), full)
    # the same noise at any alpha: 0.2 * noise, rounded half up
    assert np.array_equal(BlendTrigger(alpha=0.2).apply(img)[0], np.floor(0.2 * expected + 0.5))


def test_blend_test_alpha():
    t = BlendTrigger(alpha=0.15, test_alpha=0.2)
    assert t.for_test().alpha == 0.2 and BlendTrigger(alpha=0.3).for_test().alpha == 0.3


def test_blend_mask_limits_the_pattern():
    img = np.full((1, 8, 8, 3), 100, dtype=np.uint8)
    mask = np.zeros((1, 8, 8))
    mask[0, :2, :2] = 1
    out = BlendTrigger(alpha=1.0).apply(img, mask=mask)
    noise = np.random.default_rng(0).integers(0, 256, size=(8, 8, 3))
    assert np.array_equal(out[0, :2, :2], noise[:2, :2])
    changed = np.zeros((8, 8), bool)
    changed[:2, :2] = True
    assert np.all(out[0][~changed] == 100)


def test_sinusoid_values():
    # W = 8, f = 2: sin(2 pi j 2 / 8) = sin(pi j / 2) = 0, 1, 0, -1, ... per column j
    img = np.full((1, 8, 8, 3), 100, dtype=np.uint8)
    out = SinusoidTrigger(delta=20, freq=2).apply(img)
    assert out[0, 3, :, 1].tolist() == [100, 120, 100, 80, 100, 120, 100, 80]
    assert np.all(out[0] == out[0, :1])  # constant down each column, all channels alike
    low = SinusoidTrigger(delta=20, freq=2).apply(np.full((1, 8, 8, 3), 10, dtype=np.uint8))
    assert low[0, 0, :4, 0].tolist() == [10, 30, 10, 0]  # 10 - 20 clipped to 0


def test_warp_identity_and_shift():
    rng = np.random.default_rng(0)
    img = (2 * rng.integers(0, 128, size=(2, 8, 8, 3))).astype(np.uint8)  # even: neighbours' means are whole
    ys, xs = np.meshgrid(np.linspace(-1, 1, 8), np.linspace(-1, 1, 8), indexing="ij")
    ident = np.stack([xs, ys], -1)
    assert np.array_equal(warp_images(img, ident), img)
    # half a pixel to the right (x step 2/7 per pixel): each column the mean of it and its right neighbour
    shifted = ident.copy()
    shifted[..., 0] += 1 / 7
    out = warp_images(img, np.clip(shifted, -1, 1))
    mean = (img[:, :, :-1].astype(float) + img[:, :, 1:]) / 2
    assert np.array_equal(out[:, :, :-1], mean)


def test_warp_field_is_seeded_clamped_and_small():
    f = warp_field(32, 32, 4, 0.5, seed=0)
    assert f.shape == (32, 32, 2) and f.min() >= -1 and f.max() <= 1
    assert np.array_equal(f, warp_field(32, 32, 4, 0.5, seed=0))
    assert not np.array_equal(f, warp_field(32, 32, 4, 0.5, seed=1))
    ys, xs = np.meshgrid(np.linspace(-1, 1, 32), np.linspace(-1, 1, 32), indexing="ij")
    shift = np.abs(f - np.stack([xs, ys], -1)) * 31 / 2  # in pixels
    assert 0.05 < shift.mean() < 1.0  # an imperceptible warp: well under a pixel on average
    img = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3)).astype(np.uint8)
    t = WarpTrigger()
    assert np.array_equal(t.apply(img), warp_images(img, f))
    a, b = t.noisy(img, np.random.default_rng(5)), t.noisy(img, np.random.default_rng(5))
    assert np.array_equal(a, b) and not np.array_equal(a, t.apply(img))


def test_piece_masks_keep_exactly_the_cells():
    m = piece_masks(50, 8, 8, pieces=16, keep=8, rng=np.random.default_rng(0))
    assert m.shape == (50, 8, 8) and set(np.unique(m)) == {0.0, 1.0}
    assert np.all(m.sum((1, 2)) == 8 * 4)  # 8 cells of 2 x 2 pixels
    cells = m[:, ::2, ::2].reshape(50, 16)
    assert np.array_equal(np.repeat(np.repeat(cells.reshape(50, 4, 4), 2, 1), 2, 2), m)  # whole cells
    assert len({c.tobytes() for c in cells}) > 40  # a random subset per image


@pytest.mark.parametrize("make, match", [
    (lambda: BlendTrigger(alpha=0), r"--alpha must be in \(0, 1\]"),
    (lambda: BlendTrigger(alpha=1.5), r"--alpha must be in \(0, 1\]"),
    (lambda: BlendTrigger(test_alpha=-0.1), r"--test-alpha"),
    (lambda: BlendTrigger(pattern="/nonexistent/p.png"), "no such image file"),
    (lambda: SinusoidTrigger(delta=0), "--delta"),
    (lambda: WarpTrigger(k=1), "--k"),
    (lambda: WarpTrigger(strength=0), "--strength"),
])  # fmt: skip
def test_bad_trigger_parameters(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_trigger_config_roundtrip():
    for t in (BlendTrigger(alpha=0.1, test_alpha=0.3, pattern_seed=4), SinusoidTrigger(delta=30, freq=3),
              WarpTrigger(k=6, strength=0.7, field_seed=2)):  # fmt: skip
        assert trigger_from_config(trigger_config(t)) == t
