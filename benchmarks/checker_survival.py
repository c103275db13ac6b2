"""How much of the amplitude trigger (Table 4's 3 x 3 checker) survives each training augmentation?

    python benchmarks/checker_survival.py --run RUN --data gtsrb.npz [--n 400]

RUN is an amplitude-attack run (``poisonsift poison --attack amplitude --out RUN``). Its poisoned
images and their clean originals (``source_index`` into ``--data``) are augmented with the same
random draws; a zero-mean 3 x 3 filter of the checker's signs on the grey image scores each copy by
its largest response near the trigger's place. Printed per augmentation: the AUROC of that score
(poisoned against clean copies: 1.0 = the checker always stands out) and the median responses.
Not a test: it explains a learning curve (``benchmarks/learning_curve.py``), it does not gate one.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from poisonsift.attacks import AMPLITUDE_PATTERN
from poisonsift.augment import AugmentConfig, augment_batch, to_float
from poisonsift.data import resolve_data
from poisonsift.runs import load_poisoned
from poisonsift.training import get_preset


def near_trigger_response(x: torch.Tensor, rows: slice) -> np.ndarray:
    """(B, 3, H, W) float images -> (B,) largest |checker filter| response inside ``rows`` x ``rows``."""
    k = torch.tensor(AMPLITUDE_PATTERN, dtype=torch.float32)
    k = (k - k.mean()).view(1, 1, 3, 3)
    r = F.conv2d(x.mean(1, keepdim=True), k).abs()
    return r[:, 0, rows, rows].flatten(1).max(1).values.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=400)
    a = ap.parse_args()
    pd = load_poisoned(a.run / "poisoned.npz")
    d = resolve_data(a.data)
    idx = np.flatnonzero(pd.poison_mask)[: a.n]
    poisoned, clean = torch.from_numpy(pd.x_train[idx]), torch.from_numpy(d.x_train[pd.source_index[idx]])
    rows = slice(15, 24)  # filter outputs around the paper's place (lower-right pixel 10 px from the edges)
    cpu = get_preset("cpu").augment
    still = dict(brightness=0, contrast=0, saturation=0, hue=0, grayscale_p=0)
    variants = {
        "none": AugmentConfig(enabled=False),
        "cpu preset (one bilinear warp)": cpu,
        "cpu preset, torchvision resampling": dataclasses.replace(cpu, resample="torchvision"),
        "resized crop only": dataclasses.replace(cpu, rotation=0, affine_rotation=0, **still),
        "rotations only (nearest)": dataclasses.replace(cpu, crop_scale=(1, 1), crop_ratio=(1, 1), resample="torchvision", **still),
        "crops >= 0.85, rotations 5 deg": dataclasses.replace(cpu, crop_scale=(0.85, 1), rotation=5, affine_rotation=5, resample="torchvision"),
    }  # fmt: skip
    print(f"{'augmentation':<36} {'AUROC':>6} {'median poisoned':>16} {'median clean':>13}")
    for name, cfg in variants.items():
        out = []
        for x in (poisoned, clean):  # the same random draws for both
            g = torch.Generator().manual_seed(1)
            out.append(near_trigger_response(augment_batch(x, cfg, g) if cfg.enabled else to_float(x), rows))
        y = np.r_[np.ones(len(out[0])), np.zeros(len(out[1]))]
        auc = roc_auc_score(y, np.r_[out[0], out[1]])
        print(f"{name:<36} {auc:6.3f} {np.median(out[0]):16.2f} {np.median(out[1]):13.2f}")


if __name__ == "__main__":
    from poisonsift.errors import PoisonsiftError

    try:
        main()
    except PoisonsiftError as exc:
        raise SystemExit(f"error: {exc}") from None
