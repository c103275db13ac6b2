"""The ``poisonsift`` command line.

Every command prints a short human summary; with ``--json`` it prints exactly
one JSON object on stdout instead (progress bars go to stderr). Rates are
fractions in [0, 1]. Bad input ends with one ``error: ...`` line and exit
status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from poisonsift.errors import ConfigError, PoisonsiftError
from poisonsift.utils import tune_allocator

__all__ = ["main", "build_parser"]


def _emit(args: argparse.Namespace, obj: dict[str, Any], human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj))
    else:
        print(human)


def _color(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--color must be three integers like 245,255,0, got {text!r}") from None
    if len(parts) != 3:
        raise ConfigError(f"--color must be three integers like 245,255,0, got {text!r}")
    return parts  # type: ignore[return-value]


# --------------------------------------------------------------------------- commands


def cmd_data_prepare(args: argparse.Namespace) -> None:
    from poisonsift.data import prepare

    t = time.perf_counter()
    d = prepare(args.source, args.out, roi_crop=args.roi_crop, size=args.size)
    obj = {
        "out": str(args.out),
        "n_train": int(len(d.y_train)),
        "n_test": int(len(d.y_test)),
        "num_classes": d.num_classes,
        "seconds": time.perf_counter() - t,
    }
    _emit(args, obj, f"wrote {args.out}: {obj['n_train']} train / {obj['n_test']} test images, "
          f"{d.num_classes} classes ({obj['seconds']:.1f} s)")  # fmt: skip


def build_attack(args: argparse.Namespace, data=None, device=None):
    """The attack object described by ``poison``'s flags."""
    from poisonsift.attacks import AmplitudeTrigger, LabelConsistent, PGDConfig, StandardBackdoor, StickerTrigger
    from poisonsift.runs import surrogate_provider
    from poisonsift.training import get_preset

    if args.attack == "amplitude":
        trigger = AmplitudeTrigger(amp=args.amp, size=args.size)
    else:
        trigger = StickerTrigger(size=args.size, color=_color(args.color))
    if args.attack == "standard":
        return StandardBackdoor(p=args.p, source_class=args.source_class, target_class=args.target_class, trigger=trigger)
    pgd = PGDConfig(eps=args.eps, norm=args.norm)
    surrogate = None
    if data is not None:
        if args.surrogate:
            from functools import partial

            from poisonsift.training import load_checkpoint

            surrogate = partial(load_checkpoint, args.surrogate, device)
        else:
            cfg = get_preset(args.surrogate_preset, epochs=args.surrogate_epochs, seed=args.seed)
            surrogate = surrogate_provider(data, cfg, device)
    return LabelConsistent(
        p=args.p, target_class=args.target_class, trigger=trigger, pgd=pgd, surrogate=surrogate,
        device=str(device or "cpu"),
    )  # fmt: skip


def cmd_poison(args: argparse.Namespace) -> None:
    from poisonsift.data import resolve_data
    from poisonsift.runs import poison_run
    from poisonsift.utils import default_device

    data = resolve_data(args.data)
    attack = build_attack(args, data, default_device())
    s = poison_run(data, attack, args.out, seed=args.seed)
    _emit(args, {**s, "out": str(args.out)},
          f"{args.attack}: {s['n_poisoned']} poisoned images, {s['poison_share']:.1%} of target class "
          f"{attack.target_class} ({s['target_class_size']} images) -> {Path(args.out) / 'poisoned.npz'}"
          + ("; a control run: train and evaluate it for the floor ASR" if s["n_poisoned"] == 0 else ""))  # fmt: skip


def cmd_train(args: argparse.Namespace) -> None:
    from poisonsift.runs import train_run
    from poisonsift.training import get_preset

    cfg = get_preset(args.preset, epochs=args.epochs, seed=args.seed, arch=args.arch)
    s = train_run(args.run, cfg)
    obj = {k: v for k, v in s.items() if k not in ("history", "config")}
    _emit(args, obj, f"trained {s['epochs_run']} epochs in {s['seconds']:.0f} s on {s['device']} "
          f"(best epoch {s['best_epoch']}, val acc {s['val_acc']:.3f}) -> {Path(args.run) / 'model.pt'}")  # fmt: skip


