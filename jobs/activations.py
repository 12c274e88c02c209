#!/usr/bin/env python
"""Save the intermediate activations of a trained run's network as image grids, one per layer.

usage: python jobs/activations.py results/<group>/<run> [--count 4] [--split test] [--channels 16] [--out DIR]

  python jobs/launch.py experiment=colourize_unet
  python jobs/activations.py results/colourize_unet/default --count 4

Loads the run's config and its best weights (else the newest checkpoint), runs the first
--count images of --split through the network with forward hooks and writes
<run>/figures/activations/NN_<layer>.png (rows: images; columns: input, then channels).
"""

from __future__ import annotations

from pathlib import Path

from hpclab.launch.cli import doc_parser, main_guard
from hpclab.rundir import FIGURES


def main(argv: list[str]) -> int:
    parser = doc_parser(__doc__)
    parser.add_argument("run_dir", type=Path, help="a run folder holding config.yaml and checkpoints/")
    parser.add_argument("--count", type=int, default=4, help="number of images (default 4)")
    parser.add_argument("--split", default="test", help="split to take the images from (default test)")
    parser.add_argument("--channels", type=int, default=16, help="channels shown per layer (default 16)")
    parser.add_argument("--out", type=Path, help="output folder (default <run>/figures)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.channels < 1:
        parser.error("--count and --channels must be >= 1")

    from hpclab.analysis.activations import save_activations
    from hpclab.analysis.rerun import trained

    with trained(args.run_dir) as run:
        result = save_activations(
            run, args.out or args.run_dir / FIGURES, count=args.count, split=args.split, max_channels=args.channels
        )
    print(f"{len(result['files'])} layer grids ({', '.join(result['layers'])}) in {result['folder']}")
    return 0


if __name__ == "__main__":
    main_guard(main)
