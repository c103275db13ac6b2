"""Explanations: LRP heatmaps with zennit, hidden-layer activations, and heatmap point clouds.

LRP (paper 5.4) uses zennit, not a hand-made LRP: the ``EpsilonGammaBox``
composite (ZBox on the first layer, bounded by the normalised images of pixel
values 0 and 1; Gamma on convolutions; Epsilon on dense layers) with every
BatchNorm folded into the convolution before it (zennit's
``SequentialMergeBatchNorm``, the merged BatchNorm then swapped out:
:class:`_FoldBatchNorm`) - the maintained form of the BatchNorm rules the
paper added by hand. The Gamma rule of every convolution is computed by a
custom autograd function (:func:`fast_gamma_rule`: one extra convolution and
one transposed one where a ReLU follows, two otherwise), equal to zennit's ``Gamma`` to float precision; with the
ReLUs' Pass hooks left out where they change nothing, LRP runs ~3.5x faster
than zennit's composite on the paper's network (512 real images, 2 cores, same batch:
10.2-11.0 s against 2.6-3.0 s).
Relevance starts at the logit of each sample's label and is summed over colour
channels. Concatenation (the Inception module) and max-pooling pass relevance
as the gradient does; average pooling uses zennit's Norm rule.

Point clouds (paper 5.4, 5.5): a heatmap is min-max normalised, scaled to sum
1, and its most relevant pixels are kept until their mass first exceeds 0.99;
the cloud is their (row, col) coordinates, their relevances renormalised to sum
1, and C = pairwise Euclidean distances / their maximum.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from poisonsift.errors import ConfigError, DataError
from poisonsift.explain._hooks import _input_grad, output_hook
from poisonsift.training import Normalizer, model_inputs
from poisonsift.utils import native_bfloat16, progress

__all__ = [
    "LRP_RULES",
    "check_lrp_rule",
    "resolve_layer",
    "activations",
    "activations_cache_file",
    "lrp_heatmaps",
    "cached_lrp_heatmaps",
    "PointCloud",
    "point_cloud",
    "relevance_concentration",
    "point_clouds",
    "pool_heatmaps",
]


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
    from poisonsift.models import default_hidden_layer
    from poisonsift.utils import atomic_npy_memmap

    layer = layer or default_hidden_layer(model)
    module = resolve_layer(model, layer)
    path = Path(cache_dir) / f"activations-{_fingerprint(model, images, labels, normalizer)}-{layer}.npy"
    if path.is_file():
        return path
    width = []  # one image's forward pass: the layer's width, so the memory map can be made first
    handle = module.register_forward_hook(lambda m, i, o: width.append(o[0].numel()))
    try:
        with torch.inference_mode():
            model.eval()
            model(next(iter(model_inputs(model, images[:1], normalizer, 1)))[1])
    finally:
        handle.remove()
    with atomic_npy_memmap(path, (len(images), width[-1])) as out:
        activations(model, images, layer, normalizer, desc=desc, out=out)
    return path


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


def check_lrp_rule(rule: str) -> str:
    """``rule`` if it names an LRP rule, else a :class:`ConfigError` listing the valid ones."""
    if rule not in LRP_RULES:
        raise ConfigError(f"unknown LRP rule {rule!r}; use one of {', '.join(LRP_RULES)}")
    return rule


#: LRP precisions: ``float32`` (zennit's numbers to float precision) or ``bfloat16`` (the
#: Gamma rules' extra convolutions in bfloat16; see :func:`lrp_heatmaps`).
LRP_PRECISIONS = ("float32", "bfloat16")


def lrp_dtype(precision: str) -> torch.dtype:
    """The torch dtype of an LRP precision name; an unknown name is a :class:`ConfigError`."""
    if precision not in LRP_PRECISIONS:
        raise ConfigError(f"unknown LRP precision {precision!r}; use one of {', '.join(LRP_PRECISIONS)}")
    return getattr(torch, precision)


class _GammaConv(torch.autograd.Function):
    """Forward: the convolution's output z, unchanged. Backward: zennit's generalised Gamma rule.

    zennit splits x = x+ + x- and W = W+ + W-, and with W1 = W + g W+, W2 = W + g W- (b1, b2
    likewise) divides R by den+ = W1 x+ + W2 x- + b1 where z > 0 and by den- = W2 x+ + W1 x- + b2
    where z < 0, returning x+ * (W1' s+ + W2' s-) + x- * (W2' s+ + W1' s-). With
    A = W+ x+ + W- x- + b+ (so W- x+ + W+ x- + b- = z - A), |den| = g A + (z if z > 0 else
    -(1+g) z), and writing W+- = (W +- |W|) / 2 the relevance regroups as

        R_in = x * U + |x| * V,   U = (1 + g/2) W' s,   V = (g/2) |W|' (s sign z),

    s = R sign(z) / |den| and s sign z = R / |den| (both zero where z = 0, where zennit's masks
    pass nothing). So one extra convolution (A; for x >= 0 simply W+ x + b+) and two transposed
    ones, whatever the signs, instead of zennit's five forward and five backward passes.
    Where no relevance reaches z < 0 - a ReLU follows the layer, as after every convolution of
    a conv-BN-ReLU network - s sign z = s, and for x >= 0 the two products fold into one:
    R_in = x * (W + g W+)' s, the textbook LRP-gamma; the backward checks this exactly on
    each call and otherwise computes both. ``dtype`` (bfloat16 for speed) is the precision of
    those convolutions; z, the signs and the scales stay in the layer's own precision.
    """

    @staticmethod
    def forward(ctx, x, z, conv, gamma, eps, dtype, signed):
        w, b = conv.weight, conv.bias
        # g A + eps straight out of the convolution: g in the weights, g b+ (+ eps) in the bias.
        # eps joins in z's precision: in bfloat16 it would vanish beside g b+, and it is what
        # keeps 0 / |den| finite where z = A = 0.
        same = dtype == z.dtype
        bias = (b.clamp(min=0) * gamma if b is not None else z.new_zeros(z.shape[1])) + (eps if same else 0.0)
        w_pos = w.clamp(min=0) * gamma
        if signed:  # A = [W+, W-] * [x+; x-]: one convolution over twice the input channels
            w_cat = torch.cat([w_pos, w.clamp(max=0) * gamma], 1).to(dtype)
            den = conv._conv_forward(torch.cat([x.clamp(min=0), x.clamp(max=0)], 1).to(dtype), w_cat, bias.to(dtype))
        else:
            if float(x.amin()) < 0:  # one read, no mask
                raise RuntimeError("the non-negative Gamma rule got a negative input; use fast_gamma_rule(signed=True)")
            den = conv._conv_forward(x.to(dtype), w_pos.to(dtype), bias.to(dtype))
        if not same:
            den = den.to(z.dtype).add_(eps)
        # |den| = g A + (z if z > 0 else -(1+g) z) = g A - (g/2) z + (1 + g/2) sign(z) z, in place
        sign = torch.sign(z)
        den.add_(z, alpha=-gamma / 2).addcmul_(sign, z, value=1 + gamma / 2)
        # sign(z) / |den|: zero where z = 0, where the Gamma rule passes no relevance (zennit's
        # masks [z > 0], [z < 0]); elsewhere 1 / zennit's stabilised denominator with z's sign
        inv = sign.div_(den)
        del den
        ctx.save_for_backward(x, inv, inv.abs())
        ctx.conv, ctx.gamma, ctx.compute_dtype, ctx.signed = conv, gamma, dtype, signed
        return z.view_as(z)  # no copy: autograd wraps the view as this function's output

    @staticmethod
    def backward(ctx, rel):
        x, inv, inv_abs = ctx.saved_tensors
        conv, g, dt = ctx.conv, ctx.gamma, ctx.compute_dtype
        w = conv.weight
        s, s_sign = rel * inv, rel * inv_abs
        if not ctx.signed and torch.equal(s, s_sign):
            # No relevance where z < 0 - the case whenever a ReLU follows (its output is 0 there,
            # and every rule after it is input-proportional): then both products read the same
            # s, and (1 + g/2) W + (g/2) |W| = W + g W+, so one transposed convolution does.
            r = _input_grad(conv, (w + w.clamp(min=0) * g).to(dt), s.to(dt), x.shape).to(x.dtype)
            return r.mul_(x), None, None, None, None, None, None
        u = _input_grad(conv, (w * (1 + g / 2)).to(dt), s.to(dt), x.shape).to(x.dtype)
        v = _input_grad(conv, (w.abs() * (g / 2)).to(dt), s_sign.to(dt), x.shape)
        if ctx.signed:
            return u.mul_(x).addcmul_(v, x.abs()), None, None, None, None, None, None
        return u.add_(v).mul_(x), None, None, None, None, None, None


def fast_gamma_rule(gamma: float = 0.25, stabilizer: float = 1e-6, signed: bool = False,
                    dtype: torch.dtype = torch.float32):  # fmt: skip
    """zennit's ``Gamma`` rule for a convolution, computed by a custom autograd function.

    zennit's generalised ``Gamma`` (a ``BasicHook``) runs five modified forward
    and five backward passes per layer (inputs split by sign, weights by sign), on
    top of the layer's own forward and the backward that autograd runs and the hook
    then overwrites. Here a custom autograd function (:class:`_GammaConv`) replaces
    the layer's output (so the overwritten backward never runs) and computes the same
    relevance in its backward from one extra convolution and one transposed one (two
    where relevance reaches negative outputs, i.e. no ReLU follows).
    ``signed=False`` is for inputs that are never negative (after a ReLU; a negative
    input is an error) and skips splitting x by sign; ``signed=True`` takes any input.
    Tested against zennit's ``Gamma`` (tests/test_explain.py). ``dtype``: precision of
    the extra convolutions (see :func:`lrp_heatmaps`). Returns a zennit hook template
    for a composite's module map (``nn.Conv2d`` only).
    """
    return output_hook(lambda module, x, out: _GammaConv.apply(x, out.detach(), module, gamma, stabilizer, dtype, signed))


def nonnegative_input_convs(model: nn.Module, device) -> set[str]:
    """Names of the convolutions whose input is >= 0 whatever the image (ReLU or max-pool of ReLU before).

    Found by a probe: a forward pass of wide N(0, 3^2) noise, which drives every input
    that can be negative below zero; a structurally non-negative input stays >= 0.
    """
    seen: dict[str, bool] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            def pre(mod, args, name=name):
                seen[name] = seen.get(name, True) and bool((args[0] >= 0).all())
            hooks.append(m.register_forward_pre_hook(pre))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device) * 3)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n for n, ok in seen.items() if ok}


def _composite(normalizer: Normalizer | None, device, model: nn.Module | None = None, fast_gamma: bool = True,
               precision: str = "float32"):  # fmt: skip
    """zennit's EpsilonGammaBox + SequentialMergeBatchNorm; with ``fast_gamma`` the Gamma
    convolutions use :func:`fast_gamma_rule` (same rule, fewer convolutions; the cheaper
    non-negative form where :func:`nonnegative_input_convs` allows it), BatchNorm is
    folded exactly (:class:`_FoldBatchNorm`), and the ReLUs' Pass rule is left out where
    a probe shows it changes nothing (:func:`_relu_pass_is_gradient`)."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonGammaBox
    from zennit.rules import Gamma, Pass

    from poisonsift.explain.paper_rule import residual_canonizers

    lo = torch.zeros(1, 3, 1, 1, device=device)
    hi = torch.ones(1, 3, 1, 1, device=device)
    if normalizer is not None:
        lo, hi = normalizer(lo), normalizer(hi)
    dtype = lrp_dtype(precision)
    if not fast_gamma or model is None:
        if dtype != torch.float32:
            raise ConfigError(f"LRP precision {precision!r} needs the fast Gamma rules (a model)")
        return EpsilonGammaBox(low=lo, high=hi, canonizers=[SequentialMergeBatchNorm(), *residual_canonizers()])
    nonneg = nonnegative_input_convs(model, device)

    def build(relu_pass: bool, gamma_dtype: torch.dtype):
        pos, sig = fast_gamma_rule(signed=False, dtype=gamma_dtype), fast_gamma_rule(signed=True, dtype=gamma_dtype)

        class _Composite(EpsilonGammaBox):
            def mapping(self, ctx, name, module):
                hook = super().mapping(ctx, name, module)
                if isinstance(hook, Pass) and isinstance(module, nn.ReLU) and not relu_pass:
                    return None
                if not isinstance(hook, Gamma) or not isinstance(module, nn.Conv2d):
                    return hook
                return pos if name in nonneg else sig

        return _Composite(low=lo, high=hi, canonizers=[_FoldBatchNorm(), *residual_canonizers()])

    relu_pass = not _relu_pass_is_gradient(model, device, build(True, torch.float32), build(False, torch.float32))
    return build(relu_pass, dtype)


