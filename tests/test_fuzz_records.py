"""Property-based fault tests (Hypothesis): every reader of a run folder and of a dataset file,
fed generated damaged files, answers as docs/runs.md promises.

For each file a run folder holds (summary.json, attempts.json, slurm.json, metrics.jsonl,
config.yaml, the best weights, run.lock; submissions.json beside the runs) Hypothesis writes
damaged versions: random JSON of any shape, the real record with one field replaced by a value
of another type, the real bytes cut short, random bytes. The commands that read that file then
run through their CLI entry points (in this process: :func:`conftest.run_main`), and each must

- exit 0 (done, or the damage was skipped or repaired) or 2 (one ``error:`` line), never with a
  traceback (an exception here fails the test with it),
- print at most one ``error:`` line,
- change nothing outside the run folder (bar the sweep summary that ``report.py`` writes), and
  leave a damaged config.yaml, the record of what a run is, as it was.

Dataset files get the same treatment: generated HDF5 layouts (splits missing, images of other
ranks, dtypes and sizes per split, labels of other lengths, types and ranges, class_names of
other types) go through a launch. ``HPCLAB_FUZZ_EXAMPLES`` sets the examples per reader (8 by
default: 8 x 8 run-folder files + 8 datasets in CI; raise it for a longer search).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import DIGITS_RUN, run_cli, run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = [pytest.mark.fault, pytest.mark.slow]

EXAMPLES = int(os.environ.get("HPCLAB_FUZZ_EXAMPLES", "8"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RUN = [*DIGITS_RUN, "train.max_steps=10", "train.eval_every=5", "train.checkpoint_every=5", "analysis=[]"]
GROUP, NAME = "ae_latent", "default"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Staged digits and one finished tiny run, copied for every example."""
    home = tmp_path_factory.mktemp("fuzz")
    env = {"HPCLAB_DATA": str(home / "data"), "HPCLAB_RESULTS": str(home / "results")}
    run_cli("prepare_data.py", "data=digits", cwd=home, env=env)
    run_cli("launch.py", *RUN, cwd=home, env=env)
    return home


# --------------------------------------------------------------------------- damaged bytes

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**6)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=10,
)


def _replace_field(record: Any, data: st.DataObject) -> Any:
    """The record with one field (or list entry, at any depth) replaced by a random value."""
    if isinstance(record, dict) and record:
        key = data.draw(st.sampled_from(sorted(record)))
        deeper = data.draw(st.booleans())
        value = _replace_field(record[key], data) if deeper else data.draw(json_values)
        return {**record, key: value}
    if isinstance(record, list) and record:
        index = data.draw(st.integers(0, len(record) - 1))
        return record[:index] + [_replace_field(record[index], data)] + record[index + 1 :]
    return data.draw(json_values)


def damaged(original: bytes, data: st.DataObject, kind: str) -> bytes:
    """A damaged version of a file's bytes: JSON of the wrong shape or types, cut short, random."""
    how = data.draw(
        st.sampled_from(["field", "any_json", "truncated", "random"] if kind == "json" else ["truncated", "random"]),
        label="damage",
    )
    if how == "field":
        return json.dumps(_replace_field(json.loads(original), data)).encode()
    if how == "any_json":
        return json.dumps(data.draw(json_values)).encode()
    if how == "truncated":
        return original[: data.draw(st.integers(0, max(len(original) - 1, 0)))]
    return data.draw(st.binary(max_size=200))


def damaged_lines(original: bytes, data: st.DataObject) -> bytes:
    """metrics.jsonl with some lines replaced by other JSON (not records) or garbage."""
    lines = original.decode().splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(lines) - 1))
        lines[index] = data.draw(st.one_of(json_values.map(json.dumps), st.text(max_size=20)))
    return ("\n".join(lines) + "\n").encode()


def damaged_config(original: bytes, data: st.DataObject) -> bytes:
    """config.yaml with a value replaced (an interpolation among the choices), cut short, or random."""
    import yaml

    how = data.draw(st.sampled_from(["value", "interpolation", "truncated", "random"]))
    if how in ("value", "interpolation"):
        cfg = yaml.safe_load(original)
        section = data.draw(st.sampled_from(["train", "model", "data", "paths"]))
        key = data.draw(st.sampled_from(sorted(cfg[section])))
        cfg[section][key] = "${oc.env:HPCLAB_FUZZ_SECRET}" if how == "interpolation" else data.draw(json_values)
        return yaml.safe_dump(cfg).encode()
    return damaged(original, data, "binary")


