#!/usr/bin/env python
"""Rebuild a sweep's summary (summary.csv, summary.md, summary.png) from its run folders.

usage: python jobs/report.py results/<sweep> [--x KEY] [--metrics M1,M2] [--logx]
"""

from __future__ import annotations

import argparse

from hpclab.launch.cli import main_guard


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a sweep's results folder, e.g. results/ae_latent")
    parser.add_argument("--x", help="swept key on the x axis (default: the sweep's report.x)")
    parser.add_argument("--metrics", help="comma-separated metrics (default: the sweep's report.metrics)")
    parser.add_argument("--logx", action="store_true", help="log-2 x axis")
    args = parser.parse_args(argv)
    from hpclab.analysis.report import write_report
    from hpclab.config import ConfigError

    report = {k: v for k, v in {"x": args.x, "metrics": args.metrics.split(",") if args.metrics else None,
                                "logx": args.logx or None}.items() if v}
    try:
        out = write_report(args.folder, report)
    except FileNotFoundError as exc:  # no finished runs there: a one-line error via main_guard
        raise ConfigError(str(exc)) from None
    for path in out.values():
        print(path)
    return 0


if __name__ == "__main__":
    main_guard(main)
