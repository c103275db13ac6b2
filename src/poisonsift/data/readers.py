"""Reading source folders (GTSRB's official or torchvision's layout, an ImageFolder tree) into
:class:`~poisonsift.data.arrays.ImageData`, each training image's source file kept."""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from poisonsift.data.arrays import IMAGE_SIZE, MIN_IMAGE_SIZE, ImageData, save_npz
from poisonsift.errors import ConfigError, DataError
from poisonsift.utils import progress

__all__ = ["GTSRB_CLASSES", "IMAGE_EXTENSIONS", "find_gtsrb_layout", "prepare"]

IMAGE_EXTENSIONS = {".ppm", ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

GTSRB_CLASSES = [
    "speed limit 20", "speed limit 30", "speed limit 50", "speed limit 60", "speed limit 70",
    "speed limit 80", "end of speed limit 80", "speed limit 100", "speed limit 120", "no passing",
    "no passing for trucks", "right of way at next intersection", "priority road", "yield", "stop",
    "no vehicles", "trucks prohibited", "no entry", "general caution", "dangerous curve left",
    "dangerous curve right", "double curve", "bumpy road", "slippery road", "road narrows on the right",
    "road work", "traffic signals", "pedestrians", "children crossing", "bicycles crossing",
    "beware of ice/snow", "wild animals crossing", "end of all restrictions", "turn right ahead",
    "turn left ahead", "ahead only", "go straight or right", "go straight or left", "keep right",
    "keep left", "roundabout mandatory", "end of no passing", "end of no passing for trucks",
]  # fmt: skip


def _read_image(path: Path, roi: tuple[int, int, int, int] | None = None, size: int = IMAGE_SIZE) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if roi is not None:
                x1, y1, x2, y2 = roi
                # GTSRB ROI corners are inclusive pixel coordinates.
                im = im.crop((x1, y1, x2 + 1, y2 + 1))
            im = im.resize((size, size), Image.BILINEAR)
            return np.asarray(im, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: file is listed but does not exist") from None
    except Exception as exc:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: unreadable image ({exc})") from None


def _read_many(items: Sequence[tuple[Path, tuple | None]], desc: str, size: int = IMAGE_SIZE) -> np.ndarray:
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    if not items:
        return out
    workers = min(32, (os.cpu_count() or 2) * 4)  # decoding is I/O + C code that drops the GIL
    with ThreadPoolExecutor(workers) as pool, progress(total=len(items), desc=desc, unit="img") as bar:
        for i, img in enumerate(pool.map(lambda it: _read_image(*it, size=size), items, chunksize=64)):
            out[i] = img
            bar.update(1)
    return out


def _read_gtsrb_csv(csv_path: Path) -> list[dict[str, str]]:
    try:
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter=";"))
    except OSError as exc:
        raise DataError(f"{csv_path}: cannot read ({exc.strerror})") from None
    need = {"Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"}
    if not rows or not need <= set(rows[0]):
        raise DataError(f"{csv_path}: expected a ';'-separated CSV with columns {sorted(need)}")
    return rows


def _roi(row: dict[str, str]) -> tuple[int, int, int, int]:
    return int(row["Roi.X1"]), int(row["Roi.Y1"]), int(row["Roi.X2"]), int(row["Roi.Y2"])


def _gtsrb_split(image_dir: Path, csv_path: Path, roi_crop: bool, desc: str, tracks: bool):
    rows = _read_gtsrb_csv(csv_path)
    items, labels, groups = [], [], []
    for row in rows:
        path = image_dir / row["Filename"]
        if not path.is_file():
            raise DataError(f"{csv_path}: row for {row['Filename']} has no file at {path}")
        items.append((path, _roi(row) if roi_crop else None))
        labels.append(int(row["ClassId"]))
        groups.append(int(row["Filename"].split("_")[0]) if tracks and "_" in row["Filename"] else -1)
    return items, labels, groups


def find_gtsrb_layout(root: Path) -> tuple[Path, Path, Path] | None:
    """Return (train_dir with 000NN folders, test image dir, test csv) if ``root`` holds GTSRB."""
    candidates = [
        (root / "GTSRB/Final_Training/Images", root / "GTSRB/Final_Test/Images", root / "GTSRB/Final_Test/GT-final_test.csv"),
        (root / "gtsrb/GTSRB/Training", root / "gtsrb/GTSRB/Final_Test/Images", root / "gtsrb/GT-final_test.csv"),
        (root / "GTSRB/Training", root / "GTSRB/Final_Test/Images", root / "GT-final_test.csv"),
    ]  # fmt: skip
    for train, test, test_csv in candidates:
        if train.is_dir():
            if not test.is_dir():
                raise DataError(f"{root}: found GTSRB training images at {train} but no test images at {test}")
            if not test_csv.is_file():
                raise DataError(f"{root}: GTSRB test labels {test_csv} are missing (GT-final_test.csv with ClassId)")
            return train, test, test_csv
    return None


def _relative(items: Sequence[tuple[Path, tuple | None]], root: Path) -> np.ndarray:
    """The items' files relative to ``root``, with POSIX separators (stable across systems)."""
    return np.asarray([Path(os.path.relpath(p, root)).as_posix() for p, _ in items], dtype=str)


