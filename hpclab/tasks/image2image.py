"""Image-to-image tasks: colourization (regression and 24-colour classification),
super-resolution, denoising, in-painting and binary segmentation.

The first four share one shape (``ImageToImage``): the target is the clean image, the network
input is made from it on the device (grey, downscaled, noisy, masked), the loss is the mean
squared error, and every evaluation also scores a no-learning baseline on the same inputs
(grey as RGB, bilinear upsampling, the noisy or masked input itself) so tables compare the
network with it: ``<split>/mse``, ``<split>/psnr`` and ``<split>/<baseline>_mse|_psnr``.
Metrics are computed on outputs clamped to [0, 1]; PSNR is per image, then averaged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpclab.data.transforms import add_gaussian_noise, centre_mask, downscale, to_float, to_grey
from hpclab.errors import ConfigError
from hpclab.models import MODELS
from hpclab.models.conv import is_conv
from hpclab.models.image2image import LearnedUpsampling
from hpclab.tasks import TASKS
from hpclab.tasks.base import Metrics, Task, batch_count, image_error_sums


class ImageToImage(Task):
    """target = clean image in [0, 1]; input = ``make_input(target)``; L2 loss."""

    baseline_name: str | None = None  # name of the no-learning baseline in the metrics
    baseline_row = False  # show the baseline as its own row in image figures
    row_names = ("input", "output", "target")  # labels of the figure rows

    # ---- what subclasses define
    def in_channels(self, data_channels: int) -> int:
        return data_channels

    def out_channels(self, data_channels: int) -> int:
        return data_channels

    def make_input(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        raise NotImplementedError

    def baseline(self, x: torch.Tensor, inp: torch.Tensor) -> torch.Tensor | None:
        """The no-learning answer for ``inp`` (same shape as ``x``), or None."""
        return None

    def display_input(self, x: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        return inp

    # ---- shared machinery
    def check_data(self, info: Any) -> None:
        """Raise ConfigError when the data cannot serve this task."""

    def build_models(self, model_cfg: dict[str, Any], info: Any) -> dict[str, nn.Module]:
        self.check_data(info)
        name = model_cfg.pop("name")
        model = MODELS.build(
            name,
            model_cfg,
            in_channels=self.in_channels(info.in_channels),
            out_channels=self.out_channels(info.in_channels),
            image_size=info.image_size,
            num_classes=info.num_classes,
        )
        return {"model": model}

    def model_input(self, batch: Metrics, generator: torch.Generator | None = None) -> torch.Tensor:
        """What the network sees for ``batch`` (used by the activation figures too)."""
        return self.make_input(to_float(batch["images"]), generator)

    def predict(self, model: nn.Module, inp: torch.Tensor) -> torch.Tensor:
        """The network's image (may leave [0, 1]; metrics clamp)."""
        return model(inp)

    def loss(self, models, batch, train, generator=None):
        x = to_float(batch["images"])
        inp = self.make_input(x, generator)
        out = self.predict(models["model"], inp).float()
        loss = F.mse_loss(out, x)
        metrics = image_error_sums(out.detach().clamp(0, 1), x)
        metrics["loss"] = loss.detach() * metrics["count"]
        if not train:
            metrics.update(self.extra_metrics(x, inp, out.detach()))
        return loss, metrics

    def extra_metrics(self, x: torch.Tensor, inp: torch.Tensor, out: torch.Tensor) -> Metrics:
        base = self.baseline(x, inp)
        if base is None:
            return {}
        sums = image_error_sums(base.clamp(0, 1), x)
        return {f"{self.baseline_name}_mse": sums["mse"], f"{self.baseline_name}_psnr": sums["psnr"]}

    @torch.no_grad()
    def images(self, models, batch, generator):
        x = to_float(batch["images"])
        inp = self.make_input(x, generator)
        name_in, name_out, name_target = self.row_names
        rows = {name_in: self.display_input(x, inp), name_out: self.predict(models["model"], inp).float().clamp(0, 1)}
        base = self.baseline(x, inp)
        if base is not None and self.baseline_row:
            rows[self.baseline_name] = base.clamp(0, 1)
        rows[name_target] = x
        return rows


def _require_rgb(info: Any, task: str) -> None:
    if info.in_channels != 3:
        raise ConfigError(f"task '{task}' needs RGB images; data '{info.path.name}' has {info.in_channels} channel(s)")


