"""Autoencoder studies on the trained model: layer table, latent scatter / t-SNE / UMAP, decoded
latent grids, per-class reconstructions, inputs over their encodings, SVM and probes on codes.

Every function is an analysis (``fn(run, out_dir, **kwargs) -> dict``). Models expose
``encode(x)`` (and ``decode(z)`` where a latent alone can be decoded); inputs are the images
as floats in [0, 1], as the reconstruct task feeds them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpclab.analysis import ANALYSES
from hpclab.analysis.figures import plt, save_figure
from hpclab.analysis.grids import image_rows, labelled_grid
from hpclab.analysis.group_tables import write_group_table
from hpclab.analysis.inputs import first_batch, first_of_each_class
from hpclab.analysis.layers import keras_shape, run_layer_rows, summary_text
from hpclab.analysis.probes import fit_probes, write_probe_table
from hpclab.analysis.report import write_table
from hpclab.data.transforms import to_float
from hpclab.engine.evaluation import TrainedRun
from hpclab.utils import atomic_write_text, write_json

log = logging.getLogger("hpclab")


# --------------------------------------------------------------------------- helpers


def _require(model: nn.Module, method: str, analysis: str) -> None:
    if not callable(getattr(model, method, None)):
        raise ValueError(
            f"analysis '{analysis}' needs a model with a {method}() method; {type(model).__name__} has none"
        )


@torch.no_grad()
def encode_split(
    run: TrainedRun, split: str, limit: int | None = None, seed: int = 0, keep_images: bool = False
) -> dict[str, np.ndarray]:
    """Codes (N x D float32) and labels of a split, optionally a seeded random subset of
    ``limit`` items (file order may be sorted by class) and the flattened images."""
    model = run.unwrap()
    _require(model, "encode", "encode_split")
    n = run.data.batches(split, train=False).num_items
    wanted = None
    if limit is not None and limit < n:
        wanted = np.sort(np.random.default_rng(seed).choice(n, limit, replace=False))
    codes, labels, images = [], [], []
    offset = 0
    with run.evaluating():
        for batch in run.data.batches(split, train=False).epoch(0):
            size = len(batch["images"])
            if wanted is not None:
                local = wanted[(wanted >= offset) & (wanted < offset + size)] - offset
                offset += size
                if not len(local):
                    continue
                index = torch.as_tensor(local, device=batch["images"].device)
                batch = {k: v.index_select(0, index) for k, v in batch.items()}
            x = to_float(batch["images"])
            codes.append(model.encode(x).flatten(1).float().cpu())
            labels.append(batch["labels"].cpu())
            if keep_images:
                images.append(x.flatten(1).cpu())
    out = {"codes": torch.cat(codes).numpy(), "labels": torch.cat(labels).numpy()}
    if keep_images:
        out["images"] = torch.cat(images).numpy()
    return out


def _class_colours(ax: Any, points: np.ndarray, labels: np.ndarray, names: Sequence[str], size: float) -> None:
    """Scatter ``points`` (N x 2 or N x 3) coloured by class, with a legend of class names."""
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for c, name in enumerate(names):
        sel = labels == c
        if sel.any():
            ax.scatter(*points[sel].T, s=size, color=cmap(c % cmap.N), label=name, alpha=0.6, linewidths=0)
    ax.legend(markerscale=max(1.0, 12 / size), fontsize=7, loc="best", framealpha=0.7)


def _to_tensorboard(run: TrainedRun, tag: str, images: torch.Tensor, nrow: int) -> None:
    """An image grid (N x C x H x W in [0, 1]) into the run's TensorBoard log."""
    import torchvision

    writer = run.writer
    if writer is not None:
        grid = torchvision.utils.make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, pad_value=1.0)
        writer.add_image(tag, grid, run.step)
        writer.flush()


# --------------------------------------------------------------------------- layer table


