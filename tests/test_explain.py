import numpy as np
import pytest
import torch
from torch import nn

from poisonsift.errors import ConfigError, DataError
from poisonsift.explain import activations, lrp_heatmaps, point_cloud, point_clouds, resolve_layer
from poisonsift.models import SmallInception
from poisonsift.training import Normalizer


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ConfigError, match="valid layer names: .*relu_fc2"):
        resolve_layer(SmallInception(), "fc9")


def test_activations_batched_equals_whole(tiny_data):
    m = SmallInception(num_classes=6).eval()
    norm = Normalizer((0.5,) * 3, (0.25,) * 3)
    a = activations(m, tiny_data.x_train[:20], "relu_fc2", norm, batch_size=7)
    b = activations(m, tiny_data.x_train[:20], "relu_fc2", norm, batch_size=64)
    assert a.shape == (20, 128) and np.allclose(a, b, atol=1e-5)


def test_activations_cache_file_is_memory_mapped_and_keyed(tiny_data, tmp_path):
    from poisonsift.explain import activations_cache_file

    m = SmallInception(num_classes=6).eval()
    x, y = tiny_data.x_train[:20], tiny_data.y_train[:20]
    path = activations_cache_file(m, x, y, "pool1", None, tmp_path)  # a wide layer: 256 x 16 x 16
    cached = np.load(path, mmap_mode="r")
    assert cached.shape == (20, 256 * 16 * 16) and np.allclose(cached, activations(m, x, "pool1"), atol=1e-5)
    assert activations_cache_file(m, x, y, "pool1", None, tmp_path) == path  # found, not recomputed
    assert activations_cache_file(m, x, y, None, None, tmp_path).name.endswith("-relu_fc2.npy")
    with pytest.raises(ConfigError, match="valid layer names"):
        activations_cache_file(m, x, y, "fc9", None, tmp_path)


def test_relevance_concentration_is_minus_the_log_effective_pixel_count():
    from poisonsift.explain import relevance_concentration

    one = np.zeros((8, 8))
    one[3, 4] = 5.0
    spot = np.zeros((8, 8))
    spot[2:4, 2:4] = 1.0
    wide = np.random.default_rng(0).uniform(0.5, 1.0, (8, 8))
    c = relevance_concentration(np.stack([one, spot, wide, np.zeros((8, 8)), np.full((8, 8), -3.0)]))
    assert c[0] == 0.0 and np.isclose(c[1], -np.log(4))  # one pixel; four equal pixels
    assert -np.log(64) < c[2] < c[1] and np.allclose(c[3:], -np.log(64))  # constant maps: uniform
    assert np.isclose(relevance_concentration((one - 2)[None])[0], 0.0)  # made >= 0 as the clouds are
    bad = np.zeros((2, 4, 4))
    bad[1, 0, 0] = np.nan
    with pytest.raises(DataError, match="heatmap 1 has non-finite"):
        relevance_concentration(bad)


def test_relevance_peak_is_the_best_window_share_of_positive_relevance():
    import torch.nn.functional as F

    from poisonsift.explain import relevance_peak

    rng = np.random.default_rng(0)
    h = rng.normal(size=(6, 12, 10))
    pos = torch.from_numpy(h).clamp(min=0)
    for w in (1, 3, 5):  # against torch's box filter (sum pooling, stride 1)
        ref = (F.avg_pool2d(pos[:, None], w, stride=1) * w * w).flatten(1).max(1).values / pos.flatten(1).sum(1)
        assert np.allclose(relevance_peak(h, w), np.log(np.maximum(ref.numpy(), w * w / 120)))
    sticker = np.full((1, 12, 10), 0.01)
    sticker[0, 4:7, 2:5] = 1.0  # a 3 x 3 peak, negative relevance elsewhere does not count
    sticker[0, 0, :] = -5.0
    assert np.exp(relevance_peak(sticker, 3)[0]) == pytest.approx(9 / (9 + 0.01 * 101))
    assert np.allclose(relevance_peak(np.zeros((2, 12, 10)), 3), np.log(9 / 120))  # floored at a uniform map's
    with pytest.raises(DataError, match="window must be 1..10"):
        relevance_peak(h, 11)


