import numpy as np
import pytest
import torch
from torch import nn

from poisonsift.defences import (
    ACConfig,
    ActivationClustering,
    ClusterRule,
    HCConfig,
    HeatmapClustering,
    RawClustering,
    RawConfig,
    SpectralConfig,
    SpectralSignatures,
    build_defence,
    rank_classes,
)
from poisonsift.errors import ConfigError, DataError
from poisonsift.gw import GWKMeansConfig
from poisonsift.metrics import detection_metrics


class Probe(nn.Module):
    """Any user model: a fixed random projection ('feat') and a linear head."""

    def __init__(self, k=6):
        super().__init__()
        torch.manual_seed(0)
        self.flat = nn.Flatten()
        self.feat = nn.Linear(3 * 32 * 32, 32)
        self.act = nn.ReLU()
        self.head = nn.Linear(32, k)

    def forward(self, x):
        return self.head(self.act(self.feat(self.flat(x))))


def poisoned_class(n_clean=30, n_poison=10, seed=0):
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(100, 20, (n_clean + n_poison, 32, 32, 3)), 0, 255).astype(np.uint8)
    x[n_clean:, 8:20, 8:20] = (245, 255, 0)  # a big trigger so every representation sees it
    truth = np.zeros(len(x), dtype=bool)
    truth[n_clean:] = True
    return x, np.full(len(x), 5), truth


@pytest.mark.parametrize("defence, n_clean", [
    (RawClustering(RawConfig(reducer="pca")), 30),
    (RawClustering(RawConfig(reducer="ica", n_components=2)), 30),
    (ActivationClustering(ACConfig(layer="act", reduce="pca")), 30),
    # Whitened, the 10 components weigh the same: on this toy's 32 random ReLU features (point
    # masses at 0) it needs ~200 images before the poison's mode beats the features' own; at 40
    # and 120 it split noise (measured), hence --ac-reduce pca for small classes.
    (ActivationClustering(ACConfig(layer="act")), 150),
])  # fmt: skip
def test_defences_find_planted_poison(defence, n_clean):
    x, y, truth = poisoned_class(n_clean=n_clean, n_poison=n_clean // 3)
    res = defence.detect(Probe(), x, y)
    m = detection_metrics(truth, res.is_poisoned, res.scores)
    assert m["acc"] == 1.0 and m["auroc"] == 1.0
    assert sorted(res.cluster_sizes) == [n_clean // 3, n_clean] and res.suspicious
    assert set(res.seconds) >= {"clustering"}


def test_same_seed_same_decisions():
    x, y, _ = poisoned_class(seed=2)
    a = ActivationClustering(ACConfig(layer="act", seed=4)).detect(Probe(), x, y)
    b = ActivationClustering(ACConfig(layer="act", seed=4)).detect(Probe(), x, y)
    assert np.array_equal(a.is_poisoned, b.is_poisoned) and np.array_equal(a.scores, b.scores)


def test_spectral_flags_top_share():
    x, y, truth = poisoned_class()
    res = SpectralSignatures(SpectralConfig(layer="act", eps_hat=0.25)).detect(Probe(), x, y)
    assert res.is_poisoned.sum() == int(np.ceil(1.5 * 0.25 * 40))
    assert detection_metrics(truth, res.is_poisoned, res.scores)["tpr"] == 1.0


def test_relative_size_rule_can_call_a_class_clean():
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(100, 20, (40, 32, 32, 3)), 0, 255).astype(np.uint8)
    x[:20, :, :16] = 0  # two equal halves
    res = RawClustering(RawConfig(rule=ClusterRule("relative-size", size_threshold=0.35))).detect(None, x, np.zeros(40))
    assert not res.suspicious and not res.is_poisoned.any()


def test_hc_runs_on_any_model_and_is_deterministic():
    x, y, truth = poisoned_class(n_clean=6, n_poison=4)
    conv_net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(4),
                             nn.Flatten(), nn.Linear(4 * 8 * 8, 6)).eval()  # fmt: skip
    cfg = HCConfig(gw=GWKMeansConfig(seed=1, max_iter=2, bary_max_iter=5))
    a = HeatmapClustering(cfg).detect(conv_net, x, y)
    b = HeatmapClustering(cfg).detect(conv_net, x, y)
    assert a.cluster_labels.shape == (10,) and np.isfinite(a.scores).all()
    assert np.array_equal(a.is_poisoned, b.is_poisoned)
    assert set(a.seconds) == {"lrp", "clouds", "clustering", "view"}
    # The view: an MDS of GW distances of every cloud (10 < 300) and the two centres, seeded.
    assert a.embedding.shape == (10, 2) and np.isfinite(a.embedding).all() and np.allclose(a.embedding, b.embedding)
    assert a.analysis["view"]["kind"] == "mds-gw" and np.shape(a.analysis["view"]["centres"]) == (2, 2)
    cheap = HeatmapClustering(HCConfig(gw=cfg.gw, view_samples=0)).detect(conv_net, x, y)
    assert "view" not in cheap.seconds and np.array_equal(cheap.is_poisoned, a.is_poisoned)
    assert (cheap.embedding >= 0).all() and "view" not in cheap.analysis  # GW distances to the two centres


