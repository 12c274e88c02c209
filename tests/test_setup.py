"""scripts/setup.sh, the README's first command: its errors, and its reuse of a set-up environment."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO, requires

SETUP = REPO / "scripts" / "setup.sh"


def setup(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SETUP), *args], capture_output=True, text=True, timeout=600, env={**os.environ, **env}
    )


def test_unknown_option_is_one_line_and_fails():
    proc = setup("--with-slrum")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "setup: unknown option '--with-slrum' (expected --with-slurm or --help)"
    ]


def test_missing_or_old_interpreter_is_named(tmp_path):
    proc = setup(PYTHON=str(tmp_path / "python9"))
    assert proc.returncode == 1 and f"'{tmp_path / 'python9'}' not found" in proc.stderr
    old = tmp_path / "python3"
    old.write_text("#!/bin/sh\nif [ \"$1\" = -V ]; then echo 'Python 3.8.10'; exit 0; fi\nexit 1\n")
    old.chmod(0o755)
    proc = setup(PYTHON=str(old))
    assert proc.returncode == 1 and "Python 3.8.10 is too old" in proc.stderr


def test_second_run_reuses_the_environment_without_installing():
    """An environment set up from this lock is only checked (no pip): what a second run costs."""
    stamp = Path(sys.prefix) / ".hpclab-setup"
    lock = hashlib.sha256((REPO / "constraints.txt").read_bytes() + (REPO / "pyproject.toml").read_bytes()).hexdigest()
    requires(
        lambda: (
            None
            if stamp.is_file() and stamp.read_text().split() == [lock, str(REPO)]
            else "this environment was not set up by scripts/setup.sh from the current lock"
        )
    )
    env = {"VIRTUAL_ENV": sys.prefix, "PATH": f"{Path(sys.prefix) / 'bin'}:{os.environ['PATH']}"}
    proc = setup(**env)
    assert proc.returncode == 0, proc.stderr
    assert f"ready in the active virtual environment {sys.prefix}" in proc.stdout
    assert "pip" not in proc.stderr.lower()
