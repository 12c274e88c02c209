"""Figures and tables of the image-to-image experiments.

* ``layer_table``: every layer of the network (type, filters, kernel, stride, padding,
  dilation, output shape, parameters) from one forward pass on real inputs; Markdown, CSV, PNG.
* ``image_metrics``: network vs. no-learning baseline (grey / bilinear / noisy / masked) on a
  split: MSE and PSNR (and hole or accuracy metrics where the task has them).
* ``other_sizes``: the trained network evaluated (and shown) on the split resized to other
  sizes than it was trained on (the fully convolutional nets handle any size).
* ``seg_overlays``: scan / truth overlay / prediction overlay rows with per-image Dice.

Training and validation curves are the generic ``curves`` analysis (``hpclab.analysis.curves``).
The image rows of colourization (grey input / prediction / ground truth) and
super-resolution (input / network / bilinear / truth) come from the generic ``examples``
analysis, whose rows are the task's ``images``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from hpclab.analysis import ANALYSES
from hpclab.analysis.grids import image_rows, image_strips
from hpclab.analysis.inputs import available_split, first_batch
from hpclab.analysis.layers import run_layer_rows, write_layer_table
from hpclab.analysis.report import final_metrics, write_table
from hpclab.data.transforms import to_float
from hpclab.engine.evaluation import TrainedRun

# --------------------------------------------------------------------------- layer table

@ANALYSES.register("layer_table")
def layer_table(run: TrainedRun, out_dir: Path, model: str = "model", split: str = "test") -> dict[str, Any]:
    """The layers of the network as a table: layer count, filter sizes, numbers of filters."""
    net = run.unwrap(model)
    rows = [r for r in run_layer_rows(run, model, split) if isinstance(r["output"], tuple)]
    convs = [r for r in rows if r["filters"] is not None]
    title = (f"{type(net).__name__}: {len(convs)} conv layers, "
             f"{sum(p.numel() for p in net.parameters()):,} parameters")
    files = write_layer_table(rows, out_dir / f"layers_{model}", title)
    return {"conv_layers": len(convs), "filters": [r["filters"] for r in convs],
            "kernels": sorted({r["kernel"] for r in convs}), "layers": len(rows), **files}


# --------------------------------------------------------------------------- metric tables

@ANALYSES.register("image_metrics")
def image_metrics(run: TrainedRun, out_dir: Path, split: str = "test") -> dict[str, Any]:
    """Table of the network's metrics on ``split`` next to the task's baseline (if any)."""
    if not run.data.has(split):
        return {}
    values = {k.split("/", 1)[1]: v for k, v in final_metrics(run.run_dir).items()
              if k.startswith(f"{split}/")} or run.evaluate(split)
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
    files = write_table(["method", *columns], body, out_dir / f"metrics_{split}",
                        f"{run.cfg.run_name}: {split} split ({run.cfg.task.name})")
    return {"metrics": values, **files}


def _resize_batch(batch: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """Images resized (bilinear, antialiased) to ``size``; masks with nearest neighbours."""
    out = dict(batch)
    x = to_float(batch["images"])
    out["images"] = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    if "masks" in batch:
        out["masks"] = F.interpolate(batch["masks"].float(), size=(size, size), mode="nearest")
    return out


@ANALYSES.register("other_sizes")
def other_sizes(run: TrainedRun, out_dir: Path, sizes: Sequence[int] = (24, 48), split: str = "test",
                count: int = 8, max_images: int = 1000) -> dict[str, Any]:
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
            results[size] = run.evaluate(split, transform=lambda batch, size=size: _resize_batch(batch, size),
                                             max_images=max_images)
            rows = run.task.images(run.models, _resize_batch(first_batch(run, split, count), size),
                                       run.eval_generator())
            shown.update({f"{size}px {name}": images for name, images in rows.items()})
    figure = image_strips(shown, out_dir / f"other_sizes_{split}_examples.png",
                          title=f"{run.cfg.run_name}: trained at {trained}x{trained}") if shown else None
    columns = sorted({k for r in results.values() for k in r}, key=lambda k: (k not in ("mse", "psnr"), k))
    body = [[f"{s}x{s}" + (" (trained)" if s == trained else ""), *[r.get(c) for c in columns]] for s, r in results.items()]
    files = write_table(["size", *columns], body, out_dir / f"other_sizes_{split}",
                        f"{run.cfg.run_name}: trained at {trained}x{trained}, {seen} {split} images")
    return {"sizes": {str(s): r for s, r in results.items()}, "images": seen, "figure": str(figure) if figure else None,
            **files}


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
    panels = {"scan": scan, "truth": overlay(scan, truth, (1.0, 0.1, 0.1)), "prediction": overlay(scan, pred, (0.1, 1.0, 0.2))}
    path = image_rows(panels, out_dir / f"segmentation_{split}.png",
                      f"{run.cfg.run_name}: scan / truth / prediction ({split})",
                      [f"Dice {d:.3f}  IoU {i:.3f}" for d, i in zip(dice, iou)], inches=2.0)
    return {"figure": str(path), "dice": [round(float(v), 4) for v in dice], "iou": [round(float(v), 4) for v in iou]}
