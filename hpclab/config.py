"""Config schemas, composition (Hydra compose API) and validation.

Configs are YAML groups under ``configs/`` composed by Hydra from ``key=value`` overrides.
The composed tree is then merged onto the dataclass schema below, so an unknown key or a
wrong type fails before anything runs, with one line that names the key. Model and task
sections are free-form in the schema and validated against the registered class signature.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(ValueError):
    """A user-facing configuration problem; its message is one line."""


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # source name in hpclab.data.sources.SOURCES
    file: Optional[str] = None  # HDF5 path; default <paths.data>/<name>.h5
    mirrors: list[str] = field(default_factory=list)  # local dirs holding the original files
    download: bool = True  # let prepare_data fetch the originals (nodes with internet)
    download_root: Optional[str] = None  # where downloads go; default <paths.data>/raw/<name>
    image_size: Optional[int] = None  # resize at staging time (e.g. 256 for Flowers-102)
    val_fraction: float = 0.1  # held out of train with a fixed seed
    train_fraction: float = 1.0  # label fraction of the remaining train split
    classes: Optional[list[Any]] = None  # keep only these classes (names or indices)
    limit: Optional[int] = None  # use at most this many images per split (smoke runs)
    in_memory: str = "auto"  # auto | true | false: load splits into (device) memory
    max_memory_gb: float = 4.0  # "auto" loads a split when it is smaller than this
    on_device: bool = True  # with in-memory data, keep it on the accelerator
    # DataLoader workers when streaming from HDF5. 0 reads in the training process: files written
    # by prepare_data are memory-mapped, and one gather per batch beats worker IPC (benchmarks/run.py
    # data rows); raise it for chunked/compressed files or cold reads from a slow shared file system.
    num_workers: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # source-specific extras


@dataclass
class OptimizerConfig:
    name: str = "adam"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class SchedulerConfig:
    name: str = "none"  # none | cosine | onecycle | step
    warmup_steps: int = 0
    pct_start: float = 0.25  # onecycle
    step_size: int = 1000  # step
    gamma: float = 0.1  # step


@dataclass
class StopConfig:
    """Stop early once ``metric`` crosses ``threshold`` (below for mode=min, above for max)."""

    metric: Optional[str] = None
    threshold: Optional[float] = None
    mode: str = "min"


@dataclass
class TrainConfig:
    epochs: Optional[int] = 10
    max_steps: Optional[int] = None  # overrides epochs when set
    batch_size: int = 128
    eval_batch_size: int = 512
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip: Optional[float] = None
    mixed_precision: str = "no"  # no | fp16 | bf16
    channels_last: bool = False
    compile: bool = False
    eval_every: Optional[int] = None  # steps; default once per epoch
    eval_splits: list[str] = field(default_factory=lambda: ["val"])
    final_splits: list[str] = field(default_factory=lambda: ["test"])
    monitor: str = "val/loss"  # metric that picks the best checkpoint; none matching: keep the last weights
    monitor_mode: str = "min"
    stop: StopConfig = field(default_factory=StopConfig)
    checkpoint_every: Optional[int] = None  # steps; default at every evaluation
    keep_checkpoints: int = 2
    log_every: int = 50
    image_every: Optional[int] = None  # steps between image grids; default at each eval
    resume: str = "auto"  # auto | never
    progress: str = "auto"  # auto | bar | log


@dataclass
class PathsConfig:
    data: str = "data"
    results: str = "results"
    cache: str = "data/cache"  # TORCH_HOME / HF_HOME for staged weights


@dataclass
class SweepConfig:
    name: Optional[str] = None
    experiment: Optional[str] = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)  # x, metrics, logx
    subset: Optional[int] = None  # keep at most this many values per axis (smoke runs)


@dataclass
class ClusterConfig:
    name: str = "local"  # local | slurm
    processes: int = 1  # local: data-parallel processes per run (gloo on CPU)
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: Optional[float] = None
    array_parallelism: int = 64
    max_array_size: int = 1000
    signal_delay_s: int = 120
    max_requeues: int = 3
    folder: Optional[str] = None  # submitit's folder; default <results>/<sweep>/.submitit
    image: Optional[str] = None  # run tasks in this image (SIF file or podman image); default $HPCLAB_IMAGE
    container: Optional[str] = None  # apptainer | singularity | podman; default $HPCLAB_CONTAINER, else apptainer
    binds: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)  # shell lines run before the job
    extra: dict[str, Any] = field(default_factory=dict)  # extra sbatch parameters


@dataclass
class RunConfig:
    experiment: Optional[str] = None
    run_group: str = "default"  # results/<run_group>/<run_name>
    run_name: str = "run"
    seed: int = 0
    force: bool = False  # re-run a finished run
    dry_run: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: dict[str, Any] = field(default_factory=dict)
    task: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    analysis: list[Any] = field(default_factory=list)
    paths: PathsConfig = field(default_factory=PathsConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    weights: list[str] = field(default_factory=list)  # prepare_data: pretrained weights to stage
    notes: str = ""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _compose_error(exc: BaseException) -> str:
    """One line that names the bad key (from OmegaConf's cause) or the missing option."""
    cause = exc.__cause__
    key = getattr(cause, "full_key", None)
    if key:
        return f"config key '{key}': {_one_line(cause)}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and "Could not find" in lines[0] and "Available options" in str(exc):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available")) + 1
        options = [line for line in lines[start:] if not line.startswith(("Config search", "provider="))]
        what = lines[0].replace("In 'config': ", "")
        return f"{what} (available: {', '.join(options)})"
    return f"bad override: {lines[0] if lines else type(exc).__name__}"


