"""Shared helpers."""


def test_tune_allocator_applies_on_glibc():
    import platform
    import sys

    from poisonsift.utils import tune_allocator

    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert tune_allocator() is expected
    assert tune_allocator() is expected  # idempotent
