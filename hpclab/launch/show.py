"""``jobs/launch.py show``: the composed, validated config a command would run (Hydra's
``--cfg job``), and the key sections ``--help`` lists."""

from __future__ import annotations

import textwrap

from omegaconf import DictConfig, OmegaConf

from hpclab.config import ConfigError, schema_sections
from hpclab.launch.sweep import plan as make_plan
from hpclab.utils import did_you_mean, flatten


def split_key(args: list[str]) -> tuple[list[str], str | None]:
    """(overrides, the one KEY to show): a bare word (no ``=``, not a flag or deletion) is the key."""
    keys = [a for a in args if "=" not in a and not a.startswith(("-", "~", "+"))]
    if len(keys) > 1:
        raise ConfigError(f"show takes one KEY (a dotted key or section, e.g. train.optimizer), got {', '.join(keys)}")
    return [a for a in args if a not in keys], (keys[0] if keys else None)


def show(args: list[str]) -> str:
    """The config of the run the overrides describe (a sweep's first run) as YAML, with a comment
    saying which run it is; with a KEY, only that section or value."""
    overrides, key = split_key(args)
    plan = make_plan(overrides)
    cfg = plan.run(0)
    if key is not None:
        return _selected(cfg, key)
    where = f"{plan.run_dir(0)}/"
    if len(plan) > 1:
        axes = ", ".join(k for k in _swept(plan))
        head = (
            f"# run 1 of {len(plan)} of sweep '{plan.group}' ({plan.run_names[0]}) -> {where}\n"
            f"# the others differ in: {axes or 'run_name'}; python jobs/launch.py {' '.join(overrides)} "
            f"dry_run=true lists them\n"
        )
    else:
        head = f"# {plan.group}/{plan.run_names[0]} -> {where}\n"
    return head + OmegaConf.to_yaml(cfg).rstrip()


def _swept(plan) -> list[str]:
    """The keys a sweep's runs differ in, from their overrides (no config composed)."""
    first = set(plan.run_overrides[0])
    keys = {o.split("=", 1)[0] for overrides in plan.run_overrides[1:] for o in overrides if o not in first}
    return sorted(keys - {"run_name"})


def _selected(cfg: DictConfig, key: str) -> str:
    value = OmegaConf.select(cfg, key, default=KeyError)
    if value is KeyError:
        keys = [*flatten(OmegaConf.to_container(cfg)), *_sections(OmegaConf.to_container(cfg))]
        raise ConfigError(f"show: no key '{key}' in this config{did_you_mean(key, keys)}")
    if OmegaConf.is_config(value):
        return OmegaConf.to_yaml(value).rstrip()
    return "null" if value is None else str(value)


def _sections(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += [prefix + key, *_sections(value, f"{prefix}{key}.")]
    return out


def keys_help(width: int = 100) -> str:
    """The schema's sections and their keys, for ``--help``."""
    lines = []
    for prefix, keys in schema_sections():
        if not keys:
            continue
        label = prefix or "(top level)"
        text = ", ".join(keys).replace("model, task, ", "")
        lines += textwrap.wrap(text, width, initial_indent=f"  {label:<18}", subsequent_indent=" " * 20)
    lines.append(f"  {'model.':<18}the model class's constructor parameters (show ... model lists them)")
    lines.append(f"  {'task.':<18}the task's parameters (show ... task)")
    return "\n".join(lines)
