"""The ``poisonsift`` command line.

Every command prints a short human summary; with ``--json`` it prints exactly
one JSON object on stdout instead (progress bars go to stderr). Rates are
fractions in [0, 1]. Bad input ends with one ``error: ...`` line and exit
status 2, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Sequence

from poisonsift.cli.parser import build_parser
from poisonsift.errors import PoisonsiftError
from poisonsift.utils import end_progress_line, forget_progress_bars, tune_allocator

__all__ = ["main", "build_parser"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2, already reported)
        return int(exc.code or 0)
    tune_allocator()
    forget_progress_bars()
    try:
        args.func(args)
    except PoisonsiftError as exc:
        end_progress_line()  # the error on a line of its own, not after a bar
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished artefacts are kept, re-run the step to continue", file=sys.stderr)
        return 130
    return 0

