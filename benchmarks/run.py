#!/usr/bin/env python
"""Side-by-side benchmarks: each row is measured against its baseline in the same run and
reported as a ratio (absolute numbers depend on the machine; ratios are what we track).

usage: python benchmarks/run.py [--quick] [--only data,steps,target,eval,gpu] [--out results/benchmarks]

Rows:
  data    images/s at batch 256, steady state (persistent workers, after a warm-up epoch): the
          HDF5 reader per item and batched through 2 workers, memory-mapped in the training
          process, and in memory, vs torchvision (PIL per item, 2 workers) at 28 and 96 px; and
          the ceiling of slicing a uint8 tensor already in memory
  steps   training-step images/s, engine vs a plain PyTorch loop, same model/optimizer/batch/
          precision, for the 3-d AE, the ae_latent conv AE, a CIFAR-size CNN and the 256 px DCGAN
          (median over 5 rounds in rotating order; the ratio is the median of per-round ratios)
  target  wall time to full-training-set MSE < 0.03 for the Fashion-MNIST 3-d AE: engine with
          its shipped config vs the plain loop with the brief's setup (Adam 1e-3, batch 128)
  eval    evaluation of one split (the ae_latent conv AE on the Fashion-MNIST test set) by 1 rank
          vs sharded over 2 ranks (2 local processes, gloo, 1 thread each), images/s; the rounds
          alternate in the same two processes (rank 1 waits at a barrier during a 1-rank round),
          median over the rounds; the row also says how far the two evaluations' metrics differ
  gpu     (CUDA only) the step rows on the GPU: engine in fp32/bf16, channels_last, torch.compile,
          data on the GPU vs workers, against the plain loop; the DCGAN epoch time at CHANNEL_NUM=512
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")
Row = dict[str, Any]


# --------------------------------------------------------------------------- fixtures


def fashion_mnist_dirs(work: Path, quick: bool) -> tuple[Path, Path]:
    """(IDX mirror, torchvision root): real Fashion-MNIST when installed, else a synthetic set."""
    mirror = work / "mirror"
    if DEBIAN_FMNIST.is_dir():
        mirror = DEBIAN_FMNIST
    else:
        sys.path.insert(0, str(REPO / "tests"))
        from formats.idx import write_idx_dataset

        write_idx_dataset(mirror, n_train=60000 if not quick else 6000, n_test=1000)
    raw = work / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for f in mirror.iterdir():
        target = raw / f.name.removesuffix(".gz")
        with gzip.open(f) if f.suffix == ".gz" else open(f, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return mirror, work / "tv"


def compose_run(work: Path, overrides: list[str]):
    from hpclab.config import compose

    os.environ["HPCLAB_DATA"] = str(work / "data")
    os.environ["HPCLAB_RESULTS"] = str(work / "results")
    return compose(overrides)


def prepared(work: Path, mirror: Path) -> Path:
    """Fashion-MNIST staged into HDF5 by the real prepare path."""
    from hpclab.data import stage

    return stage(compose_run(work, ["data=fashion_mnist", f"data.mirrors=[{mirror}]", "data.download=false"]))


def timed(fn: Callable[[], int], repeat: int = 1) -> float:
    """Best items/s over ``repeat`` calls of ``fn`` (which returns the number of items)."""
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        n = fn()
        best = max(best, n / (time.perf_counter() - start))
    return best


# --------------------------------------------------------------------------- data rows


def data_rows(label: str, tv: torch.utils.data.Dataset, path: Path, limit: int) -> list[Row]:
    """The reader's modes vs a torchvision dataset (PIL per item) on the same images."""
    from torch.utils.data import DataLoader

    from hpclab.data.hdf5 import H5Split
    from hpclab.data.loader import EpochBatches, SplitBatches

    batch, workers = 256, 2
    indices = np.arange(limit)
    tv = torch.utils.data.Subset(tv, indices)

    def loader_rate(dataset, **kwargs) -> float:
        """Steady-state images/s: persistent workers, one warm-up epoch, then the best of 3."""
        loader = DataLoader(dataset, num_workers=workers, persistent_workers=True, **kwargs)
        sampler = kwargs.get("sampler")

        def one_epoch() -> int:
            if sampler is not None:
                sampler.set_epoch(sampler.epoch + 1)
            return sum(len(b[0] if isinstance(b, (list, tuple)) else b["images"]) for b in loader)

        one_epoch()
        return timed(one_epoch, 3)

    split = H5Split(path, "train", indices)
    resident = SplitBatches(split, batch, shuffle=True, seed=0, device=torch.device("cpu"), in_memory=True)
    streamed = SplitBatches(split, batch, shuffle=True, seed=0, device=torch.device("cpu"), in_memory=False)

    def epoch_of(batches: SplitBatches) -> Callable[[], int]:
        return lambda: sum(len(b["images"]) for b in batches.epoch(0))

    tensor = resident.tensors["images"]

    def ceiling() -> int:
        perm = torch.randperm(len(tensor))
        return sum(len(tensor.index_select(0, perm[i : i + batch])) for i in range(0, len(tensor), batch))

    base = loader_rate(tv, batch_size=batch, shuffle=True)
    top = timed(ceiling, 5)
    rows = [
        {
            "group": "data",
            "row": f"{label}: torchvision (PIL per item, {workers} workers)",
            "value": base,
            "unit": "img/s",
            "ratio": 1.0,
            "baseline": "torchvision",
        }
    ]
    modes = (
        (f"HDF5 per item ({workers} workers)", lambda: loader_rate(split, batch_size=batch, shuffle=True)),
        (
            f"HDF5 batched slice ({workers} workers)",
            lambda: loader_rate(split, sampler=EpochBatches(len(split), batch, shuffle=True, seed=0), batch_size=None),
        ),
        ("HDF5 batched slice (memory-mapped, in process)", lambda: timed(epoch_of(streamed), 3)),
        ("HDF5 in memory (tensor index)", lambda: timed(epoch_of(resident), 5)),
    )
    for name, measure in modes:
        rate = measure()
        rows.append(
            {
                "group": "data",
                "row": f"{label}: {name}",
                "value": rate,
                "unit": "img/s",
                "ratio": rate / base,
                "baseline": "torchvision",
                "of_ceiling": rate / top,
            }
        )
    rows.append(
        {
            "group": "data",
            "row": f"{label}: ceiling, slicing an in-memory uint8 tensor",
            "value": top,
            "unit": "img/s",
            "ratio": top / base,
            "baseline": "torchvision",
            "of_ceiling": 1.0,
        }
    )
    return rows


