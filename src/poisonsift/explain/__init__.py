"""Explanations: LRP heatmaps, hidden-layer activations, and heatmap point clouds.

One module per concept:

* :mod:`~poisonsift.explain.lrp` - heatmaps of a whole data set batch by batch (relevance starts
  at the logit of each sample's label and is summed over colours), the check that every layer has
  a rule, and the heatmap cache keyed by model, data and rule;
* :mod:`~poisonsift.explain.paper_rule` - the paper's rule (its code's epsilon rule with exponent
  2, BatchNorm passed), HC's default;
* :mod:`~poisonsift.explain.epsilon_gamma_box` - zennit's EpsilonGammaBox with BatchNorm folded
  exactly and a custom Gamma function (~3.5x faster than zennit's composite, same numbers);
* :mod:`~poisonsift.explain.activations` - a named layer's outputs (AC and the spectral defences);
* :mod:`~poisonsift.explain.clouds` - point clouds (paper 5.4, 5.5: a heatmap min-max normalised,
  scaled to sum 1, its most relevant pixels kept until their mass first exceeds 0.99; C = pairwise
  distances / their maximum), pooling onto a grid, and relevance concentration.
"""

from poisonsift.explain.activations import activations, activations_cache_file, resolve_layer
from poisonsift.explain.clouds import (PointCloud, point_cloud, point_clouds, pool_heatmaps, relevance_concentration,
                                     relevance_peak, relevance_roughness)  # fmt: skip
from poisonsift.explain.epsilon_gamma_box import LRP_PRECISIONS, fast_gamma_rule, lrp_dtype, nonnegative_input_convs
from poisonsift.explain.lrp import (
    LRP_CONFIG,
    LRP_CONFIGS,
    LRP_RULES,
    cached_lrp_heatmaps,
    check_lrp_layers,
    check_lrp_rule,
    lrp_rule_for,
    resolve_lrp_rule,
    lrp_cache_file,
    lrp_cache_path,
    lrp_heatmaps,
)

__all__ = [
    "LRP_RULES",
    "LRP_CONFIG",
    "LRP_CONFIGS",
    "LRP_PRECISIONS",
    "check_lrp_rule",
    "lrp_rule_for",
    "resolve_lrp_rule",
    "check_lrp_layers",
    "lrp_dtype",
    "resolve_layer",
    "activations",
    "activations_cache_file",
    "lrp_heatmaps",
    "lrp_cache_file",
    "lrp_cache_path",
    "cached_lrp_heatmaps",
    "fast_gamma_rule",
    "nonnegative_input_convs",
    "PointCloud",
    "point_cloud",
    "relevance_concentration",
    "relevance_peak",
    "relevance_roughness",
    "point_clouds",
    "pool_heatmaps",
]
