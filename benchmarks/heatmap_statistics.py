"""Which per-image statistic of a class's LRP heatmaps separates the poison, on real runs.

For the attacked class of each ``--run`` (its ``attack.json``'s target class): the paper-rule heatmaps
(cached in ``RUN/cache``), then for each statistic its AUROC against the truth, the mixture class
test on it (Ashman's D, BIC llr, the gap of the two modes' means) and the flags of ``mixture`` and
``mixture-tail`` (poison on the high side). Statistics: HC's relevance concentration (minus the
entropy, nats; the default sample score), the share of positive relevance on the 9 most relevant
pixels, and the largest share in any w x w window (w = 3, 5: shaped like a sticker, so it presumes
the trigger's size - a measurement, not an option of the defence). Used for the ResNet-20 rows of
the README.

    python benchmarks/heatmap_statistics.py --run RUN [--run RUN ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from poisonsift.defences.decision import ClusterRule, mixture_flags, mode_gap
from poisonsift.explain import cached_lrp_heatmaps, relevance_concentration
from poisonsift.runs import load_poisoned, read_json
from poisonsift.training import load_checkpoint


def positive_share(heatmaps: np.ndarray, window: int | None) -> np.ndarray:
    """(N,) share of each heatmap's positive relevance on its ``window`` x ``window`` square that
    holds the most (None: on its 9 most relevant pixels, anywhere)."""
    pos = torch.from_numpy(np.asarray(heatmaps, dtype=np.float64)).clamp(min=0)
    total = pos.flatten(1).sum(1).clamp(min=1e-30)
    if window is None:
        return (pos.flatten(1).topk(9, 1).values.sum(1) / total).numpy()
    boxes = F.avg_pool2d(pos[:, None], window, stride=1) * window**2
    return (boxes.flatten(1).max(1).values / total).numpy()


def statistics(heatmaps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image statistics, higher = more concentrated (shares on a log scale, as the entropy)."""
    out = {"concentration": relevance_concentration(heatmaps)}
    n_pix = heatmaps.shape[-2] * heatmaps.shape[-1]
    for name, w in (("top-9 share", None), ("3x3 window share", 3), ("5x5 window share", 5)):
        # A heatmap with no positive relevance has share 0; floor it at the uniform map's share
        # (least concentrated), not at log(1e-12), which made a far mode of its own.
        floor = (9 if w is None else w * w) / n_pix
        out[name] = np.log(np.maximum(positive_share(heatmaps, w), floor))
    return out


def measure(run: Path) -> dict:
    pd = load_poisoned(run / "poisoned.npz")
    cls = int(read_json(run / "attack.json")["target_class"])
    idx = np.flatnonzero(pd.y_train == cls)
    truth = pd.poison_mask[idx]
    model, norm = load_checkpoint(run / "model.pt")
    heat = cached_lrp_heatmaps(model, pd.x_train[idx], pd.y_train[idx], norm, run / "cache", rule="paper")
    rows = {}
    for name, s in statistics(heat).items():
        row = {"auroc": float(roc_auc_score(truth, s)),
               "clean_p99": float(np.quantile(s[~truth], 0.99)),
               "poisoned_below_clean_p99": int((s[truth] < np.quantile(s[~truth], 0.99)).sum())}  # fmt: skip
        for rule in ("mixture", "mixture-tail"):
            flagged, _, mt = mixture_flags(s, ClusterRule(rule), side=1)
            row[rule] = {"tpr": float((flagged & truth).sum() / truth.sum()),
                         "tnr": float(1 - (flagged & ~truth).sum() / (~truth).sum()),
                         "separation": float(mt.get("separation", 0.0)), "llr": float(mt.get("llr", 0.0)),
                         "mode_gap": mode_gap(mt)}  # fmt: skip
        rows[name] = row
    return {"run": str(run), "class": cls, "n": int(len(idx)), "n_poisoned": int(truth.sum()), "statistics": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    results = [measure(r) for r in args.run]
    for res in results:
        print(f"{res['run']}: class {res['class']}, {res['n']} images, {res['n_poisoned']} poisoned")
        print(f"  {'statistic':18s} AUROC  D     mixture TPR/TNR   mixture-tail TPR/TNR  poisoned below clean p99")
        for name, r in res["statistics"].items():
            m, t = r["mixture"], r["mixture-tail"]
            print(f"  {name:18s} {r['auroc']:.3f}  {m['separation']:.2f}  {m['tpr']:.3f} / {m['tnr']:.4f}    "
                  f"{t['tpr']:.3f} / {t['tnr']:.4f}       {r['poisoned_below_clean_p99']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
