#!/usr/bin/env python
"""Run one analysis again on a finished run, with new arguments.

usage: python jobs/analyze.py RUN_DIR ANALYSIS [key=value ...]

  python jobs/analyze.py results/dcgan/default gan_favourites 'indices=[3,17,40]' 'pair=[0,2]'
  python jobs/analyze.py results/dcgan/default fid num_images=5000

Values are YAML (numbers, [lists], strings). Figures go to RUN_DIR/figures, the result into
RUN_DIR/summary.json.
"""

from __future__ import annotations

import json

from hpclab.launch.cli import main_guard


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any(a in ("-h", "--help", "help") for a in argv):
        from hpclab.analysis import ANALYSES

        print(__doc__ + f"\nanalyses: {', '.join(sorted(ANALYSES))}")
        return 0 if argv else 2
    from omegaconf import OmegaConf

    from hpclab.analysis.rerun import analyze_run
    from hpclab.config import ConfigError, load_run_config
    from hpclab.utils import use_threads

    run_dir, name, pairs = argv[0], argv[1], argv[2:]
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise ConfigError(f"arguments must be key=value, got {bad[0]!r}")
    kwargs = OmegaConf.to_container(OmegaConf.from_dotlist(pairs)) if pairs else {}
    use_threads(load_run_config(run_dir).cluster.threads)  # the numbers of the run's own analyses
    result = analyze_run(run_dir, name, kwargs)
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    main_guard(main)
