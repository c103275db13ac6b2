"""Shared fixtures: tiny data sets built by the tests, and the real GTSRB when $POISONSIFT_GTSRB is set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from poisonsift.data import ImageData

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("POISONSIFT_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("POISONSIFT_QUIET", "1")


def make_tiny_data(n_per_class: int = 24, num_classes: int = 6, n_test: int = 8, seed: int = 0) -> ImageData:
    """Noise images whose mean colour encodes the class: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 225, size=(num_classes, 3))

    def block(n):
        y = np.repeat(np.arange(num_classes), n)
        x = palette[y][:, None, None, :] + rng.normal(0, 12, size=(len(y), 32, 32, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_tr, y_tr = block(n_per_class)
    x_te, y_te = block(n_test)
    groups = np.arange(len(y_tr)) // 4  # "tracks" of 4 frames
    return ImageData(x_tr, y_tr, x_te, y_te, [f"c{i}" for i in range(num_classes)], groups)


@pytest.fixture
def tiny_data() -> ImageData:
    return make_tiny_data()


def write_fake_gtsrb(root: Path, num_classes: int = 3, per_track: int = 2, tracks: int = 2, n_test: int = 4) -> Path:
    """A miniature GTSRB in the official layout (PPM files + ';' CSVs)."""
    rng = np.random.default_rng(1)
    train = root / "GTSRB" / "Final_Training" / "Images"
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
    for c in range(num_classes):
        d = train / f"{c:05d}"
        d.mkdir(parents=True)
        rows = []
        for t in range(tracks):
            for i in range(per_track):
                name = f"{t:05d}_{i:05d}.ppm"
                w, h = int(rng.integers(30, 60)), int(rng.integers(30, 60))
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / name)
                rows.append(f"{name};{w};{h};2;2;{w - 3};{h - 3};{c}\n")
        (d / f"GT-{c:05d}.csv").write_text(header + "".join(rows))
    test = root / "GTSRB" / "Final_Test" / "Images"
    test.mkdir(parents=True)
    rows = []
    for i in range(n_test):
        name = f"{i:05d}.ppm"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(test / name)
        rows.append(f"{name};40;40;2;2;37;37;{i % num_classes}\n")
    (root / "GTSRB" / "Final_Test" / "GT-final_test.csv").write_text(header + "".join(rows))
    return root


@pytest.fixture
def fake_gtsrb(tmp_path) -> Path:
    return write_fake_gtsrb(tmp_path / "gtsrb")


@pytest.fixture(scope="session")
def gtsrb_root() -> Path:
    env = os.environ.get("POISONSIFT_GTSRB")
    if not env:
        pytest.skip("real GTSRB not available: set POISONSIFT_GTSRB to the GTSRB folder to run this test")
    return Path(env)


@pytest.fixture(scope="session")
def gtsrb_data(gtsrb_root) -> ImageData:
    """The real GTSRB, read once per test session (about 15 s)."""
    from poisonsift.data import prepare

    return prepare(gtsrb_root)


@pytest.fixture(scope="session")
def attacked_run(tmp_path_factory):
    """Class 5 holds 20 stickered images relabelled from class 2; a SmallInception trained 3 epochs
    (a 5x5 sticker: 40 images a class and 3 epochs teach a 3x3 one too weakly for a stable test)."""
    from poisonsift.attacks import StandardBackdoor, StickerTrigger
    from poisonsift.runs import poison_run, train_run
    from poisonsift.training import get_preset

    d = tmp_path_factory.mktemp("scan") / "run"
    attack = StandardBackdoor(p=0.33, source_class=2, target_class=5, trigger=StickerTrigger(size=5))
    poison_run(make_tiny_data(n_per_class=40), attack, d, seed=0)
    train_run(d, get_preset("cpu", epochs=3, seed=0))
    return d


def make_smooth_data(n_per_class: int = 40, num_classes: int = 6, n_test: int = 8, seed: int = 0) -> ImageData:
    """Smooth images (a class colour and a random low-frequency shading, no pixel noise), so that a
    clean model's heatmaps are smooth and a texture trigger's are not."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(40, 215, size=(num_classes, 3))
    yy, xx = np.mgrid[0:32, 0:32] / 31.0

    def block(n):
        y = np.repeat(np.arange(num_classes), n)
        a, b = rng.uniform(-40, 40, size=(2, len(y), 1, 1))
        shade = a * (xx - 0.5) + b * (yy - 0.5)
        x = palette[y][:, None, None, :] + shade[..., None]
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    x_tr, y_tr = block(n_per_class)
    x_te, y_te = block(n_test)
    return ImageData(x_tr, y_tr, x_te, y_te, [f"c{i}" for i in range(num_classes)], np.arange(len(y_tr)) // 4)


@pytest.fixture(scope="session")
def blended_run(tmp_path_factory):
    """Class 5 holds 20 images of class 2 with Chen et al.'s noise blended in (alpha 0.2), relabelled;
    a SmallInception trained 6 epochs (augmented, as the preset) on smooth synthetic images. Seed 1:
    poison 4.9x rougher than the class's clean heatmaps (seeds 0-4 gave 2.1-4.9x, 3 epochs 1.4-2.3x),
    a wide margin over the test's ratio 2 for other CPUs' numerics."""
    from poisonsift.attacks import Blended
    from poisonsift.runs import poison_run, train_run
    from poisonsift.training import get_preset

    d = tmp_path_factory.mktemp("blend") / "run"
    poison_run(make_smooth_data(seed=1), Blended(p=0.33, source_class=2, target_class=5), d, seed=1)
    train_run(d, get_preset("cpu", epochs=6, seed=1))
    return d
