"""The paper's network.

`SmallInception` is the paper's network (its code's ``InceptionNet3``): one
Inception-A module applied directly to the 32x32 input, three
[max-pool, 2x2 conv] stages, and a three-layer MLP head. About 1.1M parameters.

Every layer has a stable, readable name (``model.named_modules()``) so that
defences can ask for a hidden layer by name; ``fc2`` (the 128-d last hidden
layer, after its ReLU) is the default layer for activation-based defences.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallInception", "ConvBN", "InceptionA", "DEFAULT_HIDDEN_LAYER"]

#: Name of the last hidden layer's activation (128-d), used by default by defences.
DEFAULT_HIDDEN_LAYER = "relu_fc2"


class ConvBN(nn.Sequential):
    """Conv2d (no bias, BatchNorm follows) -> BatchNorm2d -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()


class InceptionA(nn.Module):
    """Inception-A module (Szegedy et al. 2016), 'same' padding in every branch.

    Shapes: (B, c_in, H, W) -> (B, 64 + 64 + 96 + pool_features, H, W).
    """

    def __init__(self, c_in: int, pool_features: int = 32) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(c_in, 64, 1)
        self.branch5x5_1 = ConvBN(c_in, 48, 1)
        self.branch5x5_2 = ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = ConvBN(c_in, 64, 1)
        self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1)
        self.branch_pool_avg = nn.AvgPool2d(3, stride=1, padding=1)
        self.branch_pool = ConvBN(c_in, pool_features, 1)
        self.out_channels = 64 + 64 + 96 + pool_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(self.branch_pool_avg(x))
        return torch.cat([b1, b5, b3, bp], dim=1)


class SmallInception(nn.Module):
    """The paper's small Inception network for 32x32 RGB inputs.

    Input: float tensor (B, 3, 32, 32), already normalised (see
    :func:`poisonsift.training.normalize`). Output: logits (B, num_classes).

    Spatial sizes: 32 -(inception)-> 32 -(pool)-> 16 -(conv2x2)-> 15 -(pool)-> 7
    -(conv2x2)-> 6 -(pool)-> 3 -(conv2x2)-> 2 -(pool)-> 1. The last pool is a global max-pool
    (the paper's 2x2 max-pool at 32 x 32, the same function and weights), so larger images fit.
    """

    def __init__(self, num_classes: int = 43, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.inception = InceptionA(3, pool_features=32)
        c = self.inception.out_channels  # 256
        self.pool1 = nn.MaxPool2d(2)
        self.block1 = ConvBN(c, 256, 2)
        self.pool2 = nn.MaxPool2d(2)
        self.block2 = ConvBN(256, 256, 2)
        self.pool3 = nn.MaxPool2d(2)
        self.block3 = ConvBN(256, 256, 2)
        self.pool4 = nn.AdaptiveMaxPool2d(1)  # = MaxPool2d(2) on the 2x2 map of a 32x32 input
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(256, 256)
        self.relu_fc1 = nn.ReLU()
        self.drop1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(256, 128)
        self.relu_fc2 = nn.ReLU()
        self.drop2 = nn.Dropout(dropout)
        self.fc3 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inception(x)
        x = self.block1(self.pool1(x))
        x = self.block2(self.pool2(x))
        x = self.block3(self.pool3(x))
        x = self.flatten(self.pool4(x))
        x = self.drop1(self.relu_fc1(self.fc1(x)))
        x = self.drop2(self.relu_fc2(self.fc2(x)))
        return self.fc3(x)
