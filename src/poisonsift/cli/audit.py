"""``poisonsift audit``: an image folder in, the files to remove out."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from poisonsift.cli.commands import detect_spec, emit


def cmd_audit(args: argparse.Namespace) -> None:
    from poisonsift.audit import AuditConfig, audit
    from poisonsift.training import get_preset

    out = Path(args.out)
    wc = None if args.write_clean is None else Path(args.write_clean) if args.write_clean else out / "clean"
    cfg = AuditConfig(train=get_preset(args.preset, epochs=args.epochs, seed=args.seed, arch=args.arch),
                      spec=detect_spec(args), size=args.size, write_clean=wc, jobs=args.jobs)  # fmt: skip
    if not args.json:
        print(f"auditing {args.dir}: prepare, train ({args.arch}, {args.preset} preset), scan every class",
              file=sys.stderr)  # fmt: skip
    r = audit(args.dir, out, cfg)
    lines = [f"{r['n_images']} images in {r['n_classes']} classes; audit model val acc {r['val_acc']:.3f}"
             + (" (reused)" if r["model_reused"] else ""),
             f"suspicious classes: {r['suspicious_classes'] or 'none'}; {r['n_flagged']} files flagged -> "
             f"{r['flagged_csv']}", f"report: {r['scan_report']}"]  # fmt: skip
    if "clean" in r:
        c = r["clean"]
        lines.append(f"clean copy without them: {c['out']} ({c['files']} files, {c['linked']} hard links, "
                     f"{c['copied']} copies, {c['skipped_links']} links out of the folder skipped)")  # fmt: skip
    lines.append(f"({r['seconds']['total']:.0f} s)")
    emit(args, r, "\n".join(lines))