# --------------------------------------------------------------------------- readers


def _status(env: dict, home: Path) -> Any:
    return run_main("launch.py", "status", *RUN, cwd=home, env=env)


def _launch(env: dict, home: Path) -> Any:
    return run_main("launch.py", *RUN, cwd=home, env=env)


def _dry_run(env: dict, home: Path) -> Any:
    return run_main("launch.py", *RUN, "dry_run=true", cwd=home, env=env)


def _slurm_dry_run(env: dict, home: Path) -> Any:
    return run_main("launch.py", *RUN, "cluster=slurm", "cluster.gpus_per_node=0", "dry_run=true", cwd=home, env=env)


def _report(env: dict, home: Path) -> Any:
    return run_main("report.py", str(Path(env["HPCLAB_RESULTS"]) / GROUP), cwd=home, env=env)


def _analyze(env: dict, home: Path) -> Any:
    return run_main("analyze.py", str(Path(env["HPCLAB_RESULTS"]) / GROUP / NAME), "curves", cwd=home, env=env)


def _launch_unfinished(env: dict, home: Path) -> Any:
    """A launch that must read the file: the run is unfinished (summary removed), so it resumes."""
    (Path(env["HPCLAB_RESULTS"]) / GROUP / NAME / "summary.json").unlink(missing_ok=True)
    return run_main("launch.py", *RUN, cwd=home, env=env)


def _launch_in_slurm(env: dict, home: Path) -> Any:
    """The same inside a (pretend) SLURM job, whose task record goes into slurm.json."""
    (Path(env["HPCLAB_RESULTS"]) / GROUP / NAME / "summary.json").unlink(missing_ok=True)
    return run_main("launch.py", *RUN, cwd=home, env={**env, "SLURM_JOB_ID": "424242", "HPCLAB_SLURM_LOG": "x.out"})


Damage = Callable[[bytes, st.DataObject], bytes]
READERS: dict[str, tuple[str, Damage, list[Callable]]] = {
    "summary.json": ("run", lambda b, d: damaged(b, d, "json"), [_status, _report, _dry_run, _analyze, _launch]),
    "attempts.json": ("run", lambda b, d: damaged(b, d, "json"), [_launch_unfinished]),
    "slurm.json": ("run", lambda b, d: damaged(b, d, "json"), [_status, _launch_in_slurm]),
    "metrics.jsonl": ("run", damaged_lines, [_status, _analyze, _launch_unfinished]),
    "config.yaml": ("run", damaged_config, [_status, _report, _dry_run, _analyze, _launch]),
    "checkpoints/best_model.safetensors": ("run", lambda b, d: damaged(b, d, "binary"), [_analyze, _launch_unfinished]),
    "run.lock": ("run", lambda b, d: damaged(b, d, "json"), [_launch_unfinished]),
    "submissions.json": ("group", lambda b, d: damaged(b, d, "json"), [_status, _slurm_dry_run]),
}
SUBMISSIONS = {NAME: {"job_id": "77_0", "log": "/nowhere/77_0_log.out", "run_dir": "x"}}