def _relu_pass_is_gradient(model: nn.Module, device, with_pass, without_pass) -> bool:
    """Whether zennit's Pass rule on the ReLUs gives the same heatmaps as the ReLUs' gradient.

    Pass hands a ReLU's output relevance to its input unchanged; the gradient also zeroes it
    where the output is 0. When every rule downstream of a ReLU is proportional to its input
    (Gamma, Epsilon, Norm; max-pooling and concatenation route relevance, they do not create
    it), no relevance ever reaches a zero output and the two agree exactly - then the Pass
    hooks are pure overhead (6 % of LRP on SmallInception, measured). Anything else (a
    BatchNorm or a bias after a ReLU) makes them differ on almost every input, which a probe
    of 4 random images finds; then the Pass rule stays.
    """
    from zennit.attribution import Gradient

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32, generator=gen).to(device)
    was_training = model.training
    model.eval()
    maps = []
    try:
        for comp in (with_pass, without_pass):
            with Gradient(model=model, composite=comp) as attributor:
                maps.append(attributor(x.clone().requires_grad_(True), lambda out: out)[1])
    finally:
        model.train(was_training)
    ref, new = maps
    peak = float(ref.abs().max())
    return peak > 0 and bool(torch.allclose(new, ref, rtol=1e-5, atol=1e-6 * peak))