def _metrics_line(m: dict[str, Any]) -> str:
    line = f"clean accuracy {m['clean_accuracy']:.4f}  ASR {m['asr']:.4f}"
    if "masr" in m:
        line += f"  MASR {m['masr']:.4f}"
    return line


def cmd_evaluate(args: argparse.Namespace) -> None:
    from poisonsift.runs import evaluate_run

    m = evaluate_run(args.run, precision=args.precision)
    _emit(args, m, _metrics_line(m))


def _class_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--class must be a class index or 'auto', got {text!r}") from None


def _whole_number_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value

    return parse


_nonnegative_int = _whole_number_at_least(0)
_positive_int = _whole_number_at_least(1)


def _focus_ratio(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value == 0:
        return None
    if not value > 1:
        raise argparse.ArgumentTypeError(f"--focus-ratio must be > 1 (or 0: off), got {text!r}")
    return value


def _tables_arg(text: str) -> list[str]:
    from poisonsift.experiments import TABLES

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in (*TABLES, "all")]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown table {', '.join(bad) or text!r}; choose from {', '.join(TABLES)} or all")
    return names


def _shares_arg(text: str) -> list[float]:
    try:
        ps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        ps = []
    if not ps or not all(0.0 < p < 1.0 for p in ps):
        raise argparse.ArgumentTypeError(f"expected poison shares in (0, 1) joined by commas (e.g. 0.05,0.02), got {text!r}")
    return ps


def _detection_row(d: dict[str, Any]) -> str:
    return (f"{d['method']:<9} {d['n']:>6} {d['n_poisoned_true']:>6} {d['n_flagged']:>6} "
            f"{d['acc']:>6.4f} {d['tpr']:>6.4f} {d['tnr']:>6.4f} {d['auroc']:>6.4f} {sum(d['seconds'].values()):>8.1f}")


DETECTION_HEADER = f"{'method':<9} {'n':>6} {'poison':>6} {'flagged':>6} {'ACC':>6} {'TPR':>6} {'TNR':>6} {'AUROC':>6} {'seconds':>8}"


def detect_spec(args: argparse.Namespace, method: str | None = None, **over: Any):
    """The :class:`~poisonsift.defences.DetectSpec` of ``detect``'s flags (built once, here)."""
    from poisonsift.defences import ClusterRule, DetectSpec
    from poisonsift.utils import resolve_precision

    decision = ClusterRule(min_separation=args.min_separation, tail_z=args.tail_z)
    precision = resolve_precision(args.lrp_precision)  # so the detection and its cache key name a real one
    fields = dict(method=method or args.method, layer=getattr(args, "layer", None),
                  engine=getattr(args, "engine", "fast"), subset=getattr(args, "subset", None), rule=args.rule,
                  seed=args.seed, warm_start=getattr(args, "warm_start", True),
                  view_samples=getattr(args, "view_samples", 300), lrp_precision=precision,
                  lrp_rule=args.lrp_rule, decision=decision, grid=args.grid,
                  one_sided=not args.two_sided, sample_score=getattr(args, "sample_score", None),
                  ac_reduce=getattr(args, "ac_reduce", "pca-whiten"), focus_ratio=getattr(args, "focus_ratio", 2.0))  # fmt: skip
    fields.update(over)
    return DetectSpec(**fields)


