"""pix2pix (Isola, Zhu, Zhou & Efros 2017, arXiv:1611.07004): a conditional GAN trained on top of an
image-to-image task, so that it can be compared with that task's L2 network on equal footing.

The task named in ``base`` (``{name: inpaint, fraction: 0.25}``, ``{name: colourize}``, ...)
keeps everything but the loss: how the network input is made from a batch (masks, grey, noise),
the generator (the base task builds the model section, the network its L2 run trains), and the
evaluation: metrics, baseline and image rows are the base task's own code on the same seeded
inputs. Training adds a PatchGAN discriminator (``hpclab.models.patchgan``, from
``discriminator``) that sees the input and an output image concatenated on channels, and
replaces the L2 loss by the paper's objective, per step (one D step, then one G step):

* D: ``0.5 * (BCE(D(input, target), 1) + BCE(D(input, G(input)), 0))`` over every patch logit
  (the paper halves D's objective to slow it relative to G);
* G: ``adversarial_weight * BCE(D(input, G(input)), 1) + l1_weight * |G(input) - target|``.

Images are in [0, 1] here and in [-1, 1] in the paper: both nets see ``2x - 1``, and the L1 term
is measured on that scale, so ``l1_weight=100`` weighs it as in the paper. The optimizer of
both is ``train.optimizer`` (the paper's Adam 2e-4, betas 0.5/0.999 in the experiment configs).
``adversarial_weight=0`` trains the same generator with L1 alone (the paper's "L1" column).

Training metrics, as sums over images: ``g_loss`` (G's objective), ``g_adv``, ``l1``,
``d_loss``, ``d_real`` and ``d_fake`` (D's mean patch probability on real and generated pairs,
before its update), and the base metrics ``mse``/``psnr`` of the generated images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from hpclab.data.transforms import to_float
from hpclab.errors import ConfigError
from hpclab.models import MODELS
from hpclab.registry import check_kwargs
from hpclab.tasks import TASKS
from hpclab.tasks.base import Metrics, Task, image_error_sums
from hpclab.tasks.gan import frozen
from hpclab.tasks.image2image import ImageToImage

if TYPE_CHECKING:
    from hpclab.data.loader import DataInfo
    from hpclab.engine.steps import Stepper


def bce_logits(logits: torch.Tensor, real: bool) -> torch.Tensor:
    """Binary cross-entropy of patch logits against all-real or all-fake labels (float32)."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits) if real else torch.zeros_like(logits))


def patch_probability_sums(logits: torch.Tensor) -> torch.Tensor:
    """D's mean probability over each image's patches, summed over the batch."""
    return torch.sigmoid(logits.detach().float()).flatten(1).mean(1).sum()


def signed(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the paper's image scale."""
    return images.float() * 2 - 1


@TASKS.register("pix2pix")
class Pix2Pix(Task):
    """L1 + conditional GAN training of ``base``'s generator; ``base``'s evaluation."""

    def __init__(
        self,
        base: dict[str, Any] | None = None,
        l1_weight: float = 100.0,
        adversarial_weight: float = 1.0,
        discriminator: dict[str, Any] | None = None,
    ) -> None:
        node = OmegaConf.create(dict(base or {}))
        check_kwargs("task.base", node, TASKS)  # an unknown task or argument: one line
        if not issubclass(TASKS[node.name], ImageToImage):
            raise ConfigError(
                f"config key 'task.base.name': pix2pix wraps an image-to-image task (inpaint, colourize, "
                f"super_resolve, denoise), not '{node.name}'"
            )
        if l1_weight < 0 or adversarial_weight < 0:
            raise ConfigError(
                f"config keys 'task.l1_weight', 'task.adversarial_weight': must be >= 0, got "
                f"{l1_weight}, {adversarial_weight}"
            )
        kwargs = OmegaConf.to_container(node, resolve=True)
        self.base_name = kwargs.pop("name")
        self.base: ImageToImage = TASKS.build(self.base_name, kwargs)
        self.l1_weight, self.adversarial_weight = float(l1_weight), float(adversarial_weight)
        self.discriminator = dict(discriminator or {"name": "patchgan"})

    # ---- the base task's view of a batch, evaluation and figures (one code path for both losses)
    @property
    def baseline_name(self) -> str | None:
        return self.base.baseline_name

    @property
    def row_names(self) -> tuple[str, str, str]:
        return self.base.row_names

    def make_input(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return self.base.make_input(x, generator)

    def predict(self, model: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        return self.base.predict(model, inp)

    def baseline(self, x: torch.Tensor, inp: torch.Tensor) -> torch.Tensor | None:
        return self.base.baseline(x, inp)

    def display_input(self, x: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        return self.base.display_input(x, inp)

    def model_input(self, batch: Metrics, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.base.model_input(batch, generator)

    def loss(self, models, batch, train, generator=None):
        """The base task's loss and metrics (what evaluation reports); training uses ``train_step``."""
        return self.base.loss(models, batch, train, generator)

    @torch.no_grad()
    def images(self, models, batch, generator):
        return self.base.images(models, batch, generator)

    # ---- models
    def build_models(self, model_cfg: dict[str, Any], info: DataInfo) -> dict[str, nn.Module]:
        models = self.base.build_models(model_cfg, info)  # the generator, as the base task's L2 run builds it
        if self.base.out_channels(info.in_channels) != info.in_channels:
            raise ConfigError(
                f"task pix2pix: base task '{self.base_name}' predicts "
                f"{self.base.out_channels(info.in_channels)} maps, not an image of {info.in_channels} "
                f"channel(s); use its regression version (e.g. colourize, not colourize_classes)"
            )
        cfg = dict(self.discriminator)
        name = cfg.pop("name", "patchgan")
        pair_channels = self.base.in_channels(info.in_channels) + info.in_channels
        models["discriminator"] = MODELS.build(name, cfg, in_channels=pair_channels, image_size=info.image_size)
        return models

    # ---- training
    def train_step(self, stepper: Stepper, batch: Metrics) -> Metrics:
        G, D = stepper.models["model"], stepper.models["discriminator"]
        x = to_float(batch["images"])
        inp = self.base.make_input(x, None)
        condition, real = signed(self.base.display_input(x, inp)), signed(x)
        # Discriminator: (input, target) -> real, (input, output) -> generated, every patch.
        with stepper.autocast():
            fake = signed(self.base.predict(G, inp))
            d_real = D(torch.cat([condition, real], 1))
            d_fake = D(torch.cat([condition, fake.detach()], 1))
        d_loss = 0.5 * (bce_logits(d_real, True) + bce_logits(d_fake, False))
        stepper.step(d_loss, "discriminator")
        # Generator: fool the updated discriminator, and stay close to the target in L1.
        with stepper.autocast(), frozen(D):
            g_adv = bce_logits(D(torch.cat([condition, fake], 1)), True)
        l1 = (fake - real).abs().mean()
        g_loss = self.adversarial_weight * g_adv + self.l1_weight * l1
        stepper.step(g_loss, "model")
        metrics = image_error_sums(fake.detach().add(1).mul(0.5).clamp(0, 1), x)
        count = metrics["count"]
        metrics.update(
            g_loss=g_loss.detach() * count,
            g_adv=g_adv.detach() * count,
            l1=l1.detach() * count,
            d_loss=d_loss.detach() * count,
            d_real=patch_probability_sums(d_real),
            d_fake=patch_probability_sums(d_fake),
        )
        return metrics
