#!/usr/bin/env python
"""Overlay the training/validation curves of several runs (e.g. colourization CNN vs U-Net).

usage: python jobs/compare_runs.py RUN_DIR [RUN_DIR ...] [--metrics loss,acc] [--out FILE]

  python jobs/launch.py sweep=colourize_compare
  python jobs/compare_runs.py results/colourize_compare/* --metrics loss,acc

A metric is a name (training curve dashed, each evaluated split solid) or split/name
(e.g. val/acc). Runs are labelled by folder name. Default output: compare.png in the
common parent folder of the runs.
"""

from __future__ import annotations

from pathlib import Path

from hpclab.launch.cli import doc_parser, main_guard
from hpclab.rundir import METRICS


def main(argv: list[str]) -> int:
    parser = doc_parser(__doc__)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders holding metrics.jsonl")
    parser.add_argument("--metrics", default="loss", help="comma-separated metrics (default: loss)")
    parser.add_argument("--out", type=Path, help="output PNG (default: <common parent>/compare.png)")
    args = parser.parse_args(argv)
    runs = [r for r in args.runs if (r / METRICS).is_file()]
    if not runs:
        parser.error("none of the given folders holds a metrics.jsonl")
    from hpclab.analysis.curves import plot_curves

    names = [r.name for r in runs]
    labels = {r.name if names.count(r.name) == 1 else str(r): r for r in runs}
    out = args.out or runs[0].resolve().parent / "compare.png"
    path = plot_curves(labels, [m for m in args.metrics.split(",") if m], out, title=", ".join(labels))
    print(path)
    return 0


if __name__ == "__main__":
    main_guard(main)