def bench_data(work: Path, quick: bool) -> list[Row]:
    """28 px: Fashion-MNIST vs torchvision's FashionMNIST class; 96 px: STL-10-sized synthetic
    images as PNG files (torchvision's ImageFolder) vs the same images in HDF5."""
    import torchvision
    from PIL import Image

    mirror, tv_root = fashion_mnist_dirs(work, quick)
    fmnist = torchvision.datasets.FashionMNIST(
        str(tv_root), train=True, download=False, transform=torchvision.transforms.ToTensor()
    )
    rows = data_rows("28 px Fashion-MNIST", fmnist, prepared(work, mirror), 12800 if quick else 60000)

    n96 = 1024 if quick else 5120
    path96 = synthetic_hdf5(work, "synthetic_96px", n96, 3, 96)
    folder = work / "png96"
    if not folder.is_dir():
        from hpclab.data.hdf5 import H5Split

        data = H5Split(path96, "train").load()
        for i, (img, lab) in enumerate(zip(data["images"].numpy(), data["labels"].tolist())):
            (folder / str(lab)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(folder / str(lab) / f"{i:05d}.png")
    folder_ds = torchvision.datasets.ImageFolder(str(folder), transform=torchvision.transforms.ToTensor())
    return rows + data_rows("96 px synthetic (STL-10 size)", folder_ds, path96, n96)


# --------------------------------------------------------------------------- step rows


def reconstruction_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    x = images.float() / 255
    return F.mse_loss(model(x), x)


def classification_loss(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    x = (images.float() / 255 - 0.5) / 0.25  # the classify task's normalisation
    return F.cross_entropy(model(x), labels)


PlainStep = Callable[[torch.Tensor, torch.Tensor | None], None]  # (uint8 images, labels) -> one update


def adam_step(loss_fn: Callable) -> Callable[[torch.nn.Module, float], PlainStep]:
    """The hand-written step for one model: loss, zero_grad, backward, Adam step."""

    def build(model: torch.nn.Module, lr: float) -> PlainStep:
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def step(images: torch.Tensor, labels: torch.Tensor | None) -> None:
            loss = loss_fn(model, images, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    return build


def dcgan_step(pair: torch.nn.Module, lr: float) -> PlainStep:
    """The textbook DCGAN step (as in PyTorch's DCGAN tutorial): D on a real and a generated
    batch, then G with the non-saturating loss through the updated D; Adam(betas 0.5, 0.999)."""
    G, D = pair.generator, pair.discriminator
    opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.5, 0.999))

    def step(images: torch.Tensor, labels: torch.Tensor | None) -> None:
        real = images.float() / 127.5 - 1
        fake = G(torch.randn(len(real), G.latent_dim, device=real.device))
        d_real, d_fake = D(real), D(fake.detach())
        d_loss = F.binary_cross_entropy(d_real, torch.ones_like(d_real)) + F.binary_cross_entropy(
            d_fake, torch.zeros_like(d_fake)
        )
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        d_gen = D(fake)
        g_loss = F.binary_cross_entropy(d_gen, torch.ones_like(d_gen))
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()

    return step


def plain_loop(
    model: torch.nn.Module,
    images: torch.Tensor,
    steps: int,
    batch: int,
    lr: float,
    device: torch.device,
    seed: int = 0,
    until_mse: float | None = None,
    eval_images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    build_step: Callable[[torch.nn.Module, float], PlainStep] | None = None,
) -> tuple[int, float]:
    """The hand-written baseline: shuffle, slice, then ``build_step``'s update per batch.
    ``build_step`` defaults to Adam on the reconstruction loss. With ``until_mse``, evaluates
    the whole training set once per epoch and stops below it."""
    torch.manual_seed(seed)
    update = (build_step or adam_step(reconstruction_loss))(model, lr)
    data = images.to(device)
    targets = labels.to(device) if labels is not None else None
    n, step = len(data), 0
    model.train()
    while step < steps:
        perm = torch.randperm(n, device=device)
        for i in range(0, n - batch + 1, batch):
            idx = perm[i : i + batch]
            update(data[idx], targets[idx] if targets is not None else None)
            step += 1
            if step >= steps:
                break
        if until_mse is not None:
            mse = full_mse(model, data if eval_images is None else eval_images.to(device))
            model.train()
            if mse < until_mse:
                return step, mse
    return step, float("nan")


@torch.no_grad()
def full_mse(model: torch.nn.Module, data: torch.Tensor, batch: int = 1024) -> float:
    model.eval()
    total = 0.0
    for i in range(0, len(data), batch):
        x = data[i : i + batch].float() / 255
        total += F.mse_loss(model(x), x, reduction="sum").item()
    return total / data[0].numel() / len(data)


def engine_fit(work: Path, overrides: list[str]) -> dict[str, Any]:
    """Run the real Trainer (as a launched run would) and return its summary numbers."""
    from hpclab.engine import Trainer
    from hpclab.rundir import read_metrics

    cfg = compose_run(work, overrides)
    run_dir = work / "results" / f"bench-{time.time_ns()}"
    trainer = Trainer(cfg, run_dir)
    start = time.perf_counter()
    result = trainer.fit()
    result["seconds"] = time.perf_counter() - start
    trainer.close()
    # the loop's own rate (first to last step), as the plain loop is timed: without the one-off
    # setup and the final checkpoint/TensorBoard writes around it
    fit_logs = [record for record in read_metrics(run_dir) if record["split"] == "fit"]
    result["images_per_s"] = fit_logs[-1]["images_per_s"] if fit_logs else None
    return result


def synthetic_hdf5(work: Path, name: str, n: int, channels: int, size: int, classes: int = 10) -> Path:
    """Random uint8 images with labels in the suite's HDF5 layout (for sizes we have no data of)."""
    from hpclab.data.hdf5 import DatasetArrays, write_hdf5

    path = work / "data" / f"{name}.h5"
    if not path.is_file():
        rng = np.random.default_rng(0)
        split = {
            "images": rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8),
            "labels": rng.integers(0, classes, n).astype(np.int64),
        }
        write_hdf5(
            path,
            DatasetArrays(
                splits={"train": split, "test": split},
                class_names=[str(i) for i in range(classes)],
                inputs=[],
                source="synthetic",
            ),
        )
    return path


