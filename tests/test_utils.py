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
