"""LRP heatmaps of a whole data set, batch by batch, by either rule, and their cache."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from poisonsift.errors import ConfigError, DataError
from poisonsift.explain.activations import activations_cache_path, layer_width, resolve_layer
from poisonsift.explain.epsilon_gamma_box import _composite, lrp_dtype
from poisonsift.training import Normalizer, model_inputs
from poisonsift.utils import native_bfloat16, progress

__all__ = ["LRP_RULES", "LRP_CONFIGS", "check_lrp_rule", "lrp_rule_for", "resolve_lrp_rule", "check_lrp_layers", "lrp_heatmaps", "lrp_cache_file",
           "lrp_cache_path", "cached_lrp_heatmaps"]


#: LRP rules: ``paper`` (the paper's code: epsilon rule with exponent 2, BatchNorm passed; see
#: :mod:`poisonsift.explain.paper_rule`) and ``epsilon-gamma-box`` (zennit's EpsilonGammaBox with
#: BatchNorm folded). HC's default is ``paper``.
LRP_RULES = ("paper", "epsilon-gamma-box")


def _covered_layers() -> tuple[type, ...]:
    from zennit.layer import Sum

    return (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, nn.ReLU, nn.MaxPool2d, nn.AdaptiveMaxPool2d,
            nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity, Sum)  # fmt: skip


def check_lrp_layers(model: nn.Module) -> None:
    """A :class:`ConfigError` naming the first layer that no LRP rule here covers.

    Covered: Conv2d, Linear, BatchNorm, ReLU, max- and average-pooling (also adaptive),
    Flatten, Dropout, Identity, and the residual additions of torchvision's ``BasicBlock`` /
    ``Bottleneck`` (canonized into a ``Sum``). Other activations (GELU, SiLU, ...) and
    normalisations have no rule of the paper's kind. An addition written in a custom block's
    ``forward`` is invisible to this check (it has no module): give it a zennit ``Sum``.
    """
    covered = _covered_layers()
    for name, m in model.named_modules():
        if next(m.children(), None) is None and not isinstance(m, covered):
            raise ConfigError(f"LRP: layer {name!r} ({type(m).__name__}) has no LRP rule here (covered: Conv2d, Linear, "
                              "BatchNorm, ReLU, max/average pooling, Flatten, Dropout and the residual blocks of "
                              "torchvision ResNets); explain another network or use an activation defence (--method ac)")  # fmt: skip


def check_lrp_rule(rule: str, allow_auto: bool = False) -> str:
    """``rule`` if it names an LRP rule (or, with ``allow_auto``, ``"auto"``), else a
    :class:`ConfigError` listing the valid ones."""
    if rule not in LRP_RULES and not (allow_auto and rule == "auto"):
        valid = [*LRP_RULES, "auto"] if allow_auto else LRP_RULES
        raise ConfigError(f"unknown LRP rule {rule!r}; use one of {', '.join(valid)}")
    return rule


def lrp_rule_for(arch: str) -> str:
    """HC's LRP rule for a network when none is named (``auto``), by its architecture name
    (:func:`poisonsift.models.build_model`'s ``model.arch``): the paper's rule on the paper's
    network, zennit's EpsilonGammaBox on every other. Measured (tests/test_models_preact_resnet.py's
    synthetic run, a 5x5 sticker, PreAct-ResNet-18): the paper's rule AUROC 0.52, the attacked
    class not found; EpsilonGammaBox TPR 1.0 / TNR 1.0, the scan calls it alone. The paper's rule
    splits a residual sum a + b in the ratio a^2 : b^2, so the larger identity path takes nearly all
    the relevance down to the stem, whose squared-input map then says little about the class.
    On real GTSRB (docs/networks.md) neither rule splits PreAct-ResNet-18 well yet (TPR 0.52 /
    0.56, AUROC 0.92 / 0.97): this default avoids the rule's failure mode, it is not the fix."""
    return "paper" if arch == "small-inception" else "epsilon-gamma-box"


def resolve_lrp_rule(rule: str, model: nn.Module) -> str:
    """``rule``, or for ``"auto"`` :func:`lrp_rule_for` the model's architecture
    (:func:`poisonsift.models.model_arch`)."""
    if check_lrp_rule(rule, allow_auto=True) != "auto":
        return rule
    from poisonsift.models import model_arch

    return lrp_rule_for(model_arch(model))


@contextmanager
def _out_of_place(model: nn.Module):
    """In-place activations (torchvision's ``ReLU(inplace=True)``) would overwrite the outputs that
    the rules' custom backward functions hand on: they run out of place inside this block."""
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for m in inplace:
        m.inplace = False
    try:
        yield
    finally:
        for m in inplace:
            m.inplace = True