def compose(overrides: list[str]) -> DictConfig:
    """Compose ``configs/config.yaml`` with Hydra overrides and validate it against the schema."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    # The schema is the first default of config.yaml: every key exists (so key=value works for
    # all of them) and Hydra already rejects unknown keys and wrong types while composing.
    ConfigStore.instance().store(name="schema", node=RunConfig)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            raw = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_compose_error(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    return validate(raw)


def validate(raw: DictConfig) -> DictConfig:
    """Merge onto the schema (unknown keys and wrong types fail) and resolve interpolations."""
    schema = OmegaConf.structured(RunConfig)
    try:
        cfg = OmegaConf.merge(schema, raw)
        for key in ("data", "results", "cache"):  # absolute before anything interpolates them,
            cfg.paths[key] = str(Path(cfg.paths[key]).expanduser().absolute())  # so SLURM tasks agree
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        reason = _one_line(exc).split("\n")[0]
        raise ConfigError(f"config key '{key}': {reason}" if key else reason) from None
    _check_choices(cfg)
    from hpclab.models import MODELS
    from hpclab.tasks import TASKS

    check_kwargs("model", cfg.model, MODELS)
    check_kwargs("task", cfg.task, TASKS)
    return cfg


_CHOICES = {
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "train.optimizer.name": ("adam", "adamw", "sgd"),
    "train.scheduler.name": ("none", "cosine", "onecycle", "step"),
    "train.monitor_mode": ("min", "max"),
    "train.stop.mode": ("min", "max"),
    "train.resume": ("auto", "never"),
    "train.progress": ("auto", "bar", "log"),
    "data.in_memory": ("auto", "true", "false"),
    "cluster.name": ("local", "slurm"),
}


def _check_choices(cfg: DictConfig) -> None:
    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if str(value).lower() not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(allowed)}")
    if cfg.train.epochs is None and cfg.train.max_steps is None:
        raise ConfigError("config key 'train.epochs': set train.epochs or train.max_steps")
    if not 0 < cfg.data.train_fraction <= 1 or not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError("config key 'data.train_fraction'/'data.val_fraction': must be fractions in (0, 1]")


def check_kwargs(section: str, node: DictConfig, registry: dict[str, Any]) -> None:
    """``node`` is ``{name: ..., **kwargs}``; the kwargs must match the registered class."""
    name = node.get("name")
    if name is None:
        raise ConfigError(f"config key '{section}.name': missing (choose one of {', '.join(sorted(registry))})")
    if name not in registry:
        raise ConfigError(f"config key '{section}.name': unknown {section} '{name}' (known: {', '.join(sorted(registry))})")
    params = inspect.signature(registry[name]).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    for key in node:
        if key != "name" and key not in params:
            raise ConfigError(
                f"config key '{section}.{key}': not a parameter of {section} '{name}' "
                f"(parameters: {', '.join(k for k in params if k not in ('self', 'in_channels', 'image_size', 'num_classes'))})"
            )


def kwargs_of(node: DictConfig) -> dict[str, Any]:
    """The constructor kwargs of a ``{name: ..., **kwargs}`` section as plain Python values."""
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    out.pop("name", None)
    return out


def save_yaml(cfg: DictConfig, path: Path) -> None:
    """Write the resolved config atomically."""
    from hpclab.utils import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def load_yaml(path: Path) -> DictConfig:
    return validate(OmegaConf.load(path))