class _FoldBatchNorm:
    """A zennit canonizer: zennit's SequentialMergeBatchNorm, then each merged BatchNorm
    swapped for ``nn.Identity`` until :meth:`remove` puts everything back.

    SequentialMergeBatchNorm alone leaves a merged BatchNorm running as x / sqrt(1 + eps)
    (relevance passes it unchanged): a slightly different network, and a forward and a
    backward pass per BatchNorm - a tenth of the LRP time on SmallInception. Swapped out,
    the network computes exactly the original function.
    """

    def __init__(self) -> None:
        self.merged: list = []
        self.swapped: list[tuple[nn.Module, str, nn.Module]] = []

    def apply(self, root: nn.Module) -> list["_FoldBatchNorm"]:
        from zennit.canonizers import SequentialMergeBatchNorm

        inst = _FoldBatchNorm()
        inst.merged = SequentialMergeBatchNorm().apply(root)
        ids = {id(c.batch_norm) for c in inst.merged}
        for parent in list(root.modules()):
            for name, child in list(parent.named_children()):
                if id(child) in ids:
                    setattr(parent, name, nn.Identity())
                    inst.swapped.append((parent, name, child))
        return [inst]

    def register(self) -> None:  # the work is done in apply
        pass

    def remove(self) -> None:
        for parent, name, child in self.swapped:
            setattr(parent, name, child)
        for c in self.merged:
            c.remove()
        self.merged, self.swapped = [], []

    def copy(self) -> "_FoldBatchNorm":
        return _FoldBatchNorm()


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
) -> np.ndarray:
    """LRP relevance maps, (N, H, W) float32, summed over colour channels.

    ``out``: an (N, H, W) float32 array to fill and return (e.g. a memory map, so the heatmaps of
    a whole training set need not fit in memory); None allocates one.

    ``rule``: ``epsilon-gamma-box`` (zennit's composite, the notes below) or ``paper`` (the
    paper's epsilon rule with exponent 2, :mod:`poisonsift.explain.paper_rule`; float32 only).

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
    0.7 % of their peak of the float32 ones (median 0.2 %, real GTSRB classes). Ignored when
    ``composite`` is given.
    """
    with _out_of_place(model):
        return _lrp_heatmaps(model, images, labels, normalizer, batch_size, composite, desc, precision, rule, out)


