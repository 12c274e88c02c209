"""Sweep summaries and the results document: the generated blocks of docs/results.md are quoted
from what the suite wrote, refreshed by ``jobs/report.py --publish``."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli

DOC = """# Results

Hand-written prose stays.

<!-- generated: table ae_latent/summary.md -->
stale table
<!-- end generated -->
<!-- generated: runs ae_latent -->
<!-- end generated -->
<!-- generated: figure ae_latent/summary.png figures/ae_latent.png -->
<!-- end generated -->
<!-- generated: figure ae_latent/summary.png figures/ae_latent_small.png 200 -->
<!-- end generated -->
<!-- generated: table not_run_yet/summary.md -->
kept until it exists
<!-- end generated -->
"""


def test_publish_quotes_the_generated_summaries(digits: Path):
    run_cli(
        "launch.py",
        "sweep=ae_latent",
        "preset=smoke",
        "run_group=ae_latent",
        "data=digits",
        "train.max_steps=10",
        "train.batch_size=32",
        "analysis=[]",
        cwd=digits,
    )  # an explicit group: the folder the document quotes
    doc = digits / "docs" / "results.md"
    doc.parent.mkdir()
    doc.write_text(DOC)
    proc = run_cli("report.py", "--publish", str(doc), cwd=digits)
    assert "4 generated block(s) refreshed" in proc.stdout and "not generated yet" in proc.stdout
    text = doc.read_text()
    summary = (digits / "results" / "ae_latent" / "summary.md").read_text()
    table = [line for line in summary.splitlines() if line.startswith("|")]
    assert "\n".join(table) in text and "stale table" not in text
    assert "Hand-written prose stays." in text and "kept until it exists" in text
    assert "- runs: 2 finished of 2;" in text and "usable core(s)" in text
    assert "![ae_latent](figures/ae_latent.png)" in text and (doc.parent / "figures" / "ae_latent.png").is_file()
    from PIL import Image

    with Image.open(doc.parent / "figures" / "ae_latent_small.png") as small:  # at most WIDTH pixels, a palette
        assert small.width == 200 and small.mode == "P"
    assert run_cli("report.py", "--publish", str(doc), cwd=digits).returncode == 0  # idempotent
    assert doc.read_text() == text

    # the curated summaries: a copy of what the blocks quote, from which the tables regenerate alone
    curated = digits / "summaries"
    run_cli("report.py", "--publish", str(doc), "--curate", str(curated), cwd=digits)
    assert (curated / "ae_latent" / "summary.md").read_text() == summary
    assert {p.name for p in (curated / "ae_latent" / "latent_dim-2").iterdir()} == {
        "summary.json",
        "environment.json",
        "config.yaml",
    }
    doc.write_text(DOC)
    run_cli("report.py", "--publish", str(doc), "--results", str(curated), cwd=digits)
    again = doc.read_text()
    assert "\n".join(table) in again and "- runs: 2 finished of 2;" in again and "stale table" not in again


def test_publish_and_report_errors_are_one_line(digits: Path):
    proc = run_cli("report.py", "--publish", str(digits / "missing.md"), cwd=digits, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --publish: {digits / 'missing.md'} is not a file"
    bad = digits / "bad.md"
    bad.write_text("<!-- generated: figure a.png figures/a.png wide -->\n<!-- end generated -->\n")
    proc = run_cli("report.py", "--publish", str(bad), cwd=digits, check=False)
    assert proc.returncode == 2 and "unknown generated block 'figure a.png figures/a.png wide'" in proc.stderr
    proc = run_cli("report.py", str(digits / "results" / "nothing"), cwd=digits, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no finished runs")


def test_sweep_summary_lists_every_finished_run_in_natural_order_with_its_own_values(digits: Path):
    """A seed axis of 11 runs (seed-10 after seed-9, not after seed-1); each row holds its run's
    config values and summary.json metrics (rounded as the table rounds them); a run whose
    config.yaml is damaged is listed as such and the others are still summarised."""
    import csv
    import json

    run_cli(
        "launch.py",
        "sweep=ae_latent",
        "preset=smoke",
        "data=digits",
        "model.latent_dim=2",
        "train.max_steps=2",
        "train.eval_every=2",
        "train.batch_size=32",
        "analysis=[]",
        "sweep.subset=0",
        "seed=range(0,11)",
        cwd=digits,
    )
    group = digits / "results" / "ae_latent-smoke"
    (group / "latent_dim-2__seed-5" / "config.yaml").write_text("- not\n- a mapping\n")
    proc = run_cli("report.py", str(group), cwd=digits)
    assert "latent_dim-2__seed-5" in proc.stderr and "damaged" in proc.stderr
    with open(group / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["run"] for r in rows] == [f"latent_dim-2__seed-{i}" for i in range(11) if i != 5]
    for row in rows:
        summary = json.loads((group / row["run"] / "summary.json").read_text())
        assert row["model.latent_dim"] == "2"
        assert float(row["test/mse"]) == round(summary["metrics"]["test/mse"], 6) > 0
        assert int(row["parameters"]) == sum(summary["parameters"].values())
    table = (group / "summary.md").read_text()
    assert "10 finished run(s)" in table and "Skipped, damaged records: latent_dim-2__seed-5: RunRecordError" in table


def test_report_does_not_load_torch(digits: Path):
    """report.py is a table and a line plot: it reads YAML and JSON, and never imports torch
    (a report over 1,000 runs spent 4 of its 13 s importing it for the figure helper)."""
    import subprocess
    import sys

    run_cli(
        "launch.py",
        "experiment=ae_latent",
        "data=digits",
        "train.max_steps=2",
        "train.eval_every=2",
        "analysis=[]",
        "model.latent_dim=2",
        "sweep.name=one",
        cwd=digits,
    )
    script = Path(__file__).resolve().parent.parent / "jobs" / "report.py"
    code = (
        f"import runpy, sys\nsys.argv = [{str(script)!r}, 'results/one']\n"
        f"try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit as exc:\n"
        f"    assert not exc.code, exc.code\nprint('torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=digits, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (digits / "results" / "one" / "summary.csv").is_file() and proc.stdout.splitlines()[-1] == "False"


def test_tasks_finishing_together_share_the_summary_rebuild(digits: Path):
    """A task that finds another rebuilding the sweep summary leaves a stale mark and goes; the
    rebuilding one sees the mark and rebuilds again, so the last summary lists every run."""
    from filelock import FileLock

    from hpclab.launch.job import refresh_sweep_report
    from hpclab.launch.sweep import plan

    run_cli(
        "launch.py",
        "sweep=ae_latent",
        "preset=smoke",
        "data=digits",
        "train.max_steps=4",
        "train.batch_size=32",
        "analysis=[]",
        cwd=digits,
    )
    group = digits / "results" / "ae_latent-smoke"
    (group / "summary.md").unlink()
    cfg = plan(["sweep=ae_latent", "preset=smoke", "data=digits"]).run(0)
    with FileLock(str(group / ".report.lock")):  # another task is rebuilding
        refresh_sweep_report(cfg)
        assert (group / ".report.stale").exists() and not (group / "summary.md").exists()
    refresh_sweep_report(cfg)  # the holder's second look (or the next task): the mark is taken up
    assert not (group / ".report.stale").exists()
    rows = [line for line in (group / "summary.md").read_text().splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 2  # header and the two runs


def test_an_axis_that_picks_a_config_group_shows_its_option(tmp_path: Path):
    """``encoder: [scratch, simclr]`` leaves no key in the runs' configs: the summary takes each
    run's option from its name; the plot draws one line per option, seeds averaged."""
    import csv
    import json

    import yaml

    group = tmp_path / "pretrain_compare"
    grid = {"encoder": ["scratch", "simclr"], "data.train_fraction": [0.1, 1.0], "seed": [0, 1]}
    for encoder, fraction, seed in [(e, f, s) for e in grid["encoder"] for f in (0.1, 1.0) for s in (0, 1)]:
        run = group / f"encoder-{encoder}__train_fraction-{fraction}__seed-{seed}"
        run.mkdir(parents=True)
        cfg = {
            "seed": seed,
            "data": {"train_fraction": fraction},
            "sweep": {"grid": grid, "report": {"x": "data.train_fraction", "metrics": ["test/acc"]}},
        }
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        acc = 0.8 + 0.1 * fraction + (0.02 if encoder == "simclr" else 0) + 0.001 * seed
        (run / "summary.json").write_text(json.dumps({"status": "completed", "metrics": {"test/acc": acc}}))
    run_cli("report.py", str(group), cwd=tmp_path)
    with open(group / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:5] == ["run", "data.train_fraction", "encoder", "seed", "test/acc"]
    assert {(r["encoder"], r["seed"]) for r in rows} == {(e, s) for e in ("scratch", "simclr") for s in ("0", "1")}
    assert all(r["run"].startswith(f"encoder-{r['encoder']}__") for r in rows)
    assert (group / "summary.png").read_bytes()[:4] == b"\x89PNG"
    # summary.md also averages the seeds of each setting, with their range
    means = (group / "summary.md").read_text().split("Mean over the seeds")[1]
    assert "| data.train_fraction | encoder | seeds | test/acc mean (min-max) |" in means
    assert "| 1.0 | simclr | 2 | 0.9205 (0.9200-0.9210) |" in means


