"""Every registered model, as timm tests every entry of ``list_models``: built by the engine from
the first experiment config that names it (its kwargs, task and image size), on a few images of
that experiment's data in its real shape, then one training step of its task through the
engine's own stepper: a finite loss and a finite gradient for every parameter that trains.

Its parameter count (per built network) must equal the committed table tests/model_params.json,
so a change of size is a deliberate one: ``HPCLAB_UPDATE_MODEL_PARAMS=1`` rewrites the entries
of the models it runs. A newly registered model is picked up without editing this file; one that
no experiment names needs an entry in ``UNCONFIGURED``.
"""

from __future__ import annotations

import functools
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO
from omegaconf import OmegaConf

from hpclab.config import compose
from hpclab.data.hdf5 import DatasetArrays, write_hdf5
from hpclab.engine.build import build_run
from hpclab.engine.steps import Stepper
from hpclab.models import MODELS

CONFIGS = REPO / "configs"
PARAMS = Path(__file__).with_name("model_params.json")
UPDATE = os.environ.get("HPCLAB_UPDATE_MODEL_PARAMS") == "1"

# What this test's data file holds per data set: channels, image size (when the data config sets
# none), classes, and whether it has segmentation masks. Images are random uint8 pixels.
DATA = {
    "fashion_mnist": (1, 28, 10, False),
    "mnist": (1, 28, 10, False),
    "notmnist": (1, 28, 10, False),
    "digits": (1, 8, 10, False),
    "cifar10": (3, 32, 10, False),
    "stl10": (3, 96, 10, False),
    "stl10_unlabeled": (3, 96, 10, False),
    "flowers102": (3, 256, 102, False),
    "food101": (3, 224, 20, False),
    "brain_mri": (1, 240, 1, True),
}
# One step on two images, in fp32 and eager mode (the gpu tests cover the rest).
ONE_STEP = [
    "train.epochs=null",
    "train.max_steps=1",
    "train.batch_size=2",
    "train.global_batch_size=null",
    "train.mixed_precision=no",
    "train.channels_last=false",
    "train.compile=false",
    "data.classes=null",
    "data.limit=null",
    "analysis=[]",
]
# What a model needs on top of its experiment to build here: nothing from other runs or downloads.
OFFLINE = {
    "ae_encoder_classifier": ["model.pretrained=false", "model.freeze=false"],  # no trained autoencoder to load
    "transfer": ["model.weights=null"],  # no staged ImageNet weights: random initialisation, same sizes
}
# The overrides that build a model no experiment config names (model=..., task=..., data=...).
UNCONFIGURED: dict[str, list[str]] = {}


