"""The commands of the ``poisonsift`` command line: each takes the parsed flags, calls the
library and prints a short human summary (or, with ``--json``, one JSON object)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from poisonsift.cli.args import color_arg
from poisonsift.errors import ConfigError


def emit(args: argparse.Namespace, obj: dict[str, Any], human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(obj))
    else:
        print(human)



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
    emit(args, obj, f"wrote {args.out}: {obj['n_train']} train / {obj['n_test']} test images, "
          f"{d.num_classes} classes ({obj['seconds']:.1f} s)")  # fmt: skip


#: ``poison``'s --p where none is given: the paper's share of the target class for source -> target
#: and label-consistent attacks; backdoor-toolbox's GTSRB poison rates for all-to-one.
DEFAULT_P = 0.33
ALL_TO_ONE_P = {"standard": 0.01, "blended": 0.01, "wanet": 0.05, "adaptive-blend": 0.003}


def build_attack(args: argparse.Namespace, data=None, device=None):
    """The attack object described by ``poison``'s flags."""
    from poisonsift import attacks as A
    from poisonsift.runs import surrogate_provider
    from poisonsift.training import get_preset

    name = args.attack
    if name in ("standard", "blended", "wanet", "adaptive-blend"):
        source = args.source_class if args.source_class is not None else (2 if name in ("standard", "blended") else A.ALL)
        p = args.p if args.p is not None else ALL_TO_ONE_P[name] if source == A.ALL else DEFAULT_P
        common = dict(p=p, source_class=source, target_class=args.target_class)
        if name == "standard":
            return A.StandardBackdoor(**common, trigger=A.StickerTrigger(size=args.size, color=color_arg(args.color)))
        if name == "wanet":
            trigger = A.WarpTrigger(k=args.k, strength=args.strength)
            return A.WaNet(**common, trigger=trigger, cross_ratio=args.cross_ratio)
        alpha, test_alpha = (0.15, 0.2) if name == "adaptive-blend" else (0.2, None)
        trigger = A.BlendTrigger(alpha=args.alpha if args.alpha is not None else alpha,
                                 test_alpha=args.test_alpha if args.test_alpha is not None else
                                 (test_alpha if args.alpha is None else None), pattern=args.pattern)  # fmt: skip
        if name == "blended":
            return A.Blended(**common, trigger=trigger)
        return A.AdaptiveBlend(**common, trigger=trigger, cover_rate=args.cover_rate, pieces=args.pieces,
                               mask_rate=args.mask_rate)  # fmt: skip
    if args.source_class is not None:
        raise ConfigError(f"--source-class is for the label-flipping attacks; {name} keeps every label")
    p = args.p if args.p is not None else DEFAULT_P
    if name == "sig":
        return A.SIG(p=p, target_class=args.target_class, trigger=A.SinusoidTrigger(delta=args.delta, freq=args.freq))
    if name == "amplitude":
        trigger = A.AmplitudeTrigger(amp=args.amp, size=args.size)
    else:
        trigger = A.StickerTrigger(size=args.size, color=color_arg(args.color))
    pgd = A.PGDConfig(eps=args.eps, norm=args.norm)
    surrogate = None
    if data is not None:
        if args.surrogate:
            from functools import partial

            from poisonsift.training import load_checkpoint

            surrogate = partial(load_checkpoint, args.surrogate, device)
        else:
            cfg = get_preset(args.surrogate_preset, epochs=args.surrogate_epochs, seed=args.seed)
            surrogate = surrogate_provider(data, cfg, device)
    return A.LabelConsistent(
        p=p, target_class=args.target_class, trigger=trigger, pgd=pgd, surrogate=surrogate,
        device=str(device or "cpu"),
    )  # fmt: skip


def cmd_poison(args: argparse.Namespace) -> None:
    from poisonsift.data import resolve_data
    from poisonsift.runs import poison_run
    from poisonsift.utils import default_device

    attack = build_attack(args)  # every flag checked before the data is read
    data = resolve_data(args.data)
    if args.attack in ("label-consistent", "amplitude"):
        attack = build_attack(args, data, default_device())  # with its surrogate
    s = poison_run(data, attack, args.out, seed=args.seed)
    covers = f" and {s['n_cover']} cover images (labels kept)" if s["n_cover"] else ""
    emit(args, {**s, "out": str(args.out)},
          f"{args.attack}: {s['n_poisoned']} poisoned images{covers}, {s['poison_share']:.1%} of target class "
          f"{attack.target_class} ({s['target_class_size']} images) -> {Path(args.out) / 'poisoned.npz'}"
          + ("; a control run: train and evaluate it for the floor ASR" if s["n_poisoned"] == 0 else ""))  # fmt: skip