def _lrp_heatmaps(model, images, labels, normalizer, batch_size, composite, desc, precision, rule, out) -> np.ndarray:
    from zennit.attribution import Gradient

    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels")
    device = next(model.parameters()).device
    model.eval()
    check_lrp_rule(rule)
    if composite is None:
        check_lrp_layers(model)
    if composite is None and rule == "paper":
        from poisonsift.explain.paper_rule import paper_composite

        if precision != "float32":
            raise ConfigError(f"LRP precision {precision!r} is for the epsilon-gamma-box rule; the paper rule is float32")
        composite = paper_composite()
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
    try:
        with Gradient(model=model, composite=comp) as attributor, progress(total=len(images), desc=desc, unit="img") as bar:
            for s, x in batches:
                y = labels_t[s : s + len(x)].to(device)

                def start(logits: torch.Tensor) -> torch.Tensor:
                    if y.max() >= logits.shape[1]:
                        raise DataError(f"label {int(y.max())} but the model has only {logits.shape[1]} outputs")
                    return logits * nn.functional.one_hot(y, logits.shape[1]).to(logits.dtype)

                _, rel = attributor(x.detach().requires_grad_(True), start)
                out[s : s + len(x)] = rel.sum(1).detach().float().cpu().numpy()
                bar.update(len(x))
    finally:
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
    h.update(LRP_CONFIGS[check_lrp_rule(rule)].encode())
    if precision != "float32":  # float32 keys as before, so existing caches stay valid
        h.update(precision.encode())
    return h.hexdigest()[:20]


