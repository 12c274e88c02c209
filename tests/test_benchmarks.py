"""The benchmark suite runs end to end in its quick mode and writes its table (no timing asserts)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO


@pytest.mark.slow
def test_quick_benchmarks_write_a_table_of_ratios(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--only", "data,steps", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
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
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--only", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "unknown section 'nope'" in proc.stderr


@pytest.mark.slow
def test_gpu_section_variants_run_one_after_another_on_cpu(tmp_path, monkeypatch):
    """The GPU section's engine variants (bf16, channels_last, streamed data) in one process,
    here on the CPU: what breaks there between variants (accelerate's per-process state did)
    breaks here too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("hpclab_benchmarks_run", REPO / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    for key in ("HPCLAB_DATA", "HPCLAB_RESULTS"):  # compose_run sets them; restored afterwards
        monkeypatch.setenv(key, str(tmp_path / key))
    monkeypatch.setattr(bench, "STEP_MODELS", {k: v for k, v in bench.STEP_MODELS.items() if k.startswith("Fashion")})
    variants = {k: v for k, v in bench.GPU_VARIANTS.items() if "compile" not in k}  # no C++ compiler assumed
    rows = bench.step_rows(tmp_path, True, torch.device("cpu"), variants, "gpu")
    assert [r["row"].split(": ", 1)[1] for r in rows] == ["plain loop", *variants]
    assert all(r["value"] > 0 and r["tflops"] > 0 for r in rows)


def test_step_benchmark_runs_quick(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "dcgan_step.py"),
            "--quick",
            "--rounds",
            "1",
            "--steps",
            "1",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ratio vs fp32 contiguous" in proc.stdout
    rows = json.loads((tmp_path / "dcgan_step_cpu_quick.json").read_text())["rows"]
    assert {(r["precision"], r["channels_last"]) for r in rows} == {
        ("fp32", False),
        ("fp32", True),
        ("bf16", False),
        ("bf16", True),
    }
