"""Scan a whole training set without being told the attacked class.

``scan_run`` runs a defence (HC, the default, or AC; or ``auto``: both side by side), each with
the ``mixture`` decision, on every class of a run:

1. one model load and one pass over all training images - LRP heatmaps (HC, cached in
   ``run/cache`` under the key of model, images, labels and rule) or hidden-layer activations
   (AC) - in batches, with one progress bar;
2. each class is an independent unit (the clustering half of the defence on that class's rows),
   run by an executor (:mod:`poisonsift.executors`: in this process, in local worker processes,
   or as Ray tasks); units read the features from one ``.npy`` file by memory map, so a unit
   holds one class's features, not the whole set's;
3. every class gets an ``evidence`` (:func:`class_evidence`): the per-image log-likelihood ratio
   of a two- against a one-component Gaussian mixture on its split statistic (BIC-penalised),
   where the minority mode could be poison (big enough; for HC the more concentrated heatmaps),
   else 0 - for HC the larger of the GW split's and the relevance concentration's ratios. Classes
   are ordered by evidence. A class is ``suspicious`` where its own class test says so (the
   mixture test: BIC, Ashman's D >= 2, minority size, concentration; for HC on the GW split or on
   the concentration with ``focus_ratio``, :class:`~poisonsift.defences.HCConfig`) **and** its evidence is an outlier
   among the classes (modified z-score > 3.5 against every class's plain two-mode ratio:
   natural sub-structure differs from model to model, a backdoor stands out of it - the
   cross-class MAD test Neural Cleanse uses for its trigger norms). HC's third class test, the
   heatmaps' roughness (:class:`~poisonsift.defences.HCConfig` ``rough_ratio``: a blended trigger's
   speckled relevance), is calibrated by its effect size instead and not gated. The fourth, the
   local relevance peak (``peak_ratio``: a sticker read by a residual network, whose relevance stays
   on the sign too), adds its mixture's ratio to the evidence where it fires and is gated like the
   first two (a clean class's peak mode came within 1.8x of the rest's, measured: a thin margin, so
   the cross-class test stays). Only suspicious classes keep their flags; they are listed first,
   then the others by evidence.
4. ``auto``: steps 1-3 for HC and for AC, each with its own class tests and its own cross-class
   outlier gate. A class is suspicious where HC calls it, or where AC calls it and HC's own class
   test fires on it too (HC's cross-class gate waived; :func:`decide_class`): AC's class test alone
   is not calibrated - on real GTSRB it called three clean classes of a poisoned and three of an
   unpoisoned SmallInception - so a plain OR would flag clean data on every scan. A called class
   keeps the flags of the defence whose flagged split is the clearer: the larger Ashman's D
   between the flagged and the kept mode of the statistic that flagged them
   (``decided_separation``). Each class's record holds both (``by_method``; an AC call HC did not
   back is marked ``uncorroborated``), ``called_by`` and ``decided_by``; its evidence is that of
   the defence it is decided by (HC's where neither calls it), so the ranking is HC's. Not the
   default: on a blended 1 -> 38 run (2026-12-07) it also called clean class 34 (AC z 7.2, HC's GW
   class test fired below its gate), and on no measured run did AC call a poisoned class HC missed.

   Why not Ashman's D alone (the first version): on a real p = 33 % run the attacked class's
   D was 6.1, but 9 clean classes also passed D >= 2 (small classes, diffuse minorities) and a
   210-image class with a one-image minority had D = 11.4: the attacked class ranked second and
   ten classes were called suspicious. The ratio ranks it first (1.0 nats per image; the next
   class whose minority is the concentrated one: 0.09).

Writes ``run/scan.json`` (``method``, ``classes`` [``class``, ``n``, ``n_flagged``, ``evidence``,
``suspicious``, ``outlier_z``, ``class_test``, ``class_test_by``, ``llr``, ``separation``, ``n_poisoned_true``], ``suspicious_classes``, ``n_flagged``,
``seconds`` per stage, ``features`` (the cached heatmaps / activations, relative to the run),
``flagged_files`` (the flagged images' source files, where the data was read from a folder), and
for a run made by ``poison`` (it has ``attack.json``; a control run of ``p = 0`` and a cleaned run
included) the ground truth's ``n_poisoned_true``, ``tpr``, ``tnr`` over the whole set - an audit's
run has no ground truth and no such keys) and ``run/scan.npz`` (``rows``, ``scores``, ``is_poisoned``,
``cluster_labels`` for every training image; scores are comparable within a class only).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from poisonsift.defences import AUTO, HC_DEFAULT_RULE, MIXTURE_RULES, ActivationClustering, DetectSpec, HeatmapClustering, build_defence
from poisonsift.defences.decision import mode_gap
from poisonsift.errors import ConfigError, DataError
from poisonsift.executors import make_executor, unit
from poisonsift.utils import atomic_write_json, atomic_write_npz

__all__ = ["scan_run", "SCAN_METHODS", "scan_class", "decide_class"]

#: ``hc`` (the default), ``ac``, and ``auto``: HC and AC side by side, a class called by HC or by a corroborated AC
SCAN_METHODS = (AUTO, "hc", "ac")



def _features(run: Path, spec: DetectSpec, pd, model, norm, with_activations: bool = False) -> Path:
    """All training images' heatmaps (HC) or activations (AC) in one ``.npy`` under ``run/cache``.
    ``with_activations`` (HC, under auto): AC's activations from the LRP pass where the rule allows."""
    from poisonsift.explain import activations_cache_file, lrp_cache_file

    cache = run / "cache"
    if spec.method == "hc":
        return lrp_cache_file(model, pd.x_train, pd.y_train, norm, cache, precision=spec.lrp_precision,
                              rule=spec.lrp_rule, desc="LRP (all classes)",
                              activations_layer=spec.layer if with_activations else False)  # fmt: skip
    return activations_cache_file(model, pd.x_train, pd.y_train, spec.layer, norm, cache, desc="activations (all classes)")