def lrp_cache_file(model, images, labels, normalizer, cache_dir, batch_size: int | None = None,
                   precision: str = "float32", rule: str = "epsilon-gamma-box", desc: str = "LRP") -> Path:  # fmt: skip
    """The ``.npy`` of :func:`lrp_heatmaps` in ``cache_dir``, computed first where it is missing.

    The key covers the model's weights, the images, the labels, the normaliser, the LRP rule and
    precision. The heatmaps are written batch by batch into a memory map, so a training set of any
    size needs memory for one batch only; read them back with ``np.load(path, mmap_mode="r")``.
    """
    from poisonsift.utils import atomic_npy_memmap

    lrp_dtype(precision)
    check_lrp_rule(rule)
    path = Path(cache_dir) / f"heatmaps-{_fingerprint(model, images, labels, normalizer, precision, rule)}.npy"
    if not path.is_file():
        with atomic_npy_memmap(path, (len(images), *images.shape[1:3])) as out:
            lrp_heatmaps(model, images, labels, normalizer, batch_size, precision=precision, rule=rule, out=out,
                         desc=desc)  # fmt: skip
    return path


def cached_lrp_heatmaps(model, images, labels, normalizer=None, cache_dir=None, batch_size: int | None = None,
                        precision: str = "float32", rule: str = "epsilon-gamma-box") -> np.ndarray:  # fmt: skip
    """:func:`lrp_heatmaps`, stored in ``cache_dir`` (:func:`lrp_cache_file`; no cache when None)."""
    if cache_dir is None:
        return lrp_heatmaps(model, images, labels, normalizer, batch_size, precision=precision, rule=rule)
    path = lrp_cache_file(model, images, labels, normalizer, cache_dir, batch_size, precision, rule)
    return np.load(path, allow_pickle=False)


@dataclass
class PointCloud:
    """The most relevant pixels of one heatmap.

    Attributes:
        coords: (n, 2) int (row, col) of the kept pixels, most relevant first.
        p: (n,) float64 relevance mass, sums to 1.
        scale: the largest pairwise pixel distance (1.0 for a single pixel).
        shape: (H, W) of the heatmap grid the pixels live on.

    ``C`` - (n, n) pairwise Euclidean distances / ``scale`` - is computed on
    demand, so a class of thousands of clouds does not hold thousands of n x n matrices.
    """

    coords: np.ndarray
    p: np.ndarray
    scale: float = 1.0
    shape: tuple[int, int] = (32, 32)

    @property
    def C(self) -> np.ndarray:
        diff = self.coords[:, None, :].astype(np.float64) - self.coords[None, :, :]
        return np.sqrt((diff**2).sum(-1)) / self.scale

    def __len__(self) -> int:
        return len(self.p)


