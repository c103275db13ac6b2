"""The decision on a two-way split: the mixture rules on synthetic one- and two-mode statistics."""

import numpy as np
import pytest

from poisonsift.defences import ClusterRule, decide_split, mixture_test, result_from_distances
from poisonsift.defences.decision import mixture_flags, mode_gap
from poisonsift.errors import ConfigError


def _dist_from_stat(t: np.ndarray) -> np.ndarray:
    """(N, 2) squared distances to centres at 0 and 1 of 1-D points t (cluster 1 the poisoned side)."""
    return np.column_stack([t**2, (t - 1) ** 2])


def _two_modes(n_clean=900, n_poison=100, seed=0, tail=0.0):
    rng = np.random.default_rng(seed)
    clean = rng.gamma(8.0, 0.02, n_clean)  # skewed, like E[d] of clean clouds
    poison = rng.normal(0.9, 0.05, n_poison)
    if tail:  # a few poisoned samples on the way to the clean mode
        k = int(tail * n_poison)
        poison[:k] = rng.uniform(0.45, 0.7, k)
    t = np.concatenate([clean, poison])
    truth = np.r_[np.zeros(n_clean, bool), np.ones(n_poison, bool)]
    return t, truth


@pytest.mark.parametrize("rule", ["mixture", "mixture-tail"])
def test_mixture_rules_find_the_poisoned_mode(rule):
    t, truth = _two_modes()
    labels, scores, flagged, poisoned, suspicious, analysis = decide_split(_dist_from_stat(t), ClusterRule(rule))
    assert suspicious and analysis["mixture"]["separation"] >= 2
    assert flagged[truth].mean() == 1.0 and flagged[~truth].mean() <= 0.01
    assert scores[truth].min() > np.median(scores[~truth])  # oriented: higher = poisoned


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("rule", ["mixture", "mixture-tail"])
def test_one_skewed_mode_is_called_clean(rule, seed):
    # A clean class: one skewed hump (BIC alone may like two Gaussians on it; the separation does not).
    rng = np.random.default_rng(seed)
    t = np.concatenate([rng.gamma(3.0, 0.05, 2000), rng.gamma(1.5, 0.12, 300)])
    res = result_from_distances(_dist_from_stat(t), ClusterRule(rule))
    assert not res.suspicious and not res.is_poisoned.any() and res.poisoned_clusters == []
    assert res.analysis["mixture"]["separation"] < 2


def test_mixture_tail_takes_the_long_tail_that_the_posterior_leaves():
    t, truth = _two_modes(tail=0.2, seed=1)
    post = decide_split(_dist_from_stat(t), ClusterRule("mixture"))[2]
    tail = decide_split(_dist_from_stat(t), ClusterRule("mixture-tail"))[2]
    assert tail[truth].sum() >= post[truth].sum()
    assert tail[~truth].mean() <= 0.01


def test_mixture_test_reports_its_inputs():
    t, _ = _two_modes()
    mt = mixture_test(t, ClusterRule("mixture"))
    assert mt["bic2"] < mt["bic1"] and len(mt["weights"]) == 2 and mt["posterior"].shape == t.shape
    assert abs(min(mt["weights"]) - 0.1) < 0.02
    assert mixture_test(np.ones(50), ClusterRule("mixture"))["suspicious"] is False


def test_rule_validation():
    with pytest.raises(ConfigError, match="unknown cluster rule"):
        ClusterRule("largest")
    with pytest.raises(ConfigError):
        ClusterRule("mixture", min_weight=0.7)


@pytest.mark.parametrize("rule", ["mixture", "mixture-tail"])
def test_poison_centre_makes_the_class_test_one_sided(rule):
    t, truth = _two_modes()
    dist = _dist_from_stat(t)  # the minority mode lies towards centre 1
    toward = result_from_distances(dist, ClusterRule(rule), poison_centre=1)
    assert toward.suspicious and toward.is_poisoned[truth].mean() == 1.0
    away = result_from_distances(dist, ClusterRule(rule), poison_centre=0)
    mt = away.analysis["mixture"]
    assert not away.suspicious and not away.is_poisoned.any() and away.poisoned_clusters == []
    assert mt["minority_centre"] == 1 and not mt["suspicious"] and "one-sided" in mt["reason"]
    # the paper's rule takes the smaller cluster whatever the side
    assert result_from_distances(dist, ClusterRule("smaller"), poison_centre=0).is_poisoned[truth].all()


@pytest.mark.parametrize("rule", ["mixture", "mixture-tail"])
def test_mixture_flags_on_a_statistic_match_the_split_and_report_its_units(rule):
    # The 1-D path (HC's concentration) and the split path give the same flags; the modes' means
    # stay in the statistic's units, so mode_gap is an effect size in them, the sign the side.
    t, truth = _two_modes()
    flagged, _, mt = mixture_flags(t, ClusterRule(rule), side=1)
    split = decide_split(_dist_from_stat(t), ClusterRule(rule))
    assert np.array_equal(flagged, split[2]) and flagged[truth].all()
    assert mt["minority_side"] == 1 and abs(mode_gap(mt) - (0.9 - 0.16)) < 0.03  # poison 0.9, clean gamma mean 0.16
    flipped, _, mt_f = mixture_flags(-t, ClusterRule(rule), side=-1)  # the same class, mirrored
    assert np.array_equal(flipped, flagged) and abs(mode_gap(mt_f) + mode_gap(mt)) < 1e-6
    vetoed, _, mt_v = mixture_flags(t, ClusterRule(rule), side=-1)  # poison can only be low: none
    assert not vetoed.any() and not mt_v["suspicious"] and "one-sided" in mt_v["reason"]
    assert mode_gap(mixture_test(np.ones(50), ClusterRule(rule))) == float("-inf")
