"""How a two-way split of one class becomes a poisoned / clean decision (:class:`ClusterRule`).

Every clustering defence ends in (N, 2) distances of each sample to two centres (Euclidean
squared for k-means, the entropic GW loss for Heatmap Clustering). The smaller cluster is the
candidate poison (poison is the minority of a class). Rules:

* ``smaller`` (the paper's and Activation Clustering's): the smaller cluster is poisoned;
* ``relative-size``: clusters holding less than ``size_threshold`` of the class (ART's 0.35);
* ``silhouette``: the smaller cluster if the split's silhouette reaches ``silhouette_threshold``;
* ``mixture``: reads the distribution of the split statistic t = d(clean)^2 - d(poisoned)^2
  (a projection on the axis between the centres; for HC at the paper's settings a linear
  function of each cloud's mean pairwise distance E[d]). A one- and a two-component Gaussian
  mixture are fitted to t; the class is suspicious only if BIC prefers two components **and**
  they are separated (Ashman's D = |m1 - m2| / sqrt((s1^2 + s2^2) / 2) >= ``min_separation``,
  2 by default: below it two Gaussians make one skewed hump, as clean classes do) **and** the
  minority holds at least ``min_weight`` of the class and ``min_count`` samples (a few outliers
  of a small class are not a poisoned group; a backdoor needs more images to be learned). Then a sample is poisoned where the
  minority component's posterior exceeds 1/2;
* ``mixture-tail``: the same test of the class, but a sample is poisoned where t lies more than
  ``tail_z`` (3.09: one-sided 0.1 % of a Gaussian) clean spreads beyond the clean median towards
  the poisoned mode - a per-sample test against the clean distribution, for a poisoned mode with a
  tail towards the clean one. The clean spread is measured on the side that faces the poisoned mode
  only (the RMS deviation from the median of the clean samples on that side): clean E[d] is skewed
  with its long tail away from the poison, and a two-sided spread would move the threshold into
  the poison (measured on a real p = 33 % class: TPR 0.981 two-sided, 0.990 one-sided, no clean
  image flagged either way).

Scores (higher = more likely poisoned, for AUROC) are t oriented towards the poisoned side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from poisonsift.errors import ConfigError

__all__ = ["ClusterRule", "RULES", "MIXTURE_RULES", "decide_split", "mixture_flags", "mixture_test", "mode_gap"]

RULES = ("smaller", "relative-size", "silhouette", "mixture", "mixture-tail")
MIXTURE_RULES = ("mixture", "mixture-tail")


@dataclass
class ClusterRule:
    """Which samples of a two-way split are poisoned (see the module docstring)."""

    rule: str = "smaller"
    size_threshold: float = 0.35
    silhouette_threshold: float = 0.10
    min_separation: float = 2.0
    min_weight: float = 0.005
    min_count: int = 10
    tail_z: float = 3.09
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"unknown cluster rule {self.rule!r}; use one of {', '.join(RULES)}")
        if not 0 < self.size_threshold < 1 or not 0 <= self.min_weight < 0.5:
            raise ConfigError("size_threshold must be in (0, 1) and min_weight in [0, 0.5)")
        if self.min_separation < 0 or self.tail_z <= 0:
            raise ConfigError("min_separation must be >= 0 and tail_z > 0")


def mixture_test(t: np.ndarray, rule: ClusterRule) -> dict[str, Any]:
    """Fit one and two 1-D Gaussians to ``t`` (N,); the class test of the mixture rules.

    Returns ``{"suspicious", "bic1", "bic2", "llr", "separation", "weights", "means", "stds", "minority_big",
    "minority", "posterior"}`` with ``posterior`` (N,) the minority component's posterior and
    ``llr`` = (BIC1 - BIC2) / 2N: the log-likelihood ratio of two modes against one per sample
    (nats), less BIC's penalty for the extra parameters - a class's evidence that comparable
    across classes of any size.
    """
    from sklearn.mixture import GaussianMixture

    x = np.asarray(t, dtype=np.float64).reshape(-1, 1)
    scale = float(x.std())
    out: dict[str, Any] = {"suspicious": False, "posterior": np.zeros(len(x))}
    if len(x) < 4 or scale <= 0:
        out.update(reason="too few samples or a constant statistic")
        return out
    z = (x - x.mean()) / scale
    g1 = GaussianMixture(1, random_state=rule.seed).fit(z)
    g2 = GaussianMixture(2, n_init=3, random_state=rule.seed, reg_covar=1e-6).fit(z)
    w = g2.weights_
    m = g2.means_[:, 0]
    s = np.sqrt(g2.covariances_.reshape(2))
    minority = int(np.argmin(w))
    sep = float(abs(m[0] - m[1]) / np.sqrt((s[0] ** 2 + s[1] ** 2) / 2))
    bic1, bic2 = float(g1.bic(z)), float(g2.bic(z))
    post = g2.predict_proba(z)[:, minority]
    big = bool(w[minority] >= rule.min_weight and w[minority] * len(x) >= rule.min_count)
    out.update(
        suspicious=bool(bic2 < bic1 and sep >= rule.min_separation and big), minority_big=big,
        bic1=bic1, bic2=bic2, llr=(bic1 - bic2) / (2 * len(x)), separation=sep, weights=w.tolist(),
        means=(m * scale + x.mean()).tolist(), stds=(s * scale).tolist(), minority=minority, posterior=post,
    )  # fmt: skip
    return out


def decide_split(dist: np.ndarray, rule: ClusterRule, silhouette: float | None = None,
                 poison_centre: int | None = None):  # fmt: skip
    """Turn (N, 2) squared distances to two centres into a decision.

    ``poison_centre`` makes the mixture rules' class test one-sided: the class is suspicious only
    if its minority mode lies towards that centre (HC: the centre whose heatmaps are the more
    concentrated, as a trigger's are). None: either side. The other rules ignore it.

    Returns ``(cluster_labels, scores, is_poisoned, poisoned_clusters, suspicious, analysis)``:
    labels are the nearest centres (for the mixture rules: the decided groups, the poisoned
    group under the smaller k-means cluster's index), scores the oriented split statistic.
    """
    dist = np.asarray(dist, dtype=np.float64)
    labels = dist.argmin(1)
    k = dist.shape[1]
    sizes = np.bincount(labels, minlength=k)
    rel = sizes / sizes.sum()
    analysis: dict[str, Any] = {"rule": rule.rule, "relative_sizes": rel.tolist(), "silhouette": silhouette}
    smaller = int(np.argmin(sizes))
    if k != 2:
        scores = -dist[:, smaller]
    else:
        scores = dist[:, 1 - smaller] - dist[:, smaller]  # t: > 0 nearer the smaller cluster's centre
    if rule.rule == "smaller":
        poisoned = [smaller]
    elif rule.rule == "relative-size":
        poisoned = [int(j) for j in np.flatnonzero(rel < rule.size_threshold)]
    elif rule.rule == "silhouette":
        poisoned = [smaller] if (silhouette is not None and silhouette >= rule.silhouette_threshold) else []
    else:
        if k != 2:
            raise ConfigError(f"the {rule.rule} rule needs a two-way split, got {k} clusters")
        # t > 0 lies nearer the smaller cluster's centre: the side of the poison_centre
        side = None if poison_centre is None else (1 if poison_centre == smaller else -1)
        flagged, scores, mt = mixture_flags(scores, rule, side)
        if "means" in mt:  # the k-means centre the minority mode lies towards
            mt["minority_centre"] = smaller if mt["minority_side"] > 0 else 1 - smaller
        analysis["mixture"] = mt
        labels = np.where(flagged, smaller, 1 - smaller)
        poisoned = [smaller] if flagged.any() else []
        return labels, scores, flagged, poisoned, bool(flagged.any()), analysis
    return labels, scores, np.isin(labels, poisoned), poisoned, bool(poisoned), analysis


def mixture_flags(t: np.ndarray, rule: ClusterRule, side: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The mixture rules on a 1-D per-sample statistic ``t`` (N,): the class test, then the flags.

    ``side``: +1 where the poisoned mode can only lie at the higher ``t`` (a one-sided test), -1 at
    the lower, None either. Returns ``(flagged (N,) bool, scores (N,), mixture)``: ``scores`` is
    ``t`` oriented towards the minority mode where the class is suspicious (else ``t``), and
    ``mixture`` is :func:`mixture_test`'s record without the posterior, its ``means`` in ``t``'s
    units, with ``minority_side`` (+1 / -1: where the minority mode lies) and, for
    ``mixture-tail``, ``tail_threshold`` (in ``t``'s units).
    """
    mt = mixture_test(t, rule)
    post = mt.pop("posterior")
    if "means" in mt:
        mt["minority_side"] = 1 if mt["means"][mt["minority"]] >= mt["means"][1 - mt["minority"]] else -1
        if side is not None and mt["minority_side"] != side and mt["suspicious"]:
            mt["suspicious"] = False
            mt["reason"] = "one-sided test: the minority mode lies on the side the poison cannot be"
    if not mt["suspicious"]:
        return np.zeros(len(t), dtype=bool), t, mt
    minority = mt["minority"]
    m_c = mt["means"][1 - minority]
    direction = float(mt["minority_side"])
    t = t * direction  # oriented: higher = towards the poisoned mode
    if rule.rule == "mixture":
        flagged = post > 0.5
    else:
        clean = t[post <= 0.5]
        med = float(np.median(clean))
        side_dev = clean[clean > med] - med  # the clean mode's flank that faces the poison
        spread = float(np.sqrt(np.mean(side_dev**2))) if len(side_dev) else mt["stds"][1 - minority]
        flagged = t > med + rule.tail_z * max(spread, 1e-12)
        mt["tail_threshold"] = (med + rule.tail_z * spread) * direction
    flagged &= t > m_c * direction  # never flag the far side of the clean mode
    return flagged, t, mt


def mode_gap(mixture: dict[str, Any]) -> float:
    """How far the minority mode of :func:`mixture_flags`' ``mixture`` lies above the majority
    (difference of the mode means, in the statistic's units); -inf where there are no two modes."""
    if "means" not in mixture:
        return float("-inf")
    m = mixture["means"]
    return float(m[mixture["minority"]] - m[1 - mixture["minority"]])
