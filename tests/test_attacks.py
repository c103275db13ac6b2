import numpy as np
import pytest
import torch
from torch import nn

from poisonsift.attacks import (
    AMPLITUDE_PATTERN,
    AmplitudeTrigger,
    LabelConsistent,
    PGDConfig,
    StandardBackdoor,
    StickerTrigger,
    attack_from_config,
    n_poison_standard,
    pgd_attack,
)
from poisonsift.errors import ConfigError
from poisonsift.training import Normalizer

YELLOW = np.array([245, 255, 0], dtype=np.uint8)


def sticker_boxes(before: np.ndarray, after: np.ndarray):
    """(rows, cols) of the changed pixels per image."""
    diff = np.any(before != after, axis=-1)
    return [np.nonzero(d) for d in diff]


def test_standard_counts_labels_and_mask(tiny_data):
    p = 0.33
    atk = StandardBackdoor(p=p)
    n_target = int((tiny_data.y_train == 5).sum())
    pd = atk.poison(tiny_data, seed=3)
    n = n_poison_standard(p, n_target)
    assert n == round(p * n_target / (1 - p)) == 12
    assert pd.n_poisoned == n
    # Poisoned rows replace source-class rows in place and carry the target label.
    assert np.all(tiny_data.y_train[pd.poison_mask] == 2)
    assert np.all(pd.y_train[pd.poison_mask] == 5)
    assert np.array_equal(pd.y_train[~pd.poison_mask], tiny_data.y_train[~pd.poison_mask])
    assert np.array_equal(pd.source_index[pd.poison_mask], np.flatnonzero(pd.poison_mask))
    assert np.all(pd.source_index[~pd.poison_mask] == -1)
    share = pd.n_poisoned / (pd.y_train == 5).sum()
    assert abs(share - p) < 0.02
    assert np.array_equal(pd.x_train[~pd.poison_mask], tiny_data.x_train[~pd.poison_mask])


def test_sticker_pixels_exact_and_inside_window(tiny_data):
    pd = StandardBackdoor(p=0.33).poison(tiny_data, seed=0)
    before, after = tiny_data.x_train[pd.poison_mask], pd.x_train[pd.poison_mask]
    seen_rows, seen_cols = set(), set()
    for b, a in zip(before, after):
        changed = np.argwhere(np.any(b != a, axis=-1))
        r0, c0 = changed.min(0)
        # A full 3x3 block of exactly the sticker colour (pixels equal to it by chance stay "unchanged").
        assert np.all(a[r0 : r0 + 3, c0 : c0 + 3] == YELLOW)
        assert changed.max(0).tolist() <= [r0 + 2, c0 + 2]
        assert 11 <= r0 and r0 + 2 <= 20 and 8 <= c0 and c0 + 2 <= 22
        seen_rows.add(int(r0)), seen_cols.add(int(c0))
    assert len(seen_rows) > 1 and len(seen_cols) > 1  # random positions


def test_sticker_positions_cover_window_uniformly():
    t = StickerTrigger(size=3)
    pos = t.positions(20000, np.random.default_rng(0))
    assert pos[:, 0].min() == 11 and pos[:, 0].max() == 18  # rows 11..20 hold a 3-high sticker at 11..18
    assert pos[:, 1].min() == 8 and pos[:, 1].max() == 20
    counts = np.bincount(pos[:, 1] - 8)
    assert counts.min() > 0.8 * counts.mean()


@pytest.mark.parametrize("size", [1, 2, 3])
def test_sticker_sizes(size):
    img = np.zeros((5, 32, 32, 3), dtype=np.uint8)
    out = StickerTrigger(size=size).apply(img, np.random.default_rng(0))
    assert np.all((out != 0).any(-1).sum((1, 2)) == size * size)


def test_same_seed_same_bytes_different_seed_differs(tiny_data):
    a = StandardBackdoor(p=0.2).poison(tiny_data, seed=7)
    b = StandardBackdoor(p=0.2).poison(tiny_data, seed=7)
    c = StandardBackdoor(p=0.2).poison(tiny_data, seed=8)
    assert a.x_train.tobytes() == b.x_train.tobytes() and np.array_equal(a.poison_mask, b.poison_mask)
    assert a.x_train.tobytes() != c.x_train.tobytes()


def test_amplitude_pattern_values_and_place():
    img = np.full((1, 32, 32, 3), 100, dtype=np.uint8)
    out = AmplitudeTrigger(amp=64).apply(img)
    block = out[0, 19:22, 19:22, 0].astype(int)
    expected = 100 + 64 * np.array([[-1, -1, 1], [-1, 1, -1], [1, -1, 1]])
    assert np.array_equal(block, expected)
    assert np.array_equal(AMPLITUDE_PATTERN, np.sign(expected - 100))
    assert np.all(out[0, 19:22, 19:22, 0:1] == out[0, 19:22, 19:22, :])  # all channels alike
    mask = np.ones((32, 32), dtype=bool)
    mask[19:22, 19:22] = False
    assert np.all(out[0][mask] == 100)
    # Lower-right pixel 10 pixels from the right and bottom edges.
    assert 32 - 1 - 21 == 10


