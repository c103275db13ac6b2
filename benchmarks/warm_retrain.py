"""Does a short fine-tuning of the poisoned model on the cleaned data remove the backdoor as a
retraining from scratch does? With its control: the same fine-tuning on the uncleaned data.

    python benchmarks/warm_retrain.py --run RUN --clean CLEAN [--steps 150 300] [--lr 1e-3]
        [--out warm.jsonl]

RUN is a trained poisoned run (``poisonsift train``), CLEAN the run that ``poisonsift clean --run RUN
--out CLEAN`` wrote. For each step count the poisoned model is fine-tuned twice with RUN's preset
(its augmentation, batch and seed; a one-cycle schedule peaking at ``--lr`` over those steps): once
on CLEAN's training set and once on RUN's own (the control: if fine-tuning alone lowered the ASR, a
warm-started retraining would say nothing about the cleaning). Prints one JSON line per training
with clean accuracy, ASR (the attack's test trigger, as ``poisonsift evaluate``) and seconds.
Each fine-tuned model is scored with the normaliser it was fine-tuned with (its data's). Not a test and not a cached run: it measures whether the
demo's retraining could start warm (issue 34), which saves most of its second training.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from poisonsift.attacks import attack_from_config
from poisonsift.metrics import attack_success_rate, clean_accuracy
from poisonsift.runs import load_poisoned, read_json
from poisonsift.training import TrainConfig, load_checkpoint, predict, train, uses_bf16
from poisonsift.utils import tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--clean", required=True, type=Path)
    ap.add_argument("--steps", type=int, nargs="+", default=[150, 300])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    tune_allocator()
    poisoned, cleaned = load_poisoned(a.run / "poisoned.npz"), load_poisoned(a.clean / "poisoned.npz")
    acfg = read_json(a.run / "attack.json")
    attack = attack_from_config(acfg)
    x_trig, _ = attack.asr_images(poisoned, seed=acfg.get("seed", 0))
    base = TrainConfig(**read_json(a.run / "train.json")["config"])
    model0, norm = load_checkpoint(a.run / "model.pt")

    def score(model, norm) -> dict[str, float]:
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=uses_bf16("cpu", base.bf16)):
            asr = attack_success_rate(predict(model, x_trig, norm), attack.target_class)
            acc = clean_accuracy(predict(model, poisoned.x_test, norm), poisoned.y_test)
        return {"clean_accuracy": acc, "asr": asr}

    print(json.dumps({"model": "poisoned", **score(model0, norm)}), flush=True)
    for steps in a.steps:
        for name, pd in (("cleaned", cleaned), ("control: uncleaned", poisoned)):
            cfg = dataclasses.replace(base, lr=a.lr, schedule="onecycle", max_steps=steps, patience=10**6)
            model = copy.deepcopy(model0)
            t0 = time.perf_counter()
            res = train(pd.x_train, pd.y_train, len(pd.classes), cfg, groups=pd.group_train, model=model)
            # train() fits (and fine-tunes with) a normaliser of its own data: scored with that one
            rec = {"model": f"fine-tuned on {name}", "steps": steps, "lr": a.lr,
                   "seconds": time.perf_counter() - t0, **score(res.model, res.normalizer)}  # fmt: skip
            line = json.dumps(rec)
            print(line, flush=True)
            if a.out:
                with open(a.out, "a") as f:
                    f.write(line + "\n")


if __name__ == "__main__":
    from poisonsift.errors import PoisonsiftError

    try:
        main()
    except PoisonsiftError as exc:
        raise SystemExit(f"error: {exc}") from None