@dataclass(frozen=True)
class StepModel:
    """One step-throughput row: the experiment as the engine runs it, and the plain loop's step."""

    overrides: list[str]
    batch: int  # on the CPU; the GPU section takes the experiment's own batch size unless `gpu` sets one
    data: Any  # "fashion_mnist", or (channels, size, count) of a synthetic set
    plain: Callable[[torch.nn.Module, float], PlainStep]
    steps: tuple[int, int]  # (quick, full)
    gpu: list[str] = field(default_factory=list)  # overrides for the GPU section (full-size models)


STEP_MODELS: dict[str, StepModel] = {
    "Fashion-MNIST 3-d AE": StepModel(
        ["experiment=fmnist_ae3d"], 128, "fashion_mnist", adam_step(reconstruction_loss), (60, 400)
    ),
    "conv AE (ae_latent, l=32)": StepModel(
        ["experiment=ae_latent", "model.latent_dim=32"], 128, "fashion_mnist", adam_step(reconstruction_loss), (30, 150)
    ),
    "CIFAR-size CNN classifier (cifar_cnn)": StepModel(
        ["experiment=cifar_cnn", "task.augment=false", "task.label_smoothing=0.0"],
        128,
        (3, 32, 10_000),
        adam_step(classification_loss),
        (30, 150),
    ),
    # the 256 px generator/discriminator pair; on CPU at CHANNEL_NUM=64, on a GPU at the brief's 512
    # (data=flowers102: every image of the synthetic file, not the experiment's category subset)
    "DCGAN 256 px (dcgan)": StepModel(
        [
            "experiment=dcgan",
            "data=flowers102",
            "model.channels=64",
            "train.mixed_precision=no",
            "train.channels_last=false",
        ],
        32,
        (3, 256, 512),
        dcgan_step,
        (4, 30),
        gpu=["model.channels=512", "train.batch_size=128"],
    ),
}