def cmd_train(args: argparse.Namespace) -> None:
    from poisonsift.runs import train_run
    from poisonsift.training import get_preset

    cfg = get_preset(args.preset, epochs=args.epochs, seed=args.seed, arch=args.arch)
    s = train_run(args.run, cfg)
    obj = {k: v for k, v in s.items() if k not in ("history", "config")}
    emit(args, obj, f"trained {s['epochs_run']} epochs in {s['seconds']:.0f} s on {s['device']} "
          f"(best epoch {s['best_epoch']}, val acc {s['val_acc']:.3f}) -> {Path(args.run) / 'model.pt'}")  # fmt: skip


def metrics_line(m: dict[str, Any]) -> str:
    line = f"clean accuracy {m['clean_accuracy']:.4f}  ASR {m['asr']:.4f}"
    if "masr" in m:
        line += f"  MASR {m['masr']:.4f}"
    return line


def cmd_evaluate(args: argparse.Namespace) -> None:
    from poisonsift.runs import evaluate_run

    m = evaluate_run(args.run, precision=args.precision)
    emit(args, m, metrics_line(m))



def detection_row(d: dict[str, Any]) -> str:
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
                  ac_reduce=getattr(args, "ac_reduce", "pca-whiten"), focus_ratio=getattr(args, "focus_ratio", 2.0),
                  rough_ratio=getattr(args, "rough_ratio", 2.0), peak_ratio=getattr(args, "peak_ratio", "auto"),
                  gw_alone={"yes": True, "no": False}.get(getattr(args, "gw_alone", "auto"), "auto"))  # fmt: skip
    fields.update(over)
    return DetectSpec(**fields)


def _scan_top_class(run: str, spec) -> tuple[int, list[dict[str, Any]]]:
    """``--class auto``: the top class of the run's scan (``scan.json`` of the same method or of
    the default ``auto``, HC and AC, if there is one, else a new scan with the detection's options)."""
    import dataclasses

    from poisonsift.defences import HC_DEFAULT_RULE, MIXTURE_RULES
    from poisonsift.scan import SCAN_AC_REDUCE, SCAN_METHODS, scan_run

    method = spec.method if spec.method in SCAN_METHODS else "hc"
    path = Path(run) / "scan.json"
    scan = json.loads(path.read_text()) if path.is_file() else None
    if scan is None or scan.get("method") not in (method, "auto"):  # the default scan (auto) runs both
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
    human = f"class {d['class']} ({d['n']} images)\n{DETECTION_HEADER}\n{detection_row(d)}"
    if ranking is not None:
        d["ranking"] = ranking
        top = ", ".join(f"{r['class']} ({r['evidence']:.2f})" for r in ranking[:5])
        human = f"most suspicious classes (scan evidence): {top}\n" + human
    emit(args, d, human)


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
        human += "\n" + retrain_line(r)
    emit(args, obj, human)


def retrain_line(r: dict[str, Any]) -> str:
    return (f"retrained ({r['epochs']} epochs, seed {r['seed']}): clean accuracy {r['clean_accuracy_before']:.4f} -> "
            f"{r['clean_accuracy_after']:.4f}, ASR {r['asr_before']:.4f} -> {r['asr_after']:.4f}")  # fmt: skip


