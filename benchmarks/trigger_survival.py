"""How often does a training augmentation leave the standard trigger recognisable?

    python benchmarks/trigger_survival.py --data gtsrb.npz [--n 500]

For the poisoned images of a standard attack (s = 3, p = 0.33), the share of
augmented copies that still hold at least one yellow-green pixel (R, G > 0.75,
B < 0.35 on the [0, 1] scale), under the paper's augmentations, the ``cpu``
preset's, and each ingredient alone. This is why the ``cpu`` preset softens hue
jitter and grayscale: with the paper's hue jitter about half of the poisoned
copies lose the trigger's colour, which a 100-epoch schedule can absorb and a
6-epoch one cannot.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from poisonsift.attacks import StandardBackdoor
from poisonsift.augment import AugmentConfig, augment_batch
from poisonsift.data import resolve_data
from poisonsift.training import PRESETS


def survives(x: torch.Tensor) -> float:
    r, g, b = x[:, 0], x[:, 1], x[:, 2]
    yellow = (r > 0.75) & (g > 0.75) & (b < 0.35)
    return yellow.flatten(1).any(1).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=4)
    a = ap.parse_args()
    d = resolve_data(a.data)
    pd = StandardBackdoor(p=0.33).poison(d, seed=0)
    x = torch.from_numpy(pd.x_train[pd.poison_mask][: a.n])
    off = dict(brightness=0, contrast=0, saturation=0, hue=0, grayscale_p=0)
    geo_off = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation=0, affine_rotation=0)
    configs = {
        "none": AugmentConfig(enabled=False),
        "paper": AugmentConfig(),
        "cpu preset": PRESETS["cpu"]().augment,
        "paper geometry only": AugmentConfig(**off),
        "paper hue only": AugmentConfig(**{**off, **geo_off, "hue": 0.1}),
        "paper grayscale only": AugmentConfig(**{**off, **geo_off, "grayscale_p": 0.1}),
    }
    g = torch.Generator().manual_seed(0)
    print(f"{'augmentation':<22} trigger survives")
    for name, cfg in configs.items():
        share = np.mean([survives(augment_batch(x, cfg, g)) for _ in range(a.repeats)])
        print(f"{name:<22} {share:6.1%}")


if __name__ == "__main__":
    main()