def _scan_top_class(run: str, spec) -> tuple[int, list[dict[str, Any]]]:
    """``--class auto``: the top class of the run's scan (``scan.json`` of the same method if
    there is one, else a new scan with the detection's options)."""
    import dataclasses

    from poisonsift.defences import HC_DEFAULT_RULE, MIXTURE_RULES
    from poisonsift.scan import SCAN_AC_REDUCE, SCAN_METHODS, scan_run

    method = spec.method if spec.method in SCAN_METHODS else "hc"
    path = Path(run) / "scan.json"
    scan = json.loads(path.read_text()) if path.is_file() else None
    if scan is None or scan.get("method") != method:
        rule = spec.rule if spec.rule in MIXTURE_RULES else HC_DEFAULT_RULE
        scan = scan_run(run, dataclasses.replace(spec, method=method, subset=None, rule=rule, ac_reduce=SCAN_AC_REDUCE))
    return int(scan["classes"][0]["class"]), scan["classes"]


def cmd_detect(args: argparse.Namespace) -> None:
    from poisonsift.runs import detect_run

    spec = detect_spec(args)
    cls, ranking = args.cls, None
    if cls == "auto":
        cls, ranking = _scan_top_class(args.run, spec)
    d = detect_run(args.run, spec, cls=cls)
    human = f"class {d['class']} ({d['n']} images)\n{DETECTION_HEADER}\n{_detection_row(d)}"
    if ranking is not None:
        d["ranking"] = ranking
        top = ", ".join(f"{r['class']} ({r['evidence']:.2f})" for r in ranking[:5])
        human = f"most suspicious classes (scan evidence): {top}\n" + human
    _emit(args, d, human)


def cmd_clean(args: argparse.Namespace) -> None:
    from poisonsift.runs import clean_run, retrain_cleaned

    rec = clean_run(args.run, args.out, args.source, relabel_from=args.relabel_from)
    obj = {k: v for k, v in rec.items() if k not in ("removed_rows", "relabelled_rows")}
    relabelled = (f"relabelled {rec['relabelled']} ({rec['relabelled_poisoned']} poisoned; to "
                  f"{', '.join(f'{k}: {v}' for k, v in rec['relabelled_to'].items()) or 'none'}), "
                  if args.relabel_from else "")  # fmt: skip
    human = (f"removed {rec['removed']} images ({rec['removed_poisoned']} poisoned), {relabelled}{rec['poisoned_left']} "
             f"poisoned left -> {Path(args.out) / 'poisoned.npz'}")  # fmt: skip
    if args.retrain:
        r = retrain_cleaned(args.run, args.out)
        obj.update(r)
        human += "\n" + _retrain_line(r)
    _emit(args, obj, human)


def _retrain_line(r: dict[str, Any]) -> str:
    return (f"retrained ({r['epochs']} epochs, seed {r['seed']}): clean accuracy {r['clean_accuracy_before']:.4f} -> "
            f"{r['clean_accuracy_after']:.4f}, ASR {r['asr_before']:.4f} -> {r['asr_after']:.4f}")  # fmt: skip


def cmd_scan(args: argparse.Namespace) -> None:
    from poisonsift.scan import scan_run

    s = scan_run(args.run, detect_spec(args, args.method), executor=args.executor, jobs=args.jobs,
                 ray_address=args.ray_address, outlier_z=args.outlier_z)  # fmt: skip
    lines = [f"{'class':>5} {'n':>6} {'flagged':>7} {'evidence':>8} {'outlier z':>9}  suspicious"]
    lines += [f"{e['class']:>5} {e['n']:>6} {e['n_flagged']:>7} {e['evidence']:>8.3f} {e['outlier_z']:>9.1f}  "
              f"{'yes' if e['suspicious'] else ''}"
              for e in s["classes"][:10]]  # fmt: skip
    lines.append(f"suspicious classes: {s['suspicious_classes'] or 'none'}; {s['n_flagged']} images flagged"
                 + (f" (TPR {s['tpr']:.4f}, TNR {s['tnr']:.4f} against the run's ground truth)" if "tpr" in s else "")
                 + f"; {s['seconds']['total']:.0f} s -> {Path(args.run) / 'scan.json'} "
                 f"(pictures: poisonsift report {args.run})")  # fmt: skip
    _emit(args, s, "\n".join(lines))