def _bias_free_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16 * 16, 4, bias=False),
    ).eval()  # fmt: skip


def test_lrp_conserves_relevance_on_bias_free_model():
    net = _bias_free_net()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 0, 1])
    heat = lrp_heatmaps(net, imgs, labels)
    with torch.no_grad():
        logits = net(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)
    target = logits[np.arange(6), labels].numpy()
    keep = np.abs(target) > 1e-3
    # Tolerance: zennit's stabilisers (1e-6) only; conservation within 1 % relative.
    assert np.allclose(heat.sum((1, 2))[keep], target[keep], rtol=1e-2, atol=1e-4)


def test_heatmap_points_at_trigger():
    # A yellow detector: R + G - 2B, ReLU, global max-pool -> the decision rests on the sticker.
    conv = nn.Conv2d(3, 1, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0] = 1.0
        conv.weight[0, 1] = 1.0
        conv.weight[0, 2] = -2.0
    lin = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        lin.weight[:] = torch.tensor([[1.0], [-1.0]])
    net = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), lin).eval()
    img = np.full((1, 32, 32, 3), 120, dtype=np.uint8)
    img[0, 14:17, 10:13] = (245, 255, 0)
    heat = lrp_heatmaps(net, img, np.array([0]))[0]
    r, c = np.unravel_index(np.argmax(heat), heat.shape)
    assert 13 <= r <= 17 and 9 <= c <= 13
    mass_near = heat[12:19, 8:15].clip(0).sum() / heat.clip(0).sum()
    assert mass_near > 0.9


def test_lrp_through_inception_module(tiny_data):
    m = SmallInception(num_classes=6).eval()
    norm = Normalizer((0.5,) * 3, (0.25,) * 3)
    heat = lrp_heatmaps(m, tiny_data.x_train[:4], tiny_data.y_train[:4], norm)
    assert heat.shape == (4, 32, 32) and np.isfinite(heat).all() and np.abs(heat).sum() > 0
    # zennit restores the model: BatchNorm is still there and outputs are unchanged.
    assert any(isinstance(mod, nn.BatchNorm2d) for mod in m.modules())


def test_lrp_heatmaps_do_not_depend_on_the_batch_size(tiny_data):
    # the automatic batch (10 images here) against batches of 3: float rounding only
    m, norm = SmallInception(num_classes=6).eval(), Normalizer((0.5,) * 3, (0.25,) * 3)
    a = lrp_heatmaps(m, tiny_data.x_train[:10], tiny_data.y_train[:10], norm)
    b = lrp_heatmaps(m, tiny_data.x_train[:10], tiny_data.y_train[:10], norm, batch_size=3)
    assert np.allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(a).max())


def test_lrp_label_beyond_outputs_is_clear():
    with pytest.raises(DataError, match="outputs"):
        lrp_heatmaps(_bias_free_net(), np.zeros((1, 32, 32, 3), np.uint8), np.array([9]))


def test_point_cloud_mass_and_geometry():
    rng = np.random.default_rng(0)
    h = rng.random((32, 32)) ** 4
    pc = point_cloud(h)
    w = (h - h.min()) / (h.max() - h.min())
    w = np.sort(w.ravel() / w.sum())[::-1]
    n = len(pc)
    assert w[:n].sum() > 0.99 and w[: n - 1].sum() <= 0.99  # first prefix to exceed 0.99
    assert np.isclose(pc.p.sum(), 1) and np.all(np.diff(pc.p) <= 1e-12)
    assert pc.C.shape == (n, n) and np.isclose(pc.C.max(), 1) and np.allclose(pc.C, pc.C.T)
    r0, c0 = pc.coords[0]
    assert h[r0, c0] == h.max()


