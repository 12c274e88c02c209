"""The generic analysis modules (layers, group tables, probes, curves, grids) through the analyses
that use them, re-run with ``analyze_run`` (what ``jobs/analyze.py`` calls) on one small finished
run: the ae_latent conv autoencoder on scikit-learn's 8x8 digits."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import DIGITS_RUN, run_cli
from PIL import Image

from hpclab.analysis.rerun import analyze_run
from hpclab.config import compose
from hpclab.launch.job import run_dir_of, train_run


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _width(path: Path) -> int:
    with Image.open(path) as image:
        return image.width


def _env(root: Path) -> dict[str, str]:
    return {"HPCLAB_DATA": str(root / "data"), "HPCLAB_RESULTS": str(root / "results")}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("analysis_digits")
    run_cli("prepare_data.py", "data=digits", cwd=root, env=_env(root))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for key, value in _env(root).items():
            patch.setenv(key, value)
        cfg = compose(DIGITS_RUN + ["train.max_steps=20", "train.eval_every=10", "analysis=[]"])
        train_run(cfg)
        return run_dir_of(cfg)


@pytest.fixture
def run(digits_run: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The finished run's folder, in the environment it was trained in."""
    root = digits_run.parent.parent.parent
    monkeypatch.chdir(root)
    for key, value in _env(root).items():
        monkeypatch.setenv(key, value)
    yield digits_run


def test_layer_table_and_layer_summary_describe_the_same_layers(run: Path):
    table = analyze_run(run, "layer_table")
    summary = analyze_run(run, "layer_summary")
    rows = _rows(run / "figures" / "layers_model.csv")
    listed = json.loads((run / "figures" / "layer_summary.json").read_text())["layers"]
    assert [r["name"] for r in rows] == [layer["name"] for layer in listed] and len(rows) == table["layers"]
    assert [int(r["params"]) for r in rows] == [layer["parameters"] for layer in listed]
    assert [r["output"] for r in rows] == ["x".join(layer["output_shape"][5:-1].split(", ")) for layer in listed]
    assert sum(int(r["params"]) for r in rows) == summary["parameters"] == summary["trainable"]
    convs = [r for r in rows if r["filters"]]
    assert table["conv_layers"] == len(convs) > 0 and table["filters"] == [int(r["filters"]) for r in convs]
    assert f"Total params: {summary['parameters']:,}" in (run / "figures" / "layer_summary.txt").read_text()
    assert (run / "figures" / "layers_model.png").is_file()


def test_latent_probe_rebuilds_the_group_table_from_every_run(run: Path):
    group = run.parent
    for folder, text in (
        (
            "latent_dim-2",
            json.dumps({"latent_dim": 2, "linear_test_acc": 0.123456789, "mlp_test_acc": 0.5, "train_images": 10}),
        ),
        ("broken", "{"),
        (f"{run.name}.old-20260101-000000", json.dumps({"latent_dim": 99})),
    ):
        (group / folder / "figures").mkdir(parents=True)
        (group / folder / "figures" / "latent_probe.json").write_text(text)
    result = analyze_run(run, "latent_probe", {"epochs": 1, "mlp_hidden": [8]})
    rows = _rows(group / "latent_probe.csv")
    assert [(r["run"], r["latent_dim"]) for r in rows] == [("latent_dim-2", "2"), (run.name, "8")]  # by latent size
    assert rows[0]["linear_test_acc"] == "0.12346"
    assert float(rows[1]["mlp_test_acc"]) == round(result["mlp_test_acc"], 5)
    assert "\n2 run(s).\n" in (group / "latent_probe.md").read_text()
    assert result["group_table"] == str(group / "latent_probe.md")
    probes = _rows(run / "figures" / "latent_probe.csv")
    assert [(p["probe"], p["latent_dim"]) for p in probes] == [("linear", "8"), ("MLP [8]", "8")]


def test_pixel_probe_reports_the_probes_on_every_evaluation_split(run: Path):
    result = analyze_run(run, "pixel_probe", {"epochs": 1, "mlp_hidden": [8]})
    probes = _rows(run / "figures" / "pixel_probe.csv")
    assert list(probes[0]) == ["probe", "features", "val accuracy", "test accuracy"]
    assert [(p["probe"], p["features"]) for p in probes] == [("linear", "64"), ("MLP [8]", "64")]
    assert float(probes[1]["test accuracy"]) == round(result["mlp_test_acc"], 4)


def test_curves_draw_one_panel_per_metric(run: Path):
    one = _width(Path(analyze_run(run, "curves", {"metrics": ["loss"]})["figure"]))
    two = _width(Path(analyze_run(run, "curves", {"metrics": ["loss", "val/mse"]})["figure"]))
    assert 1.8 < two / one < 2.2


def test_image_grids_of_the_run(run: Path):
    few = _width(Path(analyze_run(run, "examples", {"count": 4})["figure"]))
    many = _width(Path(analyze_run(run, "examples", {"count": 8})["figure"]))
    assert 1.7 < many / few < 2.3  # one column per image
    classes = analyze_run(run, "class_reconstructions")
    assert list(classes["mse"]) == [str(d) for d in range(10)] and Path(classes["figure"]).is_file()
    pages = analyze_run(run, "latent_grid", {"steps": 3})
    assert pages["figures"] == 3 and len(pages["range"]) == 8 and all(Path(f).is_file() for f in pages["files"])


def test_mosaic_places_images_row_by_row_with_white_gaps():
    from hpclab.analysis.grids import mosaic

    images = torch.stack([torch.full((1, 2, 3), value) for value in (0.0, 0.25, 0.5)])  # grey, 2 x 3 pixels
    tiled = mosaic(images, ncol=2, gap=1)
    assert tiled.shape == (2 * 2 + 1, 2 * 3 + 1, 3)
    assert (tiled[0:2, 0:3] == 0).all() and (tiled[0:2, 4:7] == 0.25).all() and (tiled[3:5, 0:3] == 0.5).all()
    assert (tiled[2] == 1).all() and (tiled[:, 3] == 1).all() and (tiled[3:5, 4:7] == 1).all()  # gaps, empty cell
