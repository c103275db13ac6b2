"""Backdoor poisoning attacks: the paper's three (sections 3 and 6.1) and the triggers a real data
set may hold (BackdoorBench's and backdoor-toolbox's).

An attack is an object with one method, :meth:`~poisonsift.attacks.base.Attack.poison`, that turns a
clean :class:`~poisonsift.data.ImageData` into a :class:`PoisonedData` (the poisoned training set, a
boolean ``poison_mask`` aligned with it, ``source_index``, the row of the clean original of every
poisoned row or -1, and for attacks with covers a ``cover_mask``), plus ``asr_images``, the test
images the attack success rate is measured on with the test trigger, and ``config()`` for
``attack.json``. The same seed gives bit-identical output. One module per family:

* :mod:`~poisonsift.attacks.standard` - :class:`StandardBackdoor` (the paper's sticker, 2 -> 5)
  and :class:`Blended` (Chen et al. 2017), source -> target or all-to-one (``source_class="all"``);
* :mod:`~poisonsift.attacks.label_consistent` - :class:`LabelConsistent` (Turner et al.; PGD on a
  surrogate, then the sticker or the reduced-amplitude trigger, ``--attack amplitude``);
* :mod:`~poisonsift.attacks.sig` - :class:`SIG` (Barni et al. 2019), label-consistent sinusoid;
* :mod:`~poisonsift.attacks.wanet` - :class:`WaNet` (Nguyen and Tran 2021), warping with noise mode;
* :mod:`~poisonsift.attacks.adaptive_blend` - :class:`AdaptiveBlend` (Qi et al. 2023);
* :mod:`~poisonsift.attacks.triggers` - the triggers they stamp.
"""

from __future__ import annotations

from typing import Any

from poisonsift.attacks.adaptive_blend import AdaptiveBlend
from poisonsift.attacks.base import ALL, Attack, PoisonedData, n_poison_standard
from poisonsift.attacks.label_consistent import LabelConsistent, PGDConfig, pgd_attack
from poisonsift.attacks.sig import SIG
from poisonsift.attacks.standard import Blended, StandardBackdoor
from poisonsift.attacks.triggers import (AMPLITUDE_PATTERN, AmplitudeTrigger, BlendTrigger, SinusoidTrigger,
                                         StickerTrigger, Trigger, WarpTrigger, trigger_config,
                                         trigger_from_config)  # fmt: skip
from poisonsift.attacks.wanet import WaNet
from poisonsift.errors import ConfigError

__all__ = [
    "PoisonedData",
    "Attack",
    "ALL",
    "ATTACKS",
    "StickerTrigger",
    "AmplitudeTrigger",
    "BlendTrigger",
    "SinusoidTrigger",
    "WarpTrigger",
    "Trigger",
    "StandardBackdoor",
    "Blended",
    "LabelConsistent",
    "SIG",
    "WaNet",
    "AdaptiveBlend",
    "PGDConfig",
    "AMPLITUDE_PATTERN",
    "n_poison_standard",
    "pgd_attack",
    "attack_from_config",
    "trigger_config",
    "trigger_from_config",
]

#: ``poison --attack`` names. ``label-consistent`` and ``amplitude`` need a surrogate network.
ATTACKS = ("standard", "label-consistent", "amplitude", "blended", "sig", "wanet", "adaptive-blend")
_RELABELLING = {"standard": StandardBackdoor, "blended": Blended, "wanet": WaNet, "adaptive-blend": AdaptiveBlend}
_EXTRA = {"wanet": ("cross_ratio",), "adaptive-blend": ("cover_rate", "pieces", "mask_rate")}


def attack_from_config(cfg: dict[str, Any], surrogate=None, device: str = "cpu") -> Attack:
    """Rebuild an attack from its ``config()`` (as stored in ``attack.json``). ``trigger`` (and a
    label-consistent attack's ``pgd``) may be left out: the family's defaults then."""
    name = cfg.get("attack")
    if name not in ATTACKS:
        raise ConfigError(f"unknown attack {name!r}; expected one of {', '.join(ATTACKS)}")
    need = {"p", "target_class"} | ({"source_class"} if name in _RELABELLING else set())
    missing = sorted(need - set(cfg))
    if missing:
        raise ConfigError(f"attack config {name!r} lacks {', '.join(missing)}")
    kw: dict[str, Any] = {"trigger": trigger_from_config(cfg["trigger"])} if "trigger" in cfg else {}
    if name in _RELABELLING:
        extra = {k: cfg[k] for k in _EXTRA.get(name, ()) if k in cfg}
        return _RELABELLING[name](p=cfg["p"], source_class=cfg["source_class"], target_class=cfg["target_class"],
                                  **kw, **extra)  # fmt: skip
    if name == "amplitude" and not kw:
        kw["trigger"] = AmplitudeTrigger()  # the reduced-amplitude attack is label-consistent with it
    if name == "sig":
        return SIG(p=cfg["p"], target_class=cfg["target_class"], **kw)
    return LabelConsistent(
        p=cfg["p"], target_class=cfg["target_class"], pgd=PGDConfig(**cfg.get("pgd", {})),
        surrogate=surrogate, device=device, **kw,
    )  # fmt: skip