def test_point_cloud_degenerate():
    pc = point_cloud(np.zeros((4, 4)))  # documented fallback: uniform over all pixels
    assert len(pc) == 16 and np.allclose(pc.p, 1 / 16) and np.isfinite(pc.C).all()
    with pytest.raises(DataError, match="constant"):
        point_cloud(np.zeros((4, 4)), fallback="error")
    with pytest.raises(DataError, match="NaN"):
        point_cloud(np.full((4, 4), np.nan))
    one = point_cloud(np.eye(4) * 0 + np.pad([[1.0]], ((0, 3), (0, 3))))
    assert len(one) == 1 and one.C.tolist() == [[0.0]]


def test_cloud_scale_is_largest_pairwise_distance():
    from poisonsift.explain.clouds import _row_end_diameter

    rng = np.random.default_rng(0)
    masks = rng.random((300, 32, 32)) < rng.random((300, 1, 1)) ** 3  # from near-empty to full
    masks[0] = False
    masks[0, 7, 3:30] = True  # collinear: no 2-D hull
    masks[1] = False
    masks[1, 4, 9] = True  # one pixel
    brute = []
    for m in masks:
        c = np.argwhere(m)
        d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)).max() if len(c) > 1 else 0.0
        brute.append(d if d > 0 else 1.0)
    assert np.array_equal(_row_end_diameter(masks), brute)
    assert _row_end_diameter(masks[:1])[0] == 26.0


def test_point_clouds_batch_is_point_cloud_each():
    rng = np.random.default_rng(0)
    heat = np.stack([rng.random((32, 32)) ** k for k in (1, 4, 16)] + [np.zeros((32, 32))] + [-np.eye(32)])
    for mass in (0.5, 0.99):
        batch = point_clouds(heat, mass, chunk=2)
        for h, pc in zip(heat, batch):
            one = point_cloud(h, mass)
            assert np.array_equal(pc.coords, one.coords) and np.array_equal(pc.p, one.p) and pc.scale == one.scale
    with pytest.raises(DataError, match="heatmap 1 has NaN"):
        point_clouds(np.stack([heat[0], np.full((32, 32), np.inf)]))
    with pytest.raises(DataError, match="heatmap 3 is constant"):
        point_clouds(heat, fallback="error", chunk=2)  # index counted in the whole input
    with pytest.raises(DataError, match="3-D"):
        point_clouds(heat[0])


def test_heatmap_cache_hits_and_misses(tmp_path, tiny_data):
    from poisonsift.explain import cached_lrp_heatmaps

    m = SmallInception(num_classes=6).eval()
    norm = Normalizer((0.5,) * 3, (0.25,) * 3)
    x, y = tiny_data.x_train[:3], tiny_data.y_train[:3]
    a = cached_lrp_heatmaps(m, x, y, norm, tmp_path)
    assert len(list(tmp_path.glob("heatmaps-*.npy"))) == 1
    b = cached_lrp_heatmaps(m, x, y, norm, tmp_path)
    assert np.array_equal(a, b) and len(list(tmp_path.glob("*.npy"))) == 1  # hit
    cached_lrp_heatmaps(m, x, (y + 1) % 6, norm, tmp_path)  # other labels: a new entry
    with torch.no_grad():
        m.fc3.weight.add_(1.0)
    cached_lrp_heatmaps(m, x, y, norm, tmp_path)  # other weights: a new entry
    assert len(list(tmp_path.glob("*.npy"))) == 3


