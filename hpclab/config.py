"""Config schemas, composition (Hydra compose API) and validation.

Configs are YAML groups under ``configs/`` composed by Hydra from ``key=value`` overrides.
The composed tree is then merged onto the dataclass schema below, so an unknown key or a
wrong type fails before anything runs, with one line that names the key. Model and task
sections are free-form in the schema and validated against the registered class signature.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpclab.errors import ConfigError
from hpclab.registry import CONTEXT_PARAMETERS, check_kwargs
from hpclab.utils import did_you_mean, one_line

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # source name in hpclab.data.sources.SOURCES
    file: str | None = None  # HDF5 path; default <paths.data>/<name>.h5
    mirrors: list[str] = field(default_factory=list)  # local dirs holding the original files
    download: bool = True  # let prepare_data fetch the originals (nodes with internet)
    download_root: str | None = None  # where downloads go; default <paths.data>/raw/<name>
    image_size: int | None = None  # resize at staging time (e.g. 256 for Flowers-102)
    val_fraction: float = 0.1  # held out of train with a fixed seed
    train_fraction: float = 1.0  # label fraction of the remaining train split
    classes: list[Any] | None = None  # keep only these classes (names or indices)
    limit: int | None = None  # use at most this many images per split (smoke runs)
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
    name: str = "adam"  # a name in hpclab.optim.OPTIMIZERS
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class SchedulerConfig:
    name: str = "none"  # a name in hpclab.optim.SCHEDULERS
    warmup_steps: int = 0
    pct_start: float = 0.25  # onecycle
    step_size: int = 1000  # step
    gamma: float = 0.1  # step


@dataclass
class StopConfig:
    """Stop early once ``metric`` crosses ``threshold`` (below for mode=min, above for max)."""

    metric: str | None = None
    threshold: float | None = None
    mode: str = "min"


@dataclass
class TrainConfig:
    epochs: int | None = 10
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 128  # per data-parallel rank (the global batch is ranks x batch_size)
    # the global batch instead, split evenly over the ranks (which must divide it): the same
    # optimisation whatever the number of GPUs or nodes; wins over batch_size when set
    global_batch_size: int | None = None
    eval_batch_size: int = 512
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip: float | None = None
    mixed_precision: str = "no"  # no | fp16 | bf16
    channels_last: bool = False
    compile: bool = False
    eval_every: int | None = None  # steps; default once per epoch
    eval_splits: list[str] = field(default_factory=lambda: ["val"])
    final_splits: list[str] = field(default_factory=lambda: ["test"])
    monitor: str = "val/loss"  # <split>/<metric> that picks the best checkpoint; "none": keep the last weights
    monitor_mode: str = "auto"  # auto: max for accuracy-like metrics (HIGHER_IS_BETTER), else min
    stop: StopConfig = field(default_factory=StopConfig)
    checkpoint_every: int | None = None  # steps; default at every evaluation
    keep_checkpoints: int = 2
    log_every: int = 50
    image_every: int | None = None  # steps between image grids; default at each eval
    resume: str = "auto"  # auto | never
    progress: str = "auto"  # auto | bar | log


@dataclass
class PathsConfig:
    data: str = "data"
    results: str = "results"
    cache: str = "data/cache"  # TORCH_HOME / HF_HOME for staged weights


@dataclass
class SweepConfig:
    name: str | None = None
    experiment: str | None = None
    grid: dict[str, list[Any]] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)  # x, metrics, logx
    subset: int | None = None  # keep at most this many values per axis (smoke runs)


@dataclass
class ClusterConfig:
    name: str = "local"  # local | slurm
    processes: int = 1  # local: data-parallel processes per run (gloo on CPU)
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: float | None = None
    array_parallelism: int = 64
    max_array_size: int = 1000
    signal_delay_s: int = 120
    max_requeues: int = 3
    # data parallel: a rank that waits this long for the others in a collective (one died or
    # hangs) stops the job with an error instead of hanging until the time limit
    collective_timeout_s: int = 600
    # torch/OpenMP/BLAS threads per process, everywhere (here, each local data-parallel rank, each
    # SLURM task): results are bit-identical between machines only at equal thread counts, so the
    # default does not follow the machine's cores or cpus_per_task. 1: tiny models ran fastest on
    # one thread here, and GPU runs hardly use CPU threads. Raise it with cpus_per_task on CPU nodes.
    threads: int = 1
    folder: str | None = None  # submitit's folder; default <results>/<sweep>/.submitit
    image: str | None = None  # run tasks in this image (SIF file or podman image); default $HPCLAB_IMAGE
    container: str | None = None  # apptainer | singularity | podman; default $HPCLAB_CONTAINER, else apptainer
    binds: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)  # shell lines run before the job
    extra: dict[str, Any] = field(default_factory=dict)  # extra sbatch parameters


@dataclass
class RunConfig:
    experiment: str | None = None
    # set by configs/preset/*.yaml: a preset's runs go to their own group, results/<group>-<preset>/,
    # so a quick look never stands in for (or mixes with) the full runs
    preset: str | None = None
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


def _compose_error(exc: BaseException, overrides: list[str]) -> str:
    """One line that names the bad key (from OmegaConf's cause) or the missing option, with the
    nearest valid keys when the key is unknown."""
    cause = exc.__cause__
    key = getattr(cause, "full_key", None)
    if key:
        reason = one_line(cause, named=False)
        hint = _unknown_key_hint(key, overrides) if _is_unknown_key(reason) else ""
        return f"config key '{key}': {reason}{hint}"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and "Could not find" in lines[0] and "Available options" in str(exc):
        start = next(i for i, line in enumerate(lines) if line.startswith("Available")) + 1
        options = [line for line in lines[start:] if not line.startswith(("Config search", "provider="))]
        what = lines[0].replace("In 'config': ", "")
        return f"{what} (available: {', '.join(options)})"
    return f"bad override: {lines[0] if lines else type(exc).__name__}"


def _is_unknown_key(reason: str) -> bool:
    return "not in struct" in reason or re.search(r"Key '.*' not in '", reason) is not None


def schema_sections(node: Any = None, prefix: str = "") -> list[tuple[str, list[str]]]:
    """``(section prefix, its keys)`` of the schema, top level first (``("train.optimizer.",
    ["name", "lr", ...])``), for ``--help``; ``model``/``task`` are the chosen class's parameters."""
    node = RunConfig() if node is None else node
    keys, nested = [], []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            nested += schema_sections(value, f"{prefix}{f.name}.")
        else:
            keys.append(f.name)
    return [(prefix, keys), *nested]


def schema_keys(node: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, sections included (``train``, ``train.optimizer.lr``)."""
    node = OmegaConf.to_container(_schema()) if node is None else node
    keys = []
    for key, value in node.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys += schema_keys(value, f"{prefix}{key}.")
    return keys


def _unknown_key_hint(key: str, overrides: list[str]) -> str:
    """The nearest keys to an unknown ``key``: of the schema, or for ``model.*``/``task.*`` the
    parameters of the class the other overrides choose (composed again without the bad one)."""
    section = key.split(".", 1)[0]
    if section not in ("model", "task"):
        return did_you_mean(key, schema_keys())
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        node = _compose_raw(rest)[section]
        return did_you_mean(key, [f"{section}.{p}" for p in class_parameters(section, node.get("name"))])
    except Exception:  # noqa: BLE001 - a hint is a courtesy: the error line stands without it
        return ""


def class_parameters(section: str, name: str | None) -> list[str]:
    """The constructor parameters a ``model``/``task`` section may set for class ``name``."""
    import inspect

    from hpclab.models import MODELS
    from hpclab.tasks import TASKS

    registry = {"model": MODELS, "task": TASKS}[section]
    if name not in registry:
        return []
    return [k for k in inspect.signature(registry[name]).parameters if k not in CONTEXT_PARAMETERS]


# Hydra habits: flags and keys this suite does not use, each with what it uses instead.
_HYDRA_FLAGS = {
    ("-m", "--multirun"): "a sweep needs no flag here: sweep=NAME or a comma list (model.latent_dim=2,16) runs "
    "every combination, locally or with cluster=slurm as one job array",
    (
        "--cfg",
        "-c",
        "--info",
        "-i",
        "--resolve",
        "-p",
        "--package",
    ): "print the composed config with: python jobs/launch.py show <the same overrides> [KEY]",
    ("-cn", "--config-name"): "choose what runs with experiment=NAME or sweep=NAME (python jobs/launch.py --help "
    "lists them)",
    (
        "-cp",
        "--config-path",
        "-cd",
        "--config-dir",
    ): "configs come from configs/ of this checkout; a site's settings go in configs/local/default.yaml "
    "(start from configs/local/default.yaml.example)",
    ("--hydra-help", "-hh", "--shell-completion", "-sc"): "python jobs/launch.py --help lists groups and keys",
}
_HYDRA_KEYS = {
    "hydra.run.dir": "a run is written to paths.results/<experiment>/<run_name>/: set paths.results=DIR (or "
    "HPCLAB_RESULTS=DIR) and run_name=NAME",
    "hydra.sweep.dir": "a sweep is written to paths.results/<sweep.name>/<run>/: set paths.results=DIR (or "
    "HPCLAB_RESULTS=DIR) and sweep.name=NAME",
    "hydra.sweep.subdir": "each run of a sweep is named after its grid point (latent_dim-8); run_name=NAME names "
    "a single run",
    "hydra.launcher": "SLURM submission is cluster=slurm here (cluster=slurm_cpu without GPUs), set up with "
    "cluster.* keys (python jobs/launch.py show cluster=slurm cluster)",
    "hydra.sweeper": "sweeps are sweep=NAME files or comma lists (key=a,b,c); sweep.subset=N keeps N values per axis",
    "hydra.job_logging": "each run logs to its run.log and stdout",
    "hydra.verbose": "each run logs to its run.log and stdout",
}


def refuse_hydra_habits(overrides: Iterable[str]) -> None:
    """One line for a Hydra flag or ``hydra.*`` key, saying what this suite uses instead (Hydra
    would give a token error for the flags and silently ignore the keys)."""
    for text in overrides:
        if text.startswith("-"):
            flag = text.split("=", 1)[0]
            fix = next((fix for flags, fix in _HYDRA_FLAGS.items() if flag in flags), None)
            if fix is None:
                raise ConfigError(
                    f"unknown option {flag}: arguments are key=value overrides "
                    f"(python jobs/launch.py --help lists groups and keys)"
                )
            raise ConfigError(f"{flag} is Hydra's; {fix}")
        key = text.lstrip("+~").split("=", 1)[0].replace("/", ".")
        if key == "hydra" or key.startswith("hydra."):
            fix = next(
                (fix for k, fix in _HYDRA_KEYS.items() if key == k or key.startswith(k + ".")),
                "Hydra's own settings are not used here (results go to paths.results, logs to each run's run.log)",
            )
            raise ConfigError(f"{key} is not used here: {fix}")


def compose(overrides: list[str]) -> DictConfig:
    """Compose ``configs/config.yaml`` with Hydra overrides and validate it against the schema."""
    return compose_many([overrides])[0]


def compose_many(override_lists: list[list[str]]) -> list[DictConfig]:
    """``compose`` of each list, with one Hydra composition per distinct set of group choices.

    Hydra applies plain ``key=value`` overrides after composing the defaults (in struct mode,
    with ``OmegaConf.update(..., merge=True)``); doing that step here on a copy of a composition
    already made gives the same config, while a sweep's grid points share one composition
    (a thousand-run sweep plans in seconds, not minutes). Anything else (``+``/``~`` prefixes,
    group choices, a value Hydra would refuse) goes through Hydra itself, errors included.
    """
    composed: dict[tuple[str, ...], DictConfig] = {}
    out = []
    for overrides in override_lists:
        refuse_hydra_habits(overrides)
        structural, values = _split_value_overrides(overrides)
        if structural not in composed:
            composed[structural] = _compose_raw(list(structural))
        raw = copy.deepcopy(composed[structural])
        try:
            for parsed in values:
                OmegaConf.update(raw, parsed.key_or_group, parsed.value(), merge=True)
        except OmegaConfBaseException:
            raw = _compose_raw(list(overrides))  # Hydra's own one-line refusal
        out.append(validate(raw))
    return out


def compose_with_hydra(overrides: list[str]) -> DictConfig:
    """``compose`` with every override applied by Hydra (the reference ``compose_many`` matches)."""
    return validate(_compose_raw(list(overrides)))


def _split_value_overrides(overrides: list[str]) -> tuple[tuple[str, ...], list[Any]]:
    """(overrides Hydra must compose, parsed plain ``key=value`` overrides of existing keys)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    structural, values = [], []
    for text in overrides:
        try:
            parsed = parser.parse_override(text)
        except HydraException:
            structural.append(text)  # Hydra words the error
            continue
        key = parsed.key_or_group
        if (
            parsed.is_delete()
            or parsed.is_add()
            or parsed.is_force_add()
            or parsed.is_sweep_override()
            or parsed.package is not None
            or key.startswith("hydra")
            or "/" in key
            or (CONFIG_DIR / key).is_dir()
        ):  # a config group choice
            structural.append(text)
        else:
            values.append(parsed)
    return tuple(structural), values


def _compose_raw(overrides: list[str]) -> DictConfig:
    """Hydra's composition (schema first, struct mode), before validation."""
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
            return hydra_compose(config_name="config", overrides=overrides)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(_compose_error(exc, overrides)) from None
    finally:
        GlobalHydra.instance().clear()


def preset_group(name: str, *, _root_: DictConfig) -> str:
    """``${group:NAME}`` in a config: the results folder of group NAME for this config's preset
    (``NAME-smoke`` under preset=smoke), so a preset's runs find the other runs of that preset
    (an encoder to load, a classifier for the FD) and never the full runs."""
    preset = _root_.get("preset")
    return f"{name}-{preset}" if preset else name


OmegaConf.register_new_resolver("group", preset_group, replace=True)


@functools.lru_cache(maxsize=1)
def _schema() -> DictConfig:
    """The schema as a config, built once (OmegaConf.merge copies its first argument)."""
    return OmegaConf.structured(RunConfig)


@functools.lru_cache(maxsize=1)
def schema_defaults() -> dict[str, Any]:
    """Every schema key's default, by dotted key (``train.optimizer.lr`` -> 0.001)."""
    from hpclab.utils import flatten

    return flatten(OmegaConf.to_container(_schema()))


def validate(raw: DictConfig) -> DictConfig:
    """Merge onto the schema (unknown keys and wrong types fail) and resolve interpolations."""
    schema = _schema()
    try:
        # Plain containers, so the schema decides: Hydra's `+key=value` adds keys to its own
        # (already typed) nodes, which a merge would otherwise keep.
        cfg = OmegaConf.merge(schema, OmegaConf.create(OmegaConf.to_container(raw)))
        for key in ("data", "results", "cache"):  # absolute before anything interpolates them,
            cfg.paths[key] = str(Path(cfg.paths[key]).expanduser().absolute())  # so SLURM tasks agree
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        reason = one_line(exc, named=False)
        hint = did_you_mean(key, schema_keys()) if key and _is_unknown_key(reason) else ""
        raise ConfigError(f"config key '{key}': {reason}{hint}" if key else reason) from None
    _check_choices(cfg)
    from hpclab.models import MODELS
    from hpclab.tasks import TASKS

    check_kwargs("model", cfg.model, MODELS)
    check_kwargs("task", cfg.task, TASKS)
    return cfg


_CHOICES = {
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "train.monitor_mode": ("auto", "min", "max"),
    "train.stop.mode": ("min", "max"),
    "train.resume": ("auto", "never"),
    "train.progress": ("auto", "bar", "log"),
    "data.in_memory": ("auto", "true", "false"),
    "cluster.name": ("local", "slurm"),
}


# Ranges of numeric values, checked when a config is composed, so a dry run or a SLURM
# submission refuses a bad value before any folder is written. None (unset) is always allowed.
# (low, high, low_inclusive, high_inclusive); a list value is checked element by element.
_AT_LEAST_1 = (1, None, True, True)
_POSITIVE = (0, None, False, True)
_NON_NEGATIVE = (0, None, True, True)
_RANGES: dict[str, tuple[Any, Any, bool, bool]] = {
    "seed": _NON_NEGATIVE,
    "train.epochs": _AT_LEAST_1,
    "train.max_steps": _AT_LEAST_1,
    "train.batch_size": _AT_LEAST_1,
    "train.global_batch_size": _AT_LEAST_1,
    "train.eval_batch_size": _AT_LEAST_1,
    "train.eval_every": _AT_LEAST_1,
    "train.checkpoint_every": _AT_LEAST_1,
    "train.keep_checkpoints": _AT_LEAST_1,
    "train.log_every": _AT_LEAST_1,
    "train.image_every": _AT_LEAST_1,
    "train.grad_clip": _POSITIVE,
    "train.optimizer.lr": _POSITIVE,
    "train.optimizer.weight_decay": _NON_NEGATIVE,
    "train.optimizer.momentum": (0, 1, True, False),
    "train.optimizer.betas": (0, 1, True, False),
    "train.scheduler.warmup_steps": _NON_NEGATIVE,
    "train.scheduler.pct_start": (0, 1, False, False),
    "train.scheduler.step_size": _AT_LEAST_1,
    "train.scheduler.gamma": _POSITIVE,
    "data.image_size": _AT_LEAST_1,
    "data.val_fraction": (0, 1, True, False),
    "data.train_fraction": (0, 1, False, True),
    "data.limit": _AT_LEAST_1,
    "data.max_memory_gb": _POSITIVE,
    "data.num_workers": _NON_NEGATIVE,
    "sweep.subset": _NON_NEGATIVE,  # 0: every value
    "cluster.processes": _AT_LEAST_1,
    "cluster.time_min": _AT_LEAST_1,
    "cluster.nodes": _AT_LEAST_1,
    "cluster.gpus_per_node": _NON_NEGATIVE,
    "cluster.cpus_per_task": _AT_LEAST_1,
    "cluster.mem_gb": _POSITIVE,
    "cluster.array_parallelism": _AT_LEAST_1,
    "cluster.max_array_size": _AT_LEAST_1,
    "cluster.signal_delay_s": _NON_NEGATIVE,
    "cluster.max_requeues": _NON_NEGATIVE,
    "cluster.collective_timeout_s": _AT_LEAST_1,
    "cluster.threads": _AT_LEAST_1,
}
# The same for constructor arguments of models and tasks that share a meaning across classes.
_KWARG_RANGES: dict[str, tuple[Any, Any, bool, bool]] = {
    "latent_dim": _AT_LEAST_1,
    "channels": _AT_LEAST_1,
    "hidden": _AT_LEAST_1,
    "encoder": _AT_LEAST_1,
    "num_filters": _AT_LEAST_1,
    "num_colours": _AT_LEAST_1,
    "factor": _AT_LEAST_1,
    "kernel": _AT_LEAST_1,
    "noise_std": _NON_NEGATIVE,
    "label_smoothing": (0, 1, True, False),
    "crop_padding": _NON_NEGATIVE,
    "fraction": (0, 1, False, False),
}


def _out_of_range(value: Any, bounds: tuple[Any, Any, bool, bool]) -> bool:
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return any(_out_of_range(v, bounds) for v in value)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return False  # types are the schema's job; free-form sections may hold other things
    low, high, low_in, high_in = bounds
    return (low is not None and (value < low if low_in else value <= low)) or (
        high is not None and (value > high if high_in else value >= high)
    )


def _range_text(bounds: tuple[Any, Any, bool, bool]) -> str:
    low, high, low_in, high_in = bounds
    if high is None:
        return f"{'>=' if low_in else '>'} {low}"
    return f"in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


# Metrics (the part after "<split>/") where larger is better; every other metric is minimised.
HIGHER_IS_BETTER = ("acc", "psnr", "dice", "iou", "ssim")


def monitor_direction(monitor: str) -> str:
    """``max`` when the monitored metric's name ends in one of HIGHER_IS_BETTER, else ``min``."""
    metric = monitor.rsplit("/", 1)[-1].lower()
    return "max" if metric.endswith(HIGHER_IS_BETTER) else "min"


# Keys that name a folder under paths.results: one plain path component each (hpclab.rundir).
_NAME_KEYS = ("run_name", "run_group", "sweep.name", "experiment", "preset")


def _check_names(cfg: DictConfig) -> None:
    from hpclab.rundir import name_problem

    for key in _NAME_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is None and key not in ("run_name", "run_group"):
            continue
        problem = name_problem(value)
        if problem:
            raise ConfigError(
                f"config key '{key}': {value!r} {problem}; results stay inside paths.results "
                f"(set paths.results=... to write elsewhere)"
            )


def _check_choices(cfg: DictConfig) -> None:
    _check_names(cfg)
    for key, allowed in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if str(value).lower() not in allowed:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(allowed)}")
    from hpclab.optim import OPTIMIZERS, SCHEDULERS, choose  # imports torch, as the model checks do

    for key, registry in (("train.optimizer.name", OPTIMIZERS), ("train.scheduler.name", SCHEDULERS)):
        choose(registry, key, OmegaConf.select(cfg, key))
    if cfg.train.epochs is None and cfg.train.max_steps is None:
        raise ConfigError("config key 'train.epochs': set train.epochs or train.max_steps")
    checks = [(key, OmegaConf.select(cfg, key), bounds) for key, bounds in _RANGES.items()]
    checks += [
        (f"{section}.{key}", value, _KWARG_RANGES[key])
        for section in ("model", "task")
        for key, value in cfg[section].items()
        if key in _KWARG_RANGES
    ]
    for key, value, bounds in checks:
        if _out_of_range(value, bounds):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            raise ConfigError(f"config key '{key}': {shown!r} must be {_range_text(bounds)}")
    monitor_split = cfg.train.monitor.split("/", 1)[0]
    if cfg.train.monitor != "none" and ("/" not in cfg.train.monitor or monitor_split not in cfg.train.eval_splits):
        raise ConfigError(
            f"config key 'train.monitor': {cfg.train.monitor!r} must be <split>/<metric> of a split "
            f"in train.eval_splits {list(cfg.train.eval_splits)}, or none (keep the last weights)"
        )
    if cfg.train.monitor_mode == "auto":
        cfg.train.monitor_mode = monitor_direction(cfg.train.monitor)
    if len(cfg.train.optimizer.betas) != 2:
        raise ConfigError(f"config key 'train.optimizer.betas': needs 2 values, got {list(cfg.train.optimizer.betas)}")


def save_yaml(cfg: DictConfig, path: Path) -> None:
    """Write the resolved config atomically."""
    from hpclab.utils import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(cfg, resolve=True))


def read_run_config(run_dir: Path) -> DictConfig | None:
    """The config a run folder was started with (never resolved: see
    :func:`hpclab.rundir.read_config`); None for a new folder, one line for a damaged file."""
    from hpclab.rundir import read_config

    plain = read_config(run_dir)
    return None if plain is None else OmegaConf.create(plain)


def load_run_config(run_dir: Path) -> DictConfig:
    """The validated config of an existing run folder (one line when it is missing or damaged)."""
    cfg = read_run_config(Path(run_dir))
    if cfg is None:
        from hpclab.rundir.lock import describe, live_holder

        holder = live_holder(Path(run_dir))
        if holder:  # a run is starting there: it takes the lock before it writes config.yaml
            raise ConfigError(
                f"{run_dir} is in use by {describe(holder)} (run.lock), a run starting there; wait until it ends"
            )
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); give results/<group>/<run>")
    return validate(cfg)
