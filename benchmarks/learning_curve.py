"""How fast does a model learn a run's backdoor? ASR (and MASR) after every epoch of a training.

    python benchmarks/learning_curve.py --run RUN [--epochs 4] [--lr 2e-3] [--schedule onecycle]
        [--augment '{"rotation": 5}' | --augment none] [--out curve.jsonl] [--save]

RUN is a poisoned run directory (``poisonsift poison --out RUN``). The model is trained with the
``cpu`` preset and the given changes (``--augment``: a JSON object of
:class:`poisonsift.augment.AugmentConfig` fields, or ``none`` for no augmentation); after each epoch
the triggered test images (full amplitude, as ``poisonsift evaluate``) and a quarter of the clean
test set are classified (in bfloat16 autocast where training uses it), and one JSON line per epoch is printed (and appended
to ``--out``). Not a test and not a cached run: it measures what a schedule or an augmentation
does to the learning of a trigger, e.g. the amplitude trigger of Table 4.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from poisonsift.attacks import LabelConsistent, attack_from_config
from poisonsift.metrics import attack_success_rate, clean_accuracy, mean_asr, per_class_asr
from poisonsift.models import build_model
from poisonsift.runs import load_poisoned, read_json, train_run
from poisonsift.training import Normalizer, get_preset, predict, split_by_group, train, uses_bf16
from poisonsift.utils import tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--schedule", default="onecycle", choices=["onecycle", "constant"])
    ap.add_argument("--augment", default=None, help="JSON object of AugmentConfig fields, or 'none'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--save", action="store_true",
                    help="keep the trained model as RUN/model.pt and train.json (as 'poisonsift train'), "
                         "so that 'evaluate', 'scan' and 'clean' can go on from it")
    a = ap.parse_args()
    tune_allocator()
    pd = load_poisoned(a.run / "poisoned.npz")
    acfg = read_json(a.run / "attack.json")
    attack = attack_from_config(acfg)
    x_trig, y_true = attack.asr_images(pd, seed=acfg.get("seed", 0))
    aug = {"enabled": False} if a.augment == "none" else json.loads(a.augment) if a.augment else None
    cfg = get_preset("cpu", epochs=a.epochs, lr=a.lr, schedule=a.schedule, patience=a.epochs + 1, seed=a.seed,
                     augment=aug)  # fmt: skip
    # train() fits its normaliser on its own training rows; the same split gives the same one here.
    tr_idx, _ = split_by_group(pd.group_train, cfg.val_fraction, cfg.seed)
    norm = Normalizer.fit(pd.x_train[tr_idx])
    model = build_model(cfg.arch, num_classes=len(pd.classes))
    quarter = np.arange(0, len(pd.x_test), 4)
    t0 = time.perf_counter()

    def on_epoch(rec: dict) -> None:
        model.eval()  # train() puts it back in training mode at the next epoch
        # as train() does: bfloat16 only where it pays (AVX2 hosts classify in float32)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_bf16("cpu", cfg.bf16)):
            pred = predict(model, x_trig, norm)
            acc = clean_accuracy(predict(model, pd.x_test[quarter], norm), pd.y_test[quarter])
        out = {**rec, "asr": attack_success_rate(pred, attack.target_class), "clean_accuracy_quarter": acc,
               "wall_seconds": time.perf_counter() - t0}  # fmt: skip
        if isinstance(attack, LabelConsistent):
            out["masr"] = mean_asr(per_class_asr(pred, y_true, attack.target_class))
        line = json.dumps({**out, "epochs": a.epochs, "lr": a.lr, "schedule": a.schedule, "augment": a.augment})
        print(line, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(line + "\n")

    if a.save:
        train_run(a.run, cfg, on_epoch=on_epoch, model=model)
    else:
        train(pd.x_train, pd.y_train, len(pd.classes), cfg, groups=pd.group_train, model=model, on_epoch=on_epoch)


if __name__ == "__main__":
    from poisonsift.errors import PoisonsiftError

    try:
        main()
    except PoisonsiftError as exc:
        raise SystemExit(f"error: {exc}") from None