def _randomised_bn_model(seed: int = 0) -> SmallInception:
    torch.manual_seed(seed)
    model = SmallInception(num_classes=6)
    for m in model.modules():  # BatchNorm statistics and affine terms a trained model would have
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def test_nonnegative_input_convs_are_those_after_relu():
    from poisonsift.explain import nonnegative_input_convs

    names = nonnegative_input_convs(_randomised_bn_model(), "cpu")
    # the four convolutions that read the image (or its average pool) see negative values
    reading_image = {"inception.branch1x1.conv", "inception.branch5x5_1.conv", "inception.branch3x3dbl_1.conv",
                     "inception.branch_pool.conv"}  # fmt: skip
    convs = {n for n, m in _randomised_bn_model().named_modules() if isinstance(m, nn.Conv2d)}
    assert names == convs - reading_image


def test_positive_gamma_equals_zennit_gamma(tiny_data):
    """The fast path (positive Gamma where inputs are >= 0, BatchNorm folded) gives zennit's EpsilonGammaBox heatmaps."""
    import copy

    from poisonsift.explain.epsilon_gamma_box import _composite, _FoldBatchNorm

    model = _randomised_bn_model()
    norm = Normalizer.fit(tiny_data.x_train)
    x, y = tiny_data.x_train[:24], tiny_data.y_train[:24]
    probe = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(probe)
        handles = _FoldBatchNorm().apply(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        assert torch.allclose(model(probe), before, rtol=1e-5, atol=1e-6)  # the same function, folded
        for h in handles:
            h.remove()
        assert torch.equal(model(probe), before)  # and put back exactly
    # zennit's canonizer leaves each merged BatchNorm computing x / sqrt(1 + eps) - a slightly
    # different network (0.5 % of the largest relevance apart here). Moving eps into running_var
    # keeps the network's function and makes that leftover the identity, as our folding does.
    same_fn = copy.deepcopy(model)
    for m in same_fn.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.data += m.eps
            m.eps = 0.0
    ref = lrp_heatmaps(same_fn, x, y, norm, composite=_composite(norm, "cpu", fast_gamma=False))
    fast = lrp_heatmaps(model, x, y, norm)  # the default: positive Gamma, BatchNorm folded
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-6 * np.abs(ref).max())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the model is given back intact


@pytest.mark.parametrize("kwargs", [
    {"kernel_size": 3, "padding": 1}, {"kernel_size": 3, "padding": 0}, {"kernel_size": (2, 3), "padding": (0, 1)},
    {"kernel_size": 3, "stride": 2, "padding": 1}, {"kernel_size": 3, "stride": 2, "padding": 2, "dilation": 2},
    {"kernel_size": 4, "padding": "same"}, {"kernel_size": 3, "padding": 1, "padding_mode": "reflect"},
])  # fmt: skip
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_fast_gamma_rules_equal_zennit_gamma_per_layer(kwargs):
    """Each custom Gamma function (signed input; non-negative input) against zennit's
    ``Gamma`` on one convolution with a bias: the flipped-convolution path and the autograd
    path (strides, dilation, 'same' and reflect padding)."""
    from zennit.attribution import Gradient
    from zennit.core import Composite
    from zennit.rules import Gamma

    from poisonsift.explain import fast_gamma_rule

    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, **kwargs)
    with torch.no_grad():
        conv.bias.uniform_(-0.5, 0.5)  # both signs, so b+ and b- both matter
    for signed, x in ((True, torch.randn(4, 3, 9, 9)), (False, torch.rand(4, 3, 9, 9))):
        maps = []
        for rule in (Gamma(), fast_gamma_rule(signed=signed)):
            comp = Composite(module_map=lambda ctx, name, m, rule=rule: rule if isinstance(m, nn.Conv2d) else None)
            with Gradient(model=conv, composite=comp) as attr:
                maps.append(attr(x.clone().requires_grad_(True), torch.ones_like)[1])
        ref, fast = maps
        assert ref.abs().max() > 0
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_bfloat16_lrp_is_close_to_float32_and_cached_apart(tmp_path, tiny_data):
    from poisonsift.explain import cached_lrp_heatmaps

    model = _randomised_bn_model()
    norm = Normalizer.fit(tiny_data.x_train)
    x, y = tiny_data.x_train[:16], tiny_data.y_train[:16]
    full = cached_lrp_heatmaps(model, x, y, norm, tmp_path)
    low = cached_lrp_heatmaps(model, x, y, norm, tmp_path, precision="bfloat16")
    assert len(list(tmp_path.glob("heatmaps-*.npy"))) == 2  # a cache entry per precision
    peak = np.abs(full).max(axis=(1, 2), keepdims=True)
    err = np.abs(low - full) / peak
    assert 0 < err.max() < 0.03  # bfloat16 was used, and stays within a few % of each map's peak
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(low, full)]
    assert min(corr) > 0.999
    with pytest.raises(ConfigError, match="LRP precision"):
        lrp_heatmaps(model, x, y, norm, precision="float16")