#: The scan's AC reduction: the paper's PCA. Whitened, AC's class test also splits clean classes
#: (p = 2 % run: 7 clean classes suspicious, measured); the CLI's scan and --class auto use it too.
SCAN_AC_REDUCE = "pca"


@unit
def scan_class(task: dict[str, Any]) -> dict[str, Any]:
    """One class of a scan (a unit: plain dict in, plain dict out).

    ``task``: ``features`` (path of the ``.npy``), ``rows`` (the class's rows), ``spec``
    (a :class:`DetectSpec` as a dict). Returns the class's per-sample arrays and its evidence.
    """
    spec = DetectSpec(**task["spec"])
    rows = np.asarray(task["rows"])
    feats = np.load(task["features"], mmap_mode="r")
    x = np.ascontiguousarray(feats[rows])
    t = time.perf_counter()
    defence = build_defence(dataclasses.replace(spec, view_samples=0))
    if isinstance(defence, HeatmapClustering):
        res = defence.cluster(x)
    elif isinstance(defence, ActivationClustering):
        res = defence.cluster(x.reshape(len(x), -1))
    else:  # pragma: no cover - SCAN_METHODS guards this
        raise ConfigError(f"scan runs hc or ac, not {spec.method}")
    mt = res.analysis["mixture"]
    evidence, llr = class_evidence(res.analysis, spec)
    return {"rows": rows, "scores": res.scores, "is_poisoned": res.is_poisoned, "cluster_labels": res.cluster_labels,
            "suspicious": bool(res.suspicious), "evidence": evidence, "llr": llr, "mixture": mt,
            "class_test_by": res.analysis.get("class_test"), "decided_separation": _decided_separation(res.analysis),
            "focus_gain": res.analysis.get("concentration", {}).get("focus_gain"), "seconds": time.perf_counter() - t}  # fmt: skip


def _ratio(gain: float | None) -> float | None:
    """HC: how many times fewer pixels the concentrated mode's heatmaps hold their relevance on
    than the rest's (exp of the concentration modes' gap; ``HCConfig.focus_ratio`` is the least
    the concentration class test accepts), or None (AC, or one mode)."""
    return float(np.exp(gain)) if gain is not None and np.isfinite(gain) else None


def _mixture_evidence(mt: dict[str, Any], could_be_poison: bool) -> float:
    if "weights" not in mt or not could_be_poison:
        return 0.0
    return max(0.0, float(mt["llr"])) if mt["minority_big"] else 0.0


