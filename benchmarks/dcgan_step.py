#!/usr/bin/env python
"""Images per second of one DCGAN training step (D step + G step of task ``gan``) at 256 px for
the full-size model (CHANNEL_NUM=512, LATENT_DIM=128), fp32 vs bf16 autocast and contiguous vs
channels_last, measured side by side in one run and reported as ratios to fp32/contiguous.

usage: python benchmarks/dcgan_step.py [--quick] [--device auto|cpu|cuda] [--batch-size N]
                                      [--steps N] [--rounds N] [--threads N] [--out DIR]

The step is the engine's: ``GAN.train_step`` driving the engine's ``Stepper``, with the models
and optimizers built by the engine's ``prepare_models`` under a real accelerate ``Accelerator``
of the variant's precision (fused Adam on CUDA, channels_last as the training run sets it);
only the data is synthetic. Variants run in rotating order, round after round, so drift in machine
load hits them alike; each figure is the median over rounds. ``--quick``: a 32 px,
CHANNEL_NUM=32 model for a check that it runs. Absolute images/s mean something only on an
otherwise idle machine; the ratios are the result.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hpclab.config import TrainConfig  # noqa: E402
from hpclab.data.loader import DataInfo  # noqa: E402
from hpclab.engine.build import make_accelerator, prepare_models  # noqa: E402
from hpclab.engine.steps import Stepper  # noqa: E402
from hpclab.tasks.gan import GAN  # noqa: E402
from hpclab.utils import atomic_write_text, write_json  # noqa: E402

VARIANTS = [("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)]  # (precision, channels_last)


def engine_step(
    size: int, channels: int, latent: int, precision: str, channels_last: bool, cpu: bool, seed: int = 0
) -> tuple[GAN, Stepper]:
    """The GAN task and the engine's stepper of its generator/discriminator pair, for one
    precision/layout. Each variant has its own accelerator (built last, its precision is the
    process's accelerate state; earlier variants keep theirs in their models and stepper)."""
    accelerator = make_accelerator("bf16" if precision == "bf16" else "no", collective_timeout_s=600, cpu=cpu)
    torch.manual_seed(seed)
    task = GAN()
    info = DataInfo(in_channels=3, image_size=size, num_classes=1, class_names=[], path=Path("."))
    models = task.build_models({"name": "dcgan", "channels": channels, "latent_dim": latent}, info)
    train = OmegaConf.structured(TrainConfig(mixed_precision=accelerator.mixed_precision, channels_last=channels_last))
    train.optimizer.lr = 2e-4
    models, optimizers, schedulers = prepare_models(accelerator, task, models, train, total_steps=10**9)
    return task, Stepper(accelerator, models, optimizers, schedulers, train.mixed_precision, None, channels_last)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(harness: tuple[GAN, Stepper], batch: dict[str, torch.Tensor], steps: int) -> float:
    """Images per second over ``steps`` training steps (the metrics stay on the device, as in
    the engine; one sync at the end)."""
    task, stepper = harness
    sync(batch["images"].device)
    start = time.perf_counter()
    for _ in range(steps):
        task.train_step(stepper, batch)
    sync(batch["images"].device)
    return steps * len(batch["images"]) / (time.perf_counter() - start)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 px, CHANNEL_NUM=32: a check that it runs")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch-size", type=int, default=None, help="default 128 on CUDA, 16 on CPU (8 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds over all variants (median)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per variant first")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (torch.set_num_threads); 1 avoids OpenMP thrashing on a busy machine",
    )
    parser.add_argument("--out", default=str(Path(os.environ.get("HPCLAB_RESULTS", "results")) / "benchmarks"))
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    gpu = device.type == "cuda"
    size, channels, latent = (32, 32, 16) if args.quick else (256, 512, 128)
    batch_size = args.batch_size or (128 if gpu else (8 if args.quick else 16))
    steps = args.steps or (2 if args.quick else (20 if gpu else 3))
    rounds = args.rounds or (2 if args.quick else (5 if gpu else 3))
    warmup = args.warmup if args.warmup is not None else (1 if not gpu else 5)

    gen = torch.Generator().manual_seed(0)
    batch = {
        "images": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, generator=gen).to(device),
        "labels": torch.zeros(batch_size, dtype=torch.int64, device=device),
    }
    harnesses = {v: engine_step(size, channels, latent, *v, cpu=not gpu) for v in VARIANTS}
    for harness in harnesses.values():
        run_steps(harness, batch, warmup)
    samples: dict[tuple[str, bool], list[float]] = {v: [] for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for variant in order:
            samples[variant].append(run_steps(harnesses[variant], batch, steps))

    base = statistics.median(samples[VARIANTS[0]])
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    rows: list[dict[str, Any]] = []
    for (precision, cl), values in samples.items():
        median = statistics.median(values)
        rows.append(
            {
                "precision": precision,
                "channels_last": cl,
                "images_per_s": round(median, 2),
                "ratio_vs_fp32_contiguous": round(median / base, 3),
                "spread": round((max(values) - min(values)) / median, 3),
            }
        )
    title = (
        f"DCGAN training step, {size} px, CHANNEL_NUM={channels}, LATENT_DIM={latent}, batch {batch_size}, "
        f"{where}, torch {torch.__version__}; median of {rounds} rounds x {steps} steps"
    )
    lines = [
        title,
        "",
        "| precision | channels_last | images/s | ratio vs fp32 contiguous | spread (max-min)/median |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['precision']} | {r['channels_last']} | {r['images_per_s']:.1f} | {r['ratio_vs_fp32_contiguous']:.2f} "
        f"| {r['spread']:.2f} |"
        for r in rows
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    out = Path(args.out)
    stem = f"dcgan_step_{device.type}{'_quick' if args.quick else ''}"
    atomic_write_text(out / f"{stem}.md", table)
    write_json(
        out / f"{stem}.json",
        {
            "title": title,
            "device": where,
            "image_size": size,
            "channels": channels,
            "latent_dim": latent,
            "batch_size": batch_size,
            "steps": steps,
            "rounds": rounds,
            "rows": rows,
            "samples": {f"{p}/{'cl' if c else 'contig'}": v for (p, c), v in samples.items()},
        },
    )
    print(f"written: {out / stem}.md, .json")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
