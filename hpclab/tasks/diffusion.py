"""Denoising diffusion (DDPM, Ho, Jain & Abbeel 2020, arXiv:2006.11239) trained on the noise,
sampled with DDIM (Song, Meng & Ermon 2021, arXiv:2010.02502) in a few dozen steps.

Taken from Hugging Face ``diffusers``: the noise schedules and the forward process
(``DDPMScheduler``: linear betas as in Ho et al., or the cosine schedule of Nichol & Dhariwal
2021 as ``squaredcos_cap_v2``; ``add_noise`` gives x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps),
and the DDIM update (``DDIMScheduler.step`` on the same betas, ``set_timesteps`` for the subset
of timesteps). Written here: the training objective (a uniform timestep and Gaussian noise per
image, MSE between the true and the predicted noise: Ho et al.'s L_simple), the evaluation at
seeded timesteps and noise, an exponential moving average of the weights kept as a second model
(``ema``, a ``torch.optim.swa_utils.AveragedModel`` with the decay warm-up of diffusers'
``EMAModel``, so checkpoints, resumes and best weights carry it like any model), and
:func:`ddim_sample`, the one sampling loop that TensorBoard images, sample grids and the FD
analyses all use. diffusers' ``DDIMPipeline`` draws its own initial noise; the loop here starts
from given noise, so every grid and score is reproducible
row by row.

All training randomness (timesteps, noise) comes from the global generators the engine seeds
per rank and stores in every checkpoint, so a resumed run ends with the uninterrupted run's
metrics; evaluation draws from the engine's per-batch seeded generator.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hpclab.tasks import TASKS
from hpclab.tasks.base import GenerativeTask, Metrics, Task, batch_count
from hpclab.tasks.gan import to_signed, to_unit

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from hpclab.data.loader import DataInfo
    from hpclab.engine.steps import Stepper

SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2"}  # ours -> diffusers' beta_schedule
SPACINGS = ("trailing", "leading", "linspace")


@torch.no_grad()
def ddim_sample(
    model: nn.Module,
    noise: torch.Tensor,
    scheduler: Any,
    steps: int,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Images in [0, 1] from initial ``noise`` (N x C x H x W, the model's device) after ``steps``
    DDIM updates of ``scheduler`` (a ``diffusers.DDIMScheduler``; its timesteps are set here).
    ``eta=0`` is deterministic; ``eta > 0`` adds noise from ``generator`` at every update."""
    scheduler.set_timesteps(steps)
    x = noise.float()
    for t in scheduler.timesteps:
        eps = model(x, t).float()
        x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return to_unit(x)