def cmd_demo(args: argparse.Namespace) -> None:
    from poisonsift.attacks import StandardBackdoor
    from poisonsift.data import resolve_data, thin_tracks
    from poisonsift.report import write_scan_report
    from poisonsift.runs import clean_run, detect_run, evaluate_run, poison_run, retrain_cleaned, train_run
    from poisonsift.scan import scan_run
    from poisonsift.training import get_preset

    t0 = time.perf_counter()
    out = Path(args.out)
    say = (lambda *a: None) if args.json else (lambda msg: print(msg, file=sys.stderr))
    steps = 5 if args.no_scan else 7
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
    say(f"      {_metrics_line(m)}")
    scope = "the whole class" if args.hc_subset is None else f"a random subset of {args.hc_subset}"
    hc_spec = detect_spec(args, "hc", subset=args.hc_subset)
    sc = None
    if not args.no_scan:  # first, so that the detection below reads the target class's heatmaps from it
        say("[5/7] scan: HC on every class, no class given")
        sc = scan_run(out, detect_spec(args, "hc"))
        report = write_scan_report(out)
    say(f"[{steps - 1 if sc else steps}/{steps}] detection on the target class: AC, and HC (fast engine, "
        f"{hc_spec.lrp_rule} LRP rule in {hc_spec.lrp_precision}) on {scope}")  # fmt: skip
    dets = [detect_run(out, detect_spec(args, "ac", rule=None)), detect_run(out, hc_spec)]
    obj = {**m, "n_poisoned": s["n_poisoned"], "train_seconds": t["seconds"], "detection": dets}
    lines = [_metrics_line(m), DETECTION_HEADER, *(_detection_row(d) for d in dets)]
    if sc is not None:
        top = sc["classes"][0]
        lines.append(f"scan: top class {top['class']} (evidence {top['evidence']:.2f}), suspicious classes "
                     f"{sc['suspicious_classes'] or 'none'}, {sc['n_flagged']} images flagged (TPR {sc['tpr']:.4f}, "
                     f"TNR {sc['tnr']:.4f}); report {report['html']}")  # fmt: skip
        say(f"[7/7] clean: remove the {sc['n_flagged']} flagged images, retrain ({args.epochs} epochs)")
        cleaned = out.with_name(out.name + "-clean")
        rec = clean_run(out, cleaned, "scan")
        r = retrain_cleaned(out, cleaned)
        # what is left matters to read the ASR after: with no poisoned image left, what remains is
        # the sticker read by a model that never saw it (README: the floor), not a backdoor
        lines.append(f"removed {rec['removed']} images ({rec['removed_poisoned']} poisoned; {rec['poisoned_left']} "
                     f"poisoned left) -> {cleaned}")  # fmt: skip
        lines.append(_retrain_line(r))
        obj["scan"] = {k: sc[k] for k in ("suspicious_classes", "n_flagged", "tpr", "tnr", "seconds")}
        obj["scan"]["top_class"] = top["class"]
        obj["clean"] = {**{k: v for k, v in rec.items() if k != "removed_rows"}, **r}
    obj.update(seconds=time.perf_counter() - t0, out=str(out))
    lines.append(f"({obj['seconds']:.0f} s in all; artefacts in {out})")
    _emit(args, obj, "\n".join(lines))


def cmd_reproduce(args: argparse.Namespace) -> None:
    from poisonsift.experiments import reproduce
    from poisonsift.report import table_markdown

    res = reproduce(
        args.table, data=args.data, preset=args.preset, repeats=args.repeats, out=args.out, cache=args.cache,
        executor=args.executor, ray_address=args.ray_address, jobs=args.jobs, force=args.force, threads=args.threads,
        train={k: v for k, v in (("epochs", args.epochs), ("arch", args.arch)) if v and v != "small-inception"} or None,
        ps=args.p,
    )  # fmt: skip
    lines = [f"Table {t['name']}: {t['title']}\n{table_markdown(t)}\n" for t in res["tables"].values()]
    c = res["computed"]
    lines.append(f"{res['seconds']:.0f} s; computed {c['runs']} runs and {c['detections']} detections of {c['units']} units; "
                 f"report: {Path(args.out) / 'report.html'}")  # fmt: skip
    _emit(args, res, "\n".join(lines))


