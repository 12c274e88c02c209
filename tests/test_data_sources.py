"""Dataset sources: small files in each dataset's real on-disk format (CIFAR-10 pickles, STL-10
binaries, Food-101 jpg + json, Flowers-102 jpg + .mat) read and staged by the code a user runs,
and the one-line errors when a mirror lacks them."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from conftest import LABELS1, PER_CLASS, run_cli
from formats.cifar import write_cifar10
from formats.flowers102 import flower_image
from formats.food101 import write_food101
from formats.stl10 import write_stl10

from hpclab.config import ConfigError, compose

# --------------------------------------------------------------------------- CIFAR-10, STL-10, Food-101


def test_sources_read_real_layouts(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from hpclab.data.sources import SOURCES, SourceMissing

    cifar = write_cifar10(tmp_path / "c", n_train=23, n_test=7, seed=3)
    staged = SOURCES["cifar10"].read(tmp_path / "c", None)
    assert staged.class_names[7] == "horse"
    for split in ("train", "test"):
        assert np.array_equal(staged.splits[split]["images"], cifar[split][0])
        assert np.array_equal(staged.splits[split]["labels"], cifar[split][1])
    (tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02cos\nsystem\nq\x00.")
    with pytest.raises(ValueError, match="data_batch_3"):  # a foreign pickle is refused, not executed
        SOURCES["cifar10"].read(tmp_path / "c", None)

    stl = write_stl10(tmp_path / "s", n_train=5, n_test=4, n_unlabeled=6, seed=4)
    labelled = SOURCES["stl10"].read(tmp_path / "s" / "stl10_binary", None)
    unlabelled = SOURCES["stl10_unlabeled"].read(tmp_path / "s", None)
    assert np.array_equal(labelled.splits["train"]["images"], stl["train"][0])
    assert np.array_equal(labelled.splits["test"]["labels"], stl["test"][1])
    assert np.array_equal(unlabelled.splits["train"]["images"], stl["unlabeled"][0])
    assert labelled.class_names[2] == "car" and labelled.splits["train"]["images"].shape[1:] == (3, 96, 96)

    listing = write_food101(tmp_path / "f", classes=3, per_class_train=2, per_class_test=1)
    food = SOURCES["food101"].read(tmp_path / "f", SimpleNamespace(image_size=24, options={"num_classes": 2}))
    assert food.class_names == ["apple_pie", "baby_back_ribs"]
    assert food.splits["train"]["images"].shape == (4, 3, 24, 24)
    assert food.splits["train"]["labels"].tolist() == [lab for _, lab in listing["train"] if lab < 2]
    with pytest.raises(ValueError, match="data.image_size"):
        SOURCES["food101"].read(tmp_path / "f", SimpleNamespace(image_size=None, options={}))
    with pytest.raises(SourceMissing):
        SOURCES["stl10"].read(tmp_path / "c", None)


def test_missing_mirror_names_the_command(workdir: Path) -> None:
    proc = run_cli(
        "prepare_data.py", "data=stl10", f"data.mirrors=[{workdir}]", "data.download=false", cwd=workdir, check=False
    )
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "cannot stage 'stl10'" in line and "python jobs/prepare_data.py data=stl10 data.mirrors=" in line


# --------------------------------------------------------------------------- Flowers-102


def test_names_table_is_the_published_1_based_list():
    import torchvision

    from hpclab.data.sources.flowers102 import NAMES_FILE, category_names

    table = json.loads(NAMES_FILE.read_text())
    assert sorted(table, key=int) == [str(i) for i in range(1, 103)]
    assert table["1"] == "pink primrose" and table["102"] == "blackberry lily"
    assert list(category_names()) == torchvision.datasets.Flowers102.classes  # 0-based view


def test_staging_keeps_every_image_and_shifts_labels_to_zero_based(workdir, flowers):
    from hpclab.data import stage
    from hpclab.data.sources.flowers102 import category_names

    cfg = compose(["data=flowers102", "data.image_size=32", f"data.mirrors=[{flowers['root']}]", "data.download=false"])
    path = stage(cfg)
    assert path.name == "flowers102_32px.h5"
    with h5py.File(path) as f:
        images, labels = f["train/images"][()], f["train/labels"][()]
        val_images, val_labels = f["val/images"][()], f["val/labels"][()]
        class_names = json.loads(f.attrs["class_names"])
        official = f["extra/official_split"][()]
    n = len(flowers["labels1"])
    assert images.shape == (n, 3, 32, 32) and images.dtype == np.uint8  # all splits, square crops
    np.testing.assert_array_equal(labels, flowers["labels1"] - 1)
    assert class_names == list(category_names()) and class_names[0] == "pink primrose"
    np.testing.assert_array_equal(val_images, images[flowers["valid"] - 1])
    np.testing.assert_array_equal(val_labels, labels[flowers["valid"] - 1])
    assert sorted(np.bincount(official)) == sorted([len(flowers[k]) for k in ("trnid", "valid", "tstid")])
    # image i is image_{i+1:05d}.jpg: its centre has the colour the writer gives its label
    palette = {lab - 1: flower_image(lab - 1, np.random.default_rng(0), 9, 9)[4, 4].astype(float) for lab in LABELS1}
    centre = images[:, :, 14:18, 14:18].mean((2, 3))
    nearest = [min(palette, key=lambda k: np.abs(palette[k] - c).sum()) for c in centre]
    np.testing.assert_array_equal(nearest, labels)


def test_subset_by_category_name(workdir, flowers):
    from hpclab.data import RunData, stage
    from hpclab.data.sources.flowers102 import category_labels

    overrides = ["data=flowers102", "data.image_size=32", f"data.mirrors=[{flowers['root']}]", "data.download=false"]
    stage(compose(overrides))
    data = RunData(compose(overrides + ["data.classes=['passion flower',petunia]"]), torch.device("cpu"))
    assert data.info.class_names == ["passion flower", "petunia"] and data.info.num_classes == 2
    with h5py.File(data.path) as f:
        file_labels = f["train/labels"][()]
    kept = file_labels[data.indices["train"]]
    assert set(kept) == {76, 50} and len(kept) == 2 * PER_CLASS  # published 77 and 51
    batch_labels = torch.cat([b["labels"] for b in data.batches("train", train=False).epoch(0)])
    assert sorted(batch_labels.tolist()) == [0] * PER_CLASS + [1] * PER_CLASS

    subset = compose(["data=flowers102_subset"]).data.classes
    assert len(category_labels(subset)) == len(subset) == 10
    # docs/briefs.md: the DCGAN trains on the ten-category subset; all 8,189 images are one override away
    for experiment in ("dcgan", "dcgan_small"):
        assert list(compose([f"experiment={experiment}"]).data.classes) == list(subset)
        assert compose([f"experiment={experiment}", "data=flowers102"]).data.classes is None
    with pytest.raises(ConfigError, match="did you mean: passion flower"):
        category_labels(["pasion flower"])
