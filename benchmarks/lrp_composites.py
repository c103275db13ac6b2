"""Which LRP composite, and which explained output, lets HC split the attacked class of a network.

For the attacked class of each ``--run`` (its ``attack.json``'s target class), and optionally the
``--clean-classes K`` largest classes that hold no poison, the heatmaps of every ``--variant``, then
HC's defaults on them (``HeatmapClustering.cluster``: clouds, GW k-means, the class tests, the
flags): ACC / TPR / TNR / AUROC, whether the class is called, and per-image statistics' AUROC -
the relevance concentration (HC's sample score) and the largest share of positive relevance in a
3 x 3 window (shaped like the sticker: a measurement, not an option of the defence).

Variants (``COMPOSITE[+contrast]``):

* ``paper`` - the paper's epsilon rule with exponent 2 (``--lrp-rule paper``);
* ``egb`` - zennit's EpsilonGammaBox as HC runs it (``--lrp-rule epsilon-gamma-box``);
* ``eplus``, ``eplus-flat``, ``ea2b1``, ``ea2b1-flat`` - zennit's EpsilonPlus, EpsilonPlusFlat,
  EpsilonAlpha2Beta1 and EpsilonAlpha2Beta1Flat (z+ / alpha-beta on convolutions, epsilon on dense
  layers, the flat rule on the first layer);
* ``epsilon`` - the epsilon rule on every layer (close to gradient x input);
* ``+contrast`` - relevance starts at the logit of the label minus the mean of the other logits
  (a linear layer appended to the network, epsilon rule) instead of the label's logit alone.

Every zennit variant gets the same canonizers as ``egb`` (BatchNorm folded into the convolution
before it, torchvision's residual blocks canonized; a BatchNorm that follows no convolution, as in
pre-activation blocks, takes the epsilon rule).

    python benchmarks/lrp_composites.py --run RUN [--run RUN ...] [--variant egb --variant eplus ...]
        [--clean-classes 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from heatmap_statistics import positive_share  # this folder's: the window share measured there too
from sklearn.metrics import roc_auc_score
from torch import nn

from poisonsift.defences import HCConfig, HeatmapClustering
from poisonsift.explain import lrp_heatmaps, relevance_concentration
from poisonsift.metrics import detection_metrics
from poisonsift.runs import load_poisoned, read_json
from poisonsift.training import load_checkpoint

VARIANTS = ("paper", "egb", "eplus", "eplus-flat", "ea2b1", "ea2b1-flat", "epsilon")


def zennit_composite(name: str):
    """The zennit composite of a variant (None for ``paper`` / ``egb``: HC's own rules)."""
    from zennit import composites as Z
    from zennit.rules import Epsilon
    from zennit.types import Convolution, Linear

    from poisonsift.explain.epsilon_gamma_box import _FoldBatchNorm
    from poisonsift.explain.paper_rule import residual_canonizers

    bn = [(nn.modules.batchnorm._BatchNorm, Epsilon())]
    canon = [_FoldBatchNorm(), *residual_canonizers()]
    if name in ("paper", "egb"):
        return None
    if name == "epsilon":
        return Z.LayerMapComposite([*bn, *Z.layer_map_base(), (Convolution, Epsilon()), (Linear, Epsilon())],
                                   canonizers=canon)  # fmt: skip
    cls = {"eplus": Z.EpsilonPlus, "eplus-flat": Z.EpsilonPlusFlat, "ea2b1": Z.EpsilonAlpha2Beta1,
           "ea2b1-flat": Z.EpsilonAlpha2Beta1Flat}[name]  # fmt: skip
    return cls(layer_map=bn, canonizers=canon)


class Contrast(nn.Module):
    """The network's logits minus, for each class, the mean of the other classes' logits: a linear
    layer (weights 1 on the diagonal, -1 / (C - 1) elsewhere) that LRP's epsilon rule explains."""

    def __init__(self, model: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.head = nn.Linear(num_classes, num_classes, bias=False)
        w = torch.full((num_classes, num_classes), -1.0 / (num_classes - 1))
        w.fill_diagonal_(1.0)
        self.head.weight.data.copy_(w)
        self.head.weight.requires_grad_(False)
        self.arch = getattr(model, "arch", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.model(x))


def heatmaps_of(variant: str, model, images, labels, norm) -> tuple[np.ndarray, float]:
    comp_name, _, output = variant.partition("+")
    if comp_name not in VARIANTS or output not in ("", "contrast"):
        raise SystemExit(f"unknown variant {variant!r}: COMPOSITE[+contrast], COMPOSITE one of {', '.join(VARIANTS)}")
    num_classes = [m for m in model.modules() if isinstance(m, nn.Linear)][-1].out_features
    net = Contrast(model, num_classes).eval() if output == "contrast" else model
    comp = zennit_composite(comp_name)
    rule = "paper" if comp_name == "paper" else "epsilon-gamma-box"  # HC's own rules where comp is None
    t = time.perf_counter()
    heat = lrp_heatmaps(net, images, labels, norm, composite=comp, rule=rule, desc=variant)
    return heat, time.perf_counter() - t


def evaluate(heat: np.ndarray, truth: np.ndarray) -> dict:
    res = HeatmapClustering(HCConfig(view_samples=0)).cluster(heat)
    m = detection_metrics(truth, res.is_poisoned, res.scores)
    out = {"suspicious": bool(res.suspicious), "flagged": int(res.is_poisoned.sum()),
           **{k: round(float(m[k]), 4) for k in ("acc", "tpr", "tnr", "auroc")}}  # fmt: skip
    if truth.any() and not truth.all():
        conc = relevance_concentration(heat)
        out["conc_auroc"] = round(float(roc_auc_score(truth, conc)), 4)
        out["win3_auroc"] = round(float(roc_auc_score(truth, positive_share(heat, 3))), 4)
        pos = heat.clip(min=0).reshape(len(heat), -1)
        out["pos_share"] = round(float(pos.sum(1).mean() / np.abs(heat).reshape(len(heat), -1).sum(1).mean()), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True)
    ap.add_argument("--variant", action="append", default=None,
                    help=f"COMPOSITE[+contrast], COMPOSITE one of {', '.join(VARIANTS)} (default: all, plain output)")
    ap.add_argument("--clean-classes", type=int, default=0, help="also the K largest unpoisoned classes")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    variants = a.variant or list(VARIANTS)
    rows = []
    for run in map(Path, a.run):
        pd = load_poisoned(run / "poisoned.npz")
        target = int(read_json(run / "attack.json")["target_class"])
        model, norm = load_checkpoint(run / "model.pt")
        counts = np.bincount(pd.y_train, minlength=int(pd.y_train.max()) + 1)
        poisoned_classes = set(np.unique(pd.y_train[pd.poison_mask]).tolist())
        clean = [int(c) for c in np.argsort(-counts) if int(c) not in poisoned_classes and int(c) != target]
        for cls in [target, *clean[: a.clean_classes]]:
            rows_c = np.flatnonzero(pd.y_train == cls)
            truth = pd.poison_mask[rows_c]
            for v in variants:
                heat, sec = heatmaps_of(v, model, pd.x_train[rows_c], pd.y_train[rows_c], norm)
                r = {"run": str(run), "arch": getattr(model, "arch", None), "class": cls, "n": len(rows_c),
                     "poisoned": int(truth.sum()), "variant": v, "lrp_s": round(sec, 1), **evaluate(heat, truth)}  # fmt: skip
                rows.append(r)
                print(json.dumps(r), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
