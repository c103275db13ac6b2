"""Reading image data sets into one compact, validated in-memory form.

Everything downstream works on :class:`ImageData` (uint8 images, int64 labels),
read once from a source folder and stored as a ``.npz`` with the arrays
``x_train`` (N, 32, 32, 3) uint8, ``y_train`` (N,) int64, ``x_test``,
``y_test``, ``classes`` (str) and ``group_train`` (int64: GTSRB track id, used
to split train/validation without near-duplicate leakage; the row index when
the source has no tracks) and ``path_train`` (str: each training image's source file, relative
to the folder it was read from, so that a flagged row names the file to remove; absent in data
made from arrays).

Supported sources:

* the official GTSRB layout (``GTSRB/Final_Training/Images/000NN`` with
  ``GT-000NN.csv``, ``GTSRB/Final_Test/Images`` + ``GT-final_test.csv``);
* torchvision's ``datasets.GTSRB`` folder (``gtsrb/GTSRB/Training`` ...);
* an ``ImageFolder``-style tree: ``ROOT/train/<class>/*`` and
  ``ROOT/test/<class>/*``, or ``ROOT/<class>/*`` from which a seeded,
  stratified 25 % (the paper's split) is held out as the test set.

Images are resized whole to 32x32 (bilinear, antialiased as PIL does when
shrinking), as the paper does; ``roi_crop=True`` crops to the GTSRB region of
interest first.
"""

from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from poisonsift.errors import ConfigError, DataError
from poisonsift.utils import atomic_write_npz, cache_dir, progress

__all__ = [
    "ImageData",
    "IMAGE_SIZE",
    "GTSRB_CLASSES",
    "prepare",
    "load_npz",
    "save_npz",
    "read_npz",
    "resolve_data",
    "find_default_gtsrb",
    "validate_arrays",
    "thin_tracks",
]

IMAGE_SIZE = 32  # GTSRB's (the paper's) image side; ImageFolder trees take any (prepare(size=...))
MIN_IMAGE_SIZE = 8
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