@ANALYSES.register("layer_summary")
def layer_summary(run: TrainedRun, out_dir: Path, model: str = "model", split: str = "test") -> dict[str, Any]:
    """Every layer's output shape and the trainable parameter count, printed and saved
    (``layer_summary.txt`` / ``.json``), like Keras' ``model.summary()``."""
    net = run.unwrap(model)
    rows = run_layer_rows(run, model, split)
    total = sum(p.numel() for p in net.parameters())
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    text = summary_text(rows, total, trainable, f"{type(net).__name__} ({run.cfg.run_name})")
    print(text, flush=True)
    log.info("layer summary of %s: %d trainable parameters", type(net).__name__, trainable)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "layer_summary.txt", text)
    layers = [
        {"name": r["name"], "type": r["type"], "output_shape": keras_shape(r["output"]), "parameters": r["params"]}
        for r in rows
    ]
    write_json(out_dir / "layer_summary.json", {"layers": layers, "total": total, "trainable": trainable})
    return {
        "parameters": total,
        "trainable": trainable,
        "layers": len(rows),
        "file": str(out_dir / "layer_summary.txt"),
    }


# --------------------------------------------------------------------------- latent space pictures


def _embed(codes: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(
            n_components=2, init="pca", perplexity=min(30.0, max(2.0, (len(codes) - 1) / 3)), random_state=seed
        ).fit_transform(codes)
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, n_neighbors=min(15, len(codes) - 1), random_state=seed).fit_transform(codes)
    raise ValueError(f"latent_scatter: method must be tsne or umap, got {method!r}")


@ANALYSES.register("latent_scatter")
def latent_scatter(
    run: TrainedRun,
    out_dir: Path,
    split: str = "train",
    max_points: int | None = None,
    methods: Sequence[str] = ("tsne", "umap"),
    embed_points: int = 3000,
) -> dict[str, Any]:
    """Latents coloured by class: plotted directly when 2-d (or 3-d, as a 3-d scatter of
    the whole split by default); larger latents through t-SNE and UMAP on ``embed_points``."""
    enc = encode_split(run, split, limit=max_points, seed=run.cfg.seed)
    codes, labels, names = enc["codes"], enc["labels"], run.data.info.class_names
    dim = codes.shape[1]
    figures = []
    if dim <= 3:
        fig = plt.figure(figsize=(7, 6))
        if dim == 3:
            ax = fig.add_subplot(projection="3d")
            ax.set_zlabel("z3")
        else:
            ax = fig.add_subplot()
        points = (
            codes
            if dim > 1
            else np.stack([codes[:, 0], labels + np.random.default_rng(0).uniform(-0.3, 0.3, len(labels))], 1)
        )
        _class_colours(ax, points, labels, names, size=1.5 if len(codes) > 5000 else 6)
        ax.set_xlabel("z1")
        ax.set_ylabel("z2" if dim > 1 else "class (jittered)")
        ax.set_title(f"{dim}-d latents of {len(codes):,} {split} images")
        figures.append(save_figure(fig, out_dir / f"latent_{dim}d.png"))
    else:
        rng = np.random.default_rng(run.cfg.seed)
        pick = rng.choice(len(codes), min(embed_points, len(codes)), replace=False)
        for method in methods:
            started = time.perf_counter()
            xy = _embed(codes[pick], method, run.cfg.seed)
            fig, ax = plt.subplots(figsize=(7, 6))
            _class_colours(ax, xy, labels[pick], names, size=4)
            label = {"tsne": "t-SNE", "umap": "UMAP"}[method]
            ax.set_title(f"{label} of {dim}-d latents ({len(pick):,} {split} images)")
            ax.set_xticks([])
            ax.set_yticks([])
            figures.append(save_figure(fig, out_dir / f"latent_{method}.png"))
            log.info("%s of %d latents took %.1f s", label, len(pick), time.perf_counter() - started)
    return {"dim": dim, "points": len(codes), "figures": [str(f) for f in figures]}