def test_each_baseline_is_drawn_on_the_axes_of_its_metric_in_words(digits: Path):
    """ae_latent's PCA baseline anchors test/mse and test/psnr (report.baselines): two panels,
    each with its baseline, labelled in words; the table keeps the baseline columns; TensorBoard's
    HParams start with the swept key; a reduced view goes beside summary.md, not over it."""
    import csv

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    from hpclab.analysis.report import baselines_of, collect, select, summary_panels

    run_cli(
        "launch.py",
        "sweep=ae_latent",
        "preset=smoke",
        "data=digits",
        "model.channels=[8,16]",
        "train.max_steps=10",
        "train.batch_size=32",
        "analysis=[pca_baseline]",
        cwd=digits,
    )
    group = digits / "results" / "ae_latent-smoke"
    with open(group / "summary.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header[2:6] == ["test/mse", "test/psnr", "analyses.pca_baseline.test_mse", "analyses.pca_baseline.test_psnr"]
    rows, _ = collect(group)
    report = select(rows[0]["cfg"], "sweep.report")
    metrics = list(report["metrics"])
    panels = summary_panels(rows, report["x"], metrics, baselines_of(report, metrics), report["logx"])
    assert [(p.xlabel, p.ylabel) for p in panels] == [
        ("latent size l", "test MSE"),
        ("latent size l", "test PSNR (dB)"),
    ]
    for panel, metric in zip(panels, metrics):
        model, pca = panel.lines
        assert (model.label, pca.label) == (panel.ylabel, "PCA, as many components") and panel.log_x_base == 2
        assert pca.y == [r["summary"]["analyses"]["pca_baseline"][metric.replace("/", "_")] for r in rows]
        assert model.y == [r["summary"]["metrics"][metric] for r in rows]
    assert (group / "summary.png").is_file()

    event = next((group / "latent_dim-2" / "tb" / "hparams").glob("events.*"))
    names = [
        [h.name for h in data.experiment.hparam_infos]
        for e in EventFileLoader(str(event)).Load()
        for v in e.summary.value
        if v.metadata.plugin_data.plugin_name == "hparams"
        for data in [plugin_data_pb2.HParamsPluginData.FromString(v.metadata.plugin_data.content)]
        if data.HasField("experiment")
    ]
    assert names and names[0][:2] == ["model.latent_dim", "experiment"], names

    summary = (group / "summary.md").read_text()
    proc = run_cli("report.py", str(group), "--metrics", "test/mse", cwd=digits)
    assert (group / "summary.md").read_text() == summary
    view = (group / "summary-test_mse.md").read_text()
    assert "| test/mse | analyses.pca_baseline.test_mse |" in view and str(group / "summary-test_mse.md") in proc.stdout


@pytest.mark.parametrize("script", ["report.py", "make_phantoms.py", "compare_runs.py", "activations.py"])
def test_help_says_the_whole_first_sentence(script: str, tmp_path: Path):
    """``--help`` gives a script's first paragraph whole (it used to stop at the first line break)."""
    import runpy

    doc = runpy.run_path(str(Path(__file__).resolve().parent.parent / "jobs" / script))["__doc__"]
    first = " ".join(doc.strip().split("\n\n")[0].split())
    proc = run_cli(script, "--help", cwd=tmp_path)
    assert first in " ".join(proc.stdout.split()), proc.stdout
