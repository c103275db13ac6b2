"""Hidden-layer activations, batch by batch (Activation Clustering's and the spectral defences' features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from poisonsift.errors import ConfigError, DataError
from poisonsift.training import Normalizer, model_inputs
from poisonsift.utils import progress

__all__ = ["resolve_layer", "activations", "activations_cache_file", "activations_cache_path", "layer_width"]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name``; an unknown name is a :class:`ConfigError` listing the valid ones."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        valid = ", ".join(n for n in modules if n)
        raise ConfigError(f"unknown layer {name!r}; valid layer names: {valid}")
    return modules[name]


@torch.inference_mode()
def activations(
    model: nn.Module,
    images: np.ndarray,
    layer: str | None,
    normalizer: Normalizer | None = None,
    batch_size: int | None = None,
    desc: str = "activations",
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Flattened outputs of the named layer, (N, D) float32, computed in batches.

    ``out``: an (N, D) float32 array to fill and return (e.g. a memory map: the activations of a
    wide layer over a whole training set need not fit in memory); None allocates one.

    ``layer`` None: :func:`poisonsift.models.default_hidden_layer` (``relu_fc2`` on SmallInception,
    ``avgpool`` on ResNets). A module called more than once per forward pass (a shared ReLU)
    gives its last call's output.

    ``batch_size`` None: :func:`poisonsift.utils.auto_batch_size` (31 for SmallInception on CPU; on 2 CPU
    cores 3,072 GTSRB images took 6.8 s at 64 against 11.8 s at 512, where the 32x32x256
    Inception output of a large batch spills the caches); the same numbers at any size.

    Args:
        images: (N, H, W, 3) uint8.
        normalizer: maps [0, 1] inputs to the model's input (None: feed [0, 1]).
    """
    from poisonsift.models import default_hidden_layer

    module = resolve_layer(model, layer or default_hidden_layer(model))
    model.eval()
    batches = model_inputs(model, images, normalizer, batch_size)  # probes the batch size before the hook
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o.detach().flatten(1).float().cpu()))
    try:
        with progress(total=len(images), desc=desc, unit="img") as bar:
            for s, x in batches:
                captured.clear()
                model(x)
                feat = captured[-1].numpy()
                if out is None:
                    out = np.empty((len(images), feat.shape[1]), dtype=np.float32)
                elif out.shape != (len(images), feat.shape[1]):
                    raise DataError(f"out has shape {tuple(out.shape)}, the activations {(len(images), feat.shape[1])}")
                out[s : s + len(x)] = feat
                bar.update(len(x))
    finally:
        handle.remove()
    return out if out is not None else np.empty((0, 0), dtype=np.float32)


def activations_cache_file(model: nn.Module, images: np.ndarray, labels: np.ndarray, layer: str | None,
                           normalizer: Normalizer | None, cache_dir, desc: str = "activations") -> Path:  # fmt: skip
    """The ``.npy`` of :func:`activations` of ``layer`` in ``cache_dir``, computed first where it is
    missing, batch by batch into a memory map (one batch in memory, whatever the layer's width).

    The key covers the model's weights, the images, the labels, the normaliser and the layer.
    """
    from poisonsift.utils import atomic_npy_memmap

    path = activations_cache_path(model, images, labels, normalizer, cache_dir, layer)
    if path.is_file():
        return path
    with atomic_npy_memmap(path, (len(images), layer_width(model, images, normalizer, layer))) as out:
        activations(model, images, layer, normalizer, desc=desc, out=out)
    return path


def activations_cache_path(model: nn.Module, images: np.ndarray, labels: np.ndarray, normalizer: Normalizer | None,
                           cache_dir, layer: str | None) -> Path:  # fmt: skip
    """Where :func:`activations_cache_file` keeps the activations of ``layer`` (None: the model's
    default hidden layer); the file may not exist yet."""
    from poisonsift.explain.lrp import _fingerprint
    from poisonsift.models import default_hidden_layer

    layer = layer or default_hidden_layer(model)
    resolve_layer(model, layer)
    return Path(cache_dir) / f"activations-{_fingerprint(model, images, labels, normalizer)}-{layer}.npy"


def layer_width(model: nn.Module, images: np.ndarray, normalizer: Normalizer | None, layer: str | None) -> int:
    """The number of values ``layer`` outputs per image (one image's forward pass), so a memory map
    of a whole set's activations can be made before they are computed."""
    from poisonsift.models import default_hidden_layer

    module = resolve_layer(model, layer or default_hidden_layer(model))
    width = []
    handle = module.register_forward_hook(lambda m, i, o: width.append(o[0].numel()))
    try:
        with torch.inference_mode():
            model.eval()
            model(next(iter(model_inputs(model, images[:1], normalizer, 1)))[1])
    finally:
        handle.remove()
    return width[-1]
