"""``poisonsift demo``: the whole pipeline on real GTSRB in one command."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from poisonsift.cli.commands import (DETECTION_HEADER, detect_spec, detection_row, emit, metrics_line,
                                     retrain_line)  # fmt: skip


def cmd_demo(args: argparse.Namespace) -> None:
    from poisonsift.attacks import StandardBackdoor
    from poisonsift.data import resolve_data, thin_tracks
    from poisonsift.report import write_scan_report
    from poisonsift.runs import clean_run, detect_run, evaluate_run, poison_run, retrain_cleaned, train_run
    from poisonsift.scan import SCAN_AC_REDUCE, scan_run
    from poisonsift.training import get_preset

    t0 = time.perf_counter()
    out = Path(args.out)
    say = (lambda *a: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    steps = 5 if args.no_scan else 8 if args.relabel else 7
    say(f"[1/{steps}] data")
    data = thin_tracks(resolve_data(args.data, allow_download=True), args.every)
    if args.every > 1:
        say(f"      one frame in {args.every} of each track: {len(data.y_train)} training images "
            f"(--every 1: all), {len(data.y_test)} test images")  # fmt: skip
    say(f"[2/{steps}] standard attack: 3x3 sticker, speed limit 50 -> 80, p = {args.p}")
    attack = StandardBackdoor(p=args.p)
    s = poison_run(data, attack, out, seed=args.seed)
    say(f"      {s['n_poisoned']} poisoned images ({s['poison_share']:.1%} of the target class)")
    say(f"[3/{steps}] training {args.arch} ({args.epochs} epochs, demo preset: the cpu preset without augmentation)")
    t = train_run(out, get_preset("demo", epochs=args.epochs, seed=args.seed, arch=args.arch))
    say(f"[4/{steps}] evaluating")
    m = evaluate_run(out, precision="auto")  # both evaluations (retrain_cleaned takes this one's)
    say(f"      {metrics_line(m)}")
    scope = "the whole class" if args.hc_subset is None else f"a random subset of {args.hc_subset}"
    hc_spec = detect_spec(args, "hc", subset=args.hc_subset)
    sc = None
    if not args.no_scan:  # first, so that the detection below reads the target class's heatmaps from it
        say(f"[5/{steps}] scan: HC on every class, no class given")
        sc = scan_run(out, detect_spec(args, "hc", ac_reduce=SCAN_AC_REDUCE))  # as `poisonsift scan`
        report = write_scan_report(out)
    say(f"[{6 if sc else 5}/{steps}] detection on the target class: AC, and HC (fast engine, "
        f"{hc_spec.for_arch(args.arch).lrp_rule} LRP rule in {hc_spec.lrp_precision}) on {scope}")  # fmt: skip
    dets = [detect_run(out, detect_spec(args, "ac", rule=None)), detect_run(out, hc_spec)]
    obj = {**m, "n_poisoned": s["n_poisoned"], "train_seconds": t["seconds"], "detection": dets}
    lines = [metrics_line(m), DETECTION_HEADER, *(detection_row(d) for d in dets)]
    if sc is not None:
        top = sc["classes"][0]
        lines.append(f"scan: top class {top['class']} (evidence {top['evidence']:.2f}), suspicious classes "
                     f"{sc['suspicious_classes'] or 'none'}, {sc['n_flagged']} images flagged (TPR {sc['tpr']:.4f}, "
                     f"TNR {sc['tnr']:.4f}); report {report['html']}")  # fmt: skip
        say(f"[7/{steps}] clean: remove the {sc['n_flagged']} flagged images, retrain ({args.epochs} epochs)")
        cleaned = out.with_name(out.name + "-clean")
        rec = clean_run(out, cleaned, "scan")
        r = retrain_cleaned(out, cleaned)
        # what is left matters to read the ASR after: with no poisoned image left, what remains is
        # the sticker read by a model that never saw it (README: the floor), not a backdoor
        lines.append(f"removed {rec['removed']} images ({rec['removed_poisoned']} poisoned; {rec['poisoned_left']} "
                     f"poisoned left) -> {cleaned}")  # fmt: skip
        lines.append(retrain_line(r))
        obj["scan"] = {k: sc[k] for k in ("suspicious_classes", "n_flagged", "tpr", "tnr", "seconds")}
        obj["scan"]["top_class"] = top["class"]
        obj["clean"] = {**{k: v for k, v in rec.items() if k != "removed_rows"}, **r}
        if args.relabel:
            say(f"[8/8] relabel: flagged images the cleaned model puts in another class keep its label, the "
                f"others are removed; retrain ({args.epochs} epochs)")  # fmt: skip
            relabelled = out.with_name(out.name + "-relabel")
            rel = clean_run(out, relabelled, "scan", relabel_from=cleaned)
            r2 = retrain_cleaned(out, relabelled)
            to = ", ".join(f"{k}: {v}" for k, v in rel["relabelled_to"].items()) or "none"
            lines.append(f"relabelled {rel['relabelled']} images ({rel['relabelled_poisoned']} poisoned; to {to}), "
                         f"removed {rel['removed']} -> {relabelled}")  # fmt: skip
            lines.append(retrain_line(r2))
            obj["relabel"] = {**{k: v for k, v in rel.items() if k not in ("removed_rows", "relabelled_rows")}, **r2}
    obj.update(seconds=time.perf_counter() - t0, out=str(out))
    lines.append(f"({obj['seconds']:.0f} s in all; artefacts in {out})")
    emit(args, obj, "\n".join(lines))