# GPU section: engine variants (overrides) against the same plain loop in fp32
GPU_VARIANTS: dict[str, list[str]] = {
    "engine fp32": [],
    "engine bf16": ["train.mixed_precision=bf16"],
    "engine bf16 + channels_last": ["train.mixed_precision=bf16", "train.channels_last=true"],
    "engine bf16 + channels_last + torch.compile": [
        "train.mixed_precision=bf16",
        "train.channels_last=true",
        "train.compile=true",
    ],
    "engine fp32, data via 4 workers (not on the GPU)": ["data.in_memory=false", "data.num_workers=4"],
}


def step_rows(work: Path, quick: bool, device: torch.device, variants: dict[str, list[str]], group: str) -> list[Row]:
    """Engine variants vs the plain loop per model, in rotating order over rounds (median rate
    of each; ratio = median of the per-round ratios), so one-off warm-up and drift in machine
    load hit all alike."""
    from hpclab.data.hdf5 import H5Split
    from hpclab.models import MODELS
    from hpclab.registry import kwargs_of

    rounds = 1 if quick else 5
    rows = []
    for label, spec in STEP_MODELS.items():
        overrides = list(spec.overrides) + (spec.gpu if device.type == "cuda" else [f"train.batch_size={spec.batch}"])
        if spec.data == "fashion_mnist":
            path = prepared(work, fashion_mnist_dirs(work, quick)[0])
        else:
            channels, size, count = spec.data
            path = synthetic_hdf5(work, f"synthetic_{size}px", count, channels, size)
            overrides.append(f"data.file={path}")
        try:
            cfg = compose_run(work, overrides)
        except Exception as exc:  # an experiment not present in this checkout
            print(f"skip {label}: {exc}", file=sys.stderr)
            continue
        steps, batch = spec.steps[0 if quick else 1], cfg.train.batch_size
        split = H5Split(path, "train").load()
        common = [
            "train.epochs=null",
            f"train.max_steps={steps}",
            "train.eval_splits=[]",
            "train.final_splits=[]",
            "train.monitor=none",
            f"train.eval_every={steps}",
            f"train.log_every={steps}",
            "train.scheduler.name=none",
            "analysis=[]",
            "train.progress=log",
            "data.val_fraction=0",
            "train.optimizer.name=adam",
            "train.optimizer.lr=0.001",
            "train.optimizer.weight_decay=0.0",
            "train.grad_clip=null",
        ]

        def fresh_model() -> torch.nn.Module:
            torch.manual_seed(0)
            return MODELS.build(
                cfg.model.name,
                kwargs_of(cfg.model),
                in_channels=split["images"].shape[1],
                image_size=split["images"].shape[2],
                num_classes=10,
            ).to(device)

        def plain_rate(n_steps: int = steps) -> float:
            model = fresh_model()
            synchronize(device)
            start = time.perf_counter()
            plain_loop(
                model, split["images"], n_steps, batch, 1e-3, device, labels=split["labels"], build_step=spec.plain
            )
            synchronize(device)
            return n_steps * batch / (time.perf_counter() - start)

        measure = {"plain loop": plain_rate}
        for name, extra in variants.items():
            measure[name] = lambda extra=extra: engine_fit(work, overrides + common + extra)["images_per_s"]
        plain_rate(2)  # untimed: the process's first kernels of this model (oneDNN primitives, allocator)
        flops = step_flops(fresh_model(), spec, split, batch, device)
        samples: dict[str, list[float]] = {name: [] for name in measure}
        names = list(measure)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                samples[name].append(measure[name]())
        for name, values in samples.items():
            value = statistics.median(values)
            # each round's rates were taken minutes apart at most: pairing them cancels the slow
            # drift of a shared machine better than a ratio of medians
            ratio = statistics.median(v / p for v, p in zip(values, samples["plain loop"]))
            rows.append(
                {
                    "group": group,
                    "row": f"{label}: {name}",
                    "value": value,
                    "unit": "img/s",
                    "ratio": ratio,
                    "baseline": "plain loop",
                    "samples": values,
                    "tflops": value / batch * flops / 1e12,
                }
            )
        if spec.plain is dcgan_step and device.type == "cuda":
            best = max(statistics.median(v) for v in samples.values())
            rows.append(
                {
                    "group": group,
                    "row": f"{label}: seconds per epoch of 8,189 images (fastest row)",
                    "value": 8189 / best,
                    "unit": "s",
                    "ratio": 1.0,
                    "baseline": "target < 10 s",
                }
            )
    return rows


