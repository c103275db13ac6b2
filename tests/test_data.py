import numpy as np
import pytest
from PIL import Image

from poisonsift.data import ImageData, load_npz, prepare, resolve_data, save_npz, thin_tracks
from poisonsift.errors import ConfigError, DataError


def test_prepare_official_layout(fake_gtsrb, tmp_path):
    out = tmp_path / "d.npz"
    d = prepare(fake_gtsrb, out)
    assert d.x_train.shape == (12, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert d.y_train.dtype == np.int64 and sorted(set(d.y_train.tolist())) == [0, 1, 2]
    assert d.x_test.shape == (4, 32, 32, 3)
    assert d.y_test.tolist() == [0, 1, 2, 0]
    # Two tracks per class -> six distinct groups, and frames of one track share a group.
    assert len(set(d.group_train.tolist())) == 6
    assert d.group_train[0] == d.group_train[1]
    again = load_npz(out)
    assert np.array_equal(again.x_train, d.x_train) and again.classes == d.classes


def test_prepare_resizes_whole_image_and_roi_crop_differs(fake_gtsrb):
    src = fake_gtsrb / "GTSRB/Final_Training/Images/00000/00000_00000.ppm"
    with Image.open(src) as im:
        expected = np.asarray(im.convert("RGB").resize((32, 32), Image.BILINEAR))
    d = prepare(fake_gtsrb)
    assert np.array_equal(d.x_train[0], expected)
    roi = prepare(fake_gtsrb, roi_crop=True)
    assert not np.array_equal(roi.x_train[0], d.x_train[0])


def test_prepare_image_folder_with_held_out_split(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    d = prepare(tmp_path)
    assert d.classes == ["cat", "dog"]
    assert len(d.y_train) == 12 and len(d.y_test) == 4  # 25 % held out per class


def test_resolve_data_caches_prepared_folder(fake_gtsrb):
    a = resolve_data(fake_gtsrb)
    b = resolve_data(fake_gtsrb)
    assert np.array_equal(a.x_train, b.x_train)


def test_missing_folder_is_clear(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        prepare(tmp_path / "nope")


def test_unreadable_image_names_file(fake_gtsrb):
    bad = fake_gtsrb / "GTSRB/Final_Training/Images/00001/00000_00001.ppm"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="00000_00001.ppm: unreadable image"):
        prepare(fake_gtsrb)


def test_csv_row_without_file(fake_gtsrb):
    (fake_gtsrb / "GTSRB/Final_Test/Images/00002.ppm").unlink()
    with pytest.raises(DataError, match="row for 00002.ppm has no file"):
        prepare(fake_gtsrb)


def test_empty_class_folder(fake_gtsrb):
    csv = fake_gtsrb / "GTSRB/Final_Training/Images/00002/GT-00002.csv"
    csv.write_text(csv.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataError):
        prepare(fake_gtsrb)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda a: a.update(x_train=a["x_train"].astype(np.float32)), "must be uint8"),
        (lambda a: a.update(x_train=a["x_train"][:, :16]), "one size for both"),
        (lambda a: a.update(x_train=a["x_train"][:, :4], x_test=a["x_test"][:, :4]), r"H and W >= 8"),
        (lambda a: a.update(x_train=a["x_train"][..., :1]), r"shape \(N, H, W, 3\)"),
        (lambda a: a.update(y_train=a["y_train"] + 10), "labels must lie in"),
        (lambda a: a.update(y_train=a["y_train"][:-1]), "images but"),
        (lambda a: a.update(y_train=np.where(a["y_train"] == 3, 2, a["y_train"])), r"class\(es\) \[3\] have no images"),
    ],
)
def test_bad_arrays_rejected_on_load(tiny_data, tmp_path, mutate, message):
    arrays = dict(x_train=tiny_data.x_train, y_train=tiny_data.y_train, x_test=tiny_data.x_test,
                  y_test=tiny_data.y_test, classes=np.asarray(tiny_data.classes))
    mutate(arrays)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=message):
        load_npz(tmp_path / "bad.npz")


def test_save_is_roundtrip(tiny_data, tmp_path):
    save_npz(tiny_data, tmp_path / "t.npz")
    back = load_npz(tmp_path / "t.npz")
    for k in ("x_train", "y_train", "x_test", "y_test", "group_train"):
        assert np.array_equal(getattr(back, k), getattr(tiny_data, k))
    assert isinstance(back, ImageData)


@pytest.mark.gtsrb
def test_real_gtsrb_counts(gtsrb_data):
    d = gtsrb_data
    assert d.x_train.shape == (39209, 32, 32, 3)
    assert d.x_test.shape == (12630, 32, 32, 3)
    assert d.num_classes == 43 and d.classes[2] == "speed limit 50" and d.classes[5] == "speed limit 80"
    assert np.bincount(d.y_train).min() > 0


def test_default_data_lookup_order(fake_gtsrb, monkeypatch):
    from poisonsift.utils import cache_dir

    monkeypatch.delenv("POISONSIFT_GTSRB", raising=False)
    with pytest.raises(DataError, match="set POISONSIFT_GTSRB"):
        resolve_data(None)
    monkeypatch.setenv("POISONSIFT_GTSRB", str(fake_gtsrb))
    a = resolve_data(None)
    assert (cache_dir() / "data" / "gtsrb.npz").is_file()  # the user cache now holds it
    monkeypatch.delenv("POISONSIFT_GTSRB")
    b = resolve_data(None)
    assert np.array_equal(a.x_train, b.x_train)


def test_offline_download_failure_is_one_clear_message(monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.delenv("POISONSIFT_GTSRB", raising=False)
    monkeypatch.setattr(torchvision.datasets, "GTSRB", offline)
    with pytest.raises(DataError, match="pass --data PATH or set POISONSIFT_GTSRB"):
        resolve_data(None, allow_download=True)


def test_thin_tracks_keeps_every_nth_frame_of_each_track():
    # three tracks of 5, 4 and 1 frames, interleaved in storage; two images without a track
    group = np.array([7, 7, 3, 7, 3, 7, 3, 7, 3, 9, 100, 101])
    n = len(group)
    x = np.arange(n, dtype=np.uint8)[:, None, None, None].repeat(8, 1).repeat(8, 2).repeat(3, 3)
    y = np.array([0, 0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 1])
    d = ImageData(x, y, x[:2], y[:2], ["a", "b", "c"], group)
    t = thin_tracks(d, 2)
    # track 7 frames at rows 0,1,3,5,7 -> keep 1st, 3rd, 5th (rows 0,3,7); track 3 rows 2,4,6,8 -> 2,6
    assert t.x_train[:, 0, 0, 0].tolist() == [0, 2, 3, 6, 7, 9, 10, 11]
    assert t.y_train.tolist() == y[[0, 2, 3, 6, 7, 9, 10, 11]].tolist()
    assert t.group_train.tolist() == group[[0, 2, 3, 6, 7, 9, 10, 11]].tolist()
    assert np.array_equal(t.x_test, d.x_test) and thin_tracks(d, 1) is d
    for bad in (0, -2, 1.5):
        with pytest.raises(ConfigError, match="step"):
            thin_tracks(d, bad)
