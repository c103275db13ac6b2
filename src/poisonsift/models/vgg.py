"""VGG-16 with BatchNorm (Simonyan and Zisserman 2015; BatchNorm after every convolution), CIFAR-style.

The thirteen 3x3 convolutions of VGG-16 (configuration D: 64, 64, M, 128, 128, M, 256 x 3, M,
512 x 3, M, 512 x 3, M), each followed by BatchNorm and ReLU, five 2x2 max-poolings (a 32x32
input leaves 1x1x512), global average pooling (so any size >= 32 works) and the small
classifier the CIFAR versions use instead of ImageNet's 4096-wide one: Linear 512 -> 512, ReLU,
Linear 512 -> classes. 15.0M parameters for 43 classes. Every BatchNorm follows a convolution, so
LRP folds it (zennit's SequentialMergeBatchNorm) as in SmallInception.
"""

from __future__ import annotations

import torch
from torch import nn

from poisonsift.models.resnet import he_init

__all__ = ["VGG16BN", "VGG16_LAYERS"]

#: Configuration D: output channels of each convolution, "M" a 2x2 max-pooling.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG16BN(nn.Module):
    """(B, 3, H, W) normalised inputs, H, W >= 32 -> logits (B, num_classes).

    Layer names: ``features.conv1_1`` / ``features.bn1_1`` / ``features.relu1_1`` ... ``features.pool5``
    (block, then position in the block), ``avgpool``, ``flatten``, ``fc1``, ``relu_fc1`` (the 512-d
    representation, the default layer of activation defences), ``fc2``.
    """

    default_hidden_layer = "relu_fc1"

    def __init__(self, num_classes: int = 43, layers: tuple = VGG16_LAYERS) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential()
        c_in, block, pos = 3, 1, 1
        for c in layers:
            if c == "M":
                self.features.add_module(f"pool{block}", nn.MaxPool2d(2))
                block, pos = block + 1, 1
                continue
            self.features.add_module(f"conv{block}_{pos}", nn.Conv2d(c_in, c, 3, padding=1, bias=False))
            self.features.add_module(f"bn{block}_{pos}", nn.BatchNorm2d(c))
            self.features.add_module(f"relu{block}_{pos}", nn.ReLU())
            c_in, pos = c, pos + 1
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c_in, 512)
        self.relu_fc1 = nn.ReLU()
        self.fc2 = nn.Linear(512, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu_fc1(self.fc1(self.flatten(self.avgpool(self.features(x))))))