def lrp_heatmaps(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    normalizer: Normalizer | None = None,
    batch_size: int | None = None,
    composite=None,
    desc: str = "LRP",
    precision: str = "float32",
    rule: str = "epsilon-gamma-box",
    out: np.ndarray | None = None,
    capture: tuple[nn.Module, np.ndarray] | None = None,
) -> np.ndarray:
    """LRP relevance maps, (N, H, W) float32, summed over colour channels.

    ``capture``: ``(module, array)``: the module's flattened outputs in LRP's forward pass are
    written to the (N, D) float32 array too (hidden-layer activations at no extra pass; the
    network's own values where the rule leaves its forward pass alone, as the paper's does).

    ``out``: an (N, H, W) float32 array to fill and return (e.g. a memory map, so the heatmaps of
    a whole training set need not fit in memory); None allocates one.

    ``rule``: ``epsilon-gamma-box`` (zennit's composite, the notes below), ``paper`` (the
    paper's epsilon rule with exponent 2, :mod:`poisonsift.explain.paper_rule`) or ``auto``
    (:func:`resolve_lrp_rule`: by the model's architecture).

    Relevance starts at the logit of ``labels[i]`` (the sample's label). The
    model is left unchanged (zennit removes its hooks and canonizers on exit).
    Weights are frozen during LRP (no weight gradients: ~10 % faster). ``batch_size``
    None: :func:`poisonsift.utils.auto_batch_size` (31 for SmallInception on CPU, where 128 and 256 were
    2.5x and 3.7x slower than 32-64 on 2 CPU threads: cache misses).

    ``precision``: ``float32`` (default) gives zennit's EpsilonGammaBox heatmaps to float
    precision. ``bfloat16`` computes the Gamma rules' extra convolutions (A and the two
    transposed ones, 3/4 of LRP's convolution work) in bfloat16 while the network's own
    forward pass, the rule's signs and denominators stay float32: measured on real GTSRB,
    1.25x faster on a CPU with native bfloat16 (AVX512-BF16; emulated and slower on one
    without - a RuntimeWarning says so, see :func:`native_bfloat16`), heatmaps within
    0.7 % of their peak of the float32 ones (median 0.2 %, real GTSRB classes). For the ``paper``
    rule ``bfloat16`` runs its two extra products (x^2 W^2 and the transposed one) in bfloat16 with
    float32 denominators: on a 2-core Xeon with AMX 1.65x faster (class 5 of the demo run, 2,776
    images: 21.4 -> 13.0 s), heatmaps within 1.3 % of their peak (median 0.34 %), HC's decisions
    identical (``benchmarks/lrp_precision.py``). Running the network's own pass in bfloat16 too was
    2.4x faster but moved single heatmaps by up to 42 % of their peak (max-pool winners change), so
    it is not offered. Ignored when ``composite`` is given.
    """
    with _out_of_place(model):
        return _lrp_heatmaps(model, images, labels, normalizer, batch_size, composite, desc, precision, rule, out, capture)


def _lrp_heatmaps(model, images, labels, normalizer, batch_size, composite, desc, precision, rule, out,
                  capture=None) -> np.ndarray:  # fmt: skip
    from zennit.attribution import Gradient

    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    device = next(model.parameters()).device
    model.eval()
    rule = resolve_lrp_rule(rule, model)
    if composite is None:
        check_lrp_layers(model)
    if composite is None and rule == "paper":
        from poisonsift.explain.paper_rule import paper_composite

        comp = paper_composite(dtype=lrp_dtype(precision))
    else:
        comp = composite if composite is not None else _composite(normalizer, device, model, precision=precision)
    if precision == "bfloat16" and composite is None and native_bfloat16(device) is False:
        import warnings

        warnings.warn(f"{device} has no native bfloat16 (AVX512-BF16 / AMX): --lrp-precision bfloat16 is emulated "
                      "there and slower than float32", RuntimeWarning, stacklevel=3)  # fmt: skip
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    shape = (len(images), images.shape[1], images.shape[2])
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif tuple(out.shape) != shape:
        raise DataError(f"out has shape {tuple(out.shape)}, the heatmaps {shape}")
    batches = model_inputs(model, images, normalizer, batch_size)  # probes the batch size before zennit's hooks
    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    captured: list[torch.Tensor] = []
    handle = None
    if capture is not None:
        handle = capture[0].register_forward_hook(lambda m, i, o: captured.append(o.detach().flatten(1).float().cpu()))
    try:
        with Gradient(model=model, composite=comp) as attributor, progress(total=len(images), desc=desc, unit="img") as bar:
            for s, x in batches:
                y = labels_t[s : s + len(x)].to(device)

                def start(logits: torch.Tensor) -> torch.Tensor:
                    if y.max() >= logits.shape[1]:
                        raise DataError(f"label {int(y.max())} but the model has only {logits.shape[1]} outputs")
                    return logits * nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)

                captured.clear()
                _, rel = attributor(x.detach().requires_grad_(True), start)
                out[s : s + len(x)] = rel.sum(1).detach().float().cpu().numpy()
                if capture is not None:
                    capture[1][s : s + len(x)] = captured[-1].numpy()
                bar.update(len(x))
    finally:
        if handle is not None:
            handle.remove()
        for p in frozen:
            p.requires_grad_(True)
    return out



