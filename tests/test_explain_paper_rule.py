"""The paper's LRP rule (epsilon rule, exponent 2, BatchNorm passed) against a direct torch implementation."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from poisonsift.errors import ConfigError
from poisonsift.explain import cached_lrp_heatmaps, lrp_heatmaps
from poisonsift.explain.lrp import _fingerprint
from poisonsift.explain.paper_rule import paper_composite, safe_inverse
from poisonsift.models import SmallInception
from poisonsift.training import Normalizer


class _Net(nn.Module):
    """Conv -> BatchNorm -> ReLU -> two conv branches -> concatenation -> max-pool -> Linear -> ReLU -> Linear."""

    def __init__(self, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.b1 = nn.Conv2d(4, 3, 1, bias=bias)
        self.b2 = nn.Conv2d(4, 2, 3, padding=1, bias=bias)
        self.relu_b = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(5 * 4 * 4, 6, bias=bias)
        self.relu_fc = nn.ReLU()
        self.fc2 = nn.Linear(6, 3, bias=bias)

    def forward(self, x):
        h = self.relu(self.bn(self.conv(x)))
        h = torch.cat([self.relu_b(self.b1(h)), self.relu_b(self.b2(h))], 1)
        return self.fc2(self.relu_fc(self.fc1(self.flatten(self.pool(h)))))


def _direct(net: _Net, x: torch.Tensor, y: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The paper's formulas written out layer by layer: (B, 3, H, W) input relevance."""

    def conv_rule(layer, a, r):
        z = F.conv2d(a**2, layer.weight**2, padding=layer.padding)
        s = r * safe_inverse(z, eps)
        return a**2 * F.conv_transpose2d(s, layer.weight**2, padding=layer.padding)

    def lin_rule(layer, a, r):
        z = (a**2) @ (layer.weight**2).T
        return a**2 * ((r * safe_inverse(z, eps)) @ layer.weight**2)

    with torch.no_grad():
        c = net.conv(x)
        h = net.relu(net.bn(c))
        p1, p2 = net.b1(h), net.b2(h)
        cat = torch.cat([F.relu(p1), F.relu(p2)], 1)
        pooled, idx = F.max_pool2d(cat, 2, return_indices=True)
        f = pooled.flatten(1)
        q = net.fc1(f)
        g = F.relu(q)
        logits = net.fc2(g)
        r = logits * F.one_hot(y, logits.shape[1])
        r = lin_rule(net.fc2, g, r) * (q > 0)
        r = lin_rule(net.fc1, f, r).view_as(pooled)
        r = F.max_unpool2d(r, idx, 2, output_size=cat.shape[-2:])
        r1, r2 = r[:, :3] * (p1 > 0), r[:, 3:] * (p2 > 0)
        r = conv_rule(net.b1, h, r1) + conv_rule(net.b2, h, r2)
        r = r * (net.bn(c) > 0)  # ReLU as the gradient; BatchNorm passes relevance unchanged
        return conv_rule(net.conv, x, r)


def _trained_bn(net: _Net) -> _Net:
    torch.manual_seed(1)
    with torch.no_grad():  # non-trivial BatchNorm statistics and affine parameters
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.1, 0.3)
    return net.eval()


@pytest.mark.parametrize("fast", [True, False])
def test_paper_rule_equals_the_formulas(fast):
    from zennit.attribution import Gradient

    torch.manual_seed(0)
    net = _trained_bn(_Net())
    x = torch.randn(5, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1])
    ref = _direct(net, x, y)
    with Gradient(model=net, composite=paper_composite(fast=fast)) as attr:
        _, rel = attr(x.clone().requires_grad_(True), lambda out: out * F.one_hot(y, out.shape[1]))
    assert ref.abs().max() > 0
    assert torch.allclose(rel, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


def test_fast_and_plain_paper_rule_agree_on_small_inception(tiny_data):
    m = SmallInception(num_classes=6).eval()
    norm = Normalizer((0.5,) * 3, (0.25,) * 3)
    x, y = tiny_data.x_train[:8], tiny_data.y_train[:8]
    fast = lrp_heatmaps(m, x, y, norm, rule="paper")
    plain = lrp_heatmaps(m, x, y, norm, composite=paper_composite(fast=False))
    assert np.allclose(fast, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())


def test_paper_rule_conserves_relevance_on_bias_free_stack():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 16 * 16, 16, bias=False), nn.ReLU(), nn.Linear(16, 4, bias=False),
    ).eval()  # fmt: skip
    with torch.no_grad():  # outputs far above the stabiliser (1e-6), which absorbs relevance of tiny z
        for p in net.parameters():
            p.mul_(4)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 3, 0, 1])
    heat = lrp_heatmaps(net, imgs, labels, rule="paper")
    with torch.no_grad():
        logits = net(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)
    target = logits[np.arange(6), labels].numpy()
    keep = np.abs(target) > 1e-3
    assert keep.sum() >= 3
    assert np.allclose(heat.sum((1, 2))[keep], target[keep], rtol=1e-4)


def test_heatmap_cache_keys_differ_by_rule(tmp_path, tiny_data):
    m = SmallInception(num_classes=6).eval()
    x, y = tiny_data.x_train[:4], tiny_data.y_train[:4]
    assert _fingerprint(m, x, y, None, rule="paper") != _fingerprint(m, x, y, None, rule="epsilon-gamma-box")
    a = cached_lrp_heatmaps(m, x, y, None, tmp_path, rule="paper")
    b = cached_lrp_heatmaps(m, x, y, None, tmp_path, rule="epsilon-gamma-box")
    assert len(list(tmp_path.glob("heatmaps-*.npy"))) == 2
    assert not np.allclose(a, b)


def test_unknown_rule_and_precision_are_clear(tiny_data):
    m = SmallInception(num_classes=6).eval()
    with pytest.raises(ConfigError, match="unknown LRP rule 'zbox'"):
        lrp_heatmaps(m, tiny_data.x_train[:2], tiny_data.y_train[:2], rule="zbox")
    with pytest.raises(ConfigError, match="unknown LRP precision 'fp8'"):
        lrp_heatmaps(m, tiny_data.x_train[:2], tiny_data.y_train[:2], rule="paper", precision="fp8")


def test_paper_rule_in_bfloat16_stays_close_to_float32(tiny_data):
    m = SmallInception(num_classes=6).eval()
    norm = Normalizer((0.5,) * 3, (0.25,) * 3)
    x, y = tiny_data.x_train[:8], tiny_data.y_train[:8]
    ref = lrp_heatmaps(m, x, y, norm, rule="paper")
    low = lrp_heatmaps(m, x, y, norm, rule="paper", precision="bfloat16")
    assert not np.array_equal(low, ref)  # the products did run in bfloat16
    peak = np.abs(ref).max((1, 2), keepdims=True)
    err = np.abs(low - ref) / peak
    assert np.median(err) < 5e-3 and err.max() < 5e-2
    # relevance is still conserved to bfloat16 precision: each map sums to about its logit
    assert np.allclose(low.sum((1, 2)), ref.sum((1, 2)), rtol=3e-2)
    # and the cache keeps the two apart
    assert _fingerprint(m, x, y, norm, "bfloat16", "paper") != _fingerprint(m, x, y, norm, "float32", "paper")
