"""Figures and tables of the image-to-image experiments.

* ``layer_table``: every layer of the network (type, filters, kernel, stride, padding,
  dilation, output shape, parameters) from one forward pass on real inputs; Markdown, CSV, PNG.
* ``image_metrics``: network vs. no-learning baseline (grey / bilinear / noisy / masked) on a
  split: MSE and PSNR (and hole or accuracy metrics where the task has them).
* ``other_sizes``: the trained network evaluated (and shown) on the split resized to other
  sizes than it was trained on (the fully convolutional nets handle any size).
* ``seg_overlays``: scan / truth overlay / prediction overlay rows with per-image Dice.
* ``fd_outputs``: the Fréchet distance of the network's output images (in-painted, colourized,
  ...) to the real images, in the features of a classifier the suite trained (``fid``'s
  ``ClassifierFeatures``), with the no-learning baseline and a real-image floor.
* ``compare_examples``: the same images and inputs through this run and another run (e.g. an
  L2 network and its pix2pix version): input / other output / this output / target, and a
  table of both runs' metrics and FD.

Every analysis of outputs sees the inputs the metrics saw: evaluation batch i of a split,
corrupted with the generator seeded for it (``TrainedRun.eval_batches``).

Training and validation curves are the generic ``curves`` analysis (``hpclab.analysis.curves``).
The image rows of colourization (grey input / prediction / ground truth) and
super-resolution (input / network / bilinear / truth) come from the generic ``examples``
analysis, whose rows are the task's ``images``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hpclab.analysis import ANALYSES, requires
from hpclab.analysis.grids import image_rows, image_strips
from hpclab.analysis.inputs import available_split, first_batch
from hpclab.analysis.layers import run_layer_rows, write_layer_table
from hpclab.analysis.report import final_metrics, write_table
from hpclab.data.transforms import to_float
from hpclab.engine.evaluation import TrainedRun
from hpclab.errors import ConfigError, WeightsMissing
from hpclab.rundir import CONFIG, FIGURES, best_weights, step_checkpoints
from hpclab.utils import read_json, write_json

log = logging.getLogger("hpclab")

# --------------------------------------------------------------------------- layer table


@ANALYSES.register("layer_table")
def layer_table(run: TrainedRun, out_dir: Path, model: str = "model", split: str = "test") -> dict[str, Any]:
    """The layers of the network as a table: layer count, filter sizes, numbers of filters."""
    net = run.unwrap(model)
    rows = [r for r in run_layer_rows(run, model, split) if isinstance(r["output"], tuple)]
    convs = [r for r in rows if r["filters"] is not None]
    title = f"{type(net).__name__}: {len(convs)} conv layers, {sum(p.numel() for p in net.parameters()):,} parameters"
    files = write_layer_table(rows, out_dir / f"layers_{model}", title)
    return {
        "conv_layers": len(convs),
        "filters": [r["filters"] for r in convs],
        "kernels": sorted({r["kernel"] for r in convs}),
        "layers": len(rows),
        **files,
    }


# --------------------------------------------------------------------------- metric tables


@ANALYSES.register("image_metrics")
def image_metrics(run: TrainedRun, out_dir: Path, split: str = "test") -> dict[str, Any]:
    """Table of the network's metrics on ``split`` next to the task's baseline (if any)."""
    if not run.data.has(split):
        return {}
    values = {
        k.split("/", 1)[1]: v for k, v in final_metrics(run.run_dir).items() if k.startswith(f"{split}/")
    } or run.evaluate(split)
    baseline = getattr(run.task, "baseline_name", None)
    rows: dict[str, dict[str, float]] = {"network": {}}
    for key, value in values.items():
        if baseline and key.startswith(baseline + "_"):
            rows.setdefault(baseline, {})[key[len(baseline) + 1 :]] = value
        else:
            rows["network"][key] = value
    order = ["mse", "psnr", "hole_mse", "hole_psnr", "acc", "dice", "iou", "loss"]
    columns = [k for k in order if any(k in r for r in rows.values())]
    columns += sorted({k for r in rows.values() for k in r} - set(columns))
    body = [[name, *[r.get(c) for c in columns]] for name, r in rows.items()]
    files = write_table(
        ["method", *columns],
        body,
        out_dir / f"metrics_{split}",
        f"{run.cfg.run_name}: {split} split ({run.cfg.task.name})",
    )
    return {"metrics": values, **files}


def _resize_batch(batch: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """Images resized (bilinear, antialiased) to ``size``; masks with nearest neighbours."""
    out = dict(batch)
    x = to_float(batch["images"])
    out["images"] = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(
        0, 1
    )
    if "masks" in batch:
        out["masks"] = F.interpolate(batch["masks"].float(), size=(size, size), mode="nearest")
    return out


@ANALYSES.register("other_sizes")
def other_sizes(
    run: TrainedRun,
    out_dir: Path,
    sizes: Sequence[int] = (24, 48),
    split: str = "test",
    count: int = 8,
    max_images: int = 1000,
) -> dict[str, Any]:
    """Evaluate the trained network on the first ``max_images`` images of ``split`` resized to
    each of ``sizes`` (and to the trained size, for reference); a table plus example rows."""
    split = available_split(run, split)
    trained = run.data.info.image_size
    seen = min(max_images, len(run.data.split(split)))
    results: dict[int, dict[str, float]] = {}
    shown: dict[str, torch.Tensor] = {}
    with run.evaluating():
        for size in [trained, *[int(s) for s in sizes if int(s) != trained]]:
            # the engine's evaluation (same batches, same per-batch noise), on resized images
            results[size] = run.evaluate(
                split, transform=lambda batch, size=size: _resize_batch(batch, size), max_images=max_images
            )
            rows = run.task.images(
                run.models, _resize_batch(first_batch(run, split, count), size), run.eval_generator()
            )
            shown.update({f"{size}px {name}": images for name, images in rows.items()})
    figure = (
        image_strips(
            shown,
            out_dir / f"other_sizes_{split}_examples.png",
            title=f"{run.cfg.run_name}: trained at {trained}x{trained}",
        )
        if shown
        else None
    )
    columns = sorted({k for r in results.values() for k in r}, key=lambda k: (k not in ("mse", "psnr"), k))
    body = [
        [f"{s}x{s}" + (" (trained)" if s == trained else ""), *[r.get(c) for c in columns]] for s, r in results.items()
    ]
    files = write_table(
        ["size", *columns],
        body,
        out_dir / f"other_sizes_{split}",
        f"{run.cfg.run_name}: trained at {trained}x{trained}, {seen} {split} images",
    )
    return {
        "sizes": {str(s): r for s, r in results.items()},
        "images": seen,
        "figure": str(figure) if figure else None,
        **files,
    }


# --------------------------------------------------------------------------- segmentation overlays


def overlay(scan: torch.Tensor, mask: torch.Tensor, colour: Sequence[float], alpha: float = 0.45) -> torch.Tensor:
    """Grey (or RGB) scan N x C x H x W with ``mask`` (N x 1 x H x W) tinted in ``colour``."""
    rgb = scan.expand(-1, 3, -1, -1) if scan.shape[1] == 1 else scan
    tint = torch.tensor(colour, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    m = (mask > 0.5).to(rgb.dtype)
    return rgb * (1 - alpha * m) + alpha * m * tint


@ANALYSES.register("seg_overlays")
def seg_overlays(run: TrainedRun, out_dir: Path, split: str = "test", count: int = 6) -> dict[str, Any]:
    """Rows scan / truth (red) / prediction (green) for ``count`` slices, those with tumour
    first; each column titled with its Dice coefficient and IoU."""
    from hpclab.tasks.image2image import overlap_scores

    batch = first_batch(run, split)
    has = (batch["masks"].flatten(1).amax(1) > 0).cpu()
    order = torch.argsort((~has).to(torch.int64), stable=True)[:count]
    batch = {k: v[order.to(v.device)] for k, v in batch.items()}
    with run.evaluating():
        rows = run.task.images(run.models, batch, run.eval_generator())
    scan, truth, pred = rows["scan"].float().cpu(), rows["truth"].float().cpu(), rows["prediction"].float().cpu()
    dice, iou = overlap_scores(pred, truth, getattr(run.task, "eps", 1e-6))
    panels = {
        "scan": scan,
        "truth": overlay(scan, truth, (1.0, 0.1, 0.1)),
        "prediction": overlay(scan, pred, (0.1, 1.0, 0.2)),
    }
    path = image_rows(
        panels,
        out_dir / f"segmentation_{split}.png",
        f"{run.cfg.run_name}: scan / truth / prediction ({split})",
        [f"Dice {d:.3f}  IoU {i:.3f}" for d, i in zip(dice, iou)],
        inches=2.0,
    )
    return {"figure": str(path), "dice": [round(float(v), 4) for v in dice], "iou": [round(float(v), 4) for v in iou]}


# --------------------------------------------------------------------------- outputs, FD, two runs


def image_task(run: TrainedRun) -> Any:
    """The run's task when it maps an input image to an output image (inpaint, colourize,
    super_resolve, denoise and their pix2pix versions): ``make_input``, ``predict``, ``baseline``."""
    if not all(callable(getattr(run.task, m, None)) for m in ("make_input", "predict", "baseline", "images")):
        raise ValueError(
            f"this analysis needs an image-to-image task (inpaint, colourize, pix2pix, ...); the run "
            f"uses {run.cfg.task.name!r}"
        )
    return run.task


@torch.no_grad()
def output_batches(
    run: TrainedRun, split: str, max_images: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(target, network input, output clamped to [0, 1]) of the first ``max_images`` images of
    ``split``, batch by batch, with the inputs the engine's evaluation makes (same seeds, same
    cut of the last batch as ``evaluate(max_images=...)``), models in evaluation mode."""
    task, model, seen = image_task(run), run.models["model"], 0
    with run.evaluating(), run.autocast():
        for batch, gen in run.eval_batches(split):
            x = to_float(batch["images"][: max_images - seen])
            inp = task.make_input(x, gen)
            yield x, inp, task.predict(model, inp).float().clamp(0, 1)
            seen += len(x)
            if seen >= max_images:
                return