@TASKS.register("colourize")
class Colourize(ImageToImage):
    """Grey (BT.601 luminance) in, RGB out, squared error. Baseline: the grey image as RGB."""

    baseline_name = "grey"
    row_names = ("grey_input", "prediction", "ground_truth")

    def check_data(self, info):
        _require_rgb(info, "colourize")

    def in_channels(self, data_channels):
        return 1

    def make_input(self, x, generator):
        return to_grey(x)

    def baseline(self, x, inp):
        return inp.expand_as(x)


@TASKS.register("colourize_classes")
class ColourizeClasses(Colourize):
    """Colourization as per-pixel classification over ``num_colours`` k-means colours.

    The palette comes from ``hpclab.data.palette`` (computed once per data file and class
    subset, saved next to the HDF5 file). Targets are each pixel's nearest palette colour; the
    loss is per-pixel cross-entropy; ``acc`` is the per-pixel accuracy; ``mse``/``psnr`` score
    the decoded prediction (palette colour of the argmax) against the true image, and
    ``palette_mse``/``palette_psnr`` the best any classifier could do (the quantized truth).
    """

    baseline_name = "palette"
    baseline_row = True

    def __init__(self, num_colours: int = 24) -> None:
        if num_colours < 2:
            raise ConfigError(f"config key 'task.num_colours': need at least 2 colours, got {num_colours}")
        self.num_colours = num_colours
        self.palette: torch.Tensor | None = None

    def build_models(self, model_cfg, info):
        from hpclab.data.palette import load_or_compute_palette

        _require_rgb(info, "colourize_classes")
        palette = load_or_compute_palette(info.path, self.num_colours, info.class_names)
        self.palette = torch.from_numpy(palette)
        return super().build_models(model_cfg, info)

    def out_channels(self, data_channels):
        return self.num_colours

    def _palette(self, device: torch.device) -> torch.Tensor:
        if self.palette is None:
            raise RuntimeError("colourize_classes: the palette is set in build_models")
        if self.palette.device != device:
            self.palette = self.palette.to(device)
        return self.palette

    def classes_of(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest palette colour of every pixel: N x H x W (int64)."""
        palette = self._palette(x.device)
        d2 = (x[:, None] - palette[None, :, :, None, None]).pow(2).sum(2)  # N x K x H x W
        return d2.argmin(1)

    def decode(self, classes: torch.Tensor) -> torch.Tensor:
        """Class indices (N x H x W) -> RGB images (N x 3 x H x W)."""
        return self._palette(classes.device)[classes].permute(0, 3, 1, 2)

    def predict(self, model, inp):
        return self.decode(model(inp).argmax(1))

    def loss(self, models, batch, train, generator=None):
        x = to_float(batch["images"])
        inp = self.make_input(x, generator)
        logits = models["model"](inp).float()
        target = self.classes_of(x)
        loss = F.cross_entropy(logits, target)
        pred = logits.detach().argmax(1)
        metrics = image_error_sums(self.decode(pred), x)
        metrics["loss"] = loss.detach() * metrics["count"]
        metrics["acc"] = (pred == target).float().flatten(1).mean(1).sum()
        if not train:
            metrics.update(self.extra_metrics(x, inp, pred))
        return loss, metrics

    def baseline(self, x, inp):
        return self.decode(self.classes_of(x))


@TASKS.register("super_resolve")
class SuperResolve(ImageToImage):
    """Upsample images area-downscaled by ``factor``. Baseline: bilinear interpolation of the
    same low-resolution image. Two designs:

    * ``upsample: learned`` (Practical 3's plain CNN, docs/briefs.md; default): the network sees only the
      low-resolution image and learns the upsampling (the configured model at low resolution
      with ``width`` output maps, then one 4x4 stride-2 transposed conv per factor of 2 and a
      3x3 conv; ``hpclab.models.image2image.LearnedUpsampling``). It starts from its random
      initialisation, so "network vs bilinear" is a real comparison from step 0.
    * ``upsample: bilinear | bicubic | nearest``: the network sees the low-resolution image
      resized back to full size; with ``residual`` (the default for a resized input) it
      predicts a correction to it and its last conv starts at zero, so training starts from the
      resized image itself (residual learning's usual start; with bilinear, exactly the
      baseline at step 0). ``task=super_resolve_residual`` selects this design."""

    baseline_name = "bilinear"
    baseline_row = True
    row_names = ("input", "network", "truth")
    UPSAMPLE = ("learned", "bilinear", "bicubic", "nearest")

    def __init__(
        self, factor: int = 2, upsample: str = "learned", residual: bool | None = None, width: int = 32
    ) -> None:
        if residual is None:  # the natural pairing: a resized input gets a residual output
            residual = upsample != "learned"
        if factor < 2:
            raise ConfigError(f"config key 'task.factor': must be an integer >= 2, got {factor}")
        if upsample not in self.UPSAMPLE:
            raise ConfigError(f"config key 'task.upsample': one of {', '.join(self.UPSAMPLE)}, got {upsample!r}")
        if upsample == "learned" and residual:
            raise ConfigError(
                "config key 'task.residual': a residual correction needs a resized input "
                "(task.upsample=bilinear|bicubic|nearest); learned upsampling has none"
            )
        if upsample == "learned" and factor & (factor - 1):
            raise ConfigError(
                f"config key 'task.factor': learned upsampling doubles per step, so the factor must be "
                f"a power of two, got {factor}"
            )
        self.factor, self.upsample, self.residual, self.width = factor, upsample, residual, width

    @property
    def learned(self) -> bool:
        return self.upsample == "learned"

    def out_channels(self, data_channels):
        return self.width if self.learned else data_channels

    def build_models(self, model_cfg, info):
        models = super().build_models(model_cfg, info)
        if self.learned:
            models["model"] = LearnedUpsampling(models["model"], self.width, info.in_channels, self.factor)
        elif self.residual:
            convs = [m for m in models["model"].modules() if is_conv(m)]
            if convs:
                with torch.no_grad():
                    convs[-1].weight.zero_()
                    if convs[-1].bias is not None:
                        convs[-1].bias.zero_()
        return models

    def check_data(self, info):
        if info.image_size % self.factor:
            raise ConfigError(
                f"config key 'task.factor': image size {info.image_size} is not divisible by {self.factor}"
            )

    def low_res(self, x: torch.Tensor) -> torch.Tensor:
        return downscale(x, self.factor)

    def _resize(self, low: torch.Tensor, mode: str) -> torch.Tensor:
        extra = {} if mode == "nearest" else {"align_corners": False}
        return F.interpolate(low, scale_factor=self.factor, mode=mode, **extra)

    def make_input(self, x, generator):
        low = self.low_res(x)
        return low if self.learned else self._resize(low, self.upsample)

    def predict(self, model, inp):
        out = model(inp)
        return out + inp if self.residual else out

    def baseline(self, x, inp):
        return inp if self.upsample == "bilinear" else self._resize(self.low_res(x), "bilinear")

    def display_input(self, x, inp):
        return self._resize(self.low_res(x), "nearest")  # the low-resolution pixels, as they are


@TASKS.register("denoise")
class Denoise(ImageToImage):
    """Gaussian noise (std ``noise_std``, clamped to [0, 1]) added to each batch on the
    device; the clean image is the target. Baseline: the noisy input itself."""

    baseline_name = "noisy"
    row_names = ("noisy_input", "output", "clean")

    def __init__(self, noise_std: float = 0.2) -> None:
        if noise_std <= 0:
            raise ConfigError(f"config key 'task.noise_std': must be > 0, got {noise_std}")
        self.noise_std = noise_std

    def make_input(self, x, generator):
        return add_gaussian_noise(x, self.noise_std, generator=generator)

    def baseline(self, x, inp):
        return inp


@TASKS.register("inpaint")
class Inpaint(ImageToImage):
    """A central square (``fraction`` of each side) zeroed; the network fills it in. Besides
    whole-image MSE/PSNR, ``hole_mse``/``hole_psnr`` score the missing region alone.
    Baseline: the masked input."""

    baseline_name = "masked"
    row_names = ("masked_input", "output", "original")

    def __init__(self, fraction: float = 0.25) -> None:
        if not 0 < fraction < 1:
            raise ConfigError(f"config key 'task.fraction': must be in (0, 1), got {fraction}")
        self.fraction = fraction

    def make_input(self, x, generator):
        return centre_mask(x, self.fraction)[0]

    def baseline(self, x, inp):
        return inp

    def extra_metrics(self, x, inp, out):
        metrics = super().extra_metrics(x, inp, out)
        # a weighted mean, not err[..., mask]: boolean indexing waits for the GPU every step
        hole = (centre_mask(torch.ones_like(x[:1, :1]), self.fraction)[1] > 0).to(x.dtype)
        err = (out.clamp(0, 1) - x).pow(2)
        hole_mse = (err * hole).flatten(1).sum(1) / (hole.sum() * x.shape[1])
        metrics["hole_mse"] = hole_mse.sum()
        metrics["hole_psnr"] = (10 * torch.log10(1.0 / hole_mse.clamp_min(1e-10))).sum()
        return metrics


# --------------------------------------------------------------------------- segmentation


def dice_loss(p: torch.Tensor, t: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """1 - (2 * sum(p * t) + eps) / (sum(p^2) + sum(t^2) + eps), sums over all elements
    (in float32, or float64 when ``p`` is float64)."""
    dtype = torch.promote_types(p.dtype, torch.float32) if p.is_floating_point() else torch.float32
    p, t = p.to(dtype), t.to(dtype)
    return 1 - (2 * (p * t).sum() + eps) / (p.pow(2).sum() + t.pow(2).sum() + eps)


def overlap_scores(pred: torch.Tensor, truth: torch.Tensor, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice coefficient and IoU of binary masks (N x ...); 1 when both are empty."""
    pred, truth = pred.flatten(1).float(), truth.flatten(1).float()
    inter = (pred * truth).sum(1)
    total = pred.sum(1) + truth.sum(1)
    return (2 * inter + eps) / (total + eps), (inter + eps) / (total - inter + eps)


SEG_LOSSES = ("dice", "mse", "bce")


@TASKS.register("segment")
class Segment(Task):
    """Binary segmentation of ``masks`` from ``images``. The network gives one logit per pixel;
    ``p = sigmoid(logit)``. ``loss``: ``dice`` (the formula of ``dice_loss``, over the whole
    batch), ``mse`` (mean (p - t)^2) or ``bce`` (binary cross-entropy on the logits). Whatever
    the training loss, all three are reported, with the Dice coefficient and IoU of the
    prediction binarized at ``threshold`` (per image, then averaged)."""

    def __init__(self, loss: str = "dice", eps: float = 1e-6, threshold: float = 0.5) -> None:
        if loss not in SEG_LOSSES:
            raise ConfigError(f"config key 'task.loss': one of {', '.join(SEG_LOSSES)}, got {loss!r}")
        self.loss_name, self.eps, self.threshold = loss, eps, threshold

    def build_models(self, model_cfg, info):
        name = model_cfg.pop("name")
        return {
            "model": MODELS.build(
                name, model_cfg, in_channels=info.in_channels, out_channels=1, image_size=info.image_size, num_classes=1
            )
        }

    def model_input(self, batch: Metrics, generator: torch.Generator | None = None) -> torch.Tensor:
        if "masks" not in batch:
            raise ConfigError("task 'segment' needs a 'masks' array in the data (e.g. data=brain_mri)")
        return to_float(batch["images"])

    def loss(self, models, batch, train, generator=None):
        logits = models["model"](self.model_input(batch)).float()
        target = (batch["masks"] > 0).float()
        p = torch.sigmoid(logits)
        dice = dice_loss(p, target, self.eps)
        mse = F.mse_loss(p, target)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        loss = {"dice": dice, "mse": mse, "bce": bce}[self.loss_name]
        n = batch_count(len(logits), logits)
        dice_coef, iou = overlap_scores(p.detach() > self.threshold, target, self.eps)
        return loss, {
            "loss": loss.detach() * n,
            "dice_loss": dice.detach() * n,
            "mse": mse.detach() * n,
            "bce": bce.detach() * n,
            "dice": dice_coef.sum(),
            "iou": iou.sum(),
            "count": n,
        }

    @torch.no_grad()
    def images(self, models, batch, generator):
        x = self.model_input(batch)
        p = torch.sigmoid(models["model"](x).float())
        return {"scan": x, "truth": (batch["masks"] > 0).float(), "prediction": (p > self.threshold).float()}
