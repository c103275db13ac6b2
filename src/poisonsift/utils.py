"""Small shared helpers: atomic artefact writes, the cache folder, progress bars, devices."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npz",
    "atomic_torch_save",
    "cache_dir",
    "progress",
    "default_device",
]


def config_hash(obj: Any) -> str:
    """Short, stable cache key of a JSON-able object (sha256 of its sorted JSON, 16 hex digits)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename, so a killed run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Write a compressed ``.npz`` atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically (the object must load with ``weights_only=True``)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def cache_dir() -> Path:
    """The user cache folder: ``$POISONSIFT_CACHE``, else ``$XDG_CACHE_HOME/poisonsift``, else ``~/.cache/poisonsift``."""
    env = os.environ.get("POISONSIFT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "poisonsift"


def progress(**kwargs: Any) -> tqdm:
    """A tqdm bar on stderr (stdout stays clean for ``--json``); silenced by ``POISONSIFT_QUIET=1``."""
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("disable", os.environ.get("POISONSIFT_QUIET") == "1")
    return tqdm(**kwargs)


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