def _prepare_gtsrb(train_dir: Path, test_dir: Path, test_csv: Path, roi_crop: bool, size: int = IMAGE_SIZE,
                   root: Path | None = None) -> ImageData:  # fmt: skip
    class_dirs = sorted(d for d in train_dir.iterdir() if d.is_dir() and d.name.isdigit())
    if not class_dirs:
        raise DataError(f"{train_dir}: no class folders (000NN) found")
    items, y, g = [], [], []
    for d in class_dirs:
        csvs = sorted(d.glob("GT-*.csv"))
        if not csvs:
            raise DataError(f"{d}: class folder has no GT-{d.name}.csv")
        it, lab, grp = _gtsrb_split(d, csvs[0], roi_crop, "train", tracks=True)
        if not it:
            raise DataError(f"{csvs[0]}: class {d.name} is empty")
        items += it
        y += lab
        # Track numbers restart in each class; make group ids globally unique.
        g += [int(d.name) * 100_000 + t for t in grp]
    t_items, t_y, _ = _gtsrb_split(test_dir, test_csv, roi_crop, "test", tracks=False)
    num_classes = max(max(y), max(t_y)) + 1
    classes = GTSRB_CLASSES if num_classes == len(GTSRB_CLASSES) else [str(i) for i in range(num_classes)]
    return ImageData(
        x_train=_read_many(items, "reading GTSRB train", size),
        y_train=np.asarray(y, dtype=np.int64),
        x_test=_read_many(t_items, "reading GTSRB test", size),
        y_test=np.asarray(t_y, dtype=np.int64),
        classes=list(classes),
        group_train=np.asarray(g, dtype=np.int64),
        path_train=_relative(items, root or train_dir),
    )


def _list_image_folder(root: Path) -> dict[str, list[Path]]:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    return {
        c: sorted(p for p in (root / c).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) for c in classes
    }


def _prepare_image_folder(root: Path, test_fraction: float = 0.25, seed: int = 0, size: int = IMAGE_SIZE) -> ImageData:
    """``test_fraction`` 0: every image of a flat tree is a training image (an audit), no test set."""
    if (root / "train").is_dir() and ((root / "test").is_dir() or (root / "val").is_dir()):
        train = _list_image_folder(root / "train")
        test = _list_image_folder(root / "test" if (root / "test").is_dir() else root / "val")
        classes = sorted(train)
        unknown = set(test) - set(classes)
        if unknown:
            raise DataError(f"{root}: test classes {sorted(unknown)} do not appear in train/")
    else:
        listing = _list_image_folder(root)
        classes = sorted(listing)
        rng = np.random.default_rng(seed)
        train, test = {}, {}
        for c, files in listing.items():
            perm = rng.permutation(len(files))
            n_test = int(round(test_fraction * len(files))) if len(files) > 1 else 0
            test[c] = [files[i] for i in sorted(perm[:n_test])]
            train[c] = [files[i] for i in sorted(perm[n_test:])]
    if not classes:
        raise DataError(
            f"{root}: not a GTSRB folder and no class sub-folders found; expected GTSRB/Final_Training/Images, "
            "gtsrb/GTSRB/Training, ROOT/train/<class>/ + ROOT/test/<class>/, or ROOT/<class>/"
        )
    for c in classes:
        if not train[c]:
            raise DataError(f"{root}: class folder {c!r} has no images (extensions {sorted(IMAGE_EXTENSIONS)})")
    idx = {c: i for i, c in enumerate(classes)}

    def flat(d):
        pairs = [(p, idx[c]) for c in classes for p in d.get(c, [])]
        return [(p, None) for p, _ in pairs], np.asarray([lab for _, lab in pairs], dtype=np.int64)

    tr_items, y_tr = flat(train)
    te_items, y_te = flat(test)
    if not te_items and test_fraction > 0:
        raise DataError(f"{root}: no test images (add ROOT/test/<class>/ or more images per class)")
    return ImageData(
        x_train=_read_many(tr_items, "reading train", size),
        y_train=y_tr,
        x_test=_read_many(te_items, "reading test", size),
        y_test=y_te,
        classes=classes,
        path_train=_relative(tr_items, root),
    )


def prepare(source: str | os.PathLike, out: str | os.PathLike | None = None, roi_crop: bool = False,
            size: int = IMAGE_SIZE, test_fraction: float = 0.25) -> ImageData:  # fmt: skip
    """Read a source folder (GTSRB official / torchvision / ImageFolder) into :class:`ImageData`.

    Args:
        source: folder to read (see module docstring for the layouts).
        out: if given, the ``.npz`` to write (atomically).
        roi_crop: crop GTSRB images to their annotated region of interest before resizing.
        size: side of the square images every image is resized to (default 32, GTSRB's and the
            paper's; the attacks' sticker and window scale with it, see ``StickerTrigger.placement``).
        test_fraction: share of each class of a flat ImageFolder tree held out as the test set (the
            paper's 25 %); 0 keeps every image for training (an audit). GTSRB and train/test trees
            keep their own test sets.

    Every training image's source file is kept, relative to ``source``, as ``path_train``.
    """
    if not 0 <= test_fraction < 1:
        raise ConfigError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if size < MIN_IMAGE_SIZE:
        raise DataError(f"--size {size}: images need a side of at least {MIN_IMAGE_SIZE} pixels")
    root = Path(source).expanduser()
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: is a file, expected a folder (or pass a prepared .npz)")
    found = find_gtsrb_layout(root)
    if found is not None:
        data = _prepare_gtsrb(*found, roi_crop=roi_crop, size=size, root=root)
    else:
        if roi_crop:
            raise DataError(f"{root}: --roi-crop needs GTSRB annotations; this is not a GTSRB folder")
        data = _prepare_image_folder(root, test_fraction, size=size)
    if out is not None:
        save_npz(data, out)
    return data