def point_cloud(heatmap: np.ndarray, mass: float = 0.99, fallback: str = "uniform") -> PointCloud:
    """Turn a (H, W) heatmap into a :class:`PointCloud` (paper 5.4).

    Min-max normalisation makes every value >= 0; the cloud is the most relevant pixels,
    most relevant first, up to the first prefix whose relevance exceeds ``mass``. A constant
    heatmap (all zero, say) has no relevance to rank: with ``fallback='uniform'`` it becomes
    the uniform cloud over all pixels (documented fallback, so no NaN reaches the GW solver);
    with ``fallback='error'`` it raises :class:`DataError`. A non-finite heatmap always raises.
    """
    h = np.asarray(heatmap)
    if h.ndim != 2:
        raise DataError(f"heatmap must be 2-D (H, W), got shape {h.shape}")
    return point_clouds(h[None], mass, fallback)[0]


def pool_heatmaps(heatmaps: np.ndarray, grid: int = 32) -> np.ndarray:
    """(N, H, W) heatmaps summed onto a ``grid`` x ``grid`` raster, (N, grid, grid) float32.

    Each output cell holds the relevance of the pixels it covers (adaptive average pooling times
    the cell's area), so a map's total relevance is unchanged. Maps already ``grid`` x ``grid``
    or smaller come back as they are. HC pools before its point clouds, so the GW cost (which
    grows with the points of a cloud) does not grow with the image.
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    h, w = heatmaps.shape[1:]
    if h <= grid and w <= grid:
        return heatmaps
    gh, gw = min(grid, h), min(grid, w)
    t = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(heatmaps)[:, None], (gh, gw))[:, 0]
    return (t * (h * w / (gh * gw))).numpy()


def point_clouds(heatmaps: np.ndarray, mass: float = 0.99, fallback: str = "uniform",
                 chunk: int = 256) -> list[PointCloud]:  # fmt: skip
    """:func:`point_cloud` for each of (N, H, W) heatmaps, vectorised over ``chunk`` heatmaps at a time.

    Each cloud's ``scale`` (its largest pairwise distance) is found exactly without a
    convex hull: a pixel that is neither the leftmost nor the rightmost of its row lies
    between two others, so it is no hull vertex and no end of the farthest pair, and the
    at most 2H row ends of every cloud are compared at once (measured on 2,776 real
    heatmaps, 2 cores: 0.23-0.29 s against 0.56-0.71 s cloud by cloud with scipy's
    ConvexHull, the same clouds).
    """
    h = np.asarray(heatmaps)
    if h.ndim != 3:
        raise DataError(f"heatmaps must be 3-D (N, H, W), got shape {h.shape}")
    out: list[PointCloud] = []
    for s in range(0, len(h), chunk):
        try:
            out += _point_cloud_chunk(h[s : s + chunk], mass, fallback)
        except _BadHeatmap as e:  # name the heatmap in the whole input, not in the chunk
            i, reason = e.args
            raise DataError(f"heatmap {s + i} {reason}") from None
    return out


def relevance_concentration(heatmaps: np.ndarray) -> np.ndarray:
    """How few pixels hold each heatmap's relevance: sum_i p_i log p_i (nats), (N,) float64.

    ``p`` is the heatmap made >= 0 as the point clouds make it (minus its minimum) and normalised
    to sum 1; the value is minus its entropy, i.e. ``-log`` of the effective number of relevant
    pixels: 0 when one pixel holds everything, ``-log(H W)`` for a uniform (or constant) map.
    A trigger draws a backdoored model's relevance onto its few pixels, so poisoned heatmaps
    score high (measured on real GTSRB, class 5 of the standard attack: effective 38 pixels
    poisoned against 432 clean at p = 33 %; no clean image above the least concentrated
    poisoned one at p = 10 %).
    """
    h = np.asarray(heatmaps, dtype=np.float64)
    if h.ndim != 3:
        raise DataError(f"heatmaps must be 3-D (N, H, W), got shape {h.shape}")
    flat = h.reshape(len(h), -1)
    if not np.isfinite(flat).all():
        bad = int(np.flatnonzero(~np.isfinite(flat).all(1))[0])
        raise DataError(f"heatmap {bad} has non-finite values (NaN or inf); recompute it")
    flat = flat - flat.min(1, keepdims=True)
    total = flat.sum(1, keepdims=True)
    p = np.where(total > 0, flat / np.where(total > 0, total, 1.0), 1.0 / flat.shape[1])  # constant map: uniform
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p), 0.0).sum(1)


class _BadHeatmap(Exception):
    """(index in the chunk, reason): :func:`point_clouds` turns it into one DataError."""


def _point_cloud_chunk(heatmaps: np.ndarray, mass: float, fallback: str) -> list[PointCloud]:
    """:func:`point_clouds` of one chunk of (B, H, W) heatmaps."""
    h = np.asarray(heatmaps, dtype=np.float64)
    bad = ~np.isfinite(h).all((1, 2))
    if bad.any():
        raise _BadHeatmap(int(np.flatnonzero(bad)[0]), "has NaN or infinite values; check the model and its inputs")
    N, H, W = h.shape
    flat = h.reshape(N, H * W)
    lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
    const = (hi - lo <= 0)[:, 0]
    if const.any() and fallback == "error":
        raise _BadHeatmap(int(np.flatnonzero(const)[0]), "is constant (e.g. all zero): no relevant pixels to keep")
    w = np.full_like(flat, 1.0 / (H * W))  # the uniform fallback
    live = ~const
    if live.any():
        wl = (flat[live] - lo[live]) / (hi[live] - lo[live])
        w[live] = wl / wl.sum(1, keepdims=True)
    order = np.argsort(-w, axis=1, kind="stable")
    cum = np.cumsum(np.take_along_axis(w, order, 1), axis=1)
    # the first prefix whose mass exceeds `mass` (cum is non-decreasing: w >= 0)
    n = np.minimum((cum <= mass).sum(1) + 1, H * W)
    rank = np.empty_like(order)
    rank[np.arange(N)[:, None], order] = np.arange(H * W)  # rank[i, j]: place of pixel j in cloud i's order
    scale = _row_end_diameter((rank < n[:, None]).reshape(N, H, W))
    out = []
    for i in range(N):
        keep = order[i, : n[i]]
        coords = np.stack(np.unravel_index(keep, (H, W)), axis=1)
        p = w[i, keep] / w[i, keep].sum()
        out.append(PointCloud(coords, p, float(scale[i]), (H, W)))
    return out


def _row_end_diameter(mask: np.ndarray) -> np.ndarray:
    """(B,) largest pairwise distance of the pixels of each (B, H, W) mask (1.0 for fewer
    than two pixels): only each row's first and last pixel can end the farthest pair."""
    B, H, W = mask.shape
    has = mask.any(2)
    left = mask.argmax(2)
    right = W - 1 - mask[:, :, ::-1].argmax(2)
    rows = np.broadcast_to(np.arange(H), (B, H))
    r = np.concatenate([rows, rows], 1).astype(np.int32)  # (B, 2H) row ends; squared distances are exact ints
    c = np.concatenate([left, right], 1).astype(np.int32)
    ok = np.concatenate([has, has], 1)
    first = ok.argmax(1)[:, None]  # an empty row borrows a real end, which adds no new distance
    r = np.where(ok, r, np.take_along_axis(r, first, 1))
    c = np.where(ok, c, np.take_along_axis(c, first, 1))
    d2 = (r[:, :, None] - r[:, None, :]) ** 2 + (c[:, :, None] - c[:, None, :]) ** 2
    best = np.sqrt(d2.reshape(B, -1).max(1).astype(np.float64))
    return np.where(best > 0, best, 1.0)
