"""The attacks beyond the paper: blended, SIG, WaNet, adaptive-blend, and all-to-one."""

import json

import numpy as np
import pytest

from poisonsift.attacks import (ALL, SIG, AdaptiveBlend, Blended, BlendTrigger, StandardBackdoor, WaNet,
                                attack_from_config)  # fmt: skip
from poisonsift.cli import main
from poisonsift.data import save_npz
from poisonsift.errors import ConfigError
from poisonsift.runs import load_poisoned, poison_run


def test_all_to_one_counts_labels_and_asr_images(tiny_data):
    n = len(tiny_data.y_train)  # 144 images, 6 classes
    pd = StandardBackdoor(p=0.1, source_class=ALL, target_class=5).poison(tiny_data, seed=0)
    assert pd.n_poisoned == round(0.1 * n) == 14  # a share of the whole set
    assert np.all(tiny_data.y_train[pd.poison_mask] != 5) and np.all(pd.y_train[pd.poison_mask] == 5)
    assert len(np.unique(tiny_data.y_train[pd.poison_mask])) > 1  # from several classes
    x, y = Blended(p=0.1, source_class=ALL).asr_images(tiny_data)
    assert len(x) == (tiny_data.y_test != 5).sum() and 5 not in y
    x, y = Blended(p=0.1, source_class=2).asr_images(tiny_data)
    assert set(y.tolist()) == {2}  # source -> target: the source class only


def test_blended_stamps_the_blend_and_relabels(tiny_data):
    atk = Blended(p=0.2, source_class=1, target_class=3, trigger=BlendTrigger(alpha=0.2))
    pd = atk.poison(tiny_data, seed=2)
    rows = np.flatnonzero(pd.poison_mask)
    assert np.all(tiny_data.y_train[rows] == 1) and np.all(pd.y_train[rows] == 3)
    assert np.array_equal(pd.x_train[rows], BlendTrigger(alpha=0.2).apply(tiny_data.x_train[rows]))
    assert np.array_equal(pd.x_train[~pd.poison_mask], tiny_data.x_train[~pd.poison_mask])
    again = atk.poison(tiny_data, seed=2)
    assert again.x_train.tobytes() == pd.x_train.tobytes()
    assert not np.array_equal(atk.poison(tiny_data, seed=3).poison_mask, pd.poison_mask)


def test_sig_is_label_consistent(tiny_data):
    atk = SIG(p=0.5, target_class=4)
    pd = atk.poison(tiny_data, seed=0)
    assert np.array_equal(pd.y_train, tiny_data.y_train)
    assert pd.n_poisoned == 12 and np.all(tiny_data.y_train[pd.poison_mask] == 4)
    assert np.array_equal(pd.x_train[pd.poison_mask], atk.trigger.apply(tiny_data.x_train[pd.poison_mask]))
    x, y = atk.asr_images(tiny_data)
    assert len(x) == (tiny_data.y_test != 4).sum() and 4 not in y


def test_wanet_payload_and_noise_mode(tiny_data):
    atk = WaNet(p=0.1, cross_ratio=2)
    pd = atk.poison(tiny_data, seed=0)
    assert pd.n_poisoned == 14 and pd.n_cover == 28
    assert not (pd.poison_mask & pd.cover_mask).any()
    assert np.array_equal(pd.y_train[pd.cover_mask], tiny_data.y_train[pd.cover_mask])  # covers keep labels
    assert np.all(pd.y_train[pd.poison_mask] == 5)
    assert np.array_equal(pd.x_train[pd.poison_mask], atk.trigger.apply(tiny_data.x_train[pd.poison_mask]))
    untouched = ~pd.poison_mask & ~pd.cover_mask
    assert np.array_equal(pd.x_train[untouched], tiny_data.x_train[untouched])
    assert WaNet(p=0.1, cross_ratio=0).poison(tiny_data).n_cover == 0