def cmd_report(args: argparse.Namespace) -> None:
    from poisonsift.report import write_report, write_scan_report

    d = Path(args.dir)
    paths = write_scan_report(d) if (d / "scan.json").is_file() and not (d / "results.json").is_file() else write_report(d)
    _emit(args, {k: str(v) for k, v in paths.items()}, f"wrote {paths['html']} and {paths['md']}")


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="poisonsift", description="Find backdoor-poisoned samples in image training sets.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add_json(sp):
        sp.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of text")

    def add_arch(sp):
        from poisonsift.models import ARCHS, DEFAULT_ARCH, check_arch

        def arch(v: str) -> str:
            try:
                return check_arch(v)
            except ConfigError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None

        sp.add_argument("--arch", type=arch, default=DEFAULT_ARCH,
                        help=f"network: {', '.join(ARCHS)} or torchvision:<name> (any torchvision classifier, "
                             f"e.g. torchvision:resnet18); default {DEFAULT_ARCH}, the paper's")  # fmt: skip

    def add_hc_options(sp, ac_reduce: str = "pca-whiten", lrp_precision: str = "float32"):
        """The options shared by detect, scan and demo: LRP rule and precision (``lrp_precision``: its
        default here; ``auto`` offered where it is the default), the decision rule, AC's reduction
        (``ac_reduce``: its default here)."""
        from poisonsift.defences import AC_REDUCTIONS, HC_DEFAULT_RULE, RULES, SAMPLE_SCORES
        from poisonsift.explain import LRP_PRECISIONS, LRP_RULES

        why = {"pca-whiten": "the default for a class known to be attacked: 2-means then follows the bimodal "
                             "direction, not the largest-variance one",
               "pca": "the default of scan: whitened, the class test also finds two modes in clean classes"}
        sp.add_argument("--ac-reduce", default=ac_reduce, choices=AC_REDUCTIONS,
                        help=f"ac, ac-hc: PCA(10) components whitened (pca-whiten) or not (pca, the paper's); "
                             f"default {ac_reduce}, {why[ac_reduce]}")  # fmt: skip

        sp.add_argument("--lrp-rule", default="paper", choices=LRP_RULES,
                        help="hc: LRP rule: paper (the paper's epsilon rule with exponent 2, BatchNorm passed; "
                             "default) or epsilon-gamma-box (zennit's composite, BatchNorm folded)")
        auto = " or auto (bfloat16 where it pays: a CPU with AMX, a GPU with bfloat16)" if lrp_precision == "auto" else ""
        sp.add_argument("--lrp-precision", default=lrp_precision,
                        choices=[*LRP_PRECISIONS, "auto"] if lrp_precision == "auto" else LRP_PRECISIONS,
                        help=f"hc: LRP products in float32 or bfloat16{auto}; default {lrp_precision}. bfloat16 "
                             "runs the rules' extra convolutions in bfloat16 (the network's pass and the "
                             "denominators stay float32): paper rule 1.65x faster on a Xeon with AMX, heatmaps "
                             "within 1.3%% of their peak (median 0.34%%), the same HC decisions")  # fmt: skip
        sp.add_argument("--rule", default=None, choices=RULES,
                        help=f"decision on the split (default: {HC_DEFAULT_RULE} for hc and ac-hc, smaller - the "
                             "paper's - for the others); mixture and mixture-tail can call a class clean")
        sp.add_argument("--min-separation", type=float, default=2.0,
                        help="mixture rules: the least Ashman's D between the two modes for a suspicious class")
        sp.add_argument("--tail-z", type=float, default=3.09,
                        help="mixture-tail: flag beyond this many clean standard deviations (3.09: 0.1%% of a "
                             "Gaussian clean class)")
        sp.add_argument("--two-sided", action="store_true",
                        help="hc, mixture rules: accept a poisoned mode whose heatmaps are the more diffuse ones too "
                             "(default: only the more concentrated mode, as a trigger's relevance is)")
        sp.add_argument("--grid", type=int, default=32,
                        help="hc: heatmaps larger than GRID x GRID are summed onto that raster before their point "
                             "clouds (default 32: GTSRB's maps as they are)")
        sp.add_argument("--sample-score", default=None, choices=SAMPLE_SCORES,
                        help="hc: which images of a suspicious class are flagged, read from each heatmap's relevance "
                             "concentration (default under the mixture rules) or from its GW distances to the two "
                             "barycentres (gw: the paper's; the default under smaller, relative-size, silhouette)")
        sp.add_argument("--focus-ratio", type=_focus_ratio, default=2.0,
                        help="hc with the concentration sample score: a class is also suspicious where a mode of "
                             "its heatmaps holds its relevance on at most 1/R as many pixels as the rest (the "
                             "low-rate poison the GW split does not separate; default 2; 0: the GW class test alone)")

    d = sub.add_parser("data", help="data preparation").add_subparsers(dest="data_command", required=True)
    dp = d.add_parser("prepare", help="read a GTSRB / ImageFolder tree into a compact .npz")
    dp.add_argument("--source", required=True, help="GTSRB (official or torchvision layout) or ImageFolder tree")
    dp.add_argument("--out", required=True, help="output .npz")
    dp.add_argument("--roi-crop", action="store_true", help="crop GTSRB images to their ROI before resizing")
    dp.add_argument("--size", type=int, default=32,
                    help="side of the square images (default 32, GTSRB's and the paper's; the attacks' sticker and "
                         "its window scale with it)")
    add_json(dp)
    dp.set_defaults(func=cmd_data_prepare)

    po = sub.add_parser("poison", help="poison a data set; writes DIR/poisoned.npz and DIR/attack.json")
    po.add_argument("--data", required=True, help="prepared .npz or a source folder")
    po.add_argument("--attack", required=True, choices=["standard", "label-consistent", "amplitude"])
    po.add_argument("--source-class", type=int, default=2, help="standard attack: class to relabel (default 2)")
    po.add_argument("--target-class", type=int, default=5, help="target class (default 5, speed limit 80)")
    po.add_argument("--size", type=int, default=3, help="sticker side in pixels (default 3)")
    po.add_argument("--p", type=float, default=0.33,
                    help="poisoned share of the target class (default 0.33; 0: an unpoisoned control run, 'evaluate' then gives the floor ASR)")
    po.add_argument("--amp", type=int, default=255, help="amplitude attack: trigger amplitude (default 255)")
    po.add_argument("--color", default="245,255,0", help="sticker colour R,G,B (default 245,255,0)")
    po.add_argument("--eps", type=float, default=16 / 255, help="PGD ball radius on the [0,1] scale (default 16/255)")
    po.add_argument("--norm", choices=["linf", "l2"], default="linf", help="PGD ball (default linf)")
    po.add_argument("--surrogate", help="label-consistent: checkpoint of the surrogate (default: train one, cached)")
    po.add_argument("--surrogate-preset", default="cpu", choices=["cpu", "paper"])
    po.add_argument("--surrogate-epochs", type=int, default=None)
    po.add_argument("--seed", type=_nonnegative_int, default=0)
    po.add_argument("--out", required=True, help="run directory")
    add_json(po)
    po.set_defaults(func=cmd_poison)

    tr = sub.add_parser("train", help="train a network (SmallInception by default) on DIR/poisoned.npz")
    tr.add_argument("--run", required=True, help="run directory made by `poisonsift poison`")
    tr.add_argument("--preset", default="cpu", choices=["cpu", "paper", "demo"])
    add_arch(tr)
    tr.add_argument("--epochs", type=int, default=None, help="override the preset's epoch count")
    tr.add_argument("--seed", type=_nonnegative_int, default=0)
    add_json(tr)
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="clean accuracy and attack success rate of DIR/model.pt")
    ev.add_argument("--run", required=True)
    ev.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "auto"],
                    help="the model's forward pass: float32 (default, the tables'), bfloat16 autocast, or auto "
                         "(bfloat16 where it pays: a CPU with AMX, ~2.4x faster there; 20-29 of 12,630 test "
                         "predictions differed on the demo's models); metrics.json records which")  # fmt: skip
    add_json(ev)
    ev.set_defaults(func=cmd_evaluate)

    dt = sub.add_parser("detect", help="split one class of a run into clean and poisoned; writes DIR/detection-METHOD.json")
    dt.add_argument("--run", required=True, help="run directory with poisoned.npz and model.pt")
    dt.add_argument("--method", required=True, choices=["raw-pca", "raw-ica", "ac", "spectral", "hc", "ac-hc"])
    dt.add_argument("--class", dest="cls", type=_class_arg, default=None,
                    help="class index or 'auto' (the top class of the run's scan, scan.json; run if missing); default: the attack's target class")
    dt.add_argument("--layer", default=None, help="hidden layer for ac/spectral (default: relu_fc2 - SmallInception's "
                    "128-d layer - or the layer that feeds the last linear layer; a wrong name lists the model's layers)")
    dt.add_argument("--engine", default="fast", choices=["pot", "fast"],
                    help="GW engine for hc: fast (batched torch, default) or pot (the paper's POT loop)")
    dt.add_argument("--subset", type=int, default=None, help="hc: cluster a seeded random subset of this size")
    dt.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=True,
                    help="hc: start each GW barycenter from the cluster's previous centre and plans (default; "
                         "--no-warm-start: random starts, as the paper's code)")
    dt.add_argument("--view-samples", type=_nonnegative_int, default=300,
                    help="hc: clouds in the MDS view of GW distances written to the .npz 'embedding' "
                         "(default 300; 0: GW distances to the two centres instead, no extra cost)")
    add_hc_options(dt)
    dt.add_argument("--seed", type=_nonnegative_int, default=0)
    add_json(dt)
    dt.set_defaults(func=cmd_detect)

    sc = sub.add_parser("scan", help="run a defence on every class of a run; writes DIR/scan.json and DIR/scan.npz")
    sc.add_argument("--run", required=True, help="run directory with poisoned.npz and model.pt")
    sc.add_argument("--method", default="hc", choices=["hc", "ac"], help="defence run on each class (default hc)")
    sc.add_argument("--layer", default=None, help="ac: hidden layer (default relu_fc2)")
    sc.add_argument("--executor", default="local", choices=["local", "ray"])
    sc.add_argument("--jobs", type=int, default=1, help="local executor: classes clustered at once in worker processes")
    sc.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local Ray)")
    sc.add_argument("--seed", type=_nonnegative_int, default=0)
    sc.add_argument("--outlier-z", type=float, default=3.5,
                    help="a class is suspicious only if its evidence is an outlier among the classes: modified "
                         "z-score above this (default 3.5)")
    from poisonsift.scan import SCAN_AC_REDUCE

    add_hc_options(sc, ac_reduce=SCAN_AC_REDUCE)
    add_json(sc)
    from poisonsift.defences import HC_DEFAULT_RULE

    sc.set_defaults(func=cmd_scan, rule=HC_DEFAULT_RULE)

    cl = sub.add_parser("clean", help="write a new run without the images a scan or detection flagged (and retrain)")
    cl.add_argument("--run", required=True, help="run directory with scan.npz or detection-METHOD.npz")
    cl.add_argument("--out", required=True, help="the new run directory")
    cl.add_argument("--from", dest="source", default="scan", help="scan (default) or detection-METHOD, e.g. detection-hc")
    cl.add_argument("--relabel-from", default=None, metavar="DIR",
                    help="a run whose model was trained without the flagged images (the --out of an earlier "
                         "clean --retrain): flagged images it puts in another class are kept with that label, "
                         "the others removed")
    cl.add_argument("--retrain", action="store_true",
                    help="train the cleaned run with the same preset and seed, and print clean accuracy and ASR before and after")
    add_json(cl)
    cl.set_defaults(func=cmd_clean)

    rp = sub.add_parser("reproduce", help="reproduce the paper's tables (cached, resumable; local or Ray)")
    rp.add_argument("--table", required=True, type=_tables_arg,
                    help="1, 2, 3, 4, 5, fig6, sizes or all; several joined by commas (e.g. 1,3)")
    rp.add_argument("--preset", default="cpu", choices=["cpu", "paper"], help="training preset (default cpu)")
    rp.add_argument("--repeats", type=int, default=None, help="table 5: repeats per p (default 10)")
    rp.add_argument("--epochs", type=int, default=None,
                    help="override the preset's epochs for every training (a quicker, smaller reproduction)")
    rp.add_argument("--p", type=_shares_arg, default=None, metavar="P[,P...]",
                    help="tables 1, 2, 5: only these poison shares (fractions, e.g. 0.05,0.02) instead of the paper's")
    add_arch(rp)
    rp.add_argument("--data", default=None, help="data (default: $POISONSIFT_GTSRB or the cache)")
    rp.add_argument("--out", default="runs/reproduce", help="where results.json and the report go")
    rp.add_argument("--cache", default=None, help="artefact cache (default: $POISONSIFT_CACHE/experiments)")
    rp.add_argument("--executor", default="local", choices=["local", "ray"])
    rp.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local Ray)")
    rp.add_argument("--jobs", type=int, default=1,
                    help="local executor: units run at once in worker processes (default 1; 2 on 2 cores is ~20%% faster)")
    rp.add_argument("--threads", type=int, default=None,
                    help="torch threads per unit (default: this process's; with --jobs N or Ray: CPUs per unit)")
    rp.add_argument("--force", action="store_true", help="recompute every unit instead of using the cache")
    add_json(rp)
    rp.set_defaults(func=cmd_reproduce)

    rr = sub.add_parser("report", help="write DIR/report.html and .md from DIR/results.json (a reproduction), or "
                                       "DIR/scan-report.html and .md from DIR/scan.json (a scanned run)")
    rr.add_argument("dir")
    add_json(rr)
    rr.set_defaults(func=cmd_report)

    de = sub.add_parser("demo", help="prepare data -> standard attack -> train -> evaluate -> detect -> scan -> clean -> retrain")
    de.add_argument("--data", default=None, help="data (default: $POISONSIFT_GTSRB, the cache, or a download)")
    de.add_argument("--out", default="runs/demo")
    de.add_argument("--p", type=float, default=0.33)
    de.add_argument("--every", type=_positive_int, default=2,
                    help="train on every N-th frame of each GTSRB track (default 2: 19,605 of the 39,209 images, "
                         "each sign and class kept, half the training and scan time; 1: all); the test set is whole")
    de.add_argument("--epochs", type=_positive_int, default=2,
                    help="training epochs of the demo preset (the cpu preset without augmentation; default 2)")
    de.add_argument("--hc-subset", type=int, default=None,
                    help="HC clusters a seeded random subset of this many images of the class "
                         "(default: the whole class - 1,388 images at --every 2, 2,776 at --every 1)")
    add_hc_options(de, lrp_precision="auto")
    add_arch(de)
    de.add_argument("--no-scan", action="store_true",
                    help="stop after the detection (skip the scan of every class and the cleaned retraining)")
    de.add_argument("--seed", type=_nonnegative_int, default=0)
    add_json(de)
    de.set_defaults(func=cmd_demo)
    return p


class _Parser(argparse.ArgumentParser):
    """argparse with bad flags reported as the one ``error: ...`` line every other error gets
    (``--help`` still shows the usage)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2, already reported)
        return int(exc.code or 0)
    tune_allocator()
    try:
        args.func(args)
    except PoisonsiftError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished artefacts are kept, re-run the step to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
