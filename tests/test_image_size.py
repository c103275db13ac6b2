"""Any image size: a 64 x 64 ImageFolder tree prepared, poisoned, trained and scanned; triggers and
HC's heatmap grid scale with the image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from poisonsift.attacks import AmplitudeTrigger, StandardBackdoor, StickerTrigger
from poisonsift.cli import main
from poisonsift.data import load_npz
from poisonsift.explain import pool_heatmaps
from poisonsift.runs import poison_run, train_run
from poisonsift.scan import scan_run
from poisonsift.training import get_preset


def _image_folder(root, size=64, n=40, classes=4, seed=0):
    """ROOT/<class>/*.png noise images whose mean colour encodes the class."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 225, size=(classes, 3))
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(n):
            img = np.clip(palette[c] + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def test_triggers_scale_with_the_image():
    t = StickerTrigger(size=3)
    assert t.placement() == (3, (11, 20), (8, 22))  # the paper's, at 32 x 32
    s, rows, cols = t.placement(64, 64)
    assert s == 6 and rows == (22, 41) and cols == (16, 45)
    x = np.zeros((50, 64, 64, 3), dtype=np.uint8)
    out = t.apply(x, np.random.default_rng(0))
    hit = (out == np.array(t.color, dtype=np.uint8)).all(-1)
    assert (hit.sum((1, 2)) == 36).all()  # one 6 x 6 sticker each
    r, c = np.nonzero(hit.any(0))
    assert r.min() >= 22 and r.max() <= 41 and c.min() >= 16 and c.max() <= 45
    amp = AmplitudeTrigger(amp=40).apply(np.full((1, 64, 64, 3), 128, np.uint8))
    changed = np.argwhere((amp[0] != 128).any(-1))
    assert len(changed) == 36 and changed.max(0).tolist() == [43, 43]  # 3 x 3 cells of 2 x 2, corner (21, 21) -> (43, 43)


def test_pool_heatmaps_keeps_relevance_and_grid():
    rng = np.random.default_rng(0)
    h = rng.normal(size=(3, 64, 64)).astype(np.float32)
    p = pool_heatmaps(h, 32)
    assert p.shape == (3, 32, 32)
    np.testing.assert_allclose(p.sum((1, 2)), h.sum((1, 2)), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(p[:, 0, 0], h[:, :2, :2].sum((1, 2)), rtol=1e-5, atol=1e-5)
    small = rng.normal(size=(2, 32, 32)).astype(np.float32)
    assert pool_heatmaps(small, 32) is not None and np.array_equal(pool_heatmaps(small, 32), small)


@pytest.mark.parametrize("arch", ["resnet20"])
def test_a_64px_image_folder_is_prepared_poisoned_trained_and_scanned(tmp_path, capsys, arch):
    src = _image_folder(tmp_path / "tree")
    assert main(["data", "prepare", "--source", str(src), "--out", str(tmp_path / "d.npz"), "--size", "64", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_train"] == 120
    data = load_npz(tmp_path / "d.npz")
    assert data.x_train.shape[1:] == (64, 64, 3) and data.x_test.shape[1:] == (64, 64, 3)
    run = tmp_path / "run"
    attack = StandardBackdoor(p=0.33, source_class=1, target_class=2, trigger=StickerTrigger(size=5))
    poison_run(data, attack, run, seed=0)
    train_run(run, get_preset("cpu", epochs=1, seed=0, arch=arch))
    s = scan_run(run, "hc")
    assert len(s["classes"]) == 4 and s["classes"][0]["class"] == 2  # the attacked class has the most evidence
    assert json.loads((run / "train.json").read_text())["config"]["arch"] == arch