@ANALYSES.register("latent_grid")
@torch.no_grad()
def latent_grid(run: TrainedRun, out_dir: Path, steps: int = 12, split: str = "train") -> dict[str, Any]:
    """A ``steps``^3 grid spanning the latents' range (min to max per dimension over the
    split), decoded: one figure per value of z3 with z1 down the rows and z2 across (12
    figures of 12 x 12 images by default). Dimensions past the third stay at their mean."""
    model = run.unwrap()
    _require(model, "decode", "latent_grid")
    codes = encode_split(run, split)["codes"]
    dim = codes.shape[1]
    lo, hi, mean = codes.min(0), codes.max(0), codes.mean(0)
    axes = [np.linspace(lo[d], hi[d], steps) for d in range(min(dim, 3))]
    pages = axes[2] if dim >= 3 else [None]
    rows = axes[0]
    cols = axes[1] if dim >= 2 else np.zeros(1)
    figures = []
    with run.evaluating():
        for k, z3 in enumerate(pages):
            z = np.tile(mean, (len(rows) * len(cols), 1)).astype(np.float32)
            z[:, 0] = np.repeat(rows, len(cols))
            if dim >= 2:
                z[:, 1] = np.tile(cols, len(rows))
            if z3 is not None:
                z[:, 2] = z3
            images = model.decode(torch.from_numpy(z).to(run.device)).float().clamp(0, 1).cpu()
            title = f"z3 = {z3:.3g}" if z3 is not None else "decoded latent grid"
            figures.append(
                labelled_grid(
                    images,
                    len(cols),
                    out_dir / f"latent_grid_{k:02d}.png",
                    title,
                    [f"{v:.2g}" for v in cols],
                    [f"{v:.2g}" for v in rows],
                    "z2",
                    "z1",
                )
            )
            _to_tensorboard(run, f"latent_grid/{k:02d}", images, nrow=len(cols))
    return {
        "figures": len(figures),
        "range": [[float(a), float(b)] for a, b in zip(lo, hi)],
        "files": [str(f) for f in figures],
    }


# --------------------------------------------------------------------------- reconstructions


@ANALYSES.register("class_reconstructions")
@torch.no_grad()
def class_reconstructions(run: TrainedRun, out_dir: Path, split: str = "test") -> dict[str, Any]:
    """The first test image of every class next to its reconstruction (the task's rows:
    noisy input when denoising, output, target), with each image's MSE."""
    names = run.data.info.class_names
    found, _ = first_of_each_class(run, split, count=False)
    classes = sorted(found)
    batch = {k: torch.cat([found[c][k] for c in classes]) for k in found[classes[0]]}
    with run.evaluating():
        shown = run.task.images(run.models, batch, run.eval_generator())
    labels = {"target": f"{split} image", "input": "noisy input", "output": "reconstruction"}
    rows = {labels[k]: shown[k] for k in ("target", "input", "output") if k in shown}
    mse = (shown["output"].float() - shown["target"].float()).pow(2).flatten(1).mean(1).cpu().tolist()
    titles = [f"{names[c]}\n{m:.4f}" for c, m in zip(classes, mse)]
    path = image_rows(
        rows,
        out_dir / f"class_reconstructions_{split}.png",
        f"one {split} image per class next to its reconstruction (MSE)",
        titles,
        inches=1.25,
    )
    _to_tensorboard(run, "class_reconstructions", torch.cat(list(rows.values())), nrow=len(classes))
    return {"figure": str(path), "mse": {names[c]: round(m, 6) for c, m in zip(classes, mse)}}


