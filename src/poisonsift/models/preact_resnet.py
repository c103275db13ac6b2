"""He et al.'s pre-activation ResNet-18 (2016, "Identity mappings in deep residual networks"),
CIFAR-style: BackdoorBench's default network.

A 3x3 stem of 64 channels (no pooling, for 32x32 inputs), four stages of two pre-activation
blocks (64, 128, 256, 512 channels; stride 2 at the start of stages 2-4), a final BatchNorm and
ReLU (He et al.'s: a pre-activation network's last block output is not normalised otherwise),
global average pooling and one linear layer - 11.2M parameters.

A pre-activation block computes ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``; where the shape
changes the shortcut is a 1x1 convolution of the pre-activated input ``relu(bn1(x))``. The
residual addition runs through a zennit ``Sum`` module (two stacked tensors summed), so an LRP
rule takes its place without a canonizer (zennit has none for pre-activation blocks): the
paper's rule splits the relevance in the ratio a^2 : b^2, zennit's EpsilonGammaBox by its
Norm rule, a : b. Each BatchNorm here precedes a ReLU, not follows a convolution, so no
canonizer can fold it: the paper's rule passes it, the EpsilonGammaBox composite gives it the
epsilon rule (:mod:`poisonsift.explain.epsilon_gamma_box`).
"""

from __future__ import annotations

import torch
from torch import nn

from poisonsift.models.resnet import he_init

__all__ = ["PreActBlock", "PreActResNet18"]


class PreActBlock(nn.Module):
    """(B, c_in, H, W) -> (B, c_out, H / stride, W / stride). Layer names: ``entry``, ``bn1``,
    ``relu1``, ``conv1``, ``bn2``, ``relu2``, ``conv2``, ``shortcut`` (a 1x1 convolution, or absent
    where the shapes agree) and ``add`` (the residual sum).

    ``entry`` is an identity that both the pre-activation and the identity shortcut read. It is
    there for BatchNorm folding, which merges a BatchNorm into the convolution *registered* just
    before it (zennit's SequentialMergeBatchNorm walks the leaves in order): without it the stem
    convolution would absorb ``layer1.0.bn1`` and the identity shortcut would then carry
    normalised values - another function. With it only ``conv1 -> bn2`` is folded, which is exact."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        from zennit.layer import Sum

        super().__init__()
        self.entry = nn.Identity()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if stride != 1 or c_in != c_out else None
        self.add = Sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.entry(x)
        out = self.relu1(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return self.add(torch.stack([skip, out], dim=-1))


class PreActResNet18(nn.Module):
    """Pre-activation ResNet-18 for (B, 3, H, W) normalised inputs of any size >= 8; logits (B, num_classes).

    Layer names: ``conv1``, ``layer1``-``layer4`` (``layer2.0.conv1`` ...), ``bn``, ``relu``,
    ``avgpool`` (the 512-d representation, the default layer of activation defences), ``fc``.
    """

    default_hidden_layer = "avgpool"

    def __init__(self, num_classes: int = 43, width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        c_in = width
        for i, n in enumerate(blocks):
            c = width * 2**i
            layers = [PreActBlock(c_in if b == 0 else c, c, stride=2 if i > 0 and b == 0 else 1) for b in range(n)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            c_in = c
        self.stages = len(blocks)
        self.bn = nn.BatchNorm2d(c_in)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(self.flatten(self.avgpool(self.relu(self.bn(x)))))