def step_flops(
    model: torch.nn.Module, spec: StepModel, split: dict[str, torch.Tensor], batch: int, device: torch.device
) -> int:
    """Model FLOPs of one training step (convolutions and matmuls, forward and backward), counted
    by torch.utils.flop_counter on the plain loop's step; rows turn it into achieved TFLOP/s.
    The same count serves every row (as for MFU), so a row that skips work (the engine's frozen
    D in the G step) is credited with the textbook step's FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    update = spec.plain(model, 1e-3)
    with FlopCounterMode(display=False) as counter:
        update(split["images"][:batch].to(device), split["labels"][:batch].to(device))
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_steps(work: Path, quick: bool) -> list[Row]:
    """Engine vs plain loop on the CPU (the GPU section repeats these rows on the GPU)."""
    return step_rows(work, quick, torch.device("cpu"), {"engine": []}, "steps")


def bench_target(work: Path, quick: bool) -> list[Row]:
    """Time to full-training-set MSE < 0.03 (Fashion-MNIST 3-d AE): engine vs the brief's loop."""
    from hpclab.data.hdf5 import H5Split
    from hpclab.models import MODELS
    from hpclab.registry import kwargs_of

    mirror, _ = fashion_mnist_dirs(work, quick)
    path = prepared(work, mirror)
    threshold = 0.03
    try:
        cfg = compose_run(work, ["experiment=fmnist_ae3d"])
    except Exception as exc:
        print(f"skip target: {exc}", file=sys.stderr)
        return []
    images = H5Split(path, "train").load()["images"]
    max_epochs = 2 if quick else 30
    torch.manual_seed(0)
    model = MODELS.build(cfg.model.name, kwargs_of(cfg.model), in_channels=1, image_size=28, num_classes=10)
    start = time.perf_counter()
    steps, mse = plain_loop(
        model, images, max_epochs * (len(images) // 128), 128, 1e-3, torch.device("cpu"), until_mse=threshold
    )
    plain_s = time.perf_counter() - start
    result = engine_fit(
        work,
        ["experiment=fmnist_ae3d", "train.final_splits=[]", "analysis=[]", "train.progress=log"]
        + (["train.epochs=2"] if quick else []),
    )
    reached = bool(result["stopped_early"])
    return [
        {
            "group": "target",
            "row": f"plain loop (Adam 1e-3, batch 128): {steps} steps, mse {mse:.4f}",
            "value": plain_s,
            "unit": "s",
            "ratio": 1.0,
            "baseline": "plain loop",
        },
        {
            "group": "target",
            "row": f"engine (fmnist_ae3d config): {result['steps']} steps, "
            f"{'reached' if reached else 'did not reach'} {threshold}",
            "value": result["seconds"],
            "unit": "s",
            "ratio": result["seconds"] / plain_s,
            "baseline": "plain loop",
            "note": "ratio < 1 is faster",
        },
    ]


# --------------------------------------------------------------------------- evaluation rows

EVAL_OVERRIDES = ["experiment=ae_latent", "train.eval_batch_size=256", "analysis=[]"]


def eval_rank(rank: int, cfg_yaml: str, run_dir: str, port: int, rounds: int, out: str) -> None:
    """One of 2 local ranks: alternating rounds of the test split evaluated by rank 0 alone
    (rank 1 waits at the barrier, a blocking receive) and sharded over both (each a run of
    batches, one float64 all-reduce), timed on rank 0 from a barrier to the evaluation's return.
    Each rank also counts its CPU seconds per round: on a shared machine the wall times depend on
    the other load, the CPU time per rank shows the split of the work itself. Rank 0 writes the
    figures and both evaluations' metrics to ``out``."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    from omegaconf import OmegaConf

    from hpclab.engine import Trainer

    trainer = Trainer(OmegaConf.create(cfg_yaml), Path(run_dir))  # DDP gives both ranks rank 0's weights

    def round_of(sharded: bool) -> tuple[float, float, dict[str, float]]:
        torch.distributed.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        if sharded:
            values = trainer.run.evaluate("test", sharded=True)
        else:
            values = trainer.run.evaluate("test") if rank == 0 else {}
        return time.perf_counter() - start, time.process_time() - cpu, values

    round_of(False), round_of(True)  # warm-up: first batches, allocator, the process group's sockets
    wall: dict[str, list[float]] = {"1": [], "2": []}
    cpu: dict[str, list[float]] = {"1": [], "2": []}
    values: dict[str, dict[str, float]] = {}
    for _ in range(rounds):
        for ranks in ("1", "2"):
            seconds, cpu_seconds, values[ranks] = round_of(ranks == "2")
            wall[ranks].append(seconds)
            cpu[ranks].append(cpu_seconds)
    cpus: list[Any] = [None, None]
    torch.distributed.all_gather_object(cpus, cpu)  # plain floats
    if rank == 0:
        Path(out).write_text(
            json.dumps(
                {
                    "wall": wall,
                    "cpu": cpus,
                    "values": values,
                    "images": len(trainer.parts.data.indices["test"]),
                    "batches": len(trainer.parts.data.batches("test", train=False)),
                }
            )
        )
    # Both ranks leave together: a rank that tears down the gloo group while the other still
    # writes can abort it ("terminate called without an active exception", seen once in CI).
    torch.distributed.barrier()
    trainer.close()


def bench_eval(work: Path, quick: bool) -> list[Row]:
    """Evaluation of one split by 1 rank vs sharded over 2 local ranks (the engine's sharded
    ``evaluate``), side by side in the same two processes."""
    import socket

    import torch.multiprocessing as mp
    from omegaconf import OmegaConf

    mirror, _ = fashion_mnist_dirs(work, quick)
    prepared(work, mirror)
    cfg = compose_run(
        work,
        [
            *EVAL_OVERRIDES,
            "data=fashion_mnist",
            f"data.mirrors=[{mirror}]",
            "data.download=false",
            *(["data.limit=2048"] if quick else []),
        ],
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = work / "eval_scaling.json"
    rounds = 3 if quick else 7
    load = os.getloadavg()[0]
    mp.start_processes(
        eval_rank,
        args=(OmegaConf.to_yaml(cfg, resolve=True), str(work / "results" / "eval"), port, rounds, str(out)),
        nprocs=2,
        start_method="spawn",
        join=True,
    )
    m = json.loads(out.read_text())
    one, two = (statistics.median(m["wall"][k]) for k in ("1", "2"))
    cpu_one = statistics.median(m["cpu"][0]["1"])  # rank 0 alone
    cpu_two = statistics.median(max(r0, r1) for r0, r1 in zip(m["cpu"][0]["2"], m["cpu"][1]["2"]))  # the busier rank
    a, b = m["values"]["1"], m["values"]["2"]
    differs = max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a)
    n = m["images"]
    what = f"ae_latent conv AE, Fashion-MNIST test ({n} images, {m['batches']} batches of 256)"
    print(
        f"eval: 1 rank {one:.3f} s, 2 ranks {two:.3f} s (wall, median of {rounds}): speed-up {one / two:.2f}x; "
        f"CPU s of the busier rank {cpu_one:.3f} vs {cpu_two:.3f}: {cpu_one / cpu_two:.2f}x; metrics differ by "
        f"{differs:.1e} relative at most; load average {load:.1f} on {os.cpu_count()} cores before",
        file=sys.stderr,
        flush=True,
    )
    return [
        {
            "group": "eval",
            "row": f"{what}: 1 rank",
            "value": n / one,
            "unit": "images/s",
            "ratio": 1.0,
            "baseline": "1 rank",
            "wall_s": m["wall"]["1"],
            "cpu_s": m["cpu"][0]["1"],
        },
        {
            "group": "eval",
            "row": f"{what}: 2 ranks, gloo, 1 thread each (CPU time of the busier rank "
            f"{cpu_one / cpu_two:.2f}x less; metrics within {differs:.0e} relative)",
            "value": n / two,
            "unit": "images/s",
            "ratio": one / two,
            "baseline": "1 rank",
            "wall_s": m["wall"]["2"],
            "cpu_s": [m["cpu"][0]["2"], m["cpu"][1]["2"]],
            "cpu_ratio": cpu_one / cpu_two,
            "metrics_max_rel_diff": differs,
            "load_average": load,
            "note": "ratio = wall-time speed-up",
        },
    ]


# --------------------------------------------------------------------------- GPU rows


def bench_gpu(work: Path, quick: bool) -> list[Row]:
    """The step rows on the GPU: the plain loop (fp32, data on the GPU) vs engine variants."""
    if not torch.cuda.is_available():
        return []
    return step_rows(work, quick, torch.device("cuda"), GPU_VARIANTS, "gpu")


SECTIONS = {"data": bench_data, "steps": bench_steps, "target": bench_target, "eval": bench_eval, "gpu": bench_gpu}


def to_markdown(rows: list[Row], args: argparse.Namespace) -> str:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    lines = [
        f"Benchmarks on {device}, torch {torch.__version__}; "
        f"`python benchmarks/run.py{' --quick' if args.quick else ''}`",
        "",
        "| group | row | value | unit | ratio vs baseline | baseline |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        extra = f" ({r['of_ceiling']:.2f} of ceiling)" if "of_ceiling" in r else ""
        extra += f" ({r['tflops']:.3g} TFLOP/s)" if "tflops" in r else ""
        lines.append(
            f"| {r['group']} | {r['row']} | {r['value']:.1f} | {r['unit']} | {r['ratio']:.2f}x{extra} | "
            f"{r['baseline']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short version (smoke test)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--out", default=str(REPO / "results" / "benchmarks"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="hpclab-bench-") as tmp:
        for name in args.only.split(","):
            if name not in SECTIONS:
                parser.error(f"unknown section {name!r} (choose from {', '.join(SECTIONS)})")
            print(f"== {name}", file=sys.stderr, flush=True)
            rows += SECTIONS[name](Path(tmp), args.quick)
    table = to_markdown(rows, args)
    print(table)
    from hpclab.utils import atomic_write_text, write_json

    out = Path(args.out)
    atomic_write_text(out / "benchmarks.md", table)
    write_json(out / "benchmarks.json", {"quick": args.quick, "rows": rows, "torch": torch.__version__})
    return 0


if __name__ == "__main__":
    sys.exit(main())
