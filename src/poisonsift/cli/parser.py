"""The ``poisonsift`` argument parser: every command, its flags and their help."""

from __future__ import annotations

import argparse
import sys

from poisonsift.cli.args import (class_arg, focus_ratio_arg, nonnegative_int, names_arg, peak_ratio_arg, positive_int, shares_arg,
                                 ratio_arg, source_class_arg, tables_arg)  # fmt: skip
from poisonsift.cli.commands import (cmd_clean, cmd_data_prepare, cmd_detect, cmd_evaluate, cmd_poison,
                                     cmd_report, cmd_reproduce, cmd_scan, cmd_train)  # fmt: skip
from poisonsift.cli.audit import cmd_audit
from poisonsift.cli.demo import cmd_demo
from poisonsift.errors import ConfigError


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

    def add_scan_method(sp):
        """scan's and audit's --method and AC's --layer."""
        from poisonsift.scan import SCAN_METHODS

        sp.add_argument("--method", default="hc", choices=SCAN_METHODS,
                        help="defence run on each class: hc (default), ac, or auto: HC and AC side by side, a class "
                             "called by HC or by AC where HC's class test fires too, the flags of the clearer split "
                             "(measured: it added a clean class on a blended run; docs/attacks.md)")  # fmt: skip
        sp.add_argument("--layer", default=None, help="ac, auto: AC's hidden layer (default: the network's, relu_fc2 on "
                                                      "small-inception)")  # fmt: skip

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

        sp.add_argument("--lrp-rule", default="auto", choices=[*LRP_RULES, "auto"],
                        help="hc: LRP rule: paper (the paper's epsilon rule with exponent 2, BatchNorm passed), "
                             "epsilon-gamma-box (zennit's composite, BatchNorm folded) or auto (default: the "
                             "paper's on small-inception, epsilon-gamma-box on every other network - measured, "
                             "the paper's rule misses the poison of a pre-activation ResNet)")  # fmt: skip
        auto = " or auto (bfloat16 where it pays: a CPU with AMX or AMD's AVX512-BF16, a GPU with bfloat16)" if lrp_precision == "auto" else ""
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
        sp.add_argument("--focus-ratio", type=focus_ratio_arg, default=2.0,
                        help="hc with the concentration sample score: a class is also suspicious where a mode of "
                             "its heatmaps holds its relevance on at most 1/R as many pixels as the rest (the "
                             "low-rate poison the GW split does not separate; default 2; 0: the GW class test alone)")
        sp.add_argument("--rough-ratio", type=ratio_arg("--rough-ratio"), default=2.0,
                        help="hc with the concentration sample score: a class is also suspicious where a mode of "
                             "its heatmaps is at least R times rougher (pixel-to-pixel detail, as a blended noise "
                             "trigger's relevance) than the rest; its images are flagged by that mode (default 2; "
                             "0: off)")
        sp.add_argument("--peak-ratio", type=peak_ratio_arg, default="auto",
                        help="hc with the concentration sample score: a class is also suspicious where a mode of "
                             "its heatmaps holds at least R times the share of relevance in its best window (2 to 8 "
                             "pixels a side, the scale read from the class) that the rest hold - a local trigger on "
                             "a network whose relevance stays spread over the sign too, as residual networks'; its "
                             "images are flagged on that window's share. Default auto: off on small-inception (the "
                             "paper's setting), 2 on every other network; 0: off")
        sp.add_argument("--gw-alone", default="auto", choices=["auto", "yes", "no"],
                        help="hc with the concentration sample score: whether the GW class test alone calls a "
                             "class (yes: the paper's way) or only where an effect-size test (concentration, peak, "
                             "roughness) fires too (no). Default auto: yes on small-inception, no on every other "
                             "network (the GW-only calls measured on residual networks were clean classes)")

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
    from poisonsift.attacks import ATTACKS

    po.add_argument("--attack", required=True, choices=ATTACKS,
                    help="standard (the paper's sticker, label flipped), label-consistent (PGD on a surrogate, then "
                         "the sticker), amplitude (label-consistent with the reduced-amplitude trigger), blended "
                         "(Chen et al. 2017: a pattern blended over the image), sig (Barni et al. 2019: a "
                         "label-consistent sinusoid), wanet (Nguyen and Tran 2021: a fixed warp, with noise mode), "
                         "adaptive-blend (Qi et al. 2023: a blend cut into pieces, with covers)")
    po.add_argument("--source-class", type=source_class_arg, default=None,
                    help="standard, blended, wanet, adaptive-blend: class to relabel, or 'all' for all-to-one (any "
                         "class -> the target; then --p is a share of the whole training set). Default: 2 for "
                         "standard and blended, all for wanet and adaptive-blend")
    po.add_argument("--target-class", type=int, default=5, help="target class (default 5, speed limit 80)")
    po.add_argument("--size", type=int, default=3, help="sticker side in pixels (default 3)")
    po.add_argument("--p", type=float, default=None,
                    help="poison rate: the poisoned share of the target class for a source -> target or "
                         "label-consistent attack (default 0.33, the paper's), of the whole training set for "
                         "all-to-one (default: backdoor-toolbox's - wanet 0.05, adaptive-blend 0.003, standard and "
                         "blended 0.01); 0: an unpoisoned control run, 'evaluate' then gives the floor ASR")
    po.add_argument("--amp", type=int, default=255, help="amplitude attack: trigger amplitude (default 255)")
    po.add_argument("--color", default="245,255,0", help="sticker colour R,G,B (default 245,255,0)")
    po.add_argument("--pattern", default="noise",
                    help="blended, adaptive-blend: 'noise' (a seeded uniform-noise image of the data's size; "
                         "default) or the path of an image file, resized to the data's size")
    po.add_argument("--alpha", type=float, default=None,
                    help="blended, adaptive-blend: blend weight of the training poison in (0, 1] (default 0.2; "
                         "adaptive-blend 0.15)")
    po.add_argument("--test-alpha", type=float, default=None,
                    help="blended, adaptive-blend: blend weight of the test trigger (default: --alpha; "
                         "adaptive-blend 0.2)")
    po.add_argument("--delta", type=float, default=20.0, help="sig: amplitude on the 0-255 scale (default 20)")
    po.add_argument("--freq", type=float, default=6.0, help="sig: periods across the image (default 6)")
    po.add_argument("--k", type=int, default=4, help="wanet: control grid of the warping field, k x k (default 4)")
    po.add_argument("--strength", type=float, default=0.5, help="wanet: warping strength s (default 0.5)")
    po.add_argument("--cross-ratio", type=float, default=2.0,
                    help="wanet: noise-mode images (random warps, labels kept) per poisoned image (default 2)")
    po.add_argument("--cover-rate", type=float, default=0.003,
                    help="adaptive-blend: cover images (partial triggers, labels kept), a share of the training set "
                         "(default 0.003)")
    po.add_argument("--pieces", type=int, default=16, help="adaptive-blend: trigger pieces, a square (default 16)")
    po.add_argument("--mask-rate", type=float, default=0.5,
                    help="adaptive-blend: share of the pieces left out of each poisoned image (default 0.5)")
    po.add_argument("--eps", type=float, default=16 / 255, help="PGD ball radius on the [0,1] scale (default 16/255)")
    po.add_argument("--norm", choices=["linf", "l2"], default="linf", help="PGD ball (default linf)")
    po.add_argument("--surrogate", help="label-consistent: checkpoint of the surrogate (default: train one, cached)")
    po.add_argument("--surrogate-preset", default="cpu", choices=["cpu", "paper"])
    po.add_argument("--surrogate-epochs", type=int, default=None)
    po.add_argument("--seed", type=nonnegative_int, default=0)
    po.add_argument("--out", required=True, help="run directory")
    add_json(po)
    po.set_defaults(func=cmd_poison)

    tr = sub.add_parser("train", help="train a network (SmallInception by default) on DIR/poisoned.npz")
    tr.add_argument("--run", required=True, help="run directory made by `poisonsift poison`")
    tr.add_argument("--preset", default="cpu", choices=["cpu", "paper", "demo"])
    add_arch(tr)
    tr.add_argument("--epochs", type=int, default=None, help="override the preset's epoch count")
    tr.add_argument("--seed", type=nonnegative_int, default=0)
    add_json(tr)
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="clean accuracy and attack success rate of DIR/model.pt")
    ev.add_argument("--run", required=True)
    ev.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "auto"],
                    help="the model's forward pass: float32 (default, the tables'), bfloat16 autocast, or auto "
                         "(bfloat16 where it pays: a CPU with AMX or AMD's AVX512-BF16, ~2.4x faster with AMX; 20-29 of 12,630 test "
                         "predictions differed on the demo's models); metrics.json records which")  # fmt: skip
    add_json(ev)
    ev.set_defaults(func=cmd_evaluate)

    dt = sub.add_parser("detect", help="split one class of a run into clean and poisoned; writes DIR/detection-METHOD.json")
    dt.add_argument("--run", required=True, help="run directory with poisoned.npz and model.pt")
    dt.add_argument("--method", required=True, choices=["raw-pca", "raw-ica", "ac", "spectral", "hc", "ac-hc"])
    dt.add_argument("--class", dest="cls", type=class_arg, default=None,
                    help="class index or 'auto' (the top class of the run's scan, scan.json; run if missing); default: the attack's target class")
    dt.add_argument("--layer", default=None, help="hidden layer for ac/spectral (default: relu_fc2 - SmallInception's "
                    "128-d layer - or the layer that feeds the last linear layer; a wrong name lists the model's layers)")
    dt.add_argument("--engine", default="fast", choices=["pot", "fast"],
                    help="GW engine for hc: fast (batched torch, default) or pot (the paper's POT loop)")
    dt.add_argument("--subset", type=int, default=None, help="hc: cluster a seeded random subset of this size")
    dt.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=True,
                    help="hc: start each GW barycenter from the cluster's previous centre and plans (default; "
                         "--no-warm-start: random starts, as the paper's code)")
    dt.add_argument("--view-samples", type=nonnegative_int, default=300,
                    help="hc: clouds in the MDS view of GW distances written to the .npz 'embedding' "
                         "(default 300; 0: GW distances to the two centres instead, no extra cost)")
    add_hc_options(dt)
    dt.add_argument("--seed", type=nonnegative_int, default=0)
    add_json(dt)
    dt.set_defaults(func=cmd_detect)

    sc = sub.add_parser("scan", help="run a defence on every class of a run; writes DIR/scan.json and DIR/scan.npz")
    sc.add_argument("--run", required=True, help="run directory with poisoned.npz and model.pt")
    add_scan_method(sc)
    sc.add_argument("--executor", default="local", choices=["local", "ray"])
    sc.add_argument("--jobs", type=positive_int, default=1, help="local executor: classes clustered at once in worker processes")
    sc.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local Ray)")
    sc.add_argument("--seed", type=nonnegative_int, default=0)
    sc.add_argument("--outlier-z", type=float, default=3.5,
                    help="a class is suspicious only if its evidence is an outlier among the classes: modified "
                         "z-score above this (default 3.5)")
    from poisonsift.scan import SCAN_AC_REDUCE

    add_hc_options(sc, ac_reduce=SCAN_AC_REDUCE)
    add_json(sc)
    from poisonsift.defences import HC_DEFAULT_RULE

    sc.set_defaults(func=cmd_scan, rule=HC_DEFAULT_RULE)

    au = sub.add_parser("audit", help="audit an image folder: train a model on it, scan every class, list the "
                                      "flagged files in OUT/flagged.csv (and write a copy without them)")
    au.add_argument("dir", help="ImageFolder tree (DIR/<class>/*, or DIR/train/<class>/* + DIR/test/...) or GTSRB")
    au.add_argument("--out", default="poisonsift-audit", help="output folder (default ./poisonsift-audit); resumable")
    au.add_argument("--preset", default="cpu", choices=["cpu", "paper", "demo"], help="the audit model's training (default cpu)")
    add_arch(au)
    au.add_argument("--epochs", type=positive_int, default=None, help="override the preset's epoch count")
    au.add_argument("--size", type=positive_int, default=32, help="side images are resized to (default 32)")
    au.add_argument("--write-clean", nargs="?", const="", default=None, metavar="CLEAN",
                    help="also write a copy of DIR without the flagged files (hard links where possible) to CLEAN, "
                         "a new folder inside --out (default OUT/clean)")
    au.add_argument("--jobs", type=positive_int, default=1, help="classes clustered at once in worker processes")
    add_scan_method(au)
    au.add_argument("--seed", type=nonnegative_int, default=0)
    add_hc_options(au, ac_reduce=SCAN_AC_REDUCE, lrp_precision="auto")
    add_json(au)
    au.set_defaults(func=cmd_audit, rule=HC_DEFAULT_RULE)

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
    rp.add_argument("--table", required=True, type=tables_arg,
                    help="1, 2, 3, 4, 5, fig6, sizes or all (the paper's), or attacks (poisonsift's: blended, SIG, "
                         "WaNet, adaptive-blend and all-to-one attacks, each detected, scanned, cleaned and retrained, "
                         "beside the floor); several joined by commas (e.g. 1,3)")  # fmt: skip
    rp.add_argument("--preset", default="cpu", choices=["cpu", "paper", "demo"],
                    help="training preset (default cpu; demo: 2 epochs without augmentation, for a quick sitting)")
    rp.add_argument("--repeats", type=int, default=None, help="table 5: repeats per p (default 10)")
    rp.add_argument("--epochs", type=int, default=None,
                    help="override the preset's epochs for every training (a quicker, smaller reproduction)")
    rp.add_argument("--p", type=shares_arg, default=None, metavar="P[,P...]",
                    help="tables 1, 2, 5: only these poison shares (fractions, e.g. 0.05,0.02) instead of the paper's")
    rp.add_argument("--rows", type=names_arg, default=None, metavar="NAME[,NAME...]",
                    help="table attacks: only these rows, one sitting at a time (merge sittings with report --merge): "
                         "standard, blended, standard-all-to-one, blended-all-to-one, sig, wanet, adaptive-blend")
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
    rp.add_argument("--plan", action="store_true",
                    help="compute nothing: list the runs these tables need, what the cache holds, and what is left "
                         "(trainings and their epochs, evaluations, detections)")
    add_json(rp)
    rp.set_defaults(func=cmd_reproduce)

    rr = sub.add_parser("report", help="write DIR/report.html and .md from DIR/results.json (a reproduction), or "
                                       "DIR/scan-report.html and .md from DIR/scan.json (a scanned run); --merge: one "
                                       "report from several reproduction sittings")  # fmt: skip
    rr.add_argument("dir", nargs="?", help="a reproduction or a scanned run (not with --merge)")
    rr.add_argument("--merge", nargs="+", metavar="DIR",
                    help="sittings (folders with results.json): each table row from the newest sitting that has it, "
                         "marked with its sitting; rows of different presets in one table are refused")  # fmt: skip
    rr.add_argument("--out", help="with --merge: where the merged results.json, report.html and .md go")
    add_json(rr)
    rr.set_defaults(func=cmd_report)

    de = sub.add_parser("demo", help="prepare data -> standard attack -> train -> evaluate -> detect -> scan -> clean -> retrain")
    de.add_argument("--data", default=None, help="data (default: $POISONSIFT_GTSRB, the cache, or a download)")
    de.add_argument("--out", default="runs/demo")
    de.add_argument("--p", type=float, default=0.33)
    de.add_argument("--every", type=positive_int, default=2,
                    help="train on every N-th frame of each GTSRB track (default 2: 19,605 of the 39,209 images, "
                         "each sign and class kept, half the training and scan time; 1: all); the test set is whole")
    de.add_argument("--epochs", type=positive_int, default=2,
                    help="training epochs of the demo preset (the cpu preset without augmentation; default 2)")
    de.add_argument("--hc-subset", type=int, default=None,
                    help="HC clusters a seeded random subset of this many images of the class "
                         "(default: the whole class - 1,388 images at --every 2, 2,776 at --every 1)")
    add_hc_options(de, lrp_precision="auto")
    add_arch(de)
    de.add_argument("--no-scan", action="store_true",
                    help="stop after the detection (skip the scan of every class and the cleaned retraining)")
    de.add_argument("--relabel", action="store_true",
                    help="end with a third training: the flagged images that the cleaned model puts in another "
                         "class keep that label (a label flip undone), the others are removed (clean --relabel-from; "
                         "about 3 minutes more)")
    de.add_argument("--seed", type=nonnegative_int, default=0)
    add_json(de)
    de.set_defaults(func=cmd_demo)
    return p


class _Parser(argparse.ArgumentParser):
    """argparse with bad flags reported as the one ``error: ...`` line every other error gets
    (``--help`` still shows the usage)."""

    def error(self, message: str):
        print(f"error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)