@ANALYSES.register("inputs_over_encodings")
@torch.no_grad()
def inputs_over_encodings(run: TrainedRun, out_dir: Path, count: int = 10, split: str = "test") -> dict[str, Any]:
    """Test inputs above their encodings (the code vector drawn as a small image) and the
    decoded reconstructions: what the dense AE's bottleneck keeps."""
    model = run.unwrap()
    _require(model, "encode", "inputs_over_encodings")
    batch = first_batch(run, split, count)
    x = to_float(batch["images"])
    with run.evaluating():
        codes = model.encode(x).flatten(1).float()
        out = model(x).float().clamp(0, 1)
    dim = codes.shape[1]
    h = max(d for d in range(1, int(math.isqrt(dim)) + 1) if dim % d == 0)
    span = (codes.max() - codes.min()).clamp_min(1e-8)
    encoding = ((codes - codes.min()) / span).view(-1, 1, h, dim // h)
    names = run.data.info.class_names
    titles = [names[int(y)] if int(y) < len(names) else str(int(y)) for y in batch["labels"]]
    rows = {"input": x, "encoding": encoding, "output": out}
    path = image_rows(
        rows, out_dir / "inputs_over_encodings.png", f"inputs over their {dim}-d encodings", titles, inches=1.25
    )
    _to_tensorboard(run, "inputs_over_encodings", torch.cat([x, out]), nrow=len(x))
    return {"figure": str(path), "dim": dim}


# --------------------------------------------------------------------------- classifiers on codes


@ANALYSES.register("svm_codes")
def svm_codes(
    run: TrainedRun,
    out_dir: Path,
    max_train: int = 10000,
    max_test: int | None = None,
    kernel: str = "rbf",
    C: float = 1.0,
) -> dict[str, Any]:
    """scikit-learn SVC (standardised features) trained on the encodings vs on the raw
    pixels of the same images; test accuracy of both in ``svm_codes.md``/``.csv``."""
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    train = encode_split(run, "train", limit=max_train, seed=run.cfg.seed, keep_images=True)
    test = encode_split(run, "test", limit=max_test, seed=run.cfg.seed + 1, keep_images=True)
    results, rows = {}, []
    for key, label in (("codes", "encodings"), ("images", "raw pixels")):
        started = time.perf_counter()
        clf = make_pipeline(StandardScaler(), SVC(kernel=kernel, C=C))
        clf.fit(train[key], train["labels"])
        acc = float((clf.predict(test[key]) == test["labels"]).mean())
        seconds = time.perf_counter() - started
        results[f"{'codes' if key == 'codes' else 'pixels'}_acc"] = acc
        rows.append([label, train[key].shape[1], len(train[key]), len(test[key]), round(acc, 4), round(seconds, 2)])
        log.info("SVM on %s (%d features): test accuracy %.4f (%.1f s)", label, train[key].shape[1], acc, seconds)
    header = ["features", "dim", "train images", "test images", "test accuracy", "fit+predict s"]
    table = write_table(
        header, rows, out_dir / "svm_codes", f"SVC ({kernel}, C={C}) on encodings vs raw pixels", figure=False
    )
    return {**results, **table}


@ANALYSES.register("latent_probe")
def latent_probe(
    run: TrainedRun,
    out_dir: Path,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 256,
    mlp_hidden: Sequence[int] = (256, 256),
    max_train: int | None = None,
) -> dict[str, Any]:
    """Classification of AE representations: extract latents with the trained encoder, then
    train a single linear layer and an MLP on them; report test (and val) accuracy of both.
    Also rebuilds ``<group>/latent_probe.md``: one row per run, i.e. per latent size in a sweep."""
    sets = {
        s: encode_split(run, s, limit=max_train if s == "train" else None, seed=run.cfg.seed)
        for s in ("train", "val", "test")
        if run.data.has(s)
    }
    tensors = {s: (torch.from_numpy(v["codes"]), torch.from_numpy(v["labels"])) for s, v in sets.items()}
    evals = {s: t for s, t in tensors.items() if s != "train"}
    dim = tensors["train"][0].shape[1]
    record: dict[str, Any] = {"latent_dim": dim, "train_images": len(tensors["train"][0])}
    record.update(
        fit_probes(
            tensors["train"],
            evals,
            run.data.info.num_classes,
            mlp_hidden,
            epochs,
            lr,
            batch_size,
            run.cfg.seed,
            f"{dim}-d latents",
        )
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "latent_probe.json", record)
    split = "test" if "test" in evals else next(iter(evals))
    table = write_probe_table(
        record, "latent_dim", dim, [split], mlp_hidden, out_dir / "latent_probe", f"probes on {dim}-d latents"
    )
    group_dir = Path(run.run_dir).parent
    group = write_group_table(
        group_dir,
        "latent_probe",
        ["latent_dim", f"linear_{split}_acc", f"mlp_{split}_acc", "train_images"],
        f"{group_dir.name}: latent_probe",
        sort_by="latent_dim",
    )
    return {**record, **table, "group_table": group["md"] if group else None}