@dataclass
class ImageData:
    """A labelled train/test image data set held in memory.

    Attributes:
        x_train: (N, 32, 32, 3) uint8 RGB images.
        y_train: (N,) int64 labels in ``[0, len(classes))``.
        x_test: (M, 32, 32, 3) uint8.
        y_test: (M,) int64.
        classes: class names, index = label.
        group_train: (N,) int64 group ids (GTSRB track) for leakage-free validation splits.
        path_train: (N,) str or None: each training image's source file, relative to the folder
            :func:`prepare` read (POSIX separators); None for data made from arrays.

    The test set may be empty (M = 0): an audit scans every image it is given and holds none out.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    group_train: np.ndarray | None = None
    path_train: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.group_train is None:
            self.group_train = np.arange(len(self.y_train), dtype=np.int64)
        validate_arrays(self.x_train, self.y_train, len(self.classes), "x_train/y_train")
        validate_arrays(self.x_test, self.y_test, len(self.classes), "x_test/y_test", require_all_classes=False,
                        allow_empty=True)  # fmt: skip
        if self.path_train is not None:
            self.path_train = np.asarray(self.path_train, dtype=str)
            if self.path_train.shape != self.y_train.shape:
                raise DataError(f"path_train has shape {self.path_train.shape}, expected {self.y_train.shape}")
        if self.x_test.shape[1:] != self.x_train.shape[1:]:
            raise DataError(f"test images are {self.x_test.shape[1:]}, training images {self.x_train.shape[1:]}: one size for both")
        if self.group_train.shape != self.y_train.shape:
            raise DataError(f"group_train has shape {self.group_train.shape}, expected {self.y_train.shape}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """Short content hash (sha256 of all arrays) used as a cache key."""
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test, self.group_train):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update("\n".join(self.classes).encode())
        return h.hexdigest()[:16]


def validate_arrays(
    x: np.ndarray, y: np.ndarray, num_classes: int, what: str, require_all_classes: bool = True,
    allow_empty: bool = False,
) -> None:
    """Raise :class:`DataError` unless ``x`` is (N, H, W, 3) uint8 (H, W >= 8; GTSRB is 32 x 32) and
    ``y`` (N,) integer in range.

    With ``require_all_classes`` every class must have at least one image (an
    empty class cannot be trained on or defended).
    """
    if (not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[3] != 3
            or min(x.shape[1:3]) < MIN_IMAGE_SIZE):  # fmt: skip
        got = f"{getattr(x, 'dtype', type(x).__name__)} {getattr(x, 'shape', '')}"
        raise DataError(f"{what}: images must be uint8 RGB with shape (N, H, W, 3), H and W >= {MIN_IMAGE_SIZE} "
                        f"(GTSRB: (N, 32, 32, 3)), got {got}")  # fmt: skip
    if not isinstance(y, np.ndarray) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: labels must be a 1-D integer array, got {getattr(y, 'dtype', type(y))}")
    if len(x) != len(y):
        raise DataError(f"{what}: {len(x)} images but {len(y)} labels")
    if len(y) == 0:
        if allow_empty:
            return
        raise DataError(f"{what}: no images")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(f"{what}: labels must lie in [0, {num_classes - 1}], found {y.min()}..{y.max()}")
    if require_all_classes:
        counts = np.bincount(y, minlength=num_classes)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            raise DataError(f"{what}: class(es) {empty.tolist()} have no images; every class needs at least one")


# --------------------------------------------------------------------------- reading


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


def _find_gtsrb(root: Path) -> tuple[Path, Path, Path] | None:
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
    found = _find_gtsrb(root)
    if found is not None:
        data = _prepare_gtsrb(*found, roi_crop=roi_crop, size=size, root=root)
    else:
        if roi_crop:
            raise DataError(f"{root}: --roi-crop needs GTSRB annotations; this is not a GTSRB folder")
        data = _prepare_image_folder(root, test_fraction, size=size)
    if out is not None:
        save_npz(data, out)
    return data


def save_npz(data: ImageData, path: str | os.PathLike, **extra: np.ndarray) -> None:
    """Write ``data`` (plus any ``extra`` arrays) to a compressed ``.npz`` atomically."""
    atomic_write_npz(
        path,
        x_train=data.x_train,
        y_train=data.y_train,
        x_test=data.x_test,
        y_test=data.y_test,
        classes=np.asarray(data.classes, dtype=str),
        group_train=data.group_train,
        **({} if data.path_train is None else {"path_train": data.path_train}),
        **extra,
    )


def read_npz(path: str | os.PathLike, required: set[str], missing_hint: str = "no such file") -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` (no pickles), with a clear error when it or ``required`` arrays are missing."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {missing_hint}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz ({exc})") from None
    missing = required - set(arrays)
    if missing:
        raise DataError(f"{path}: missing arrays {sorted(missing)}")
    return arrays


def load_npz(path: str | os.PathLike) -> ImageData:
    """Load and validate a prepared ``.npz`` (see module docstring for the arrays)."""
    arrays = read_npz(path, {"x_train", "y_train", "x_test", "y_test"})
    y_all = np.concatenate([arrays["y_train"].ravel(), arrays["y_test"].ravel()])
    if "classes" in arrays:
        classes = [str(c) for c in arrays["classes"].tolist()]
    else:
        classes = [str(i) for i in range(int(y_all.max()) + 1 if y_all.size else 0)]
    try:
        return ImageData(
            x_train=arrays["x_train"],
            y_train=arrays["y_train"],
            x_test=arrays["x_test"],
            y_test=arrays["y_test"],
            classes=classes,
            group_train=arrays.get("group_train"),
            path_train=arrays.get("path_train"),
        )
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def find_default_gtsrb() -> Path | None:
    """Locate GTSRB without being told: ``$POISONSIFT_GTSRB``, then the user cache."""
    env = os.environ.get("POISONSIFT_GTSRB")
    if env:
        return Path(env)
    cached = cache_dir() / "data" / "gtsrb.npz"
    if cached.is_file():
        return cached
    tv = cache_dir() / "torchvision"
    if _find_gtsrb(tv) is not None if tv.is_dir() else False:
        return tv
    return None


def download_gtsrb() -> Path:
    """Download GTSRB with torchvision into the user cache (needs internet)."""
    from torchvision.datasets import GTSRB

    root = cache_dir() / "torchvision"
    try:
        GTSRB(str(root), split="train", download=True)
        GTSRB(str(root), split="test", download=True)
    except Exception as exc:
        raise DataError(
            "no GTSRB found and downloading it failed "
            f"({type(exc).__name__}: {exc}). Get GTSRB (https://benchmark.ini.rub.de/gtsrb_dataset.html, "
            "official layout) and pass --data PATH or set POISONSIFT_GTSRB=PATH."
        ) from None
    return root


def resolve_data(path: str | os.PathLike | None, allow_download: bool = False) -> ImageData:
    """Turn ``--data`` (a ``.npz`` or a source folder) into :class:`ImageData`.

    A source folder is prepared once and cached in the user cache, keyed by its
    absolute path and listing, so a second call is a fast ``.npz`` load. With
    ``path=None`` the default GTSRB is used (:func:`find_default_gtsrb`), and, if
    ``allow_download``, torchvision's download as the last resort.
    """
    default = path is None
    if default:
        found = find_default_gtsrb()
        if found is None:
            if not allow_download:
                raise DataError(
                    "no data given and no GTSRB found: pass --data PATH (a GTSRB folder, an ImageFolder tree "
                    "or a prepared .npz) or set POISONSIFT_GTSRB=PATH"
                )
            found = download_gtsrb()
        path = found
    p = Path(path).expanduser()
    if p.suffix == ".npz" or p.is_file():
        return load_npz(p)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    key = hashlib.sha256(f"{p.resolve()}|{_listing_signature(p)}".encode()).hexdigest()[:16]
    cached = cache_dir() / "data" / f"prepared-{key}.npz"
    if cached.is_file():
        return load_npz(cached)
    data = prepare(p)
    save_npz(data, cached)
    if default:  # found again without being told, even once $POISONSIFT_GTSRB is unset
        save_npz(data, cache_dir() / "data" / "gtsrb.npz")
    return data


def thin_tracks(data: ImageData, step: int) -> ImageData:
    """Keep every ``step``-th training image of each track (``group_train``): frames 0, step, 2 step, ...

    A GTSRB track is ~30 frames of one physical sign seen from ever closer, so thinning tracks
    divides the training work by ``step`` while keeping every sign (and every class): a faster
    run loses less than a random subset of the same size would. Images without a track (their own
    group) are all kept; the test set is untouched. ``step`` 1 returns ``data`` itself.

    Shapes: x_train (N, H, W, 3) -> (N', H, W, 3), N' ~ N / step on GTSRB.
    """
    if not isinstance(step, (int, np.integer)) or step < 1:
        raise ConfigError(f"track thinning step must be an integer >= 1, got {step!r}")
    if step == 1:
        return data
    g = data.group_train
    order = np.argsort(g, kind="stable")  # stable: frames keep their order within a track
    sorted_g = g[order]
    starts = np.r_[0, np.flatnonzero(sorted_g[1:] != sorted_g[:-1]) + 1]
    rank = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    keep = np.sort(order[rank % step == 0])
    return ImageData(data.x_train[keep], data.y_train[keep], data.x_test, data.y_test, list(data.classes),
                     data.group_train[keep], None if data.path_train is None else data.path_train[keep])  # fmt: skip


def _listing_signature(root: Path) -> str:
    # Cheap change detector: the number of entries and newest mtime of the top two levels.
    n, newest = 0, 0.0
    for d in [root, *[c for c in root.iterdir() if c.is_dir()]]:
        for e in os.scandir(d):
            n += 1
            newest = max(newest, e.stat().st_mtime)
    return f"{n}:{newest}"
