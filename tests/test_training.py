import numpy as np
import pytest
import torch

from poisonsift.augment import AugmentConfig, augment_batch, hsv_to_rgb, rgb_to_hsv
from poisonsift.errors import CheckpointError, ConfigError
from poisonsift.training import (
    Normalizer,
    TrainConfig,
    get_preset,
    load_checkpoint,
    predict,
    save_checkpoint,
    split_by_group,
    train,
)


def test_split_by_group_keeps_groups_whole():
    groups = np.repeat(np.arange(50), 4)
    tr, va = split_by_group(groups, 0.2, seed=0)
    assert set(groups[tr]).isdisjoint(groups[va])
    assert len(tr) + len(va) == 200 and 30 <= len(va) <= 50
    tr2, va2 = split_by_group(groups, 0.2, seed=0)
    assert np.array_equal(va, va2)


def test_augment_shapes_range_and_determinism():
    x = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8)
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    b = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(0))
    assert a.shape == (8, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    off = augment_batch(x, AugmentConfig(enabled=False), torch.Generator())
    assert torch.allclose(off, x.permute(0, 3, 1, 2).float() / 255)


def test_identity_geometry_keeps_image():
    cfg = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rotation=0, affine_rotation=0,
                        brightness=0, contrast=0, saturation=0, hue=0, grayscale_p=0)
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    assert torch.allclose(out, x.permute(0, 3, 1, 2).float() / 255, atol=1e-5)


def test_torchvision_resampling_takes_the_nearest_pixel():
    still = dict(brightness=0, contrast=0, saturation=0, hue=0, grayscale_p=0)
    x = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    # rotations only: every output pixel is an input pixel (or the zero fill), as torchvision's RandomRotation
    rot = AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), resample="torchvision", **still)
    out = augment_batch(x, rot, g()) * 255
    assert (out - out.round()).abs().max() < 1e-3
    blur = augment_batch(x, AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **still), g()) * 255
    assert (blur - blur.round()).abs().max() > 0.1  # the one bilinear warp mixes neighbours
    # without rotations both resamplings are the same crop: same random draws, same map
    crop = dict(rotation=0, affine_rotation=0, **still)
    a = augment_batch(x, AugmentConfig(resample="torchvision", **crop), g())
    b = augment_batch(x, AugmentConfig(**crop), g())
    assert torch.allclose(a, b, atol=1e-5)


def test_resampling_keys_and_validation():
    assert "resample" not in get_preset("cpu").to_dict()["augment"]  # cached cpu runs keep their keys
    assert get_preset("paper").to_dict()["augment"]["resample"] == "torchvision"  # the paper's code
    with pytest.raises(ConfigError, match="unknown resampling 'bicubic'"):
        AugmentConfig(resample="bicubic")


def test_hsv_roundtrip_matches_colorsys():
    import colorsys

    x = torch.rand(2, 3, 4, 4)
    back = hsv_to_rgb(rgb_to_hsv(x))
    assert torch.allclose(back, x, atol=1e-5)
    r, g, b = x[0, :, 1, 2].tolist()
    assert torch.allclose(rgb_to_hsv(x)[0, :, 1, 2], torch.tensor(colorsys.rgb_to_hsv(r, g, b)), atol=1e-5)


def test_training_learns_tiny_data_and_is_deterministic(tiny_data):
    cfg = TrainConfig(epochs=3, batch_size=16, lr=3e-3, val_fraction=0.2, augment=AugmentConfig(enabled=False))
    res = train(tiny_data.x_train, tiny_data.y_train, 6, cfg, groups=tiny_data.group_train, device="cpu")
    acc = np.mean(predict(res.model, tiny_data.x_test, res.normalizer) == tiny_data.y_test)
    assert acc >= 0.8
    assert len(res.history) == 3 and res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    res2 = train(tiny_data.x_train, tiny_data.y_train, 6, cfg, groups=tiny_data.group_train, device="cpu")
    for k, v in res.model.state_dict().items():
        assert torch.equal(v, res2.model.state_dict()[k]), k


def test_early_stopping_restores_best(tiny_data):
    cfg = TrainConfig(epochs=6, batch_size=16, lr=0.5, schedule="constant", patience=1, val_fraction=0.2,
                      augment=AugmentConfig(enabled=False))
    res = train(tiny_data.x_train, tiny_data.y_train, 6, cfg, groups=tiny_data.group_train, device="cpu")
    best = min(h["val_loss"] for h in res.history)
    assert res.history[res.best_epoch - 1]["val_loss"] == best
    if res.stopped_early:
        assert len(res.history) == res.best_epoch + 1


def test_checkpoint_roundtrip_and_errors(tmp_path):
    from poisonsift.models import SmallInception

    m = SmallInception(num_classes=6).eval()
    norm = Normalizer((0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    save_checkpoint(tmp_path / "m.pt", m, norm)
    m2, n2 = load_checkpoint(tmp_path / "m.pt", "cpu")
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(m(x), m2(x)) and n2 == norm
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a poisonsift checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_presets():
    assert get_preset("paper").lr == 1e-4 and get_preset("paper").epochs == 100
    assert get_preset("cpu", epochs=2).epochs == 2
    assert get_preset("demo").epochs == 2 and not get_preset("demo").augment.enabled
    assert get_preset("demo").lr == get_preset("cpu").lr  # the cpu preset without augmentation
    with pytest.raises(ConfigError):
        get_preset("gpu-farm")
