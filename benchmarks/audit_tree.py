"""Write an ImageFolder tree made from GTSRB, optionally with a poisoned sub-folder, to measure
`poisonsift audit` on a real-size data set (docs/audit.md).

    python benchmarks/audit_tree.py --data $POISONSIFT_GTSRB --every 2 --out tree [--clean]
    poisonsift audit tree --out audit --preset demo --write-clean

One folder per class (``00005/``); with the attack (default: the paper's standard sticker,
2 -> 5, p = 33 % of the target class) the poisoned images go to ``00005/poisoned/`` (their label is
their folder's class), and ``tree-truth.txt`` beside the tree lists their paths, to compare with
``flagged.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from poisonsift.attacks import StandardBackdoor
from poisonsift.attacks.base import control
from poisonsift.data import resolve_data, thin_tracks
from poisonsift.utils import progress


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="GTSRB folder or prepared .npz")
    ap.add_argument("--every", type=int, default=2, help="one frame in N of each track")
    ap.add_argument("--p", type=float, default=0.33)
    ap.add_argument("--clean", action="store_true", help="no poisoned sub-folder")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"error: {out} exists; choose a new folder")
    data = thin_tracks(resolve_data(args.data), args.every)
    pd = control(data) if args.clean else StandardBackdoor(p=args.p).poison(data, seed=args.seed)
    truth = []
    for i in progress(iterable=range(len(pd.y_train)), desc="writing tree", unit="img"):
        sub = Path(f"{pd.y_train[i]:05d}") / ("poisoned" if pd.poison_mask[i] else "")
        rel = (sub / f"{i:06d}.png").as_posix()
        (out / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pd.x_train[i]).save(out / rel)
        if pd.poison_mask[i]:
            truth.append(rel)
    out.with_name(out.name + "-truth.txt").write_text("\n".join(truth) + ("\n" if truth else ""))
    print(f"{len(pd.y_train)} images in {len(np.unique(pd.y_train))} classes, {len(truth)} poisoned -> {out}")


if __name__ == "__main__":
    main()