#: Names the LRP rules and the numerics that shape the heatmaps; part of every heatmap cache key
#: and of HC detection keys (poisonsift.experiments.DetectSpec), so a change recomputes both.
#: A faster computation of the same values (the custom Gamma functions match the previous
#: ones to 5e-7 of the peak) keeps the key, and with it the cached heatmaps.
LRP_CONFIG = "EpsilonGammaBox(positive Gamma)+BatchNorm folded exactly"
#: The same for each rule of :data:`LRP_RULES` (``epsilon-gamma-box`` keys as before rules existed).
LRP_CONFIGS = {"epsilon-gamma-box": LRP_CONFIG, "paper": "paper e-rule exponent 2 eps 1e-6, BatchNorm passed"}


def _fingerprint(model: nn.Module, images: np.ndarray, labels: np.ndarray, normalizer, precision: str = "float32",
                 rule: str = "epsilon-gamma-box") -> str:  # fmt: skip
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(images).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    h.update(repr(normalizer).encode())
    h.update(LRP_CONFIGS[resolve_lrp_rule(rule, model)].encode())
    if precision != "float32":  # float32 keys as before, so existing caches stay valid
        h.update(precision.encode())
    return h.hexdigest()[:20]


def lrp_cache_path(model, images, labels, normalizer, cache_dir, precision: str = "float32",
                   rule: str = "epsilon-gamma-box") -> Path:  # fmt: skip
    """Where :func:`lrp_cache_file` keeps these heatmaps (the file may not exist yet): a cheap look-up
    (hashing the weights and images), so a caller can reuse the heatmaps of a larger set, e.g. a
    scan's of every training image when one class is defended."""
    lrp_dtype(precision)
    return Path(cache_dir) / f"heatmaps-{_fingerprint(model, images, labels, normalizer, precision, rule)}.npy"


def lrp_cache_file(model, images, labels, normalizer, cache_dir, batch_size: int | None = None,
                   precision: str = "float32", rule: str = "epsilon-gamma-box", desc: str = "LRP",
                   activations_layer: str | None | bool = False) -> Path:  # fmt: skip
    """The ``.npy`` of :func:`lrp_heatmaps` in ``cache_dir``, computed first where it is missing.

    ``activations_layer`` (a layer name, or None for the model's default hidden layer; False: none):
    where the heatmaps are computed with the paper's rule, that layer's activations are kept from
    the same forward pass in their own cache (:func:`~poisonsift.explain.activations_cache_file`
    finds them there), unless they are cached already.

    The key covers the model's weights, the images, the labels, the normaliser, the LRP rule and
    precision. The heatmaps are written batch by batch into a memory map, so a training set of any
    size needs memory for one batch only; read them back with ``np.load(path, mmap_mode="r")``.
    """
    from poisonsift.utils import atomic_npy_memmap

    path = lrp_cache_path(model, images, labels, normalizer, cache_dir, precision, rule)
    if path.is_file():
        return path
    act = None
    if activations_layer is not False and resolve_lrp_rule(rule, model) == "paper":
        # the paper's rule runs the network's own forward pass (BatchNorm passed, nothing folded): the
        # layer's outputs there are the activations, to the bit, so one pass gives both caches
        act = activations_cache_path(model, images, labels, normalizer, cache_dir, activations_layer)
        act = None if act.is_file() else act
    with atomic_npy_memmap(path, (len(images), *images.shape[1:3])) as out:
        if act is None:
            lrp_heatmaps(model, images, labels, normalizer, batch_size, precision=precision, rule=rule, out=out,
                         desc=desc)  # fmt: skip
        else:
            from poisonsift.models import default_hidden_layer

            module = resolve_layer(model, activations_layer or default_hidden_layer(model))
            width = layer_width(model, images, normalizer, activations_layer)
            with atomic_npy_memmap(act, (len(images), width)) as feats:
                lrp_heatmaps(model, images, labels, normalizer, batch_size, precision=precision, rule=rule, out=out,
                             desc=desc, capture=(module, feats))  # fmt: skip
    return path


def cached_lrp_heatmaps(model, images, labels, normalizer=None, cache_dir=None, batch_size: int | None = None,
                        precision: str = "float32", rule: str = "epsilon-gamma-box") -> np.ndarray:  # fmt: skip
    """:func:`lrp_heatmaps`, stored in ``cache_dir`` (:func:`lrp_cache_file`; no cache when None)."""
    if cache_dir is None:
        return lrp_heatmaps(model, images, labels, normalizer, batch_size, precision=precision, rule=rule)
    path = lrp_cache_file(model, images, labels, normalizer, cache_dir, batch_size, precision, rule)
    return np.load(path, allow_pickle=False)
