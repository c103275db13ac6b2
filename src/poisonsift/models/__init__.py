"""Classifier networks, by architecture name.

* ``small-inception``: the paper's network (:class:`SmallInception`, ~1.1M parameters);
* ``resnet20``: He et al.'s CIFAR ResNet-20 (:class:`ResNet20`, ~0.27M parameters);
* ``preact-resnet18``: He et al.'s pre-activation ResNet-18, CIFAR-style (:class:`PreActResNet18`,
  11.2M; BackdoorBench's default network);
* ``vgg16-bn``: VGG-16 with BatchNorm, CIFAR-style (:class:`VGG16BN`, 15.0M);
* ``torchvision:<name>``: any torchvision classification model (``torchvision:resnet18``),
  untrained, with the data's number of classes.

:func:`build_model` records the name on the model (``model.arch``), so checkpoints rebuild it;
:func:`default_hidden_layer` is the layer activation defences read when none is named.
"""

from __future__ import annotations

from torch import nn

from poisonsift.errors import ConfigError
from poisonsift.models.inception import DEFAULT_HIDDEN_LAYER, ConvBN, InceptionA, SmallInception
from poisonsift.models.preact_resnet import PreActBlock, PreActResNet18
from poisonsift.models.resnet import ResNet20, torchvision_model
from poisonsift.models.vgg import VGG16BN

__all__ = [
    "ARCHS",
    "DEFAULT_ARCH",
    "DEFAULT_HIDDEN_LAYER",
    "ConvBN",
    "InceptionA",
    "PreActBlock",
    "PreActResNet18",
    "ResNet20",
    "SmallInception",
    "VGG16BN",
    "build_model",
    "check_arch",
    "count_parameters",
    "default_hidden_layer",
    "model_arch",
]

DEFAULT_ARCH = "small-inception"
#: Built-in architectures; ``torchvision:<name>`` names any torchvision classifier besides.
ARCHS = ("small-inception", "resnet20", "preact-resnet18", "vgg16-bn")
_BUILT_IN = {"small-inception": SmallInception, "resnet20": ResNet20, "preact-resnet18": PreActResNet18,
             "vgg16-bn": VGG16BN}
_TV = "torchvision:"


def check_arch(name: str) -> str:
    """``name`` if it names an architecture, else a :class:`ConfigError` saying which do."""
    if name in ARCHS or (name.startswith(_TV) and len(name) > len(_TV)):
        return name
    raise ConfigError(f"unknown architecture {name!r}; use {', '.join(ARCHS)} or torchvision:<name> (e.g. torchvision:resnet18)")


def model_arch(model: nn.Module) -> str:
    """A model's architecture name (:func:`build_model` records it as ``model.arch``); a model built
    otherwise counts by its class: ``small-inception`` or ``other``."""
    return getattr(model, "arch", None) or (DEFAULT_ARCH if isinstance(model, SmallInception) else "other")


def build_model(name: str = DEFAULT_ARCH, num_classes: int = 43) -> nn.Module:
    """A freshly initialised network of architecture ``name`` with ``num_classes`` outputs."""
    check_arch(name)
    if name in _BUILT_IN:
        model: nn.Module = _BUILT_IN[name](num_classes=num_classes)
    else:
        model = torchvision_model(name[len(_TV) :], num_classes)
    model.arch = name
    model.num_classes = num_classes
    return model


def default_hidden_layer(model: nn.Module) -> str:
    """The layer activation defences read by default: the model's ``default_hidden_layer``
    (``relu_fc2`` for SmallInception, ``avgpool`` for the ResNets, ``relu_fc1`` for VGG-16), else the module that feeds the
    last linear layer (``avgpool`` in a torchvision ResNet, the last dropout of a VGG head)."""
    name = getattr(model, "default_hidden_layer", None)
    if isinstance(model, SmallInception):
        return DEFAULT_HIDDEN_LAYER
    if name:
        return name
    names = [n for n, m in model.named_modules() if n and not list(m.children())]
    linear = [i for i, n in enumerate(names) if isinstance(model.get_submodule(n), nn.Linear)]
    if not linear or linear[-1] == 0:
        raise ConfigError("this model has no layer before a final linear layer; name one with --layer")
    return names[linear[-1] - 1]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