def test_amplitude_clips_and_full_amplitude():
    img = np.full((1, 32, 32, 3), 200, dtype=np.uint8)
    out = AmplitudeTrigger(amp=128).apply(img)
    assert out[0, 19, 21, 0] == 255 and out[0, 19, 19, 0] == 72
    full = AmplitudeTrigger(amp=32).full_amplitude()
    assert full.amp == 255
    o = full.apply(img)
    assert set(np.unique(o[0, 19:22, 19:22])) == {0, 255}


def test_zero_poison_rate_is_clear_error(tiny_data):
    with pytest.raises(ConfigError, match="yields 0 poisoned samples"):
        StandardBackdoor(p=0.01).poison(tiny_data)
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\)"):
        StandardBackdoor(p=-0.1)
    with pytest.raises(ConfigError, match=r"must be in \[0, 1\)"):
        LabelConsistent(p=1.0)


def test_p0_is_the_unpoisoned_control(tiny_data):
    """p = 0 leaves the data as it is (the floor run); LC needs no surrogate for it."""
    for attack in (StandardBackdoor(p=0.0), LabelConsistent(p=0.0)):
        pd = attack.poison(tiny_data)
        assert pd.n_poisoned == 0 and (pd.source_index == -1).all()
        assert np.array_equal(pd.x_train, tiny_data.x_train) and np.array_equal(pd.y_train, tiny_data.y_train)
        assert len(attack.asr_images(pd)[0]) > 0


def test_too_few_source_images(tiny_data):
    with pytest.raises(ConfigError, match="has only"):
        StandardBackdoor(p=0.9).poison(tiny_data)


def test_bad_sticker_geometry():
    with pytest.raises(ConfigError, match="does not fit"):
        StickerTrigger(size=5, rows=(0, 2))
    with pytest.raises(ConfigError, match="color"):
        StickerTrigger(color=(300, 0, 0))


class _Linear(nn.Module):
    def __init__(self, k=6):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(3 * 32 * 32, k)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("norm, eps", [("linf", 16 / 255), ("l2", 0.5)])
def test_pgd_raises_loss_inside_ball(tiny_data, norm, eps):
    model = _Linear()
    x, y = tiny_data.x_train[:16], tiny_data.y_train[:16]
    norm_fn = Normalizer((0.5,) * 3, (0.25,) * 3)
    adv = pgd_attack(model, x, y, PGDConfig(eps=eps, norm=norm), norm_fn)

    def loss(imgs):
        t = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
        return nn.functional.cross_entropy(model(norm_fn(t)), torch.from_numpy(y)).item()

    assert loss(adv) > loss(x) + 0.1
    delta = (adv.astype(np.float64) - x.astype(np.float64)) / 255
    if norm == "linf":
        assert np.abs(delta).max() <= eps + 0.5 / 255 + 1e-9
    else:
        assert np.linalg.norm(delta.reshape(len(x), -1), axis=1).max() <= eps + 0.5 / 255 * np.sqrt(3 * 1024)


def test_label_consistent_keeps_labels_and_poisons_target_share(tiny_data):
    model = _Linear()
    atk = LabelConsistent(p=0.5, surrogate=lambda: (model, Normalizer((0.5,) * 3, (0.25,) * 3)))
    pd = atk.poison(tiny_data, seed=1)
    assert np.array_equal(pd.y_train, tiny_data.y_train)
    assert pd.n_poisoned == 12 and np.all(tiny_data.y_train[pd.poison_mask] == 5)
    again = atk.poison(tiny_data, seed=1)
    assert pd.x_train.tobytes() == again.x_train.tobytes()
    # ASR images: every non-target test image.
    x, yt = atk.asr_images(tiny_data)
    assert len(x) == (tiny_data.y_test != 5).sum() and 5 not in yt


def test_attack_config_roundtrip():
    a = StandardBackdoor(p=0.1, trigger=StickerTrigger(size=2, color=(1, 2, 3)))
    assert attack_from_config(a.config()) == a
    lc = LabelConsistent(p=0.2, trigger=AmplitudeTrigger(amp=64))
    back = attack_from_config(lc.config())
    assert back.trigger == lc.trigger and back.pgd == lc.pgd and back.config()["attack"] == "amplitude"


@pytest.mark.gtsrb
@pytest.mark.parametrize("p, expected", [(0.33, 916), (0.15, 328), (0.10, 207), (0.05, 98), (0.02, 38)])
def test_real_gtsrb_standard_counts(gtsrb_data, p, expected):
    n_target = int((gtsrb_data.y_train == 5).sum())
    assert n_target == 1860
    pd = StandardBackdoor(p=p).poison(gtsrb_data, seed=0)
    assert pd.n_poisoned == expected == round(p * 1860 / (1 - p))
    assert (pd.y_train == 2).sum() == (gtsrb_data.y_train == 2).sum() - expected