def ema_with_warmup(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """The update of an ``AveragedModel``: at its n-th update the average moves towards the
    trained weights with decay min(``decay``, (1 + n) / (10 + n)), the warm-up of diffusers'
    ``EMAModel``, so the average of a short run is not held back by its random initialisation.
    Computed on the device (the update adds no host sync to AveragedModel's own)."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor) -> None:
        step_decay = ((1 + n) / (10 + n)).clamp(max=decay)
        torch._foreach_lerp_(averaged, current, (1 - step_decay).to(averaged[0].dtype))

    return update


@TASKS.register("diffusion")
class Diffusion(GenerativeTask):
    """DDPM training on noise prediction. ``schedule``: linear (``beta_start`` .. ``beta_end``)
    or cosine, over ``num_train_timesteps``. ``ema_decay`` (None or 0: none) keeps the averaged
    weights that sampling and evaluation use. Sampling: ``sample_steps`` DDIM steps with ``eta``,
    timesteps spaced ``timestep_spacing`` (trailing: the first step is at t = T - 1, where
    training put pure noise)."""

    def __init__(
        self,
        schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        ema_decay: float | None = 0.999,
        sample_steps: int = 50,
        eta: float = 0.0,
        timestep_spacing: str = "trailing",
        clip_sample: bool = True,
        samples: int = 16,
        sample_seed: int = 1234,
    ) -> None:
        from diffusers import DDPMScheduler

        if schedule not in SCHEDULES:
            raise ValueError(f"task.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"task.timestep_spacing must be one of {', '.join(SPACINGS)}, got {timestep_spacing!r}")
        if ema_decay is not None and not 0 <= ema_decay < 1:
            raise ValueError(f"task.ema_decay must be in [0, 1) or null, got {ema_decay}")
        super().__init__(samples, sample_seed)
        self.noise_schedule = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule=SCHEDULES[schedule],
            beta_start=beta_start,
            beta_end=beta_end,
            clip_sample=clip_sample,
            timestep_spacing=timestep_spacing,
        )
        self.timesteps = num_train_timesteps
        self.ema_decay = ema_decay or None
        self.sample_steps, self.eta = sample_steps, eta
        self.sampling_models = ("ema",) if self.ema_decay else ("model",)
        self.inputs_name = "initial noise"
        self.shape: tuple[int, ...] | None = None

    def build_models(self, model_cfg: dict[str, Any], info: DataInfo) -> dict[str, nn.Module]:
        models = Task.build_models(self, model_cfg, info)
        self.shape = (info.in_channels, info.image_size, info.image_size)
        if self.ema_decay:
            from torch.optim.swa_utils import AveragedModel

            ema = AveragedModel(models["model"], multi_avg_fn=ema_with_warmup(self.ema_decay), use_buffers=True)
            models["ema"] = ema.requires_grad_(False)  # no optimizer, no gradients, never DDP-wrapped
        return models

    def optimizer_configs(self, optimizer: DictConfig, models: list[str]) -> dict[str, DictConfig]:
        return {"model": optimizer}  # the EMA copy follows the trained weights, it is not optimised

    def input_shape(self) -> tuple[int, ...]:
        assert self.shape is not None, "build_models sets the image shape"
        return self.shape

    # ---- training and evaluation
    def noise_loss(
        self, model: nn.Module, images: torch.Tensor, generator: torch.Generator | None
    ) -> tuple[torch.Tensor, Metrics]:
        """L_simple: MSE between the noise added at a uniform timestep and the model's prediction."""
        x0 = to_signed(images)
        n = x0.shape[0]
        t = torch.randint(0, self.timesteps, (n,), device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        predicted = model(self.noise_schedule.add_noise(x0, noise, t), t)
        per_image = (predicted.float() - noise).pow(2).flatten(1).mean(1)
        return per_image.mean(), {"loss": per_image.detach().sum(), "count": batch_count(n, per_image)}

    def train_step(self, stepper: Stepper, batch: Metrics) -> Metrics:
        with stepper.autocast():
            loss, metrics = self.noise_loss(stepper.models["model"], batch["images"], None)
        stepper.step(loss, "model")
        if self.ema_decay:
            stepper.models["ema"].update_parameters(stepper.accelerator.unwrap_model(stepper.models["model"]))
        return metrics

    @torch.no_grad()
    def eval_step(self, models: dict[str, nn.Module], batch: Metrics, generator: torch.Generator) -> Metrics:
        """The sampling model's noise MSE at the batch's seeded timesteps and noise."""
        return self.noise_loss(models[self.sampling_models[0]], batch["images"], generator)[1]

    # ---- sampling
    def sampler(self) -> Any:
        """A fresh DDIM scheduler on the training betas (each sampling loop sets its own timesteps)."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.noise_schedule.config, set_alpha_to_one=True)

    @torch.no_grad()
    def generate(
        self,
        models: dict[str, nn.Module],
        inputs: torch.Tensor,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        eta: float | None = None,
    ) -> torch.Tensor:
        """DDIM samples in [0, 1] from initial noise ``inputs`` (default steps and eta: the task's)."""
        return ddim_sample(
            models[self.sampling_models[0]],
            inputs,
            self.sampler(),
            steps or self.sample_steps,
            self.eta if eta is None else eta,
            generator,
        )

    @torch.no_grad()
    def images(
        self, models: dict[str, nn.Module], batch: Metrics, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """DDIM samples of the fixed initial noise (TensorBoard grid at every evaluation)."""
        return {"samples": self.generate(models, self.fixed_inputs(batch["images"].device), generator=generator)}
