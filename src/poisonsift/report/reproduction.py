"""Reports of a reproduction: ``report.html`` and ``report.md`` with figures beside them.

:func:`write_report` reads ``DIR/results.json`` (written by
:func:`poisonsift.experiments.reproduce`) and the cached runs it points to,
and writes into ``DIR``:

* every table, ours beside the paper's and the difference (percentage points);
* Figure 6 as a bar chart (per-class ASR of the amplitude-sticker runs);
* example poisoned images of each attack (as the paper's Figures 1-2);
* for three clean and three poisoned images of an attacked class, the LRP
  heatmap and its top-99 % point cloud (as the paper's Figures 3-4);
* a 2-D view of each defence's clusters coloured by ground truth: the first two
  PCA components of the activations (AC, SS) or of the pixels (raw PCA / ICA), and
  for HC a metric MDS embedding of GW distances (:func:`poisonsift.gw.gw_mds`: a
  seeded subset of clouds, each compressed to its own barycenter, and the k-means
  centres, drawn as stars). Where the GW geometry is one-dimensional - at the
  default epsilon every compression is a constant space c 1 1', so GW between two
  of them is (c - c')^2 - the second MDS axis carries nothing and is replaced by a
  labelled random jitter; detections without an MDS view show each cloud's GW
  distances to the two centres;
* seconds per stage.

Figures are PNG files in ``DIR/figures/``; the page needs no network. The HTML
marks ``<body data-images=N data-broken-images=M>`` once loaded, which the
browser test reads.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from poisonsift.errors import DataError
from poisonsift.report._page import CHECK_JS, CSS, savefig
from poisonsift.utils import atomic_write_bytes

__all__ = ["write_report", "table_markdown"]



def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _label(row: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in row["label"].items())


# --------------------------------------------------------------------------- figures


def _fig_examples(runs: dict[str, str], figdir: Path) -> Path | None:
    """Six poisoned training images per attack kind, upscaled."""
    import matplotlib.pyplot as plt

    from poisonsift.runs import load_poisoned

    if not runs:
        return None
    fig, axes = plt.subplots(len(runs), 6, figsize=(9, 1.7 * len(runs)), squeeze=False)
    for i, (kind, d) in enumerate(runs.items()):
        pd = load_poisoned(Path(d) / "poisoned.npz")
        idx = np.flatnonzero(pd.poison_mask)[:6]
        for j in range(6):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(idx):
                ax.imshow(pd.x_train[idx[j]], interpolation="nearest")
        axes[i, 0].set_title(kind, loc="left", fontsize=9)
    path = figdir / "examples.png"
    savefig(fig, path)
    return path


def _fig_heatmaps(run: str, figdir: Path) -> Path | None:
    """Image, LRP heatmap and point cloud of 3 clean and 3 poisoned images of the target class."""
    import matplotlib.pyplot as plt

    from poisonsift.explain import lrp_heatmaps, point_clouds
    from poisonsift.runs import load_poisoned, read_json
    from poisonsift.training import load_checkpoint

    d = Path(run)
    pd = load_poisoned(d / "poisoned.npz")
    target = read_json(d / "attack.json")["target_class"]
    rows = np.flatnonzero(pd.y_train == target)
    clean = rows[~pd.poison_mask[rows]][:3]
    poison = rows[pd.poison_mask[rows]][:3]
    pick = np.concatenate([clean, poison])
    if len(pick) == 0:
        return None
    model, norm = load_checkpoint(d / "model.pt")
    heat = lrp_heatmaps(model, pd.x_train[pick], pd.y_train[pick], norm, desc="report LRP", rule="auto")  # HC's default
    clouds = point_clouds(heat)
    fig, axes = plt.subplots(3, len(pick), figsize=(1.8 * len(pick), 5.6), squeeze=False)
    for j, i in enumerate(pick):
        axes[0, j].imshow(pd.x_train[i], interpolation="nearest")
        axes[0, j].set_title("poisoned" if pd.poison_mask[i] else "clean", fontsize=9)
        lim = float(np.abs(heat[j]).max()) or 1.0
        axes[1, j].imshow(heat[j], cmap="bwr", vmin=-lim, vmax=lim)
        c = clouds[j]
        axes[2, j].scatter(c.coords[:, 1], c.coords[:, 0], s=2 + 400 * c.p, c=c.p, cmap="viridis")
        axes[2, j].set_xlim(-0.5, 31.5)
        axes[2, j].set_ylim(31.5, -0.5)
        axes[2, j].set_aspect("equal")
        for r in range(3):
            axes[r, j].set_xticks([])
            axes[r, j].set_yticks([])
    axes[0, 0].set_ylabel("image")
    axes[1, 0].set_ylabel("LRP heatmap")
    axes[2, 0].set_ylabel("point cloud")
    path = figdir / "heatmaps.png"
    savefig(fig, path)
    return path


_VIEW_AXES = {
    "hc": ("GW distance to centre 0", "GW distance to centre 1"),
    "ac-hc": ("GW distance to centre 0", "GW distance to centre 1"),
    "mds-gw": ("MDS 1 of GW distances", "MDS 2 of GW distances"),
}


def _flat_second_axis(emb: np.ndarray, centres: np.ndarray) -> bool:
    """True when the second coordinate spreads less than 1e-6 of the first (a 1-D MDS)."""
    pts = np.concatenate([emb, centres]) if len(centres) else emb
    spread = np.ptp(pts, axis=0)
    return bool(spread[1] <= 1e-6 * max(spread[0], 1e-300))


def _fig_clusters(name: str, detections: dict[str, str], figdir: Path) -> Path | None:
    """One panel per defence: its 2-D view, coloured by ground truth, flagged samples ringed."""
    import matplotlib.pyplot as plt

    panels = []
    for alias, path in detections.items():
        arr = Path(path).with_suffix(".npz")
        if not arr.exists():
            continue
        with np.load(arr) as z:
            emb, truth, flag = z["embedding"], z["truth"], z["is_poisoned"]
        meta = json.loads(Path(path).read_text())
        ok = np.isfinite(emb).all(1)
        if ok.sum() == 0:
            continue
        view = meta.get("view") or {}
        centres = np.asarray(view.get("centres", []), dtype=float).reshape(-1, 2)
        panels.append((alias, meta.get("method", alias), view.get("kind"), emb[ok], truth[ok], flag[ok], centres))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.4), squeeze=False)
    for ax, (alias, method, kind, emb, truth, flag, centres) in zip(axes[0], panels):
        xl, yl = _VIEW_AXES.get(kind or method, ("component 1", "component 2"))
        if kind == "mds-gw" and _flat_second_axis(emb, centres):
            rng = np.random.default_rng(0)  # a 1-D embedding: spread it out so that the points are visible
            emb = np.column_stack([emb[:, 0], rng.uniform(-1, 1, len(emb))])
            centres = np.column_stack([centres[:, 0], np.zeros(len(centres))])
            yl = "random jitter (the GW view is 1-D)"
        ax.scatter(emb[~truth, 0], emb[~truth, 1], s=5, c="#1f77b4", alpha=0.6, label="clean")
        ax.scatter(emb[truth, 0], emb[truth, 1], s=5, c="#d62728", alpha=0.6, label="poisoned")
        ax.scatter(emb[flag, 0], emb[flag, 1], s=22, facecolors="none", edgecolors="k", linewidths=0.3, label="flagged")
        if len(centres):
            ax.scatter(centres[:, 0], centres[:, 1], s=120, marker="*", c="#ffbf00", edgecolors="k", linewidths=0.6,
                       label="k-means centres")  # fmt: skip
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
        ax.set_title(f"{alias} ({method})", fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    path = figdir / f"clusters-{name}.png"
    savefig(fig, path)
    return path


def _fig_per_class(table: dict[str, Any], figdir: Path) -> Path | None:
    """Figure 6: per-class ASR (percent) for each row (amplitude), target class left out."""
    import matplotlib.pyplot as plt

    series = [(r["label"], r.get("per_class_asr")) for r in table["rows"] if r.get("per_class_asr")]
    if not series:
        return None
    classes = sorted({int(c) for _, pc in series for c in pc})
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(11, 3.6))
    for i, (label, pc) in enumerate(series):
        vals = [100 * pc.get(str(c), np.nan) for c in classes]
        ax.bar(np.arange(len(classes)) + i * width, vals, width, label=", ".join(f"{k} {v}" for k, v in label.items()))
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2)
    ax.set_xticklabels(classes, fontsize=7)
    ax.set_xlabel("true class of the triggered test image")
    ax.set_ylabel("ASR (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, ncol=len(series))
    path = figdir / f"per-class-asr-{table['name']}.png"
    savefig(fig, path)
    return path


# --------------------------------------------------------------------------- tables


def _table_rows(t: dict[str, Any]) -> tuple[list[str], list[list[tuple[str, list[str]]]]]:
    """Header and, per row, the lines (kind, cells): ours, paper, diff."""
    label_keys = list(t["rows"][0]["label"])
    cols = t["columns"]
    merged = any("sitting" in r for r in t["rows"])  # a merged report says where each row came from
    header = [*label_keys, "", *cols, *(["sitting"] if merged else [])]
    blocks = []
    for r in t["rows"]:
        lab = [str(r["label"][k]) for k in label_keys]
        src = [str(r.get("sitting", ""))] if merged else []
        lines = [("ours", [*lab, "ours", *(_fmt(r["ours"].get(c)) for c in cols), *src])]
        if r.get("paper"):
            pad = [""] if merged else []
            lines.append(("paper", [*[""] * len(lab), "paper", *(_fmt(r["paper"].get(c)) for c in cols), *pad]))
            lines.append(("diff", [*[""] * len(lab), "Δ", *(
                (f"{r['diff'][c]:+.2f}" if c in r["diff"] else "") for c in cols), *pad]))  # fmt: skip
        blocks.append(lines)
    return header, blocks


def _html_table(t: dict[str, Any]) -> str:
    header, blocks = _table_rows(t)
    out = ["<table class='result' data-table='%s'>" % html.escape(t["name"]),
           "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]  # fmt: skip
    n_lab = len(t["rows"][0]["label"])
    for lines in blocks:
        for kind, cells in lines:
            tds = []
            for i, c in enumerate(cells):
                cls = "src" if i == n_lab else ""
                if kind == "diff" and c.startswith(("+", "-")) and i > n_lab:
                    cls = "pos" if c.startswith("+") else "neg"
                tds.append(f"<td class='{cls}'>{html.escape(c)}</td>")
            out.append(f"<tr class='{kind}'>" + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def table_markdown(t: dict[str, Any]) -> str:
    """One results table (from ``results.json``) as Markdown: ours, paper and difference per row."""
    header, blocks = _table_rows(t)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for block in blocks:
        for _, cells in block:
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_run_rows(t: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """Header and cells of each repeat's values (rows with several runs: Table 5), or None."""
    rows = [r for r in t["rows"] if r.get("per_run")]
    if not rows:
        return None
    label_keys = list(rows[0]["label"])
    cols = [c for c in rows[0]["per_run"][0] if c != "seed"]
    cells = [[*(str(r["label"][k]) for k in label_keys), str(pr["seed"]), *(_fmt(pr.get(c)) for c in cols)]
             for r in rows for pr in r["per_run"]]  # fmt: skip
    return [*label_keys, "seed", *cols], cells


