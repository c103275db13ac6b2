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
    "atomic_write_npy",
    "atomic_npy_memmap",
    "atomic_torch_save",
    "cache_dir",
    "progress",
    "source_commit",
    "default_device",
    "tune_allocator",
    "auto_batch_size",
    "resolve_precision",
    "native_bfloat16",
    "bfloat16_pays",
]


def config_hash(obj: Any) -> str:
    """Short, stable cache key of a JSON-able object (sha256 of its sorted JSON, 16 hex digits)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename, so a killed run never leaves half a file.

    The file gets the mode any new file gets under the user's umask (0644 under the usual 022), not
    the 0600 of the temporary file, so the others who share a disk or a cluster node can read a run.
    """
    path = Path(path)
    if path.parent.exists() and not path.parent.is_dir():
        from poisonsift.errors import DataError

        raise DataError(f"{path.parent} is a file, not a folder; choose another output folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
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


def atomic_write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write one array as ``.npy`` atomically (loadable with ``np.load(..., mmap_mode="r")``)."""
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write_bytes(path, buf.getvalue())


class atomic_npy_memmap:
    """``with atomic_npy_memmap(path, shape, dtype) as arr:`` fill a ``.npy`` on disk in place.

    ``arr`` is a writable memory map of a temporary file beside ``path``; on a clean exit it is
    flushed and renamed to ``path``, on an error removed. For arrays built in batches that need
    not fit in memory (heatmaps of a whole training set).
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype=np.float32) -> None:
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)

    def __enter__(self) -> np.memmap:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        self.arr = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=self.dtype, shape=self.shape)
        return self.arr

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.arr.flush()
        finally:
            del self.arr
        if exc_type is None:
            os.replace(self.tmp, self.path)
        elif os.path.exists(self.tmp):
            os.unlink(self.tmp)


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


def source_commit() -> str | None:
    """The git commit poisonsift runs from (12 hex digits, ``-dirty`` when tracked files differ
    from it), for reports that say what produced them; None outside a git checkout or without git."""
    import subprocess

    here = Path(__file__).resolve().parent

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0:
            return None
        dirty = git("diff", "--quiet", "HEAD", "--", ".").returncode == 1
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


_BAR_SHOWN = False  # a progress bar has drawn on stderr since the last end_progress_line()


def progress(**kwargs: Any) -> tqdm:
    """A tqdm bar on stderr (stdout stays clean for ``--json``); silenced by ``POISONSIFT_QUIET=1``."""
    global _BAR_SHOWN
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("leave", False)
    kwargs.setdefault("disable", os.environ.get("POISONSIFT_QUIET") == "1")
    bar = tqdm(**kwargs)
    _BAR_SHOWN = _BAR_SHOWN or (not bar.disable and kwargs["file"] is sys.stderr)
    return bar


def forget_progress_bars() -> None:
    """A new command starts at the start of a line: what earlier bars drew is not its concern."""
    global _BAR_SHOWN
    _BAR_SHOWN = False


def end_progress_line() -> None:
    """Put stderr at the start of a clean line, so that a message printed next (an ``error:``) is
    not appended to a progress bar's line: a terminal's line is cleared, a log (not a terminal),
    where the bar's carriage returns do not clear anything, gets a newline."""
    global _BAR_SHOWN
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()
    if _BAR_SHOWN:
        sys.stderr.write("\r\x1b[K" if sys.stderr.isatty() else "\n")
        sys.stderr.flush()
    _BAR_SHOWN = False