def test_relu_pass_is_dropped_only_where_it_changes_nothing():
    """SmallInception: every rule after a ReLU is input-proportional, so Pass = gradient and
    the composite leaves it out. A BatchNorm after a ReLU takes the epsilon rule (proportional too:
    Pass left out); an operation without a rule that shifts its input breaks that, and Pass stays."""
    from zennit.rules import Pass

    from poisonsift.explain.epsilon_gamma_box import _composite

    def relu_hooks(model):
        comp, ctx = _composite(None, "cpu", model), {}
        hooks = [(m, comp.module_map(ctx, n, m)) for n, m in model.named_modules()]  # in order, as zennit does
        return [h for m, h in hooks if isinstance(m, nn.ReLU)]

    assert not any(isinstance(h, Pass) for h in relu_hooks(_randomised_bn_model()))
    torch.manual_seed(0)
    bn_after_relu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 30 * 30, 3))
    bn_after_relu[2].running_mean.uniform_(-1, 1)
    bn_after_relu[2].bias.data.uniform_(-1, 1)
    assert not any(isinstance(h, Pass) for h in relu_hooks(bn_after_relu.eval()))

    class Shift(nn.Module):  # no LRP rule: relevance passes it as the gradient does, shift and all
        def forward(self, x):
            return x + 0.5

    shift_after_relu = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Shift(), nn.Flatten(), nn.Linear(4 * 30 * 30, 3))
    assert all(isinstance(h, Pass) for h in relu_hooks(shift_after_relu.eval()))


def test_bfloat16_on_a_cpu_without_it_warns(monkeypatch, tiny_data):
    import poisonsift.explain.lrp as ex

    monkeypatch.setattr(ex, "native_bfloat16", lambda device: False)
    model, norm = _randomised_bn_model(), Normalizer.fit(tiny_data.x_train)
    with pytest.warns(RuntimeWarning, match="no native bfloat16"):
        lrp_heatmaps(model, tiny_data.x_train[:2], tiny_data.y_train[:2], norm, precision="bfloat16")
    assert ex.native_bfloat16("cpu") in (True, False, None)


def test_positive_gamma_refuses_negative_inputs():
    from zennit.attribution import Gradient
    from zennit.core import Composite

    from poisonsift.explain import fast_gamma_rule

    conv = nn.Sequential(nn.Conv2d(3, 4, 3))
    rule = fast_gamma_rule(signed=False)
    comp = Composite(module_map=lambda ctx, name, m: rule if isinstance(m, nn.Conv2d) else None)
    with Gradient(model=conv, composite=comp) as attr, pytest.raises(RuntimeError, match="negative input"):
        attr(-torch.rand(1, 3, 8, 8).requires_grad_(True), torch.ones_like)


def _count_input_grads(monkeypatch) -> list:
    """The convolutions whose transposed product (``_input_grad``) runs, one entry per call."""
    import poisonsift.explain.epsilon_gamma_box as ex

    calls, real = [], ex._input_grad
    monkeypatch.setattr(ex, "_input_grad", lambda conv, *a: calls.append(conv) or real(conv, *a))
    return calls


