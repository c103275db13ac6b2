"""One row of the attacks measurements (docs/attacks.md): attack -> train -> scan -> clean -> retrain,
and the floor (the same test trigger read by a model trained on the unpoisoned data).

    python benchmarks/attack_rows.py --data GTSRB --every 2 --preset demo \\
        --attack '{"attack": "blended", "p": 0.15, "source_class": 1, "target_class": 38}' --out runs/blend-38

``--attack`` is an ``attack.json`` config (``poisonsift poison`` writes one; ``attack_from_config``
reads it). Each step is skipped where its artefact is already in ``--out`` (resumable). Prints one
JSON object: clean accuracy and ASR, the scan's suspicious classes, the attacked class's rank, the
evidence and the class test that called it, whole-set TPR / TNR, ASR after ``clean --retrain`` and
the floor.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

from poisonsift.attacks import attack_from_config
from poisonsift.data import resolve_data, thin_tracks
from poisonsift.runs import clean_run, evaluate_run, poison_run, retrain_cleaned, train_run
from poisonsift.scan import scan_run
from poisonsift.training import get_preset


def trained(run: Path, data, attack, seed: int, preset) -> dict:
    """Poison, train and evaluate ``run`` unless its model is already there."""
    if not (run / "model.pt").is_file():
        poison_run(data, attack, run, seed=seed)
        train_run(run, preset)
    return evaluate_run(run, precision="auto")


def floor_from(run: Path, data, attack, seed: int, model_run: Path) -> dict:
    """The floor run with ``model_run``'s unpoisoned model instead of a new training: allowed only
    when both runs' training sets are the same images and labels (the floor attack poisons nothing)."""
    if not (run / "model.pt").is_file():
        poison_run(data, attack, run, seed=seed)
        a, b = (np.load(r / "poisoned.npz") for r in (run, model_run))
        if not (np.array_equal(a["x_train"], b["x_train"]) and np.array_equal(a["y_train"], b["y_train"])):
            raise SystemExit(f"{model_run} was trained on other data than this floor run; drop --floor-model")
        for f in ("model.pt", "train.json"):
            shutil.copyfile(model_run / f, run / f)
    return evaluate_run(run, precision="auto")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="GTSRB folder or prepared .npz")
    ap.add_argument("--every", type=int, default=2, help="one frame in N of each track (the demo's 2)")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--arch", default=None, help="network (poisonsift.models.ARCHS or torchvision:NAME); the preset's by default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attack", required=True, help="attack config as JSON (attack.json's keys)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-floor", action="store_true", help="skip the unpoisoned model")
    ap.add_argument("--floor-model", help="a run folder whose model was trained on the unpoisoned data with the same "
                    "preset and seed (another row's floor/): reused instead of training the floor again")
    args = ap.parse_args()

    attack = attack_from_config(json.loads(args.attack))  # checked before the data is read
    preset = get_preset(args.preset, epochs=args.epochs, seed=args.seed, arch=args.arch)
    data = thin_tracks(resolve_data(args.data), args.every)
    out = Path(args.out)
    run = out / "run"
    m = trained(run, data, attack, args.seed, preset)
    sc = scan_run(run, "hc")
    target = attack.target_class
    order = [c["class"] for c in sc["classes"]]
    entry = sc["classes"][order.index(target)]
    row = {"attack": attack.config(), "clean_accuracy": m["clean_accuracy"], "asr": m["asr"],
           "suspicious_classes": sc["suspicious_classes"], "target_rank": order.index(target) + 1,
           "target_evidence": entry["evidence"], "target_class_test_by": entry["class_test_by"],
           "n_flagged": sc["n_flagged"], "tpr": sc.get("tpr"), "tnr": sc.get("tnr")}  # fmt: skip
    cleaned = out / "clean"
    if not (cleaned / "model.pt").is_file():
        clean_run(run, cleaned, "scan")
    row["retrain"] = retrain_cleaned(run, cleaned) if not (cleaned / "metrics.json").is_file() else {
        "asr_after": evaluate_run(cleaned, precision=m.get("precision", "float32"))["asr"]}
    if not args.no_floor:
        cfg = attack.config()
        # nothing poisoned, no covers either: the floor model sees the clean training set
        floor = attack_from_config({**cfg, "p": 0.0, **({"cover_rate": 0.0} if "cover_rate" in cfg else {})})
        if args.floor_model:
            row["floor_asr"] = floor_from(out / "floor", data, floor, args.seed, Path(args.floor_model))["asr"]
        else:
            row["floor_asr"] = trained(out / "floor", data, floor, args.seed, preset)["asr"]
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
