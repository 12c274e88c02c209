"""The task interface the engine drives, and the two basic tasks: reconstruct and classify."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from hpclab.data.transforms import add_gaussian_noise, augment, to_float
from hpclab.models import MODELS
from hpclab.tasks import TASKS

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from hpclab.data.loader import DataInfo
    from hpclab.engine.steps import Stepper

Metrics = dict[str, torch.Tensor]


class Task:
    """What a batch means. Subclasses define ``loss``; ``train_step`` covers one optimizer.

    ``loss`` returns the mean loss to minimise and per-batch metric *sums* plus ``count``, so
    the engine can add them up on the device and divide once per logging interval.
    """

    uses_labels = False  # learns from (or is scored on) class labels: they are checked before a run

    def build_models(self, model_cfg: dict[str, Any], info: DataInfo) -> dict[str, nn.Module]:
        name = model_cfg.pop("name")
        return {
            "model": MODELS.build(
                name, model_cfg, in_channels=info.in_channels, image_size=info.image_size, num_classes=info.num_classes
            )
        }

    def loss(
        self, models: dict[str, nn.Module], batch: Metrics, train: bool, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, Metrics]:
        raise NotImplementedError

    def optimizer_configs(self, optimizer: DictConfig, models: list[str]) -> dict[str, DictConfig]:
        """Which models the engine trains, each with its optimizer settings: by default every
        model, with ``train.optimizer``. A model left out gets no optimizer (it stays fixed)."""
        return {name: optimizer for name in models}

    def train_step(self, stepper: Stepper, batch: Metrics) -> Metrics:
        """One optimisation step on ``batch`` through the engine's ``stepper``; metric sums."""
        with stepper.autocast():
            loss, metrics = self.loss(stepper.models, batch, train=True)
        stepper.step(loss, "model")
        return metrics

    @torch.no_grad()
    def eval_step(self, models: dict[str, nn.Module], batch: Metrics, generator: torch.Generator) -> Metrics:
        return self.loss(models, batch, train=False, generator=generator)[1]

    @torch.no_grad()
    def images(
        self, models: dict[str, nn.Module], batch: Metrics, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Named image batches in [0, 1] for TensorBoard grids and figures."""
        return {}


class GenerativeTask(Task):
    """A task whose models make images from seeded inputs (GAN latents, a diffusion model's
    initial noise): what the sample grids, FD and FID analyses drive, whichever the model.

    Subclasses set ``sampling_models`` (the models ``generate`` uses, loaded from each checkpoint
    for scores over training) and define ``input_shape`` and ``generate``."""

    sampling_models: tuple[str, ...] = ()
    inputs_name = "inputs"  # what a figure calls them: latent vectors, initial noise

    def __init__(self, samples: int = 16, sample_seed: int = 1234) -> None:
        self.samples, self.sample_seed = samples, sample_seed
        self._fixed: torch.Tensor | None = None

    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input of ``generate`` (without the batch dimension)."""
        raise NotImplementedError

    def generate(
        self,
        models: dict[str, nn.Module],
        inputs: torch.Tensor,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """Images in [0, 1] of ``inputs`` (the caller puts the models in eval mode, without
        gradients); a stochastic sampler draws from ``generator``."""
        raise NotImplementedError

    def fixed_inputs(self, device: torch.device, n: int | None = None, seed: int | None = None) -> torch.Tensor:
        """The same ``n`` inputs in every epoch and on every device: drawn on the CPU from
        ``seed`` (default ``sample_seed``) one row at a time, so the first k rows never depend on n."""
        n = n or self.samples
        seed = self.sample_seed if seed is None else seed
        if seed != self.sample_seed or self._fixed is None or len(self._fixed) < n:
            rows = seeded_normal_rows(n, self.input_shape(), seed)
            if seed != self.sample_seed:
                return rows.to(device)
            self._fixed = rows
        return self._fixed[:n].to(device)


def seeded_normal_rows(n: int, shape: Sequence[int], seed: int) -> torch.Tensor:
    """``n`` standard-normal tensors of ``shape`` from a CPU generator seeded with ``seed``, drawn
    one row at a time: row i is the same whatever ``n`` (and on every device it is moved to)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(*shape, generator=gen) for _ in range(n)])


def batch_count(n: int, like: torch.Tensor) -> torch.Tensor:
    """The batch size as a device scalar for metric sums. ``torch.full`` launches a fill kernel;
    ``torch.tensor(n, device=cuda)`` would copy from the host and wait for the GPU every step."""
    return torch.full((), float(n), device=like.device)


def image_error_sums(output: torch.Tensor, target: torch.Tensor) -> Metrics:
    """Per-image MSE and PSNR (images in [0, 1]) summed over the batch."""
    mse = (output.float() - target.float()).pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
    return {"mse": mse.sum(), "psnr": psnr.sum(), "count": batch_count(len(mse), mse)}


@TASKS.register("reconstruct")
class Reconstruct(Task):
    """Autoencoding; with ``noise_std > 0`` the inputs (only) get Gaussian noise: denoising."""

    def __init__(self, noise_std: float = 0.0, loss: str = "mse") -> None:
        if loss not in ("mse", "bce"):
            raise ValueError(f"task.loss must be mse or bce, got {loss!r}")
        self.noise_std = noise_std
        self.loss_name = loss

    def corrupt(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return add_gaussian_noise(x, self.noise_std, generator=generator) if self.noise_std > 0 else x

    def loss(self, models, batch, train, generator=None):
        target = to_float(batch["images"])
        output = models["model"](self.corrupt(target, generator))
        if self.loss_name == "bce":
            loss = F.binary_cross_entropy(output.float().clamp(1e-6, 1 - 1e-6), target)
        else:
            loss = F.mse_loss(output.float(), target)
        metrics = image_error_sums(output.detach(), target)
        metrics["loss"] = loss.detach() * metrics["count"]
        return loss, metrics

    @torch.no_grad()
    def images(self, models, batch, generator):
        target = to_float(batch["images"])
        noisy = self.corrupt(target, generator)
        out = {"input": noisy} if self.noise_std > 0 else {}
        out.update(output=models["model"](noisy).float().clamp(0, 1), target=target)
        return out


@TASKS.register("classify")
class Classify(Task):
    """Cross-entropy classification with optional on-device crop/flip augmentation."""

    uses_labels = True

    def __init__(
        self, augment: bool = False, crop_padding: int = 4, label_smoothing: float = 0.0, normalize: bool = True
    ) -> None:
        self.augment = augment
        self.crop_padding = crop_padding
        self.label_smoothing = label_smoothing
        self.normalize = normalize

    def inputs(self, batch: Metrics, train: bool) -> torch.Tensor:
        x = to_float(batch["images"])
        if train and self.augment:
            x = augment(x, self.crop_padding)
        return (x - 0.5) / 0.25 if self.normalize else x

    def loss(self, models, batch, train, generator=None):
        logits = models["model"](self.inputs(batch, train)).float()
        labels = batch["labels"]
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing if train else 0.0)
        count = batch_count(len(labels), logits)
        return loss, {"loss": loss.detach() * count, "acc": (logits.argmax(1) == labels).float().sum(), "count": count}
