"""The report of a scan: which classes split into a poisoned and a clean group, and what was flagged.

:func:`write_scan_report` reads ``RUN/scan.json`` and ``RUN/scan.npz`` (written by
:func:`poisonsift.scan.scan_run`) and writes ``RUN/scan-report.html`` and ``RUN/scan-report.md``
with, in ``RUN/figures/``:

* ``scan-evidence.png``: every class's evidence (:func:`poisonsift.scan.class_evidence`),
  highest first; suspicious classes red, the cross-class outlier threshold dashed,
  and - where the run knows the truth - classes that hold poison hatched;
* ``scan-flagged.png``: for the top classes (suspicious first), the flagged images with the
  highest scores, each above its LRP heatmap (the scan's cached heatmaps for HC; for AC the
  paper's rule on just those images).
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from poisonsift.errors import DataError
from poisonsift.report._page import CHECK_JS, CSS, savefig
from poisonsift.utils import atomic_write_bytes

__all__ = ["write_scan_report"]


def _read_scan(run: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    sj, sz = run / "scan.json", run / "scan.npz"
    if not sj.is_file() or not sz.is_file():
        raise DataError(f"{run}: no scan.json / scan.npz here; run `poisonsift scan --run {run}` first")
    try:
        summary = json.loads(sj.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{sj}: not valid JSON ({exc})") from None
    with np.load(sz) as z:
        arrays = {k: z[k] for k in ("rows", "scores", "is_poisoned", "cluster_labels")}
    return summary, arrays


def _fig_evidence(summary: dict[str, Any], figdir: Path) -> Path:
    """Bar chart of every class's evidence, highest first."""
    import matplotlib.pyplot as plt

    entries = summary["classes"]
    ev = np.array([e["evidence"] for e in entries], dtype=float)
    sus = np.array([e["suspicious"] for e in entries])
    truth = np.array([e.get("n_poisoned_true", 0) > 0 for e in entries])
    fig, ax = plt.subplots(figsize=(max(6.0, 0.24 * len(entries)), 3.2))
    bars = ax.bar(np.arange(len(entries)), ev, color=np.where(sus, "#d62728", "#9e9e9e"), edgecolor="k", linewidth=0.3)
    for b, t in zip(bars, truth):
        if t:
            b.set_hatch("///")
    thr = summary.get("evidence_threshold")
    if thr is not None:
        ax.axhline(thr, ls="--", c="k", lw=0.8, label=f"outlier threshold (modified z {summary.get('outlier_z', 3.5):g})")
        ax.legend(fontsize=8)
    ax.set_xticks(np.arange(len(entries)))
    ax.set_xticklabels([str(e["class"]) for e in entries], fontsize=7, rotation=90)
    ax.set_xlabel("class (highest evidence first; red = suspicious" + (", hatched = holds poison)" if truth.any() else ")"))
    ax.set_ylabel("evidence (log-likelihood ratio / image)")
    path = figdir / "scan-evidence.png"
    savefig(fig, path)
    return path


def _heatmaps_of(run: Path, summary: dict[str, Any], pd, rows: np.ndarray) -> np.ndarray:
    """(len(rows), H, W) heatmaps: the scan's cached ones (HC), else HC's default rule for this network on these rows."""
    feats = summary.get("features")
    if summary.get("method") in ("hc", "auto") and feats and (run / feats).is_file():
        return np.asarray(np.load(run / feats, mmap_mode="r")[rows])
    from poisonsift.explain import lrp_heatmaps
    from poisonsift.training import load_checkpoint

    model, norm = load_checkpoint(run / "model.pt")
    return lrp_heatmaps(model, pd.x_train[rows], pd.y_train[rows], norm, desc="report LRP", rule="auto")


def _top_flagged(summary: dict[str, Any], arrays: dict[str, np.ndarray], y: np.ndarray, n_classes: int,
                 per_class: int) -> list[tuple[int, np.ndarray]]:  # fmt: skip
    """(class, rows) for the first ``n_classes`` classes with flagged images, suspicious ones first."""
    order = sorted(summary["classes"], key=lambda e: (not e["suspicious"], -e["evidence"]))
    out = []
    for e in order:
        rows = np.flatnonzero((y == e["class"]) & arrays["is_poisoned"])
        if len(rows):
            out.append((e["class"], rows[np.argsort(-arrays["scores"][rows], kind="stable")[:per_class]]))
        if len(out) == n_classes:
            break
    return out


def _fig_flagged(run: Path, summary: dict[str, Any], pd, picks: list[tuple[int, np.ndarray]], figdir: Path) -> Path:
    """For each picked class one block of columns: the flagged image above its heatmap."""
    import matplotlib.pyplot as plt

    rows = np.concatenate([r for _, r in picks])
    heat = _heatmaps_of(run, summary, pd, rows)
    fig, axes = plt.subplots(2, len(rows), figsize=(1.5 * len(rows), 3.4), squeeze=False)
    j = 0
    for cls, rs in picks:
        for k, i in enumerate(rs):
            axes[0, j].imshow(pd.x_train[i], interpolation="nearest")
            h = heat[j]
            lim = float(np.abs(h).max()) or 1.0
            axes[1, j].imshow(h, cmap="bwr", vmin=-lim, vmax=lim)
            title = f"class {cls}" if k == 0 else ""
            mark = " (poisoned)" if pd.poison_mask[i] else (" (clean)" if pd.poison_mask.any() else "")
            axes[0, j].set_title(f"{title}\n#{i}{mark}", fontsize=7, loc="left")
            for r in range(2):
                axes[r, j].set_xticks([])
                axes[r, j].set_yticks([])
            j += 1
    axes[0, 0].set_ylabel("flagged image", fontsize=8)
    axes[1, 0].set_ylabel("LRP heatmap", fontsize=8)
    path = figdir / "scan-flagged.png"
    savefig(fig, path)
    return path