def _timing_rows(res: dict[str, Any]) -> list[list[str]]:
    rows = []
    for t in res["tables"].values():
        for r in t["rows"]:
            secs = r.get("seconds", {})
            train = secs.get("train", [])
            cells = [t["name"], _label(r), f"{np.mean(train):.0f}" if train else "-"]
            parts = []
            for alias, per_run in secs.items():
                if alias == "train" or not per_run:
                    continue
                stages = per_run[0]
                parts.append(f"{alias}: {sum(stages.values()):.1f} (" + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + ")")
            cells.append("; ".join(parts))
            rows.append(cells)
    return rows


# --------------------------------------------------------------------------- entry point


def resolve_result_path(results_dir: str | os.PathLike, res: dict, path: str) -> Path:
    """A run / detection path from ``results.json`` (relative to the cache, or absolute in
    results written before this) as a path on this machine."""
    p = Path(path)
    if p.is_absolute() or res.get("cache") is None:  # a merged report's rows live in their sittings' caches
        return p
    return Path(results_dir) / res["cache"] / p


def write_report(out: str | Path, figures: bool = True) -> dict[str, Path]:
    """Write ``report.html`` and ``report.md`` (and ``figures/``) for the results in ``out``.

    Returns the written paths by name. A folder without ``results.json`` is a :class:`DataError`.
    """
    out = Path(out)
    rj = out / "results.json"
    if not rj.is_file():
        raise DataError(f"{out}: no results.json here; run `poisonsift reproduce --out {out}` first "
                        f"(or `poisonsift scan --run {out}` for the report of a scan)")
    try:
        res = json.loads(rj.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{rj}: not valid JSON ({exc})") from None
    import matplotlib

    for t in res["tables"].values():  # the runs and detections on this machine
        for r in t["rows"]:
            r["runs"] = [str(resolve_result_path(out, res, d)) for d in r["runs"]]
            r["detections"] = {a: [str(resolve_result_path(out, res, d)) for d in ds] for a, ds in r.get("detections", {}).items()}
    matplotlib.use("Agg")
    figdir = out / "figures"
    figdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    # Pick the runs the figures show: the first of each attack kind, the first with an HC detection.
    kinds: dict[str, str] = {}
    hc_run = None
    for t in res["tables"].values():
        for r in t["rows"]:
            for d in r["runs"]:
                try:
                    kind = json.loads((Path(d) / "attack.json").read_text())["attack"]
                except (OSError, KeyError, json.JSONDecodeError):
                    continue
                kinds.setdefault(f"amplitude ({_label(r)})" if kind == "amplitude" else kind, d)
            if hc_run is None and "HC" in r.get("detections", {}):
                hc_run = r["runs"][0]
    figs: dict[str, Path | None] = {}
    runs_here = "sittings" not in res  # a merged report's runs stayed in their sittings' caches
    if figures:
        if runs_here:
            figs["examples"] = _fig_examples(dict(list(kinds.items())[:6]), figdir)
            figs["heatmaps"] = _fig_heatmaps(hc_run, figdir) if hc_run else None
        for t in res["tables"].values():
            if t["name"] == "fig6":
                figs["fig6"] = _fig_per_class(t, figdir)  # from the table's per-class ASR alone
            for i, r in enumerate(t["rows"] if runs_here else []):
                first = {a: paths[0] for a, paths in r.get("detections", {}).items() if paths}
                if first:
                    figs[f"clusters-{t['name']}-{i}"] = _fig_clusters(f"{t['name']}-{i}", first, figdir)

    def rel(p: Path) -> str:
        return p.relative_to(out).as_posix()

    title = "poisonsift: reproduction of Heatmap Clustering (Schulth et al.)"
    meta = (f"preset <b>{html.escape(str(res.get('preset')))}</b>, executor {html.escape(str(res.get('executor')))}, "
            f"{res.get('seconds', 0):.0f} s in all; units computed this time: {res.get('computed', {}).get('runs', 0)} runs, "
            f"{res.get('computed', {}).get('detections', 0)} detections of {res.get('computed', {}).get('units', 0)} units. "
            "Rates in percent; Δ = ours - paper (percentage points).")  # fmt: skip
    if "unit_seconds" in res:
        us = res["unit_seconds"]
        meta += (f" The units took {us['runs'] + us['detections']:.0f} s when computed (runs {us['runs']:.0f} s, "
                 f"detections {us['detections']:.0f} s; summed over units, which overlap with --jobs).")  # fmt: skip
    made = res.get("poisonsift") or {}
    if made:
        meta += f" poisonsift {html.escape(str(made.get('version')))}, commit {html.escape(str(made.get('commit') or 'unknown'))}."
    shown = ("arch", "epochs", "max_steps", "batch_size", "lr", "schedule", "patience", "bf16")
    settings = ["; ".join(f"{k} {tc[k]}" for k in shown if tc.get(k) is not None) for tc in res.get("train_configs", [])]
    if settings and "sittings" not in res:
        meta += f" Training (each run its own seed): {html.escape(' | '.join(settings))}."
    for st in res.get("sittings", []):  # a merged report: where each row came from
        given = "; ".join(f"table {n}: {len(labs)} row{'s' if len(labs) > 1 else ''}" for n, labs in st["rows"].items())
        meta += (f" Sitting {html.escape(st['name'])} ({html.escape(str(st['date']))}, commit "
                 f"{html.escape(str(st['commit']))}, preset {html.escape(str(st['preset']))}, epochs "
                 f"{html.escape('/'.join(map(str, st['epochs'])))}): {html.escape(given or 'no row (superseded)')}.")  # fmt: skip
    h = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>",
         f"<style>{CSS}</style><script>{CHECK_JS}</script></head><body>", f"<h1>{title}</h1>", f"<p>{meta}</p>"]  # fmt: skip
    md = [f"# {title}", "", meta.replace("<b>", "**").replace("</b>", "**"), ""]
    for t in res["tables"].values():
        heading = f"{'Figure 6' if t['name'] == 'fig6' else 'Table ' + t['name']}: {t['title']}"
        h.append(f"<h2 id='table-{html.escape(t['name'])}'>{html.escape(heading)}</h2>")
        md += [f"## {heading}", ""]
        if t.get("note"):
            h.append(f"<p class='note'>Paper: {html.escape(t['note'])}.</p>")
            md += [f"Paper: {t['note']}.", ""]
        h.append(_html_table(t))
        md += [table_markdown(t), ""]
        runs_table = per_run_rows(t)
        if runs_table:
            head, cells = runs_table
            h.append("<details><summary>each run</summary><table class='result per-run'><tr>"
                     + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"
                     + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
                     + "</table></details>")  # fmt: skip
            md += ["Each run:", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            md += ["| " + " | ".join(row) + " |" for row in cells] + [""]
        if t["name"] == "fig6" and figs.get("fig6"):
            h.append(f"<img src='{rel(figs['fig6'])}' alt='per-class ASR'>")
            md += [f"![per-class ASR]({rel(figs['fig6'])})", ""]
        for i, r in enumerate(t["rows"]):
            p = figs.get(f"clusters-{t['name']}-{i}")
            if p:
                cap = f"clusters, {_label(r)} (first run): blue clean, red poisoned, ringed = flagged; HC: stars = its k-means centres"
                h.append(f"<figure><img src='{rel(p)}' alt='{html.escape(cap)}'><figcaption class='note'>{html.escape(cap)}</figcaption></figure>")
                md += [f"![{cap}]({rel(p)})", ""]
    if figs.get("examples"):
        h += ["<h2>Poisoned training images</h2>", f"<img src='{rel(figs['examples'])}' alt='poisoned examples'>"]
        md += ["## Poisoned training images", "", f"![poisoned examples]({rel(figs['examples'])})", ""]
    if figs.get("heatmaps"):
        cap = "LRP heatmaps (the paper's rule, HC's default; red positive relevance) and top-99 % point clouds (size = mass)"
        h += ["<h2>Heatmaps and point clouds</h2>", f"<p class='note'>{cap}, run {html.escape(Path(hc_run).name)}</p>",
              f"<img src='{rel(figs['heatmaps'])}' alt='heatmaps'>"]  # fmt: skip
        md += ["## Heatmaps and point clouds", "", cap, "", f"![heatmaps]({rel(figs['heatmaps'])})", ""]
    trows = _timing_rows(res)
    h += ["<h2>Seconds per stage</h2><table class='timings'><tr><th>table</th><th>row</th><th>train</th><th>detections</th></tr>"]
    h += ["<tr>" + "".join(f"<td class='src'>{html.escape(c)}</td>" for c in r) + "</tr>" for r in trows]
    h += ["</table>", f"<p class='note'>report written in {time.perf_counter() - t0:.1f} s</p></body></html>"]
    md += ["## Seconds per stage", "", "| table | row | train | detections |", "|---|---|---|---|"]
    md += ["| " + " | ".join(r) + " |" for r in trows]
    atomic_write_bytes(out / "report.html", "\n".join(h).encode())
    atomic_write_bytes(out / "report.md", ("\n".join(md) + "\n").encode())
    return {"html": out / "report.html", "md": out / "report.md", **{k: v for k, v in figs.items() if v}}
