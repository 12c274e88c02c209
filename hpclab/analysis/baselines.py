"""Classical baselines computed on a run's own data, to stand beside its numbers.

``pca_baseline``: the best *linear* code of the same size. PCA with ``latent_dim`` components,
fitted on the run's training split, is the optimal linear autoencoder for squared error
(Baldi & Hornik 1989), so an autoencoder of bottleneck ``l`` is worth its non-linearity only
where it beats PCA with ``l`` components. Reported with the engine's metric definitions
(per-image MSE and PSNR on [0, 1] pixels, averaged over the split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hpclab.analysis import ANALYSES
from hpclab.analysis.inputs import available_split
from hpclab.engine.evaluation import TrainedRun


def _flat_images(run: TrainedRun, split: str) -> np.ndarray:
    images = run.data.split(split).load()["images"]
    return images.reshape(len(images), -1).numpy().astype(np.float32) / 255.0


@ANALYSES.register("pca_baseline")
def pca_baseline(
    run: TrainedRun, out_dir: Path, components: int | None = None, split: str = "test", seed: int = 0
) -> dict[str, Any]:
    """Test MSE/PSNR of PCA with ``components`` (default: the model's ``latent_dim``) fitted on
    the training split."""
    from sklearn.decomposition import PCA

    k = components or run.cfg.model.get("latent_dim")
    if not k:
        raise ValueError("pca_baseline needs components=N (the model has no latent_dim)")
    train = _flat_images(run, "train")
    test = _flat_images(run, available_split(run, split))
    k = min(int(k), train.shape[1], len(train))
    pca = PCA(n_components=k, svd_solver="randomized" if k < 0.8 * train.shape[1] else "full", random_state=seed)
    pca.fit(train)
    recon = np.clip(pca.inverse_transform(pca.transform(test)), 0.0, 1.0)  # outputs are images too
    mse = ((recon - test) ** 2).mean(axis=1)
    psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-10))
    return {
        "components": k,
        f"{split}_mse": float(mse.mean()),
        f"{split}_psnr": float(psnr.mean()),
        "explained_variance": float(pca.explained_variance_ratio_.sum()),
    }


@ANALYSES.register("pixel_probe")
def pixel_probe(
    run: TrainedRun,
    out_dir: Path,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 256,
    mlp_hidden: tuple[int, ...] = (256, 256),
) -> dict[str, Any]:
    """The probes of ``latent_probe`` (a linear layer, an MLP; same training) on the raw pixels
    instead of the codes: what a representation must beat to be worth extracting."""
    import torch

    from hpclab.analysis.probes import fit_probes, write_probe_table

    def labelled(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        data = run.data.split(split).load()
        labels = data["labels"] if run.data.label_map is None else run.data.label_map[data["labels"]]
        return torch.from_numpy(_flat_images(run, split)), labels

    train = labelled("train")
    evals = {s: labelled(s) for s in ("val", "test") if run.data.has(s)}
    features = int(train[0].shape[1])
    record: dict[str, Any] = {"features": features, "train_images": len(train[0])}
    record.update(
        fit_probes(
            train,
            evals,
            run.data.info.num_classes,
            mlp_hidden,
            epochs,
            lr,
            batch_size,
            run.cfg.seed,
            f"{features} raw pixels",
        )
    )
    files = write_probe_table(
        record,
        "features",
        features,
        list(evals),
        mlp_hidden,
        out_dir / "pixel_probe",
        f"probes on the raw pixels ({epochs} epochs, standardised)",
    )
    return {**record, **files}


@ANALYSES.register("noisy_input")
def noisy_input(run: TrainedRun, out_dir: Path, split: str = "test") -> dict[str, Any]:
    """MSE/PSNR of the corrupted inputs themselves against the clean targets, with the same
    evaluation noise the engine uses: what a denoiser has to improve on."""
    import torch

    from hpclab.data.transforms import to_float
    from hpclab.tasks.base import image_error_sums

    corrupt = getattr(run.task, "corrupt", None)
    if corrupt is None:
        raise ValueError(f"noisy_input: task '{run.cfg.task.name}' corrupts no inputs")
    split = available_split(run, split)
    totals = {"mse": 0.0, "psnr": 0.0, "count": 0.0}
    with torch.no_grad():
        for batch, gen in run.eval_batches(split):  # the noise of the engine's evaluation
            clean = to_float(batch["images"])
            for key, value in image_error_sums(corrupt(clean, gen), clean).items():
                totals[key] += float(value)
    return {f"{split}_mse": totals["mse"] / totals["count"], f"{split}_psnr": totals["psnr"] / totals["count"]}
