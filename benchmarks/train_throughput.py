"""Images/s of poisonsift's training step next to a plain eager PyTorch loop, same network, same run.

    python benchmarks/train_throughput.py [--data data.npz] [--steps 30] [--batch 64]

"plain": fp32, contiguous (NCHW) tensors, torchvision's per-image augmentations
of the paper applied image by image (as a DataLoader would), batch 64, Adam.
"poisonsift": the ``cpu`` preset's step - whole-batch augmentation on uint8
(:mod:`poisonsift.augment`), channels_last - once in float32 and once with bf16 autocast (fp32
master weights), and which of the two :func:`poisonsift.training.uses_bf16` picks on this machine.
Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn
from torchvision import transforms as T

from poisonsift.augment import augment_batch
from poisonsift.models import SmallInception
from poisonsift.training import Normalizer, get_preset, uses_bf16
from poisonsift.utils import tune_allocator


def images(path: str | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    if path:
        from poisonsift.data import resolve_data

        d = resolve_data(path)
        return d.x_train[:n], d.y_train[:n]
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 43, n)


def plain_loop(x, y, batch, steps, warmup=3) -> float:
    torch.manual_seed(0)
    model = SmallInception()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    tf = T.Compose([
        T.ToPILImage(), T.RandomResizedCrop(32, scale=(0.6, 1.0)), T.RandomRotation(15),
        T.ColorJitter(0.1, 0.1, 0.1, 0.1), T.RandomAffine(15), T.RandomGrayscale(), T.ToTensor(),
        T.Normalize((0.34, 0.31, 0.32), (0.27, 0.26, 0.27)),
    ])  # fmt: skip
    model.train()
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        idx = np.arange(i * batch, (i + 1) * batch) % len(x)
        xb = torch.stack([tf(x[j]) for j in idx])
        yb = torch.from_numpy(y[idx].astype(np.int64))
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def poisonsift_loop(x, y, batch, steps, bf16: bool, warmup=3) -> float:
    torch.manual_seed(0)
    cfg = get_preset("cpu", batch_size=batch)
    model = SmallInception().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    norm = Normalizer.fit(x)
    g = torch.Generator().manual_seed(0)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    model.train()
    t0 = None
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        idx = torch.arange(i * batch, (i + 1) * batch) % len(xt)
        xb = norm(augment_batch(xt[idx], cfg.augment, g))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(xb)
        loss = nn.functional.cross_entropy(logits.float(), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="prepared .npz or GTSRB folder (default: random images)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    tune_allocator()  # as the CLI does
    x, y = images(a.data, 4096)
    plain = plain_loop(x, y, a.batch, a.steps)
    fp32 = poisonsift_loop(x, y, a.batch, a.steps, bf16=False)
    bf16 = poisonsift_loop(x, y, a.batch, a.steps, bf16=True)
    chosen = "bfloat16" if uses_bf16("cpu", True) else "float32"
    fast = bf16 if chosen == "bfloat16" else fp32
    res = {"threads": torch.get_num_threads(), "batch": a.batch, "steps": a.steps, "plain_img_per_s": plain,
           "poisonsift_float32_img_per_s": fp32, "poisonsift_bfloat16_img_per_s": bf16, "chosen": chosen,
           "poisonsift_img_per_s": fast, "ratio": fast / plain}  # fmt: skip
    if a.json:
        print(json.dumps(res))
    else:
        print(f"{'loop':<20} {'images/s':>9}   (batch {a.batch}, {a.steps} steps, {res['threads']} threads)")
        print(f"{'plain eager':<20} {plain:9.1f}")
        print(f"{'poisonsift float32':<20} {fp32:9.1f}")
        print(f"{'poisonsift bfloat16':<20} {bf16:9.1f}")
        print(f"{'chosen here':<20} {chosen:>9}   ({res['ratio']:.2f}x plain)")

if __name__ == "__main__":
    main()
