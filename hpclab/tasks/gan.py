"""Adversarial training of a generator/discriminator pair (DCGAN), one D step then one G step.

Per step the engine accumulates, as sums over images: ``d_loss`` (BCE on real + on generated),
``g_loss`` (the non-saturating -log D(G(z))), ``d_real`` (mean D(x)) and ``d_fake`` (mean
D(G(z)) before the D update). Images per second and the non-finite-loss stop come from the
engine. ``images`` always shows the same seeded latent batch, so epochs can be compared.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from hpclab.data.transforms import to_float
from hpclab.errors import ConfigError
from hpclab.models import MODELS
from hpclab.tasks import TASKS
from hpclab.tasks.base import GenerativeTask, Metrics, batch_count

if TYPE_CHECKING:
    from hpclab.data.loader import DataInfo
    from hpclab.engine.steps import Stepper


def bce(prob: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy of probabilities against an all-real or all-fake target, in float32
    outside autocast (BCE on probabilities is not autocast-safe; the sigmoid is already fp32)."""
    with torch.autocast(prob.device.type, enabled=False):
        prob = prob.float()
        return F.binary_cross_entropy(prob, torch.ones_like(prob) if real else torch.zeros_like(prob))


def to_signed(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1], the generator's Tanh range."""
    return to_float(images) * 2 - 1


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Generator output [-1, 1] -> [0, 1] for figures and Inception."""
    return images.float().add(1).mul_(0.5).clamp_(0, 1)


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Forward passes inside the block record no weight gradients for ``module`` (gradients
    still flow through it to its input): the G step needs dL/dx of D, not D's weight gradients.
    Skipped under DDP, whose reducer expects every parameter's gradient in every backward."""
    if isinstance(getattr(module, "_orig_mod", module), nn.parallel.DistributedDataParallel):  # also compiled
        yield
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@TASKS.register("gan")
class GAN(GenerativeTask):
    """DCGAN training. ``betas`` (0.5, 0.999 as in the DCGAN paper) and optional per-model
    learning rates override ``train.optimizer`` for both Adam optimizers."""

    sampling_models = ("generator",)
    inputs_name = "latent vectors"

    def __init__(
        self,
        betas: Sequence[float] = (0.5, 0.999),
        lr_generator: float | None = None,
        lr_discriminator: float | None = None,
        samples: int = 16,
        sample_seed: int = 1234,
    ) -> None:
        super().__init__(samples, sample_seed)
        self.betas = [float(b) for b in betas]
        self.lr = {"generator": lr_generator, "discriminator": lr_discriminator}
        self.latent_dim: int | None = None

    def build_models(self, model_cfg: dict[str, Any], info: DataInfo) -> dict[str, nn.Module]:
        name = model_cfg.pop("name")
        try:
            pair = MODELS.build(name, model_cfg, in_channels=info.in_channels, image_size=info.image_size)
        except ValueError as exc:  # e.g. a DCGAN on 28 px images: sizes must be powers of two
            raise ConfigError(
                f"model '{name}' on {info.path.name} ({info.image_size} px): {str(exc).splitlines()[0]}; "
                f"add data.image_size=32 (or 64) to train on the data resized at staging "
                f"(prepare_data.py takes the same override)"
            ) from None
        if not (hasattr(pair, "generator") and hasattr(pair, "discriminator")):
            raise ValueError(f"task gan needs a model with .generator and .discriminator (model '{name}' has not)")
        self.latent_dim = pair.generator.latent_dim
        return {"generator": pair.generator, "discriminator": pair.discriminator}

    def optimizer_configs(self, opt_cfg: DictConfig, models: list[str]) -> dict[str, DictConfig]:
        """Generator and discriminator each with the task's betas and own learning rate."""
        configs = {}
        for name, lr in self.lr.items():
            cfg = OmegaConf.create(OmegaConf.to_container(opt_cfg, resolve=True))
            cfg.betas = list(self.betas)
            if lr is not None:
                cfg.lr = lr
            configs[name] = cfg
        return configs

    # ---- latents
    def latents(self, n: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
        assert self.latent_dim is not None, "build_models sets latent_dim"
        return torch.randn(n, self.latent_dim, device=device, generator=generator)

    def input_shape(self) -> tuple[int, ...]:
        assert self.latent_dim is not None, "build_models sets latent_dim"
        return (self.latent_dim,)

    fixed_latents = GenerativeTask.fixed_inputs  # the seeded latent vectors of grids, FD and favourites

    def generate(
        self,
        models: dict[str, nn.Module],
        inputs: torch.Tensor,
        generator: torch.Generator | None = None,
        **options: Any,
    ) -> torch.Tensor:
        """G(z) in [0, 1] (deterministic: ``generator`` is not used)."""
        if options:
            raise ValueError(f"a GAN generates from its latents alone; no {', '.join(sorted(options))}")
        return to_unit(models["generator"](inputs))

    # ---- training
    def train_step(self, stepper: Stepper, batch: Metrics) -> Metrics:
        G, D = stepper.models["generator"], stepper.models["discriminator"]
        real = to_signed(batch["images"])
        if stepper.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        n = real.shape[0]
        # Discriminator: real -> 1, generated -> 0 (separate real and fake batches, as in DCGAN).
        with stepper.autocast():
            fake = G(self.latents(n, real.device))
            d_real, d_fake = D(real), D(fake.detach())
        d_loss = bce(d_real, True) + bce(d_fake, False)
        stepper.step(d_loss, "discriminator")
        # Generator: fool the updated discriminator (non-saturating loss).
        with stepper.autocast(), frozen(D):
            d_gen = D(fake)
        g_loss = bce(d_gen, True)
        stepper.step(g_loss, "generator")
        count = batch_count(n, real)
        return {
            "d_loss": d_loss.detach() * count,
            "g_loss": g_loss.detach() * count,
            "d_real": d_real.detach().float().sum(),
            "d_fake": d_fake.detach().float().sum(),
            "count": count,
        }

    @torch.no_grad()
    def eval_step(self, models: dict[str, nn.Module], batch: Metrics, generator: torch.Generator) -> Metrics:
        """D's view of real images of the split and of as many generated ones (models in eval mode)."""
        real = to_signed(batch["images"])
        n = real.shape[0]
        d_real = models["discriminator"](real)
        d_fake = models["discriminator"](models["generator"](self.latents(n, real.device, generator)))
        count = batch_count(n, real)
        return {
            "d_loss": (bce(d_real, True) + bce(d_fake, False)) * count,
            "g_loss": bce(d_fake, True) * count,
            "d_real": d_real.float().sum(),
            "d_fake": d_fake.float().sum(),
            "count": count,
        }

    @torch.no_grad()
    def images(
        self, models: dict[str, nn.Module], batch: Metrics, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Generated images of the fixed latent batch (TensorBoard grid at every evaluation)."""
        device = batch["images"].device
        return {"samples": self.generate(models, self.fixed_latents(device))}
