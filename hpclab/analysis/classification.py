"""Figures and tables of the classification, transfer and pretraining experiments.

* ``reconstruction_grid``: random images of a split next to their reconstructions, in one
  matplotlib subplot grid (the STL-10 autoencoder figure: 9 images by default).
* ``results_table``: the results table the briefs ask for (docs/briefs.md) of a sweep (or experiment) folder — model,
  architecture (filters@kernel/stride/padding), the best-checkpoint rule used, train, val and
  test accuracy, hyper-parameters. Each run writes its row (``figures/results_row.json``)
  and rebuilds ``<group>/results_table.{md,csv}`` from every row there, so the table is
  complete after the last run of a local sweep or a SLURM array; rebuild it any time with
  ``python -m hpclab.analysis.classification results/<group>``.

Accuracy histories (train/val/test accuracy and loss per epoch) are the generic ``curves``
analysis with ``metrics: [loss, acc]``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from hpclab.analysis import ANALYSES
from hpclab.analysis.architecture import conv_summary
from hpclab.analysis.grids import captioned_grid
from hpclab.analysis.group_tables import write_group_table
from hpclab.analysis.inputs import available_split
from hpclab.analysis.report import final_metrics
from hpclab.engine.evaluation import TrainedRun
from hpclab.utils import write_json

RECORD = "results_row"
TABLE_NAME = "results_table"


# --------------------------------------------------------------------------- reconstructions


@ANALYSES.register("reconstruction_grid")
def reconstruction_grid(
    run: TrainedRun, out_dir: Path, split: str = "test", count: int = 9, seed: int = 0, columns: int = 3
) -> dict[str, Any]:
    """``count`` random images of ``split`` and the model's reconstructions, as (image,
    reconstruction) pairs in a grid of ``columns`` pairs per row; per-image MSE in the titles."""
    split = available_split(run, split)
    n = len(run.data.indices[split])
    picks = np.sort(np.random.default_rng(seed).choice(n, size=min(count, n), replace=False))
    batch = {k: v.to(run.device) for k, v in run.data.split(split)[picks].items()}
    with run.evaluating():
        shown = run.task.images(run.models, batch, run.eval_generator())
    if "output" not in shown or "target" not in shown:
        raise ValueError(
            f"reconstruction_grid needs a task whose images() gives output and target "
            f"(task {run.cfg.task.name} gives {', '.join(shown) or 'none'})"
        )
    target, output = shown["target"].float().cpu(), shown["output"].float().clamp(0, 1).cpu()
    mse = (output - target).pow(2).flatten(1).mean(1)
    pairs = torch.stack([target, output], 1).flatten(0, 1)  # image, its reconstruction, next image, ...
    captions = [text for i, m in zip(picks, mse) for text in (f"image {int(i)}", f"recon. mse {m:.4f}")]
    path = captioned_grid(
        pairs,
        captions,
        out_dir / f"reconstructions_{split}.png",
        ncol=2 * columns,
        title=f"{run.cfg.run_name}: {len(target)} random {split} images and their reconstructions",
        inches=2.0,
    )
    return {"figure": str(path), "indices": [int(i) for i in picks], "mse": round(float(mse.mean()), 6)}


# --------------------------------------------------------------------------- results table


def model_label(model_cfg: dict[str, Any]) -> str:
    """The registered model name plus the options that tell variants apart."""
    keys = ("block", "backbone", "weights", "freeze", "hidden", "pretrained", "encoder_from")
    parts = []
    for k in keys:
        if k in model_cfg:
            v = model_cfg[k]
            v = Path(v).parts[-2] if k == "encoder_from" and v and len(Path(v).parts) > 1 else v
            parts.append(f"{k}={v}")
    return f"{model_cfg.get('name')}" + (f" ({', '.join(parts)})" if parts else "")


def hyper_parameters(cfg: Any) -> str:
    t, d = cfg.train, cfg.data
    length = f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs"
    task = {k: v for k, v in OmegaConf.to_container(cfg.task, resolve=True).items() if k != "name"}
    parts = [
        f"{t.optimizer.name} lr={t.optimizer.lr:g} wd={t.optimizer.weight_decay:g}",
        f"{t.scheduler.name} schedule",
        f"batch {t.batch_size}",
        length,
        f"label fraction {d.train_fraction:g}",
        ", ".join(f"{k}={v}" for k, v in task.items()),
    ]
    return "; ".join(p for p in parts if p)


def table_row(run: TrainedRun, model: str = "model") -> dict[str, Any]:
    cfg = run.cfg
    finals = final_metrics(run.run_dir)
    net = run.unwrap(model)
    best = run.best
    best_text = f"{cfg.train.monitor_mode} {cfg.train.monitor}" + (
        f" = {best['value']:.4f} at step {best['step']}" if best.get("value") is not None else " (never evaluated)"
    )
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    return {
        "run": cfg.run_name,
        "experiment": cfg.experiment,
        "model": model_label(model_cfg),
        "architecture": conv_summary(net),
        "parameters": sum(p.numel() for p in net.parameters()),
        "trainable": sum(p.numel() for p in net.parameters() if p.requires_grad),
        "best_checkpoint": best_text,
        "train_acc": finals.get("train/acc"),
        "val_acc": best.get("value") if cfg.train.monitor == "val/acc" else finals.get("val/acc"),
        "test_acc": finals.get("test/acc"),
        "hyper_parameters": hyper_parameters(cfg),
        "data": cfg.data.name,
    }


COLUMNS = [
    "experiment",
    "model",
    "architecture",
    "parameters",
    "trainable",
    "best_checkpoint",
    "train_acc",
    "val_acc",
    "test_acc",
    "hyper_parameters",
    "data",
]


def write_results_table(group_dir: Path | str) -> dict[str, str]:
    """Rebuild ``results_table.md`` / ``.csv`` from the rows of every run in ``group_dir``."""
    group_dir = Path(group_dir)
    note = (
        "Accuracies are fractions, measured with the best checkpoint's weights (train accuracy without "
        "augmentation); architecture lists filters@kernel/stride/padding of each conv layer and FC widths."
    )
    files = write_group_table(
        group_dir, RECORD, COLUMNS, f"{group_dir.name}: classification results", note, table=TABLE_NAME, digits=4
    )
    if files is None:
        raise FileNotFoundError(
            f"no {RECORD}.json under {group_dir}/*/figures/ (add results_table to the runs' analysis)"
        )
    return files


@ANALYSES.register("results_table")
def results_table(run: TrainedRun, out_dir: Path, model: str = "model") -> dict[str, Any]:
    """Record this run's row and rebuild its group's table."""
    row = table_row(run, model)
    write_json(out_dir / f"{RECORD}.json", row)
    files = write_results_table(run.run_dir.parent)
    return {"train_acc": row["train_acc"], "test_acc": row["test_acc"], "table": files["md"]}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m hpclab.analysis.classification results/<group>", file=sys.stderr)
        return 2
    try:
        files = write_results_table(args[0])
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{files['md']}\n{files['csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