def test_bad_inputs():
    x, y, _ = poisoned_class()
    with pytest.raises(ConfigError, match="unknown detection method"):
        build_defence("magic")
    with pytest.raises(ConfigError, match="unknown layer 'nope'"):
        ActivationClustering(ACConfig(layer="nope")).detect(Probe(), x, y)
    with pytest.raises(DataError, match="at least 2 images"):
        ActivationClustering(ACConfig(layer="act")).detect(Probe(), x[:1], y[:1])
    with pytest.raises(DataError, match="model has 6 outputs"):
        ActivationClustering(ACConfig(layer="act")).detect(Probe(), x, np.full(len(x), 9))


def test_detection_metrics_hand_built_and_no_poison():
    m = detection_metrics(np.array([1, 1, 0, 0, 0], bool), np.array([1, 0, 1, 0, 0], bool), np.array([.9, .2, .8, .1, .3]))
    assert m["acc"] == 3 / 5 and m["tpr"] == 0.5 and m["tnr"] == 2 / 3
    assert m["precision"] == 0.5 and m["f1"] == 0.5 and m["auroc"] == pytest.approx(4 / 6)
    clean = detection_metrics(np.zeros(4, bool), np.zeros(4, bool), np.zeros(4))
    assert clean == {**clean, "acc": 1.0, "tpr": 1.0, "tnr": 1.0, "precision": 1.0, "f1": 1.0, "auroc": 0.5}
    false_alarm = detection_metrics(np.zeros(4, bool), np.array([1, 0, 0, 0], bool))
    assert false_alarm["precision"] == 0.0 and false_alarm["tnr"] == 0.75


def test_rank_classes_puts_poisoned_class_first():
    x, y, _ = poisoned_class()
    rng = np.random.default_rng(1)
    x_other = np.clip(rng.normal(100, 20, (40, 32, 32, 3)), 0, 255).astype(np.uint8)
    ranking = rank_classes(Probe(), np.concatenate([x, x_other]), np.concatenate([y, np.full(40, 1)]), layer="act")
    assert ranking[0]["class"] == 5 and len(ranking) == 2


def test_ac_matches_art_activation_defence_clustering():
    art_ad = pytest.importorskip("art.defences.detector.poison.activation_defence",
                                 reason="ART (adversarial-robustness-toolbox, a dev extra) not installed")
    rng = np.random.default_rng(0)
    # Activations of one class: a clean bulk and a shifted poisoned group, in 128-d, as a ReLU layer gives.
    feats = np.maximum(rng.normal(0, 1, (300, 128)), 0)
    feats[:60, :20] += rng.normal(1.5, 0.5, (60, 20))
    ours = ActivationClustering(ACConfig(n_components=10, seed=0, reduce="pca")).cluster(feats)
    clusters, _ = art_ad.cluster_activations([feats], nb_clusters=2, nb_dims=10, reduce="PCA",
                                             clustering_method="KMeans")  # fmt: skip
    theirs = clusters[0]
    agree = np.mean(ours.cluster_labels == theirs)
    assert max(agree, 1 - agree) == 1.0  # same partition up to label swap
    smaller_art = np.argmin(np.bincount(theirs))
    assert np.array_equal(ours.is_poisoned, theirs == smaller_art)  # ART's default 'smaller' analysis


