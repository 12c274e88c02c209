"""Sweep summaries and the results document: the generated blocks of docs/results.md are quoted
from what the suite wrote, refreshed by ``jobs/report.py --publish``."""

from __future__ import annotations

from pathlib import Path

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
    run_cli("launch.py", "sweep=ae_latent", "preset=smoke", "data=digits", "train.max_steps=10",
            "train.batch_size=32", "analysis=[]", cwd=digits)
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


def test_publish_and_report_errors_are_one_line(digits: Path):
    proc = run_cli("report.py", "--publish", str(digits / "missing.md"), cwd=digits, check=False)
    assert proc.returncode == 2 and proc.stderr.strip() == f"error: --publish: {digits / 'missing.md'} is not a file"
    bad = digits / "bad.md"
    bad.write_text("<!-- generated: figure a.png figures/a.png wide -->\n<!-- end generated -->\n")
    proc = run_cli("report.py", "--publish", str(bad), cwd=digits, check=False)
    assert proc.returncode == 2 and "unknown generated block 'figure a.png figures/a.png wide'" in proc.stderr
    proc = run_cli("report.py", str(digits / "results" / "nothing"), cwd=digits, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no finished runs")
