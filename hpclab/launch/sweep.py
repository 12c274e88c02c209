"""From command-line overrides to a list of validated run configs.

A sweep config names an experiment and a grid of ``key: [values]``. Extra grid axes (or a
replacement for one) come from the command line in Hydra's sweep syntax,
``model.latent_dim=2,16``. Each grid point is composed like a single run, so grid values may
also pick config groups (``data: [mnist, fashion_mnist]``).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpclab.config import ConfigError, compose, compose_many, refuse_hydra_habits, schema_defaults
from hpclab.rundir import SUBMITIT
from hpclab.utils import flatten


@dataclass
class SweepPlan:
    """A sweep's runs, composed when first asked for (a SLURM task composes only its own)."""

    group: str  # results/<group>/
    run_overrides: list[list[str]]  # the overrides that compose each run
    base: DictConfig  # the config composed without any grid point (cluster, sweep, paths)
    run_names: list[str]  # results/<group>/<name> of each run (no grid axis can move it)

    def __len__(self) -> int:
        return len(self.run_overrides)

    def run(self, index: int) -> DictConfig:
        """The validated config of run ``index`` alone."""
        if "runs" in self.__dict__:
            return self.runs[index]
        return self._placed(index, compose(self.run_overrides[index]))

    @property
    def group_dir(self) -> Path:
        """``results/<group>/``: the sweep's run folders, its summary and submission records."""
        return Path(self.base.paths.results) / self.group

    @property
    def submitit_folder(self) -> Path:
        """Where submitit keeps pickles and logs: on shared storage, next to the results."""
        folder = self.base.cluster.folder
        return Path(folder) if folder else self.group_dir / SUBMITIT

    def run_dir(self, index: int) -> Path:
        """Run ``index``'s folder, known without composing its config."""
        return self.group_dir / self.run_names[index]

    @cached_property
    def runs(self) -> list[DictConfig]:
        """Every run's validated config (grid points share one Hydra composition)."""
        return [self._placed(i, cfg) for i, cfg in enumerate(compose_many(self.run_overrides))]

    def _placed(self, index: int, cfg: DictConfig) -> DictConfig:
        """``cfg``, once it is known to write where ``run_dir`` (and so ``status``) looks."""
        where = Path(cfg.paths.results) / cfg.run_group / cfg.run_name
        if where != self.run_dir(index):
            raise ConfigError(
                f"run {index} of '{self.group}' would write to {where}, not {self.run_dir(index)}: "
                f"a grid point may not choose where results go (paths.results)"
            )
        return cfg


