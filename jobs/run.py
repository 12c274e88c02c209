#!/usr/bin/env python
"""Run ONE run of an experiment or sweep in this process; usage: ``python jobs/run.py --help``
(the text lives in hpclab/launch/run_one.py, shared with ``python -m hpclab.launch.run_one``)."""

from __future__ import annotations

from hpclab.launch.cli import main_guard
from hpclab.launch.run_one import main

if __name__ == "__main__":
    main_guard(main)