def _focus(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


def cmd_scan(args: argparse.Namespace) -> None:
    from poisonsift.scan import scan_run

    s = scan_run(args.run, detect_spec(args, args.method), executor=args.executor, jobs=args.jobs,
                 ray_address=args.ray_address, outlier_z=args.outlier_z)  # fmt: skip
    lines = [f"{'class':>5} {'n':>6} {'flagged':>7} {'evidence':>8} {'outlier z':>9} {'focus':>6}  suspicious"]
    lines += [f"{e['class']:>5} {e['n']:>6} {e['n_flagged']:>7} {e['evidence']:>8.3f} {e['outlier_z']:>9.1f} "
              f"{_focus(e.get('concentration_ratio')):>6}  {'yes' if e['suspicious'] else ''}"
              for e in s["classes"][:10]]  # fmt: skip
    lines.append(f"suspicious classes: {s['suspicious_classes'] or 'none'}; {s['n_flagged']} images flagged"
                 + (f" (TPR {s['tpr']:.4f}, TNR {s['tnr']:.4f} against the run's ground truth)" if "tpr" in s else "")
                 + f"; {s['seconds']['total']:.0f} s -> {Path(args.run) / 'scan.json'} "
                 f"(pictures: poisonsift report {args.run})")  # fmt: skip
    emit(args, s, "\n".join(lines))


def cmd_reproduce(args: argparse.Namespace) -> None:
    from poisonsift.experiments import plan, reproduce
    from poisonsift.report import table_markdown

    train = {k: v for k, v in (("epochs", args.epochs), ("arch", args.arch)) if v and v != "small-inception"} or None
    if args.plan:
        pl = plan(args.table, data=args.data, preset=args.preset, repeats=args.repeats, cache=args.cache, train=train,
                  ps=args.p, rows=args.rows)  # fmt: skip
        lines = [f"{'run':<16} {'tables':<10} {'attack':<20} {'p':>6} {'s':>2} {'amp':>4} {'seed':>4} {'epochs':>6}  to do"]
        lines += [f"{e['key']:<16} {','.join(e['tables']):<10} {e['label']:<20} {e['p']:>6.3f} {e['size']:>2} "
                  f"{e['amp']:>4} {e['seed']:>4} {e['epochs']:>6}  {'-' if e['status'] == 'cached' else e['status']}"
                  for e in pl["runs"]]  # fmt: skip
        c = pl["to_compute"]
        scans = f", {c['scans']} scans ({c['retrainings']} with a retraining)" if c["scans"] else ""
        lines.append(f"to compute: {c['surrogates']} surrogates, {c['trainings']} trainings ({c['training_epochs']} "
                     f"epochs), {c['evaluations']} evaluations, {c['detections']} of {c['detections_total']} "
                     f"detections{scans} (cache {pl['cache']})")  # fmt: skip
        emit(args, pl, "\n".join(lines))
        return
    res = reproduce(
        args.table, data=args.data, preset=args.preset, repeats=args.repeats, out=args.out, cache=args.cache,
        executor=args.executor, ray_address=args.ray_address, jobs=args.jobs, force=args.force, threads=args.threads,
        train=train, ps=args.p, rows=args.rows,
    )  # fmt: skip
    lines = [f"Table {t['name']}: {t['title']}\n{table_markdown(t)}\n" for t in res["tables"].values()]
    c = res["computed"]
    lines.append(f"{res['seconds']:.0f} s; computed {c['runs']} runs and {c['detections']} detections of {c['units']} units; "
                 f"report: {Path(args.out) / 'report.html'}")  # fmt: skip
    emit(args, res, "\n".join(lines))


def cmd_report(args: argparse.Namespace) -> None:
    from poisonsift.errors import ConfigError
    from poisonsift.report import merge_results, write_report, write_scan_report

    if args.merge:
        if args.dir or not args.out:
            raise ConfigError("report --merge DIR... --out OUT: give the sittings after --merge and the merged "
                              "report's folder with --out (no positional DIR)")  # fmt: skip
        merged = merge_results(args.merge, args.out)
        paths = write_report(args.out)
        n = sum(len(t["rows"]) for t in merged["tables"].values())
        emit(args, {k: str(v) for k, v in paths.items()},
             f"merged {n} rows of {len(merged['tables'])} tables from {len(args.merge)} sittings; "
             f"wrote {paths['html']} and {paths['md']}")  # fmt: skip
        return
    if not args.dir:
        raise ConfigError("report DIR: name a reproduction or a scanned run (or use --merge DIR... --out OUT)")
    d = Path(args.dir)
    paths = write_scan_report(d) if (d / "scan.json").is_file() and not (d / "results.json").is_file() else write_report(d)
    emit(args, {k: str(v) for k, v in paths.items()}, f"wrote {paths['html']} and {paths['md']}")


# --------------------------------------------------------------------------- parser
