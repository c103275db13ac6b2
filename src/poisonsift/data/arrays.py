"""The in-memory form every step works on, :class:`ImageData`, and its ``.npz`` files."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poisonsift.errors import ConfigError, DataError
from poisonsift.utils import atomic_write_npz

__all__ = ["ImageData", "IMAGE_SIZE", "MIN_IMAGE_SIZE", "validate_arrays", "save_npz", "read_npz", "load_npz",
           "thin_tracks"]  # fmt: skip

IMAGE_SIZE = 32  # GTSRB's (the paper's) image side; ImageFolder trees take any (prepare(size=...))
MIN_IMAGE_SIZE = 8


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