def class_evidence(analysis: dict[str, Any], spec: DetectSpec) -> tuple[float, float]:
    """A class's evidence of a poisoned group, and its plain two-mode ratio (the cross-class baseline).

    The evidence is the per-image log-likelihood ratio of two modes against one (``llr``,
    BIC-penalised) of the split statistic's mixture where its minority mode could be poison - it
    holds at least ``min_weight`` of the class and ``min_count`` images and, for HC with
    ``one_sided``, has the more concentrated heatmaps - else 0. For HC with the concentration
    sample score the concentration's own mixture counts too (its minority the more concentrated
    mode: the second class test's statistic), and the evidence is the larger of the two; the
    plain ratio likewise the larger ``llr`` of the two, either side, any size.

    ``analysis``: a :class:`~poisonsift.defences.DetectionResult`'s ``analysis``.
    """
    mt = analysis.get("mixture", {})
    hc = spec.method == "hc"
    ev = _mixture_evidence(mt, not (hc and spec.one_sided and not mt.get("concentrated", True)))
    llr = float(mt.get("llr", 0.0))
    cm = analysis.get("concentration", {}) if hc and spec.focus_ratio is not None else {}
    if "llr" in cm:
        ev = max(ev, _mixture_evidence(cm, mode_gap(cm) > 0))
        llr = max(llr, float(cm["llr"]))
    for key in ("peak", "roughness"):  # only where the test fired: the baseline stays GW's and the concentration's
        m = analysis.get(key, {}) if hc else {}
        if m.get("class_test"):
            ev = max(ev, _mixture_evidence(m, True))
    return ev, llr


