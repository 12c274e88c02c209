"""Classical baselines computed on a run's own data, to stand beside its numbers.

``pca_baseline``: the best *linear* code of the same size. PCA with ``latent_dim`` components,
fitted on the run's training split, is the optimal linear autoencoder for squared error
(Baldi & Hornik 1989), so an autoencoder of bottleneck ``l`` is worth its non-linearity only
where it beats PCA with ``l`` components. Reported with the engine's metric definitions
(per-image MSE and PSNR on [0, 1] pixels, averaged over the split).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from hpclab.analysis import ANALYSES
from hpclab.analysis.figures import available_split


def _flat_images(trainer: Any, split: str) -> np.ndarray:
    images = trainer.data.split(split).load()["images"]
    return images.reshape(len(images), -1).numpy().astype(np.float32) / 255.0


@ANALYSES.register("pca_baseline")
def pca_baseline(trainer: Any, out_dir: Path, components: Optional[int] = None, split: str = "test",
                 seed: int = 0) -> dict[str, Any]:
    """Test MSE/PSNR of PCA with ``components`` (default: the model's ``latent_dim``) fitted on
    the training split."""
    from sklearn.decomposition import PCA

    k = components or trainer.cfg.model.get("latent_dim")
    if not k:
        raise ValueError("pca_baseline needs components=N (the model has no latent_dim)")
    train = _flat_images(trainer, "train")
    test = _flat_images(trainer, available_split(trainer, split))
    k = min(int(k), train.shape[1], len(train))
    pca = PCA(n_components=k, svd_solver="randomized" if k < 0.8 * train.shape[1] else "full", random_state=seed)
    pca.fit(train)
    recon = np.clip(pca.inverse_transform(pca.transform(test)), 0.0, 1.0)  # outputs are images too
    mse = ((recon - test) ** 2).mean(axis=1)
    psnr = 10 * np.log10(1.0 / np.maximum(mse, 1e-10))
    return {"components": k, f"{split}_mse": float(mse.mean()), f"{split}_psnr": float(psnr.mean()),
            "explained_variance": float(pca.explained_variance_ratio_.sum())}
