#!/usr/bin/env python
"""Rebuild a sweep's summary (summary.csv, summary.md, summary.png) from its run folders, or
refresh the generated tables, run records and figures of a results document.

usage: python jobs/report.py results/<sweep> [--x KEY] [--metrics M1,M2] [--logx]
       python jobs/report.py --publish docs/results.md [--results results] [--only GROUP,GROUP] [--curate DIR]

  python jobs/report.py results/ae_latent                       # summary.{md,csv,png}, as the sweep's config says
  python jobs/report.py results/ae_latent --metrics test/mse    # another view: summary-test_mse.{md,csv,png}

With --x, --metrics or --logx the view is written beside the summary (summary-<view>.*), which
stays as the sweep's config describes it. A baseline of the sweep's report.baselines is drawn on
the axes of the metric it anchors. --curate results/summaries keeps a copy of every table and run
record a refreshed block quotes (results/README.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from hpclab.launch.cli import doc_parser, main_guard


def main(argv: list[str]) -> int:
    parser = doc_parser(__doc__)
    parser.add_argument("folder", nargs="?", help="a sweep's results folder, e.g. results/ae_latent")
    parser.add_argument("--x", help="swept key on the x axis (default: the sweep's report.x)")
    parser.add_argument("--metrics", help="comma-separated metrics (default: the sweep's report.metrics)")
    parser.add_argument("--logx", action="store_true", help="log-2 x axis")
    parser.add_argument("--publish", metavar="DOC", help="refresh the '<!-- generated: ... -->' blocks of DOC")
    parser.add_argument(
        "--results", default=None, help="results folder for --publish (default: $HPCLAB_RESULTS or results)"
    )
    parser.add_argument(
        "--only", help="with --publish: refresh only the blocks of these results groups (comma-separated)"
    )
    parser.add_argument(
        "--curate", metavar="DIR", help="with --publish: copy the sources of the refreshed blocks into DIR"
    )
    args = parser.parse_args(argv)
    from hpclab.analysis.publish import publish
    from hpclab.analysis.report import view_name, write_report
    from hpclab.errors import ConfigError

    if args.publish:
        if not Path(args.publish).is_file():
            raise ConfigError(f"--publish: {args.publish} is not a file")
        results = args.results or os.environ.get("HPCLAB_RESULTS", "results")
        only = {g for g in args.only.split(",") if g} if args.only else None
        refreshed, missing = publish(args.publish, results, only, args.curate)
        print(f"{args.publish}: {refreshed} generated block(s) refreshed from {results}")
        for source in missing:
            print(f"  not generated yet: {source}")
        return 0
    if not args.folder:
        raise ConfigError("give a sweep's results folder (or --publish DOC); see --help")
    report = {
        k: v
        for k, v in {
            "x": args.x,
            "metrics": args.metrics.split(",") if args.metrics else None,
            "logx": args.logx or None,
        }.items()
        if v
    }
    try:
        out = write_report(args.folder, report, name=view_name(report))
    except FileNotFoundError as exc:  # no finished runs there: a one-line error via main_guard
        raise ConfigError(str(exc)) from None
    for path in out.values():
        print(path)
    return 0


if __name__ == "__main__":
    main_guard(main)