def outlier_scores(evidence: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Modified z-scores (Iglewicz and Hoaglin) of each class's evidence against the classes'
    baseline: (evidence - median) / (1.4826 MAD). The baseline is every class's plain ``llr``
    (either side, any size): how much two-mode structure this model's heatmaps show anyway.
    A MAD of 0 makes every evidence above the median an outlier. Returns (z, median, scaled MAD)."""
    med = float(np.median(baseline))
    mad = 1.4826 * float(np.median(np.abs(baseline - med)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (evidence - med) / mad if mad > 0 else np.where(evidence > med, np.inf, 0.0)
    return np.asarray(z, dtype=float), med, mad


def _decided_separation(analysis: dict[str, Any]) -> float | None:
    """Ashman's D of the mixture whose flags a class keeps (GW split, concentration or roughness):
    how far apart the flagged and the kept images lie on the statistic that flagged them."""
    by = analysis.get("class_test")
    mt = analysis.get(by if by in ("concentration", "peak", "roughness") else "mixture", {})
    return mt.get("separation")


def _half(run: Path, spec: DetectSpec, pd, model, norm, big: list[int], ex, both: bool = False) -> tuple[list[dict], float]:
    """One defence of the scan on every class of ``big``: its features (one pass, cached) and the
    per-class units. Returns the units' results (class order) and the feature pass's seconds.
    ``both``: HC and AC are scanned (auto), so HC's LRP pass keeps AC's activations where it can."""
    t = time.perf_counter()
    feats = _features(run, spec, pd, model, norm, with_activations=both)
    seconds = time.perf_counter() - t
    base = {"features": str(feats), "spec": spec.to_dict(), "threads": getattr(ex, "cpus_per_task", None)}
    tasks = [{**base, "rows": np.flatnonzero(pd.y_train == c).tolist()} for c in big]
    results = ex.map(scan_class, tasks, desc=f"scan ({spec.method}, {len(big)} classes)")
    for r in results:
        r["features"] = os.path.relpath(feats, run)
    return results, seconds


def _called(results: list[dict], outlier_z: float) -> tuple[np.ndarray, float, list[bool]]:
    """Which classes one defence calls: its class test fired and its evidence is an outlier among
    the classes (or HC's roughness test fired, calibrated by its own effect size). Returns the
    modified z-scores, the evidence where the outlier test starts, and the calls."""
    z, med, mad = outlier_scores(np.array([r["evidence"] for r in results]), np.array([r["llr"] for r in results]))
    # The roughness test is calibrated by its own effect size (rough_ratio, measured against every
    # clean class of two models) rather than against the other classes' GW and concentration
    # structure, which a texture trigger need not change: it is not gated by the outlier test.
    sus = [bool(r["suspicious"] and (zc > outlier_z or r["class_test_by"] == "roughness")) for r, zc in zip(results, z)]
    return z, med + outlier_z * mad, sus


def _record(r: dict, zc: float, sus: bool) -> dict[str, Any]:
    """A class's record of one defence (scan.json's per-class keys, and ``by_method`` under auto)."""
    return {"evidence": r["evidence"], "suspicious": sus, "outlier_z": float(zc), "class_test": bool(r["suspicious"]),
            "separation": r["mixture"].get("separation"), "decided_separation": r.get("decided_separation"),
            "llr": r["llr"], "class_test_by": r["class_test_by"], "concentrated": r["mixture"].get("concentrated"),
            "concentration_ratio": _ratio(r["focus_gain"]), "seconds": r["seconds"]}  # fmt: skip


def decide_class(recs: dict[str, dict[str, Any]]) -> tuple[list[str], str]:
    """Which defences call a class, and whose flags it keeps.

    ``recs``: the class's record of each defence (``suspicious``, ``class_test``,
    ``decided_separation``), HC's first. One defence: its own call. HC and AC (``auto``): HC's call,
    or AC's where HC's own class test fires on the class too (HC's cross-class gate waived; else
    AC's record is marked ``uncorroborated``). The flags are those of the calling defence with the
    larger Ashman's D of the statistic that flagged (the first defence's where none calls).
    Returns (calling defences, the deciding one).

    Why AC needs HC's class test (real GTSRB, demo preset, 2026-12-07): alone, AC's class test and
    gate called clean classes 32, 42 and 39 of the demo's poisoned SmallInception and 39, 24 and 32
    of its retrained, poison-free one; backed by HC's evidence standing out (outlier z > 2) instead,
    it still called clean class 32 of the poison-free model (HC z 4.1, HC's class test not fired).
    """
    called = [m for m, rec in recs.items() if rec["suspicious"]]
    if len(recs) > 1 and called == ["ac"] and not recs["hc"]["class_test"]:
        recs["ac"]["uncorroborated"] = True
        called = []
    by = max(called, key=lambda m: recs[m]["decided_separation"] or 0.0) if called else next(iter(recs))
    return called, by


def scan_run(run: str | os.PathLike, spec: DetectSpec | str = "hc", executor: Any = "local", jobs: int = 1,
             ray_address: str | None = None, device=None, min_size: int = 10, outlier_z: float = 3.5) -> dict[str, Any]:  # fmt: skip
    """Scan every class of ``run`` with ``spec`` (method ``auto``, ``hc`` or ``ac``); see the module docstring.

    ``auto`` runs HC and AC side by side (one LRP pass, one activation pass): a class is suspicious
    where HC calls it, or where AC calls it and HC's own class test fires on it too (AC's call
    corroborated, :func:`decide_class`); it keeps the flags of the defence
    whose flagged split lies further apart (Ashman's D of the statistic that flagged it;
    ``decided_by`` in scan.json).
    ``executor``: ``local``, ``ray`` or an executor object (:mod:`poisonsift.executors`).
    ``min_size``: classes with fewer training images are listed with evidence 0 and not split.
    ``outlier_z``: a class is suspicious where its own test says so *and* its evidence is an
    outlier among the classes (:func:`outlier_scores` above this; 3.5 is Iglewicz and Hoaglin's
    cut for modified z-scores); the images of other classes are not flagged.
    Returns the ``scan.json`` summary.
    """
    from poisonsift.metrics import detection_metrics
    from poisonsift.runs import load_poisoned

    if isinstance(spec, str):
        spec = DetectSpec(spec, rule=HC_DEFAULT_RULE, ac_reduce=SCAN_AC_REDUCE)
    if spec.rule not in MIXTURE_RULES:
        raise ConfigError(f"scan needs a rule that can call a class clean ({', '.join(MIXTURE_RULES)}), not {spec.rule!r}")
    if spec.method not in SCAN_METHODS:
        raise ConfigError(f"scan runs one of {', '.join(SCAN_METHODS)}, not {spec.method!r}")
    if spec.subset is not None:
        raise ConfigError("scan clusters whole classes; --subset is for detect")
    run = Path(run)
    t0 = time.perf_counter()
    # every argument checked before the LRP / activation pass (minutes on a real data set)
    ex = make_executor(executor, ray_address, jobs=jobs) if isinstance(executor, str) else executor
    pd = load_poisoned(run / "poisoned.npz")
    truth = (run / "attack.json").is_file()  # made by `poison`; an audit's run has no ground truth
    seconds: dict[str, float] = {}
    from poisonsift.training import load_checkpoint

    model, norm = load_checkpoint(run / "model.pt", device)
    spec = spec.for_model(model)  # lrp_rule "auto" -> the rule for this network, recorded in scan.json
    classes = np.unique(pd.y_train)
    big = [int(c) for c in classes if (pd.y_train == c).sum() >= min_size]
    if not big:
        raise DataError(f"no class has {min_size} or more training images to split")
    halves: dict[str, tuple[list[dict], np.ndarray, float, list[bool]]] = {}
    t = time.perf_counter()
    parts = spec.parts()
    for part in parts:
        results, secs = _half(run, part, pd, model, norm, big, ex, both=len(parts) > 1)
        seconds["lrp" if part.method == "hc" else "activations"] = secs
        halves[part.method] = (results, *_called(results, outlier_z))
    seconds["clustering"] = time.perf_counter() - t - sum(seconds.values())
    n = len(pd.y_train)
    scores = np.full(n, np.nan)
    flagged = np.zeros(n, dtype=bool)
    labels = np.full(n, -1)
    entries = []
    for i, c in enumerate(big):
        recs = {m: _record(res[i], z[i], sus[i]) for m, (res, z, _, sus) in halves.items()}
        called, by = decide_class(recs)
        r = halves[by][0][i]
        rows = np.asarray(r["rows"])
        scores[rows], labels[rows] = r["scores"], r["cluster_labels"]
        flagged[rows] = np.asarray(r["is_poisoned"]) & bool(called)
        e = {"class": c, "n": int(len(rows)), "n_flagged": int(flagged[rows].sum()), **recs[by],
             "suspicious": bool(called)}  # the evidence of the defence it is decided by (HC where none calls it)
        if len(recs) > 1:
            e.update(decided_by=by, called_by=called, by_method=recs)
        if truth:
            e["n_poisoned_true"] = int(pd.poison_mask[rows].sum())
        entries.append(e)
    for c in classes:
        if int(c) not in big:
            entries.append({"class": int(c), "n": int((pd.y_train == c).sum()), "n_flagged": 0, "evidence": 0.0,
                            "suspicious": False, "outlier_z": 0.0, "skipped": f"fewer than {min_size} images"})  # fmt: skip
    entries.sort(key=lambda e: (not e["suspicious"], -e["evidence"]))  # suspicious classes first
    first = next(iter(halves))
    summary: dict[str, Any] = {
        "method": spec.method,
        "rule": spec.rule,
        "outlier_z": outlier_z,
        "evidence_threshold": halves[first][2],  # where the outlier test starts, in evidence units
        "classes": entries,
        "suspicious_classes": [e["class"] for e in entries if e["suspicious"]],
        "n": n,
        "n_flagged": int(flagged.sum()),
        "seconds": seconds,
        "config": spec.to_dict(),
        "executor": ex.name,
        "features": halves[first][0][0]["features"],  # the heatmaps (HC, auto) / activations, for the report
    }
    if len(halves) > 1:
        summary["evidence_thresholds"] = {m: h[2] for m, h in halves.items()}
        summary["feature_files"] = {m: h[0][0]["features"] for m, h in halves.items()}
    if pd.path_train is not None:  # which files: the user's question
        summary["flagged_files"] = pd.path_train[flagged].tolist()
    if truth:  # a run made by `poison` (a control or cleaned run included) knows its poison
        m = detection_metrics(pd.poison_mask, flagged)
        summary.update(n_poisoned_true=int(pd.poison_mask.sum()), tpr=m["tpr"], tnr=m["tnr"])
    summary["seconds"]["total"] = time.perf_counter() - t0
    atomic_write_npz(run / "scan.npz", rows=np.arange(n), scores=scores, is_poisoned=flagged, cluster_labels=labels)
    atomic_write_json(run / "scan.json", summary)
    return summary