def default_device() -> torch.device:
    """CUDA when present, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tune_allocator() -> bool:
    """Let glibc's malloc keep freed tensor memory for reuse instead of handing it back to the OS.

    CPU inference and LRP allocate and free many 5-30 MB tensors per batch. By default
    glibc serves each from a fresh ``mmap`` or returns the heap's top to the OS after a
    free, so the next tensor of that size page-faults all of its memory again. This sets
    ``M_MMAP_THRESHOLD`` to 32 MiB (glibc's maximum) and ``M_TRIM_THRESHOLD`` to 1 GiB: the
    process keeps up to 1 GiB of freed memory. Measured here (2 cores), LRP of 768 GTSRB
    images 9.7 s -> 8.7 s before the custom Gamma functions. Process-wide, so it is called
    by the entry points (CLI, benchmarks), not on import; a no-op returning False where
    the C library is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    # both or neither: a trim threshold alone switches off glibc's adaptive mmap threshold
    # and leaves it at 128 kB, which is far slower (LRP 9.7 s -> 22.8 s)
    if mallopt(m_mmap_threshold, 32 << 20) != 1:
        return False
    return mallopt(m_trim_threshold, 1 << 30) == 1


#: glibc's malloc serves a request of this many bytes or more with a fresh mmap, which is
#: page-faulted in (and zeroed) on every use; 32 MiB is the most M_MMAP_THRESHOLD can be on
#: 64-bit Linux (see :func:`tune_allocator`).
_MMAP_LIMIT = 32 << 20


def auto_batch_size(model: torch.nn.Module, sample: torch.Tensor, cap: int = 64) -> int:
    """The batch size for inference and LRP: on CPU the largest (at most ``cap``) whose
    biggest activation stays under glibc's 32 MiB mmap threshold; ``cap`` elsewhere.

    A tensor of 32 MiB or more is a fresh mmap every batch, and its page faults cost more
    than the work: on 2 CPU cores a 64 MiB ``torch.cat`` takes 36 ms fresh against 1.8 ms into
    reused memory. SmallInception's Inception output is 1 MiB per image (256 x 32 x 32
    floats), so batches of 64 page-faulted ~300k times per 1,024 images in LRP; batches of 31
    (what this gives) page-fault almost never: LRP of 1,024 real images took 6.6-6.8 s
    against 7.3-8.2 s at 64 (20-31 all the same within noise; 12 slower), and the
    activations of a whole class (2,776 images) 4.10-4.25 s against 4.19-4.77 s.

    Args:
        sample: one model input, (1, C, H, W), on the model's device (a probe forward pass).
    """
    if sample.device.type != "cpu":
        return cap
    largest = [0]

    def hook(module, args, out):
        if isinstance(out, torch.Tensor):
            largest[0] = max(largest[0], out[0].numel() * out.element_size())

    hooks = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        for h in hooks:
            h.remove()
    return max(1, min(cap, (_MMAP_LIMIT - 4096) // max(largest[0], 1)))


def _cpu_info() -> tuple[str, list[str]] | None:
    """The CPU's vendor id and feature flags from /proc/cpuinfo (Linux), None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("flags", "vendor_id"))]
    except OSError:
        return None
    flags = next((line.split(":", 1)[-1].split() for line in lines if line.startswith("flags")), [])
    vendor = next((line.split(":", 1)[-1].strip() for line in lines if line.startswith("vendor_id")), "")
    return (vendor, flags) if flags else None


def _cpu_flags() -> list[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (Linux), None where it cannot be read."""
    info = _cpu_info()
    return None if info is None else info[1]


def native_bfloat16(device) -> bool | None:
    """Whether ``device`` computes bfloat16 convolutions natively (None: cannot tell).

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: the AVX512-BF16 or AMX-BF16 flag in
    /proc/cpuinfo (Linux); without it oneDNN emulates bfloat16 and ``--lrp-precision
    bfloat16`` is slower than float32.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return None
    flags = _cpu_flags()
    return None if flags is None else ("avx512_bf16" in flags or "amx_bf16" in flags)


def bfloat16_pays(device) -> bool | None:
    """Whether bfloat16 autocast makes training faster on ``device`` (None: cannot tell).

    CUDA: where bfloat16 is supported. CPU: with AMX-BF16 (the tile unit), or with AVX512-BF16 on
    an AMD CPU (Zen 4 and later). Measured with the ``cpu`` preset's step (SmallInception, batch
    64, channels_last, torch 2.14.1): a Xeon with AVX512-BF16 but no AMX trained 1.33x *slower*
    in bfloat16 than in float32 (22-24 against 30-31 images/s, one thread), a 2-core AVX2 EPYC 15x
    slower (emulated: 3 against ~45 images/s); a 2-core Zen 4 EPYC with AVX512-BF16 **1.7-2.0x
    faster** (143-167 against 84-90 images/s on two threads, 86-95 against 47-50 on one;
    ``benchmarks/train_throughput.py``, which times both); a Xeon with AMX trained the ``cpu`` preset in
    bfloat16 in 810-841 s a model, the fastest CPU we measured.
    """
    device = torch.device(device)
    if device.type != "cpu":
        return native_bfloat16(device)
    info = _cpu_info()
    if info is None:
        return None
    vendor, flags = info
    return "amx_bf16" in flags or ("avx512_bf16" in flags and vendor == "AuthenticAMD")


def resolve_precision(precision: str, device=None) -> str:
    """``"float32"`` / ``"bfloat16"`` as given; ``"auto"``: bfloat16 where :func:`bfloat16_pays` on
    ``device`` (default: :func:`default_device`), else float32 - resolved before anything is
    keyed or recorded, so artefacts always name a real precision."""
    if precision not in ("float32", "bfloat16", "auto"):
        from poisonsift.errors import ConfigError

        raise ConfigError(f"unknown precision {precision!r}; use float32, bfloat16 or auto")
    if precision != "auto":
        return precision
    return "bfloat16" if bfloat16_pays(device if device is not None else default_device()) else "float32"