def test_adaptive_blend_pieces_covers_and_test_alpha(tiny_data):
    atk = AdaptiveBlend(p=0.05, cover_rate=0.05)
    pd = atk.poison(tiny_data, seed=1)
    assert pd.n_poisoned == 7 and pd.n_cover == 7 and not (pd.poison_mask & pd.cover_mask).any()
    assert np.all(pd.y_train[pd.poison_mask] == 5)
    assert np.array_equal(pd.y_train[pd.cover_mask], tiny_data.y_train[pd.cover_mask])
    # each poisoned image: half of the 16 cells blended at 0.15, the rest untouched
    full = BlendTrigger(alpha=0.15).apply(tiny_data.x_train)
    for r in np.flatnonzero(pd.poison_mask | pd.cover_mask):
        changed = pd.x_train[r] != tiny_data.x_train[r]
        assert np.array_equal(pd.x_train[r][changed], full[r][changed])
        cells = changed.any(-1).reshape(4, 8, 4, 8).any((1, 3))
        assert cells.sum() <= 8
    assert atk.trigger.for_test().alpha == 0.2  # the whole pattern, stronger, at test time
    with pytest.raises(ConfigError, match="--cover-rate"):
        AdaptiveBlend(cover_rate=-0.1)
    with pytest.raises(ConfigError, match="square"):
        AdaptiveBlend(pieces=10)


def test_configs_round_trip_and_covers_saved(tiny_data, tmp_path):
    for atk in (Blended(p=0.2, source_class=ALL), SIG(p=0.3, target_class=2), WaNet(p=0.1, cross_ratio=1.5),
                AdaptiveBlend(p=0.05, cover_rate=0.1, mask_rate=0.25)):  # fmt: skip
        cfg = json.loads(json.dumps(atk.config()))
        assert attack_from_config(cfg) == atk
    s = poison_run(tiny_data, WaNet(p=0.1), tmp_path / "r")
    back = load_poisoned(tmp_path / "r" / "poisoned.npz")
    assert s["n_cover"] == back.n_cover == 28


def test_source_class_must_differ_or_be_all():
    with pytest.raises(ConfigError, match="differ"):
        Blended(source_class=5, target_class=5)
    with pytest.raises(ConfigError, match="'all'"):
        StandardBackdoor(source_class="some")


@pytest.mark.parametrize("flags, message", [
    (["--attack", "blended", "--alpha", "0"], "--alpha must be in (0, 1]"),
    (["--attack", "blended", "--alpha", "1.2"], "--alpha must be in (0, 1]"),
    (["--attack", "wanet", "--k", "1"], "--k"),
    (["--attack", "adaptive-blend", "--cover-rate", "-0.01"], "--cover-rate must be in [0, 1)"),
    (["--attack", "blended", "--pattern", "/nonexistent/kitty.png"], "no such image file"),
    (["--attack", "sig", "--source-class", "1"], "--source-class is for the label-flipping attacks"),
    (["--attack", "standard", "--source-class", "x"], "a class index or 'all'"),
])  # fmt: skip
def test_bad_attack_parameters_are_one_error_line(flags, message, capsys, tmp_path):
    # checked before the data is read: the data path does not even exist
    rc = main(["poison", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "r"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_poison_cli_all_to_one_defaults(tiny_data, tmp_path, capsys):
    save_npz(tiny_data, tmp_path / "d.npz")
    assert main(["poison", "--data", str(tmp_path / "d.npz"), "--attack", "wanet", "--p", "0.1",
                 "--out", str(tmp_path / "w"), "--json"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["n_poisoned"] == 14 and out["n_cover"] == 28
    cfg = json.loads((tmp_path / "w" / "attack.json").read_text())
    assert cfg["attack"] == "wanet" and cfg["source_class"] == "all" and cfg["cross_ratio"] == 2.0
    assert main(["poison", "--data", str(tmp_path / "d.npz"), "--attack", "blended", "--source-class", "all",
                 "--out", str(tmp_path / "b"), "--json"]) == 0  # fmt: skip
    cfg = json.loads((tmp_path / "b" / "attack.json").read_text())
    assert cfg["p"] == 0.01 and cfg["trigger"]["alpha"] == 0.2  # backdoor-toolbox's rate; Chen et al.'s alpha


def test_attack_config_without_trigger_takes_the_family_default():
    """A hand-written config may name only what it changes; the trigger is then the family's."""
    from poisonsift.attacks import SIG, AmplitudeTrigger, Blended, LabelConsistent

    assert attack_from_config({"attack": "blended", "p": 0.1, "source_class": 1, "target_class": 3}) == Blended(
        p=0.1, source_class=1, target_class=3)
    assert attack_from_config({"attack": "sig", "p": 0.2, "target_class": 3}) == SIG(p=0.2, target_class=3)
    amp = attack_from_config({"attack": "amplitude", "p": 0.2, "target_class": 3})
    assert isinstance(amp, LabelConsistent) and isinstance(amp.trigger, AmplitudeTrigger)
    with pytest.raises(ConfigError, match="lacks source_class"):
        attack_from_config({"attack": "wanet", "p": 0.1, "target_class": 3})