def write_scan_report(run: str | Path, top: int = 3, per_class: int = 5, figures: bool = True) -> dict[str, Path]:
    """Write ``scan-report.html`` and ``scan-report.md`` (and ``figures/``) for the scan in ``run``.

    ``top``: classes shown with their flagged images; ``per_class``: images per class (the
    highest scores). Returns the written paths by name. A run without a scan is a :class:`DataError`.
    """
    from poisonsift.runs import load_poisoned

    run = Path(run)
    summary, arrays = _read_scan(run)
    pd = load_poisoned(run / "poisoned.npz")
    if len(arrays["rows"]) != len(pd.y_train):
        raise DataError(f"{run}/scan.npz covers {len(arrays['rows'])} images, the run {len(pd.y_train)}: "
                        "scan the run again")  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    figdir = run / "figures"
    figs: dict[str, Path] = {}
    picks = _top_flagged(summary, arrays, pd.y_train, top, per_class)
    if figures:
        figdir.mkdir(parents=True, exist_ok=True)
        figs["evidence"] = _fig_evidence(summary, figdir)
        if picks:
            figs["flagged"] = _fig_flagged(run, summary, pd, picks, figdir)

    sus = summary["suspicious_classes"]
    truth = f" TPR {summary['tpr']:.4f}, TNR {summary['tnr']:.4f} against the run's ground truth." if "tpr" in summary else ""
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in summary["seconds"].items())
    how = "HC and AC side by side (auto)" if summary["method"] == "auto" else summary["method"].upper()
    meta = (f"{how} with the {summary['rule']} decision on every class of {summary['n']} "
            f"training images: suspicious classes {', '.join(map(str, sus)) or 'none'}; {summary['n_flagged']} "
            f"images flagged.{truth} Seconds: {secs}.")  # fmt: skip
    head = ["class", "name", "n", "flagged", "evidence", "suspicious"] + (["poisoned (truth)"] if "tpr" in summary else [])
    body = []
    for e in summary["classes"][:10]:
        name = pd.classes[e["class"]] if e["class"] < len(pd.classes) else ""
        # auto: which defences called the class, the one whose flags it keeps first
        by = e.get("called_by") or []
        called = " + ".join(sorted(m.upper() for m in by)) + (f" (flags: {e['decided_by'].upper()})" if len(by) > 1 else "")
        cells = [str(e["class"]), name, str(e["n"]), str(e["n_flagged"]), f"{e['evidence']:.3f}",
                 ("yes, " + called if by else "yes") if e["suspicious"] else ""]  # fmt: skip
        body.append(cells + ([str(e.get("n_poisoned_true", 0))] if "tpr" in summary else []))

    def rel(p: Path) -> str:
        return p.relative_to(run).as_posix()

    title = f"poisonsift scan of {run.name}"
    h = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
         f"<style>{CSS}</style><script>{CHECK_JS}</script></head><body>", f"<h1>{html.escape(title)}</h1>",
         f"<p>{html.escape(meta)}</p>", "<h2>Classes by evidence</h2>"]  # fmt: skip
    md = [f"# {title}", "", meta, "", "## Classes by evidence", ""]
    if "evidence" in figs:
        cap = ("evidence per class: log-likelihood ratio per image of two modes against one on the split statistic, "
               "where the minority could be poison (0 otherwise)")
        h.append(f"<figure><img src='{rel(figs['evidence'])}' alt='evidence per class'><figcaption class='note'>"
                 f"{html.escape(cap)}</figcaption></figure>")  # fmt: skip
        md += [f"![{cap}]({rel(figs['evidence'])})", ""]
    h.append("<table class='scan'><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
    h += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body]
    h.append("</table>")
    md += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(c) + " |" for c in body] + [""]
    if "flagged" in figs:
        shown = ", ".join(f"class {c} ({len(r)})" for c, r in picks)
        cap = f"flagged images with the highest scores and their LRP heatmaps (red: positive relevance): {shown}"
        h += ["<h2>Flagged images</h2>", f"<figure><img src='{rel(figs['flagged'])}' alt='flagged images'>"
              f"<figcaption class='note'>{html.escape(cap)}</figcaption></figure>"]  # fmt: skip
        md += ["## Flagged images", "", f"![{cap}]({rel(figs['flagged'])})", ""]
    if picks and pd.path_train is not None:  # the files to look at, by the numbers under the images
        files = [(str(i), str(c), str(pd.path_train[i])) for c, r in picks for i in r]
        h.append("<table class='scan'><tr><th>#</th><th>class</th><th>file</th></tr>"
                 + "".join(f"<tr><td>{i}</td><td>{c}</td><td>{html.escape(f)}</td></tr>" for i, c, f in files)
                 + "</table>")  # fmt: skip
        md += ["| # | class | file |", "|---|---|---|"] + [f"| {i} | {c} | `{f}` |" for i, c, f in files] + [""]
    h.append("</body></html>")
    atomic_write_bytes(run / "scan-report.html", "\n".join(h).encode())
    atomic_write_bytes(run / "scan-report.md", ("\n".join(md) + "\n").encode())
    return {"html": run / "scan-report.html", "md": run / "scan-report.md", **figs}