def snapshot(root: Path, skip: Path) -> dict[str, bytes]:
    """Every file under ``root`` outside ``skip`` (and the sweep summary, report.py's output)."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and skip not in path.parents and not path.name.startswith((".report", "summary.")):
            out[str(path.relative_to(root))] = path.read_bytes()
    return out


def check_answer(proc: Any, what: str) -> None:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode in (0, 2), f"{what}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
    assert len(errors) <= 1 and "Traceback" not in proc.stderr, f"{what}:\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0 or errors, f"{what}: exit 2 without an error line\n{proc.stderr[-2000:]}"
    assert "fuzz-secret-value" not in proc.stdout + proc.stderr, what  # an interpolation was resolved


@pytest.mark.parametrize("relative", list(READERS))
def test_every_reader_of_a_run_folder_answers_damaged_files_in_one_line(template, relative):
    where, damage, readers = READERS[relative]

    @FUZZ
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            shutil.copytree(template / "results", home / "results")
            run_dir = home / "results" / GROUP / NAME
            folder = run_dir if where == "run" else run_dir.parent
            target = folder / relative
            if relative == "submissions.json":
                target.write_text(json.dumps(SUBMISSIONS))
            elif relative == "slurm.json":
                target.write_text(json.dumps({"starts": [{"job": "5", "restart": 0}], "job": "5", "log": "x"}))
            elif relative == "run.lock":
                target.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "t"}))
            damage_bytes = damage(target.read_bytes(), data)
            target.write_bytes(damage_bytes)
            env = {
                "HPCLAB_DATA": str(template / "data"),
                "HPCLAB_RESULTS": str(home / "results"),
                "HPCLAB_FUZZ_SECRET": "fuzz-secret-value",
            }
            reader = data.draw(st.sampled_from(readers), label="reader")
            before = snapshot(home, run_dir)
            proc = reader(env, home)
            check_answer(proc, f"{reader.__name__} on a damaged {relative}")
            assert snapshot(home, run_dir) == before, f"{reader.__name__} changed files outside {run_dir}"
            if relative == "config.yaml" and proc.returncode != 0 and target.exists():
                assert target.read_bytes() == damage_bytes, "a damaged config.yaml was overwritten"

    example()


# --------------------------------------------------------------------------- damaged datasets


@st.composite
def dataset_layouts(draw: st.DrawFn) -> dict[str, Any]:
    """An HDF5 layout a little (or very) off the suite's format."""
    splits = draw(st.lists(st.sampled_from(["train", "val", "test", "other"]), min_size=0, max_size=3, unique=True))
    layout: dict[str, Any] = {
        "splits": {},
        "class_names": draw(st.sampled_from(["ok", "missing", "dict", "number", "not json", "short"])),
    }
    for split in splits:
        dtype = draw(st.sampled_from(["uint8", "uint8", "float32", "int64"]))
        shape = (
            draw(st.sampled_from([0, 1, 7, 40])),
            *draw(st.sampled_from([(1, 8, 8), (1, 8, 8), (3, 8, 8), (1, 9, 9), (8, 8)])),
        )
        layout["splits"][split] = {
            "images": (dtype, shape),
            "labels": draw(st.sampled_from(["ok", "none", "short", "float", "minus_one", "too_big", "2d"])),
        }
    return layout


def write_layout(path: Path, layout: dict[str, Any], seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = {
        "ok": json.dumps([str(i) for i in range(10)]),
        "dict": json.dumps({"a": 1}),
        "number": "3",
        "not json": "{oops",
        "short": json.dumps(["a", "b"]),
    }
    with h5py.File(path, "w") as f:
        for split, spec in layout["splits"].items():
            dtype, shape = spec["images"]
            f.create_dataset(f"{split}/images", data=rng.integers(0, 255, size=shape).astype(dtype))
            n = shape[0]
            labels = {
                "ok": rng.integers(0, 10, n),
                "short": rng.integers(0, 10, max(n - 1, 0)),
                "float": rng.random(n),
                "minus_one": np.full(n, -1),
                "too_big": np.full(n, 12),
                "2d": rng.integers(0, 10, (n, 2)),
            }.get(spec["labels"])
            if labels is not None:
                f.create_dataset(f"{split}/labels", data=labels)
        if layout["class_names"] in names:
            f.attrs["class_names"] = names[layout["class_names"]]


@pytest.mark.parametrize("experiment", ["ae_latent", "fmnist_cnn"])
def test_a_launch_on_a_malformed_dataset_answers_in_one_line(template, experiment):
    @FUZZ
    @given(layout=dataset_layouts(), seed=st.integers(0, 2**16))
    def example(layout: dict[str, Any], seed: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp)
            data_file = home / "fuzzed.h5"
            write_layout(data_file, layout, seed)
            env = {"HPCLAB_DATA": str(home / "data"), "HPCLAB_RESULTS": str(home / "results")}
            args = [
                f"experiment={experiment}",
                "data=digits",
                f"data.file={data_file}",
                "train.epochs=null",
                "train.max_steps=2",
                "train.batch_size=4",
                "train.eval_every=2",
                "train.progress=log",
                "analysis=[]",
                "model.channels=[4,8]" if experiment == "ae_latent" else "model.channels=[4,8,8]",
            ]
            before = data_file.read_bytes()
            proc = run_main("launch.py", *args, cwd=home, env=env)
            check_answer(proc, f"launch on {layout}")
            assert data_file.read_bytes() == before  # a launch never rewrites data

    example()
