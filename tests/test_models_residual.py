"""Residual networks: ResNet-20 and torchvision models - building, checkpoints, LRP through residual sums."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from poisonsift.errors import CheckpointError, ConfigError
from poisonsift.explain import activations, lrp_heatmaps
from poisonsift.explain.paper_rule import paper_composite
from poisonsift.models import ResNet20, build_model, count_parameters, default_hidden_layer
from poisonsift.training import Normalizer, load_checkpoint, save_checkpoint


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine terms, so that folding and passing differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def test_resnet20_is_he_et_al_size_and_any_image_size():
    m = ResNet20(num_classes=10)
    # 269,722 parameters of option A (He et al.'s 0.27M) + 2,752 of the two 1x1 projection shortcuts
    assert count_parameters(m) == 269_722 + 2_752
    assert m.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10) and m(torch.zeros(2, 3, 64, 64)).shape == (2, 10)
    assert default_hidden_layer(m) == "avgpool" and "layer2.0.downsample.0" in dict(m.named_modules())
    assert default_hidden_layer(build_model("torchvision:resnet18", 5)) == "avgpool"
    assert default_hidden_layer(build_model("small-inception", 5)) == "relu_fc2"


def test_checkpoint_records_the_architecture(tmp_path):
    norm = Normalizer((0.5,) * 3, (0.25,) * 3)
    for arch, cls in (("resnet20", ResNet20), ("torchvision:resnet18", nn.Module)):
        m = build_model(arch, 7)
        save_checkpoint(tmp_path / "m.pt", m, norm)
        back, _ = load_checkpoint(tmp_path / "m.pt", "cpu")
        assert isinstance(back, cls) and back.arch == arch and back.num_classes == 7
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert torch.equal(back(x), m.eval()(x))
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["arch"] = "torchvision:nonsense"
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="unknown torchvision model 'nonsense'"):
        load_checkpoint(tmp_path / "bad.pt")


def test_unknown_architectures_are_clear():
    with pytest.raises(ConfigError, match="unknown architecture 'resnet21'"):
        build_model("resnet21")
    with pytest.raises(ConfigError, match="torchvision's classification models"):
        build_model("torchvision:resnet21")


def test_paper_rule_conserves_relevance_through_a_bias_free_residual_block():
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(), BasicBlock(4, 8, stride=2, downsample=down),
                        BasicBlock(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3, bias=False))  # fmt: skip
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):  # without shift: the paper's rule passes it, bias-free
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):  # outputs far above the stabiliser (1e-6)
                m.weight.mul_(4)
    net.eval()
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    heat = lrp_heatmaps(net, imgs, labels, rule="paper")
    with torch.no_grad():
        target = net(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255)[np.arange(6), labels].numpy()
    keep = np.abs(target) > 1e-3
    assert keep.sum() >= 3
    np.testing.assert_allclose(heat.sum((1, 2))[keep], target[keep], rtol=1e-4)
    # without the residual canonizer the addition's gradient hands both branches all the relevance
    from zennit.composites import LayerMapComposite

    plain = paper_composite(fast=False)
    uncanonized = LayerMapComposite(layer_map=plain.layer_map)
    doubled = lrp_heatmaps(net, imgs, labels, composite=uncanonized)
    assert not np.allclose(doubled.sum((1, 2))[keep], target[keep], rtol=1e-2)


@pytest.mark.parametrize("arch", ["resnet20", "torchvision:resnet18"])
def test_epsilon_gamma_box_through_canonized_resnets_equals_zennit(arch, tiny_data):
    """Our EpsilonGammaBox path (fast Gamma, BatchNorm folded, residual canonizers) against zennit's own
    composite with its ResNetCanonizer on the same network."""
    from zennit.composites import EpsilonGammaBox
    from zennit.torchvision import ResNetCanonizer

    model = _randomise_bn(build_model(arch, 6))
    norm = Normalizer.fit(tiny_data.x_train)
    x, y = tiny_data.x_train[:6], tiny_data.y_train[:6]
    same_fn = copy.deepcopy(model)  # zennit's merged BatchNorm computes x / sqrt(1 + eps): move eps away
    for m in same_fn.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.data += m.eps
            m.eps = 0.0
    lo, hi = norm(torch.zeros(1, 3, 1, 1)), norm(torch.ones(1, 3, 1, 1))
    ref = lrp_heatmaps(same_fn, x, y, norm, composite=EpsilonGammaBox(low=lo, high=hi, canonizers=[ResNetCanonizer()]))
    ours = lrp_heatmaps(model, x, y, norm, rule="epsilon-gamma-box")
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # given back intact
    assert all(getattr(m, "inplace", True) for m in model.modules() if isinstance(m, nn.ReLU)) or arch == "resnet20"


def test_fast_and_plain_paper_rule_agree_on_resnet20(tiny_data):
    model = _randomise_bn(ResNet20(num_classes=6))
    norm = Normalizer((0.5,) * 3, (0.25,) * 3)
    x, y = tiny_data.x_train[:6], tiny_data.y_train[:6]
    fast = lrp_heatmaps(model, x, y, norm, rule="paper")
    plain = lrp_heatmaps(model, x, y, norm, composite=paper_composite(fast=False))
    np.testing.assert_allclose(fast, plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())


def test_a_layer_without_a_rule_is_named(tiny_data):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 6)).eval()
    with pytest.raises(ConfigError, match=r"layer '1' \(GELU\) has no LRP rule"):
        lrp_heatmaps(net, tiny_data.x_train[:2], tiny_data.y_train[:2], rule="paper")
    assert activations(net, tiny_data.x_train[:2], None).shape == (2, 4 * 30 * 30)  # the layer before the last Linear