def test_whitened_ac_is_k_means_on_independent_components():
    """k-means on whitened PCA components equals k-means on FastICA's (Chen et al.'s, ART's default
    reduction): the independent components are a rotation of the whitened ones. (ART's own FastICA
    path is unseeded and keeps one k-means start, so it is compared through sklearn here.)"""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import FastICA

    rng = np.random.default_rng(0)
    feats = np.maximum(rng.normal(0, 1, (300, 128)), 0)
    feats[:60, :20] += rng.normal(1.5, 0.5, (60, 20))
    ours = ActivationClustering(ACConfig(n_components=10, seed=0)).cluster(feats)
    ica = FastICA(10, whiten="unit-variance", random_state=0, max_iter=1000).fit_transform(feats)
    theirs = KMeans(2, n_init=10, random_state=0).fit(ica).labels_
    agree = np.mean(ours.cluster_labels == theirs)
    assert max(agree, 1 - agree) == 1.0
    assert ours.is_poisoned[:60].all() and not ours.is_poisoned[60:].any()


def test_whitened_ac_follows_the_poison_not_the_largest_variance():
    """A nuisance direction with 10x the spread of the rest (lighting, say) takes plain PCA's 2-means;
    whitened, the split follows the bimodal direction the poison opens (as on ResNet-20's avgpool)."""
    rng = np.random.default_rng(0)
    feats = rng.normal(0, 1, (300, 20))
    feats[:, 0] *= 10
    truth = np.zeros(300, bool)
    truth[:60] = True
    feats[truth, 1] += 8
    plain = ActivationClustering(ACConfig(reduce="pca")).cluster(feats)
    white = ActivationClustering(ACConfig()).cluster(feats)
    assert ACConfig().reduce == "pca-whiten"
    assert np.array_equal(white.is_poisoned, truth)
    assert np.mean(plain.is_poisoned == truth) < 0.75
    with pytest.raises(ConfigError, match="unknown AC reduction"):
        ACConfig(reduce="tsne")


def test_ac_hc_gate_skips_hc_on_a_clean_looking_class():
    from poisonsift.defences import GateConfig, GatedHeatmapClustering

    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(100, 20, (40, 32, 32, 3)), 0, 255).astype(np.uint8)
    x[:20, :, :16] = 0  # two equal halves: AC's relative-size analysis calls the class clean
    gate_ac = ACConfig(layer="act", reduce="pca", rule=ClusterRule("relative-size"))  # 40 images: see above
    res = GatedHeatmapClustering(GateConfig(ac=gate_ac)).detect(Probe(), x, np.full(40, 5))
    assert not res.suspicious and "HC not run" in res.analysis["gate"] and "lrp" not in res.seconds


def _blob_heatmaps(n: int, rng, rough: bool) -> np.ndarray:
    """Smooth Gaussian blobs (a clean model's relevance on a sign) or, with ``rough``, the same
    blobs times pixel noise (a blended noise trigger's speckled relevance)."""
    yy, xx = np.mgrid[0:32, 0:32]
    cy, cx = rng.uniform(12, 20, size=(2, n, 1, 1))
    h = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(4, 6, size=(n, 1, 1)) ** 2))
    return (h * rng.uniform(0, 2, size=h.shape) if rough else h).astype(np.float32)