def run_label(run: TrainedRun) -> str:
    """``group`` (or ``group/run`` when the run is not ``default``): how tables and rows name a run."""
    cfg = run.cfg
    return cfg.run_group if cfg.run_name == "default" else f"{cfg.run_group}/{cfg.run_name}"


def _fd_classifier_trained(cfg: Any, classifier: str = "", **_: Any) -> None:
    from hpclab.analysis.fid import classifier_trained

    classifier_trained(cfg, classifier)


@ANALYSES.register("fd_outputs")
@requires(_fd_classifier_trained)
def fd_outputs(
    run: TrainedRun,
    out_dir: Path,
    classifier: str = "",
    split: str = "test",
    floor_split: str = "train",
    num_images: int = 10000,
) -> dict[str, Any]:
    """Fréchet distance, in the features of ``classifier`` (a finished classification run, as
    ``fd_classifier`` uses), between the real images of ``split`` (the first ``num_images``) and:
    the network's outputs for them (the filled, colourized ... images, from the inputs the
    metrics saw), the task's no-learning baseline on the same inputs (masked input, grey as RGB,
    ...) and, as the floor, as many real images of ``floor_split``. Reported as "FD (<data> CNN
    features)", not FID. Writes fd_outputs.{json,md,csv,png}."""
    from hpclab.analysis.fid import ClassifierFeatures, frechet_to, gaussian, split_images

    if not classifier:
        raise ValueError("fd_outputs needs classifier=results/<group>/<run> (a finished classification run)")
    task = image_task(run)
    split = available_split(run, split)
    net = ClassifierFeatures(classifier, run.device)
    real, outputs, baseline = [], [], []
    for x, inp, out in output_batches(run, split, num_images):
        real.append(net(x))
        outputs.append(net(out))
        base = task.baseline(x, inp)
        if base is not None:
            baseline.append(net(base.float().clamp(0, 1)))
    ref = gaussian(np.concatenate(real))
    n = sum(len(f) for f in real)
    rows: list[tuple[str, float]] = []
    floor = None
    if floor_split != split and run.data.has(floor_split):
        floor = frechet_to(ref, net.of_batches(split_images(run, floor_split, n, 500)))
        rows.append((f"real {floor_split} images (floor)", floor))
    base_fd = frechet_to(ref, np.concatenate(baseline)) if baseline else None
    if base_fd is not None:
        rows.append((f"{task.baseline_name} input (no learning)", base_fd))
    fd = frechet_to(ref, np.concatenate(outputs))
    rows.append((f"network output ({run_label(run)})", fd))
    title = (
        f"{net.label} of {n} {split} images against the same real images; classifier {net.run_dir} "
        f"(not FID: comparable only within this classifier's features)"
    )
    files = write_table(
        ["images", net.label], [[name, round(v, 4)] for name, v in rows], Path(out_dir) / "fd_outputs", title
    )
    result = {
        "metric": net.label,
        "classifier": str(net.run_dir),
        "split": split,
        "images": n,
        "fd": fd,
        "baseline_name": task.baseline_name,
        "baseline": base_fd,
        "floor_split": floor_split if floor is not None else None,
        "floor": floor,
        **files,
    }
    write_json(Path(out_dir) / "fd_outputs.json", result)
    log.info(
        "%s, %d %s images: network %.4f, %s input %s, real floor %s",
        net.label,
        n,
        split,
        fd,
        task.baseline_name,
        f"{base_fd:.4f}" if base_fd is not None else "-",
        f"{floor:.4f}" if floor is not None else "-",
    )
    return result