def model_names_in(node: Any) -> set[str]:
    """Every registered model named at any depth of a config tree (``name: <model>``)."""
    if isinstance(node, dict):
        own = {node["name"]} if isinstance(node.get("name"), str) and node["name"] in MODELS else set()
        return own.union(*(model_names_in(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(model_names_in(value) for value in node))
    return set()


def models_of_experiment(path: Path) -> set[str]:
    """The models an experiment file names: in its own keys, and in the model and task config
    files its defaults choose (a task's discriminator, say). Experiments that only extend
    another one name what they override."""
    doc = yaml.safe_load(path.read_text()) or {}
    names = model_names_in({key: value for key, value in doc.items() if key != "defaults"})
    for entry in doc.get("defaults", []):
        for key, choice in entry.items() if isinstance(entry, dict) else []:
            group = key.removeprefix("override").strip().lstrip("/").split("@")[0]
            if group in ("model", "task") and choice:
                names |= model_names_in(yaml.safe_load((CONFIGS / group / f"{choice}.yaml").read_text()))
    return names


@functools.cache
def first_experiment() -> dict[str, str]:
    """Model name -> the first experiment (by file name) that names it."""
    found: dict[str, str] = {}
    for path in sorted((CONFIGS / "experiment").glob("*.yaml")):
        for name in models_of_experiment(path):
            found.setdefault(name, path.stem)
    return found


def composition_of(name: str) -> list[str]:
    if name in UNCONFIGURED:
        return list(UNCONFIGURED[name])
    experiment = first_experiment().get(name)
    assert experiment, (
        f"no experiment config names model '{name}': add one (configs/experiment/), or its "
        f"overrides to UNCONFIGURED in {Path(__file__).name}"
    )
    return [f"experiment={experiment}", *OFFLINE.get(name, [])]


def write_data(cfg: Any, path: Path, rng: np.random.Generator) -> None:
    """A few images (and labels, masks) of ``cfg.data``'s shape as a prepared HDF5 file."""
    assert cfg.data.name in DATA, f"data set '{cfg.data.name}': add its shape to DATA in {Path(__file__).name}"
    channels, size, classes, masks = DATA[cfg.data.name]
    size = cfg.data.image_size or size

    def split(n: int) -> dict[str, np.ndarray]:
        arrays = {
            "images": rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8),
            "labels": rng.integers(0, classes, n),
        }
        if masks:
            arrays["masks"] = rng.integers(0, 2, (n, 1, size, size), dtype=np.uint8)
        return arrays

    write_hdf5(
        path,
        DatasetArrays(
            {"train": split(4), "test": split(2)}, [f"class {i}" for i in range(classes)], [], "tests/test_model_zoo.py"
        ),
    )


def write_table(table: dict[str, Any]) -> None:
    """One model a line, sorted, so a change of one count is a one-line diff."""
    lines = [f"  {json.dumps(name)}: {json.dumps(entry)}" for name, entry in sorted(table.items())]
    PARAMS.write_text("{\n" + ",\n".join(lines) + "\n}\n")


def check_recorded(name: str, entry: dict[str, Any]) -> None:
    """``entry`` equals the committed one of ``name`` (``HPCLAB_UPDATE_MODEL_PARAMS=1``: record it)."""
    table = json.loads(PARAMS.read_text()) if PARAMS.is_file() else {}
    if UPDATE:
        table[name] = entry
        write_table(table)
        return
    how = f"HPCLAB_UPDATE_MODEL_PARAMS=1 pytest tests/{Path(__file__).name} -k {name}, then commit {PARAMS.name}"
    assert name in table, f"model '{name}' has no recorded parameter count: record it with {how}"
    assert table[name] == entry, f"model '{name}': {entry} differs from the recorded {table[name]}; if meant: {how}"


# The package's own models: tests register stand-ins of their own (test_engine's nan_after_steps),
# which exist in the registry only once their module is imported, so not in every collection.
PACKAGE_MODELS = sorted(name for name in MODELS if MODELS[name].__module__.startswith("hpclab."))


@pytest.mark.parametrize("name", PACKAGE_MODELS)
def test_model_builds_and_takes_one_training_step_on_its_tasks_input(name, workdir):
    data_file = workdir / "zoo.h5"
    cfg = compose([*composition_of(name), *ONE_STEP, f"data.file={data_file}"])
    named = model_names_in(OmegaConf.to_container(cfg.model)) | model_names_in(OmegaConf.to_container(cfg.task))
    assert name in named, f"the composed config names {sorted(named)}, not '{name}'"
    write_data(cfg, data_file, np.random.default_rng(0))
    parts = build_run(cfg)
    stepper = Stepper(parts.accelerator, parts.models, parts.optimizers, parts.schedulers, "no")
    batch = next(parts.data.batches("train", train=True).epoch())
    metrics = parts.task.train_step(stepper, batch)

    assert metrics and all(math.isfinite(float(value)) for value in metrics.values()), metrics
    assert parts.optimizers, "the task trains none of its models"
    for network, model in parts.models.items():
        trained = {key: p.grad for key, p in model.named_parameters() if p.requires_grad}
        assert network not in parts.optimizers or trained, f"{network}: no parameter trains"
        for key, grad in trained.items():
            assert grad is not None and torch.isfinite(grad).all(), f"{network}.{key}: gradient {grad}"
    counts = {network: sum(p.numel() for p in model.parameters()) for network, model in parts.models.items()}
    built_by = composition_of(name)[0]
    print(f"{name} ({built_by}, task {cfg.task.name}): {counts} parameters")
    check_recorded(name, {"built_by": built_by, "parameters": counts})


def test_the_recorded_counts_are_of_registered_models():
    table = json.loads(PARAMS.read_text())
    stale = sorted(set(table) - set(PACKAGE_MODELS))
    if UPDATE and stale:
        write_table({k: v for k, v in table.items() if k not in stale})
        return
    assert not stale, (
        f"{PARAMS.name} records models no longer registered: {stale} (HPCLAB_UPDATE_MODEL_PARAMS=1 drops them)"
    )