def test_hc_roughness_class_test_finds_speckled_heatmaps():
    from poisonsift.defences import ClusterRule, HCConfig, HeatmapClustering
    from poisonsift.explain import relevance_roughness

    rng = np.random.default_rng(0)
    heat = np.concatenate([_blob_heatmaps(80, rng, False), _blob_heatmaps(20, rng, True)])
    truth = np.r_[np.zeros(80, bool), np.ones(20, bool)]
    r = relevance_roughness(heat)
    assert r[truth].min() > r[~truth].max() + np.log(2)  # over 2x rougher, every one
    cfg = dict(rule=ClusterRule("mixture-tail"), view_samples=0)
    res = HeatmapClustering(HCConfig(**cfg)).cluster(heat)
    assert res.suspicious and res.analysis["class_test"] == "roughness"  # GW and concentration see nothing
    assert res.analysis["roughness"]["rough_gain"] > np.log(2)
    assert res.is_poisoned[truth].mean() >= 0.95 and not res.is_poisoned[~truth].any()
    assert np.array_equal(res.scores, r)
    assert not HeatmapClustering(HCConfig(**cfg, rough_ratio=None)).cluster(heat).suspicious
    # the same clean class alone: nothing suspicious, by any of the three tests
    clean = HeatmapClustering(HCConfig(**cfg)).cluster(heat[~truth])
    assert not clean.suspicious and not clean.analysis["roughness"]["class_test"]


def _peaked(heat: np.ndarray, rng, share: float) -> np.ndarray:
    """The heatmaps with ``share`` of their relevance moved onto a 3 x 3 patch at a random place:
    a local trigger read by a network whose relevance stays on the sign too (a residual one)."""
    out = heat * (1 - share)
    for h in out:
        y, x = rng.integers(2, 27, size=2)
        h[y : y + 3, x : x + 3] += share * heat.sum((1, 2)).mean() / 9
    return out


def test_hc_peak_class_test_finds_a_local_peak_on_spread_heatmaps():
    from poisonsift.defences import ClusterRule, HCConfig, HeatmapClustering
    from poisonsift.explain import relevance_concentration, relevance_peak

    rng = np.random.default_rng(1)
    clean = _blob_heatmaps(160, rng, False)
    heat = np.concatenate([clean, _peaked(_blob_heatmaps(40, rng, False), rng, 0.15)])
    truth = np.r_[np.zeros(160, bool), np.ones(40, bool)]
    c = relevance_concentration(heat)
    assert np.median(c[truth]) - np.median(c[~truth]) < np.log(1.5)  # the whole-image entropy barely moves
    p3 = relevance_peak(heat, 3)
    assert p3[truth].min() > p3[~truth].max()  # the 3 x 3 window sees every one
    cfg = dict(rule=ClusterRule("mixture-tail"), view_samples=0)
    res = HeatmapClustering(HCConfig(**cfg, peak_ratio=2.0)).cluster(heat)
    assert res.suspicious and res.analysis["class_test"] == "peak"
    pk = res.analysis["peak"]
    assert pk["class_test"] and pk["peak_gain"] >= np.log(2) and pk["window"] in (2, 3, 4)
    assert res.is_poisoned[truth].mean() >= 0.95 and res.is_poisoned[~truth].mean() <= 0.02
    assert np.array_equal(res.scores, relevance_peak(heat, pk["window"]))
    for off in (None, "auto"):  # off; auto with no network known keeps the paper's setting
        res_off = HeatmapClustering(HCConfig(**cfg, peak_ratio=off)).cluster(heat)
        assert res_off.analysis.get("class_test") != "peak" and "peak" not in res_off.analysis
    alone = HeatmapClustering(HCConfig(**cfg, peak_ratio=2.0)).cluster(clean)  # the clean class alone: no peak mode
    assert not alone.analysis["peak"]["class_test"] and alone.analysis.get("class_test") != "peak"
    with pytest.raises(ConfigError, match="peak_ratio must be > 1"):
        HCConfig(peak_ratio=1.0)
    with pytest.raises(ConfigError, match="peak_ratio must be > 1, 'auto'"):
        HCConfig(peak_ratio="on")


def test_roughness_is_log_laplacian_share():
    from poisonsift.explain import relevance_roughness

    flat = np.ones((1, 8, 8))
    assert relevance_roughness(flat)[0] == pytest.approx(np.log(1e-12))  # a constant map has no detail
    spike = np.zeros((1, 8, 8))
    spike[0, 4, 4] = 1.0  # |L h| = 4 at the spike + 1 at each of its 4 neighbours, |h| = 1
    assert relevance_roughness(spike)[0] == pytest.approx(np.log(8.0))