def split_sweep_overrides(overrides: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """Separate plain overrides from sweep axes (``key=a,b,c``) using Hydra's parser."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    plain, axes = [], {}
    for text in overrides:
        try:
            parsed = parser.parse_override(text)
        except HydraException as exc:
            raise ConfigError(f"bad override '{text}': {str(exc).splitlines()[0]}") from None
        if parsed.is_sweep_override():
            axes[parsed.get_key_element()] = [str(v) for v in parsed.sweep_string_iterator()]
        else:
            plain.append(text)
    return plain, axes


def plain_values(plain: list[str]) -> dict[str, str]:
    """``key -> value text`` of plain ``key=value`` overrides (not group choices or deletions)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    out = {}
    for text in plain:
        parsed = parser.parse_override(text)
        if not parsed.is_delete() and "=" in text:
            out[parsed.key_or_group] = text.split("=", 1)[1]
    return out


def _value_text(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return OmegaConf.to_yaml(OmegaConf.create({"v": value})).split(":", 1)[1].strip().replace("\n", " ")
    return "null" if value is None else str(value)


def subset(values: list[Any], keep: int) -> list[Any]:
    """At most ``keep`` values, evenly spread and including the first and last."""
    if keep <= 0 or len(values) <= keep:
        return list(values)
    if keep == 1:
        return [values[0]]
    picks = sorted({round(i * (len(values) - 1) / (keep - 1)) for i in range(keep)})
    return [values[i] for i in picks]


def run_names(points: list[dict[str, str]]) -> list[str]:
    """Stable, collision-free, filesystem-safe names from grid points (``latent_dim-8__noise_std-0.1``)."""
    if not points or not points[0]:
        return ["default"] * len(points)
    keys = list(points[0])
    short = {k: k.split(".")[-1] for k in keys}
    if len(set(short.values())) < len(keys):
        short = {k: k.replace(".", "-") for k in keys}

    def clean(text: str) -> str:
        if text.strip() in ("[]", "{}", "", "null"):
            return "none"
        return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-") or "x"

    names = ["__".join(f"{clean(short[k])}-{clean(p[k])}" for k in keys) for p in points]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 and names.count(name) == 1 else f"{name}-{seen[name]}")
    return out


def group_name(cfg: DictConfig) -> str:
    """results/<group>/: the sweep's name, else the experiment's; a preset's runs (preset=smoke)
    get their own group, ``<group>-<preset>``, so they never count as (or mix with) the full runs."""
    group = cfg.sweep.name or cfg.experiment or "default"
    return f"{group}-{cfg.preset}" if cfg.preset else group


def plan(overrides: list[str]) -> SweepPlan:
    """Compose the base, expand the sweep grid (if any) into each run's overrides.

    A bad override or axis fails here; each run's own config is validated when first used."""
    refuse_hydra_habits(overrides)
    plain, cli_axes = split_sweep_overrides(overrides)
    # The sweep names its experiment, and the other overrides may only be valid on top of that
    # experiment (model keys of its model), so read the sweep alone first.
    selection = [o for o in plain if o.startswith("sweep=")]
    experiment_overrides: list[str] = []
    if selection and not any(o.startswith("experiment=") for o in plain):
        sweep_experiment = compose(selection).sweep.experiment
        experiment_overrides = [f"experiment={sweep_experiment}"] if sweep_experiment else []
    base = compose(experiment_overrides + plain)
    # an explicit run_group=... names the folder as given; else the sweep's or experiment's name
    group = base.run_group if any(o.startswith("run_group=") for o in plain) else group_name(base)
    axes: dict[str, list[str]] = {k: [_value_text(v) for v in vals] for k, vals in base.sweep.grid.items()}
    # A plain override of a key the grid sweeps (sweep=ae_latent model.latent_dim=8) narrows that
    # axis to the one value, instead of being overwritten by every grid point.
    for key, value in plain_values(plain).items():
        if key in axes:
            axes[key] = [value]
    axes.update(cli_axes)
    placing = [k for k in axes if k == "paths" or k.startswith("paths.")]
    if placing:  # (a run_name or run_group axis is harmless: each run is named after its grid point)
        raise ConfigError(
            f"sweep axis '{placing[0]}' would move runs between folders: set it as one value (key=value), not a list"
        )
    if base.sweep.subset:
        axes = {k: subset(v, base.sweep.subset) for k, v in axes.items()}
    points = [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())] if axes else [{}]
    names = run_names(points)
    explicit_name = any(o.startswith("run_name=") for o in plain)
    if explicit_name and len(points) > 1:
        raise ConfigError(
            f"run_name names one run, but '{group}' has {len(points)}: drop run_name=... "
            f"(each run is named after its grid point), or narrow the grid to one point"
        )
    identity = [[f"run_group={group}"] + ([] if explicit_name else [f"run_name={name}"]) for name in names]
    run_overrides = [
        experiment_overrides + plain + [f"{k}={v}" for k, v in point.items()] + ids
        for point, ids in zip(points, identity)
    ]
    return SweepPlan(
        group=group, run_overrides=run_overrides, base=base, run_names=[base.run_name] if explicit_name else names
    )


# Keys that say how or where a run is executed or shown, not what it trains: they may differ
# between the starts of one run (a resume with train.progress=log, a requeue on another cluster,
# a results folder moved to another file system, an analysis added to the study; a finished
# run is not analysed again by a launch: jobs/analyze.py adds an analysis to it).
EXECUTION_KEYS = ("force", "dry_run", "cluster", "notes", "paths", "analysis", "train.resume", "train.progress")


def config_diff(old: Any, new: Any, ignore: tuple[str, ...] = EXECUTION_KEYS) -> list[str]:
    """Keys whose values differ between two run configs (for 'this folder holds another run').

    ``old`` is usually a run folder's config as plain data (never resolved: see
    :func:`hpclab.rundir.read_config`). A key it lacks counts as the schema's default, so a
    run made before a key was added still matches a config that leaves that key at its default."""
    a = flatten(old if isinstance(old, dict) else OmegaConf.to_container(old, resolve=False))
    b = flatten(new if isinstance(new, dict) else OmegaConf.to_container(new, resolve=True))
    defaults = schema_defaults()
    keys = sorted(set(a) | set(b))
    return [
        f"{k}: {a.get(k, defaults.get(k))!r} -> {b.get(k, defaults.get(k))!r}"
        for k in keys
        if a.get(k, defaults.get(k)) != b.get(k, defaults.get(k))
        and not any(k == i or k.startswith(i + ".") for i in ignore)
    ]
