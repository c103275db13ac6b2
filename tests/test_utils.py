"""Shared helpers."""


def test_tune_allocator_applies_on_glibc():
    import platform
    import sys

    from poisonsift.utils import tune_allocator

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert tune_allocator() is expected
    assert tune_allocator() is expected  # idempotent


def test_auto_batch_keeps_the_largest_activation_under_the_mmap_threshold():
    import torch
    from torch import nn

    from poisonsift.models import SmallInception
    from poisonsift.utils import auto_batch_size

    x = torch.zeros(1, 3, 32, 32)
    # SmallInception's Inception output is 256 x 32 x 32 floats = 1 MiB per image: 31 fit under 32 MiB
    assert auto_batch_size(SmallInception().eval(), x) == 31
    small = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 4)).eval()
    assert auto_batch_size(small, x) == 64  # 32 KiB per image: the cap
    wide = nn.Sequential(nn.Conv2d(3, 4096, 3, padding=1), nn.Flatten(), nn.Linear(4096 * 32 * 32, 2)).eval()
    assert auto_batch_size(wide, x) == 1  # 16 MiB per image: one at a time, never zero
    assert auto_batch_size(small, x, cap=16) == 16


def test_bfloat16_pays_with_amx_or_amd_avx512_bf16(monkeypatch, tmp_path):
    """AVX512-BF16 computes bfloat16 natively; it trains faster than float32 on AMD's Zen 4 but
    slower on Intel's Cooper Lake (both measured), so on Intel only AMX pays."""
    import builtins

    from poisonsift import utils
    from poisonsift.training import uses_bf16

    real_open = builtins.open

    def cpu_with(flags, vendor="GenuineIntel"):
        info = tmp_path / "cpuinfo"
        info.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\nflags\t\t: fpu sse2 {flags}\n")
        monkeypatch.setattr(builtins, "open", lambda f, *a, **k: real_open(info if f == "/proc/cpuinfo" else f, *a, **k))

    cpu_with("avx512f avx512_bf16")
    assert utils.native_bfloat16("cpu") is True and utils.bfloat16_pays("cpu") is False
    assert uses_bf16("cpu", True) is False
    cpu_with("avx512_bf16 amx_tile amx_bf16")
    assert utils.bfloat16_pays("cpu") is True and uses_bf16("cpu", True) is True and uses_bf16("cpu", False) is False
    cpu_with("avx512f avx512_bf16", vendor="AuthenticAMD")
    assert utils.bfloat16_pays("cpu") is True and uses_bf16("cpu", True) is True
    cpu_with("avx2 fma", vendor="AuthenticAMD")
    assert utils.native_bfloat16("cpu") is False and uses_bf16("cpu", True) is False