def _rows_of(run: TrainedRun, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The task's named image rows of ``batch`` (input, output, target), seeded as evaluation."""
    task = image_task(run)
    with run.evaluating():
        return task.images(run.models, batch, run.eval_generator())


def _fd_record(run_dir: Path) -> dict[str, Any] | None:
    """A run's ``fd_outputs`` record when it has a readable one with numeric values."""
    path = run_dir / FIGURES / "fd_outputs.json"
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except (OSError, ValueError):
        record = None
    if not (
        isinstance(record, dict)
        and isinstance(record.get("fd"), (int, float))
        and isinstance(record.get("baseline"), (int, float, type(None)))
        and all(isinstance(record.get(k), str) for k in ("metric", "classifier", "split"))
    ):
        log.warning("compare_examples: %s is not an fd_outputs record; its FD is left out", path)
        return None
    return record


def comparison_table(runs: dict[str, Path], split: str, baseline: str | None, base: Path) -> dict[str, str]:
    """One row per run (its final ``split`` metrics and its ``fd_outputs`` FD) and one for the
    task's baseline, with the metrics every run has: mse, psnr and the hole's where in-painting."""
    metrics = {
        label: {k.split("/", 1)[1]: v for k, v in final_metrics(d).items() if k.startswith(f"{split}/")}
        for label, d in runs.items()
    }
    columns = [c for c in ("mse", "psnr", "hole_mse", "hole_psnr") if all(c in m for m in metrics.values())]
    records = {label: _fd_record(d) for label, d in runs.items()}
    classifiers = {(r["classifier"], r["split"]) for r in records.values() if r is not None}
    fd_label = next((r["metric"] for r in records.values() if r is not None), "FD")
    if len(classifiers) > 1:
        log.warning(
            "compare_examples: the runs' fd_outputs used other classifiers or splits %s: FD left out",
            sorted(classifiers),
        )
        records = {label: None for label in records}
    first = next(iter(runs))
    body = []
    if baseline:
        record = records[first]
        body.append(
            [
                f"{baseline} input (no learning)",
                *[metrics[first].get(f"{baseline}_{c}") for c in columns],
                record.get("baseline") if record else None,
            ]
        )
    body += [[label, *[metrics[label][c] for c in columns], r["fd"] if r else None] for label, r in records.items()]
    title = f"{split} split; {fd_label} from each run's fd_outputs (empty: not computed)"
    return write_table(["method", *columns, fd_label], body, base, title)


def _other_trained(cfg: Any, other: str = "", **_: Any) -> None:
    """``other`` is a run folder with a config and trained weights (before this run starts)."""
    from hpclab.config import load_run_config

    if not other:
        raise ConfigError("compare_examples needs other=results/<group>/<run> (a finished image-to-image run)")
    other_cfg = load_run_config(Path(other))  # not a run folder, or a damaged config: one line
    if not best_weights(Path(other)).is_file() and not step_checkpoints(Path(other)):
        raise WeightsMissing(
            f"{other} has no trained weights yet; train it first: "
            f"python jobs/launch.py experiment={other_cfg.experiment}"
        )


@ANALYSES.register("compare_examples")
@requires(_other_trained)
def compare_examples(
    run: TrainedRun, out_dir: Path, other: str = "", split: str = "test", count: int = 10
) -> dict[str, Any]:
    """The first ``count`` images of ``split`` through ``other`` (a finished image-to-image run
    folder, loaded with its own config and weights: ``hpclab.engine.load_trained``) and through
    this run, from the same inputs (the same seeded masks, checked): rows input / other's output
    / this run's output / target (compare_<split>.png), and a table of both runs' final metrics
    and fd_outputs FD (compare_metrics_<split>.md). One process only (it builds a second run)."""
    from hpclab.config import load_run_config
    from hpclab.engine import load_trained

    if not other:
        raise ValueError("compare_examples needs other=results/<group>/<run> (a finished image-to-image run)")
    if run.parts.world > 1:
        raise ValueError("compare_examples builds a second run: run it in one process (python jobs/analyze.py)")
    other_dir = Path(other)
    if not (other_dir / CONFIG).is_file():
        raise ValueError(
            f"no run at {other_dir} (no {CONFIG}): train the run to compare with first (the "
            f"experiment's config names its command), or pass other=results/<group>/<run>"
        )
    split = available_split(run, split)
    batch = first_batch(run, split, count)
    ours = _rows_of(run, batch)
    in_name, out_name, target_name = image_task(run).row_names
    with load_trained(load_run_config(other_dir), other_dir) as theirs:
        their_images = first_batch(theirs, split, count)["images"]
        if not torch.equal(their_images.to(batch["images"].device), batch["images"]):
            raise ValueError(f"{other_dir} has other {split} images than this run (other data or split)")
        rows = _rows_of(theirs, batch)
        their_in, their_out, _ = image_task(theirs).row_names
        label = run_label(theirs)
    if not torch.equal(rows[their_in], ours[in_name]):
        raise ValueError(
            f"{other_dir} makes other network inputs from the same images (its task: "
            f"{theirs.cfg.task.name}); the outputs would not compare"
        )
    shown = {
        in_name.replace("_", " "): ours[in_name],
        label: rows[their_out],
        run_label(run): ours[out_name],
        target_name.replace("_", " "): ours[target_name],
    }
    figure = image_rows(
        shown,
        Path(out_dir) / f"compare_{split}.png",
        title=f"{split} images: {' | '.join(shown)} (the runs' outputs from the same inputs)",
    )
    files = comparison_table(
        {label: other_dir, run_label(run): run.run_dir},
        split,
        getattr(run.task, "baseline_name", None),
        Path(out_dir) / f"compare_metrics_{split}",
    )
    return {"figure": str(figure), "other": str(other_dir), "images": len(batch["images"]), **files}
