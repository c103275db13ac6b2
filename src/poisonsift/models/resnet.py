"""Residual networks: He et al.'s CIFAR ResNet-20 and any torchvision classifier.

:class:`ResNet20` is the 20-layer CIFAR ResNet of He et al. (2016, section 4.2): a 3x3 stem of
16 channels, three stages of three basic blocks (16, 32, 64 channels; stride 2 at the start of
the second and third), global average pooling and one linear layer - 0.27M parameters. Its
blocks *are* torchvision ``BasicBlock`` modules, so zennit's ``ResNetBasicBlockCanonizer`` (which
routes the residual addition through a ``Sum`` module that LRP rules can hook) applies to it as
to a torchvision ResNet. Where the shape changes, the shortcut is a 1x1 convolution with
BatchNorm (He et al.'s option B; option A's zero-padded identity has no module to hook); this
adds 2,752 parameters.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ResNet20", "he_init", "torchvision_model"]


def he_init(model: nn.Module) -> None:
    """He et al.'s initialisation of every convolution (normal, fan-out, for ReLU), as the ResNet papers'."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class ResNet20(nn.Module):
    """CIFAR ResNet-20 for (B, 3, H, W) normalised inputs of any size >= 8; logits (B, num_classes).

    Layer names: ``conv1``, ``bn1``, ``relu``, ``layer1``-``layer3`` (``layer2.0.conv1`` ...),
    ``avgpool`` (the 64-d representation, the default layer of activation defences), ``fc``.
    """

    default_hidden_layer = "avgpool"

    def __init__(self, num_classes: int = 43, width: int = 16, blocks: int = 3) -> None:
        from torchvision.models.resnet import BasicBlock

        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        c_in = width
        for i, c in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            layers = []
            for b in range(blocks):
                s = stride if b == 0 else 1
                down = None
                if s != 1 or c_in != c:
                    down = nn.Sequential(nn.Conv2d(c_in, c, 1, stride=s, bias=False), nn.BatchNorm2d(c))
                layers.append(BasicBlock(c_in, c, stride=s, downsample=down))
                c_in = c
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


def torchvision_model(name: str, num_classes: int) -> nn.Module:
    """A torchvision classification model by name (``resnet18``, ``vgg11_bn``, ...), untrained,
    with ``num_classes`` outputs. No weights are downloaded."""
    import torchvision

    from poisonsift.errors import ConfigError

    available = torchvision.models.list_models(module=torchvision.models)
    if name not in available:
        raise ConfigError(f"unknown torchvision model {name!r}; torchvision's classification models: {', '.join(available)}")
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"torchvision:{name} cannot be built with {num_classes} classes ({exc})") from None
