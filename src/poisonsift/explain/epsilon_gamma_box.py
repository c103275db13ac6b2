"""The ``epsilon-gamma-box`` LRP rule: zennit's EpsilonGammaBox with BatchNorm folded, its Gamma
rule computed by a custom autograd function (:func:`fast_gamma_rule`) where that is exact."""

from __future__ import annotations

import torch
from torch import nn

from poisonsift.errors import ConfigError
from poisonsift.explain._hooks import _input_grad, output_hook
from poisonsift.training import Normalizer

__all__ = ["LRP_PRECISIONS", "lrp_dtype", "fast_gamma_rule", "nonnegative_input_convs"]


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
    from zennit.rules import Epsilon, Gamma, Pass

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

        # A BatchNorm that follows no convolution (pre-activation blocks: BatchNorm -> ReLU -> conv)
        # cannot be folded; the epsilon rule treats it as the elementwise linear layer it is
        # (without a shift it passes relevance unchanged). Folded ones are gone by then.
        return _Composite(low=lo, high=hi, layer_map=[(nn.modules.batchnorm._BatchNorm, Epsilon())],
                          canonizers=[_FoldBatchNorm(), *residual_canonizers()])  # fmt: skip

    relu_pass = not _relu_pass_is_gradient(model, device, build(True, torch.float32), build(False, torch.float32))
    return build(relu_pass, dtype)


def _relu_pass_is_gradient(model: nn.Module, device, with_pass, without_pass) -> bool:
    """Whether zennit's Pass rule on the ReLUs gives the same heatmaps as the ReLUs' gradient.

    Pass hands a ReLU's output relevance to its input unchanged; the gradient also zeroes it
    where the output is 0. When every rule downstream of a ReLU is proportional to its input
    (Gamma, Epsilon, Norm; max-pooling and concatenation route relevance, they do not create
    it), no relevance ever reaches a zero output and the two agree exactly - then the Pass
    hooks are pure overhead (6 % of LRP on SmallInception, measured). Anything else (an
    operation without a rule that shifts its input, after a ReLU; an unfolded BatchNorm takes the
    epsilon rule, which is proportional) makes them differ on almost every input, which a probe
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
