"""Where the data comes from when a command is given a path, or none: a prepared ``.npz``, a
source folder prepared once and cached, ``$POISONSIFT_GTSRB``, or torchvision's download."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from poisonsift.data.arrays import ImageData, load_npz, save_npz
from poisonsift.data.readers import find_gtsrb_layout, prepare
from poisonsift.errors import DataError
from poisonsift.utils import cache_dir

__all__ = ["find_default_gtsrb", "download_gtsrb", "resolve_data"]


def find_default_gtsrb() -> Path | None:
    """Locate GTSRB without being told: ``$POISONSIFT_GTSRB``, then the user cache."""
    env = os.environ.get("POISONSIFT_GTSRB")
    if env:
        return Path(env)
    cached = cache_dir() / "data" / "gtsrb.npz"
    if cached.is_file():
        return cached
    tv = cache_dir() / "torchvision"
    if find_gtsrb_layout(tv) is not None if tv.is_dir() else False:
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


def _listing_signature(root: Path) -> str:
    # Cheap change detector: the number of entries and newest mtime of the top two levels.
    n, newest = 0, 0.0
    for d in [root, *[c for c in root.iterdir() if c.is_dir()]]:
        for e in os.scandir(d):
            n += 1
            newest = max(newest, e.stat().st_mtime)
    return f"{n}:{newest}"
