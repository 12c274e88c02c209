"""The benchmark suite runs end to end in its quick mode and writes its table (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_quick_benchmarks_write_a_table_of_ratios(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--only", "data,steps",
                           "--out", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "benchmarks.json").read_text())["rows"]
    groups = {r["group"] for r in rows}
    assert groups == {"data", "steps"}
    assert all(r["value"] > 0 and r["ratio"] > 0 for r in rows)
    baselines = [r["row"] for r in rows if r["ratio"] == 1.0]
    assert len(baselines) == 6  # torchvision at 28/96 px, and a plain loop per step model
    engine_rows = [r["row"] for r in rows if r["group"] == "steps" and r["row"].endswith(": engine")]
    assert len(engine_rows) == 4 and any(row.startswith("DCGAN 256 px") for row in engine_rows)
    assert sum("memory-mapped" in r["row"] for r in rows) == 2
    assert "| steps |" in (out / "benchmarks.md").read_text()


def test_unknown_section_is_a_clear_error():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--only", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown section 'nope'" in proc.stderr
