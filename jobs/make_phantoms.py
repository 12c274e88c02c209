#!/usr/bin/env python
"""Write synthetic brain-MRI phantoms (bright blobs in a textured ellipse, with their masks) in
the folder layout that data=brain_mri reads, for tests and demos.

usage: python jobs/make_phantoms.py OUT_DIR [--count N] [--size 240] [--seed 0] [--layout folders|cases]

  python jobs/make_phantoms.py data/raw/phantoms --count 200
  python jobs/prepare_data.py data=brain_mri data.mirrors=[data/raw/phantoms]
"""

from __future__ import annotations

from hpclab.launch.cli import doc_parser, main_guard


def main(argv: list[str]) -> int:
    from hpclab.data.phantoms import LAYOUTS, write_phantoms

    parser = doc_parser(__doc__)
    parser.add_argument("out_dir", help="folder to write (images/ + masks/, or one folder per case)")
    parser.add_argument("--count", type=int, default=100, help="number of slices (default 100)")
    parser.add_argument("--size", type=int, default=240, help="side in pixels (default 240)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="folders",
        help="folders: images/<id>.png + masks/<id>.png; cases: <case>/<id>.tif + <id>_mask.tif",
    )
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 16:
        parser.error("--count must be >= 1 and --size >= 16")
    out = write_phantoms(args.out_dir, args.count, args.size, args.seed, args.layout)
    print(f"wrote {args.count} phantom slices ({args.size}x{args.size}, layout {args.layout}) to {out}")
    return 0


if __name__ == "__main__":
    main_guard(main)
