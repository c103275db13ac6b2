"""Argument types of the command line: each parses one flag's text or says what is wrong
with it (argparse turns the ``ArgumentTypeError`` into the one ``error:`` line)."""

from __future__ import annotations

import argparse

from poisonsift.errors import ConfigError


def color_arg(text: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--color must be three integers like 245,255,0, got {text!r}") from None
    if len(parts) != 3:
        raise ConfigError(f"--color must be three integers like 245,255,0, got {text!r}")
    return parts  # type: ignore[return-value]


def class_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--class must be a class index or 'auto', got {text!r}") from None


def source_class_arg(text: str) -> int | str:
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--source-class must be a class index or 'all' (all-to-one), got {text!r}") from None


def whole_number_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {low}, got {text!r}")
        return value

    return parse


nonnegative_int = whole_number_at_least(0)
positive_int = whole_number_at_least(1)


def ratio_arg(flag: str):
    """A ratio flag: > 1, or 0 for off (None)."""

    def parse(text: str) -> float | None:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if value == 0:
            return None
        if not value > 1:
            raise argparse.ArgumentTypeError(f"{flag} must be > 1 (or 0: off), got {text!r}")
        return value

    return parse


focus_ratio_arg = ratio_arg("--focus-ratio")


def peak_ratio_arg(text: str) -> float | str | None:
    """``--peak-ratio``: ``auto`` (by the network), a ratio > 1, or 0 (off)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return ratio_arg("--peak-ratio")(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"--peak-ratio must be > 1, auto (by the network) or 0 (off), got {text!r}") from None


def tables_arg(text: str) -> list[str]:
    from poisonsift.experiments import TABLES

    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in (*TABLES, "all")]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown table {', '.join(bad) or text!r}; choose from {', '.join(TABLES)} or all")
    return names


def names_arg(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected names joined by commas (e.g. blended,sig), got {text!r}")
    return names


def shares_arg(text: str) -> list[float]:
    try:
        ps = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        ps = []
    if not ps or not all(0.0 < p < 1.0 for p in ps):
        raise argparse.ArgumentTypeError(f"expected poison shares in (0, 1) joined by commas (e.g. 0.05,0.02), got {text!r}")
    return ps