def test_fast_gamma_after_a_relu_takes_one_transposed_convolution(monkeypatch):
    """Where a ReLU follows, no relevance reaches z < 0 and the non-negative rule needs one
    transposed convolution instead of two - with zennit's numbers; relevance at z < 0 (no ReLU)
    takes the general two-product path."""
    from zennit.attribution import Gradient
    from zennit.core import Composite
    from zennit.rules import Gamma

    import poisonsift.explain as ex

    calls = _count_input_grads(monkeypatch)
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    with torch.no_grad():
        conv.bias.uniform_(-0.5, 0.5)
    x = torch.rand(3, 4, 8, 8)
    for model, expected_calls in ((nn.Sequential(conv, nn.ReLU()), 1), (conv, 2)):
        maps = []
        for rule in (Gamma(), ex.fast_gamma_rule(signed=False)):
            comp = Composite(module_map=lambda ctx, name, m, rule=rule: rule if isinstance(m, nn.Conv2d) else None)
            calls.clear()
            with Gradient(model=model, composite=comp) as attr:
                maps.append(attr(x.clone().requires_grad_(True), torch.ones_like)[1])
        assert len(calls) == expected_calls
        ref, fast = maps
        assert ref.abs().max() > 0
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))


def test_small_inception_lrp_takes_one_transposed_convolution_per_relu_layer(monkeypatch, tiny_data):
    """Every convolution of SmallInception with a non-negative input is followed by its ReLU,
    so each costs one transposed convolution; the three that read the (signed) image cost two."""
    import poisonsift.explain as ex
    from poisonsift.explain.epsilon_gamma_box import _composite

    model, norm = _randomised_bn_model(), Normalizer.fit(tiny_data.x_train)
    composite = _composite(norm, "cpu", model)  # its probes run LRP too: build it first
    calls = _count_input_grads(monkeypatch)
    ex.lrp_heatmaps(model, tiny_data.x_train[:3], tiny_data.y_train[:3] % 6, norm, composite=composite)
    nonneg = ex.nonnegative_input_convs(model, "cpu")
    names = {id(m): n for n, m in model.named_modules()}
    counts = {}
    for conv in calls:
        counts[names[id(conv)]] = counts.get(names[id(conv)], 0) + 1
    assert len(nonneg) == 6 and all(counts[n] == 1 for n in nonneg)
    assert sorted(n for n, c in counts.items() if c == 2) == sorted(
        ["inception.branch5x5_1.conv", "inception.branch3x3dbl_1.conv", "inception.branch_pool.conv"])


def test_lrp_pass_keeps_the_activations_of_the_paper_rule(tmp_path):
    """Under the paper's rule the LRP pass is the network's own forward pass: the hidden layer's
    outputs captured there are the activations to the bit, cached where activations_cache_file looks."""
    from poisonsift.explain import activations, activations_cache_file, lrp_cache_file
    from poisonsift.models import SmallInception

    torch.manual_seed(0)
    model = SmallInception(num_classes=4).eval()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(12, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 4, size=12)
    heat = lrp_cache_file(model, x, y, None, tmp_path, rule="paper", activations_layer=None, batch_size=5)
    cached = sorted(tmp_path.glob("activations-*.npy"))
    assert len(cached) == 1 and activations_cache_file(model, x, y, None, None, tmp_path) == cached[0]
    np.testing.assert_array_equal(np.load(cached[0]), activations(model, x, None, batch_size=5))
    plain = lrp_cache_file(model, x, y, None, tmp_path / "b", rule="paper", batch_size=5)  # no capture
    np.testing.assert_array_equal(np.load(heat), np.load(plain))  # capturing leaves the heatmaps alone
    # another rule folds BatchNorm: no activations are kept from its pass
    lrp_cache_file(model, x, y, None, tmp_path / "c", rule="epsilon-gamma-box", activations_layer=None)
    assert not list((tmp_path / "c").glob("activations-*.npy"))
