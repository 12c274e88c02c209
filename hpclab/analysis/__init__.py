"""Post-training studies and figures; each module registers functions with ``@ANALYSES.register``.

An analysis is ``fn(run, out_dir, **kwargs) -> dict`` run on the main process after
training with the best weights loaded; it writes PNG figures (and arrays) under the run's
``figures/`` and returns numbers that go into ``summary.json``.

Each idea has one module that the analyses share: ``inputs`` (the batches a model is fed),
``figures`` (saving a figure), ``grids`` (image grids; the ``examples`` analysis), ``curves``
(metric curves; the ``curves`` analysis), ``layers`` (per-layer tables), ``probes`` (linear and
MLP probes), ``hooks`` (one forward pass with hooks), ``report`` (result tables, sweep summaries),
``group_tables`` (one table over the runs of a group) and ``publish`` (results documents). The
other modules hold the analyses of one kind of experiment (``latents``, ``image2image``, ``gan``,
``classification``, ``baselines``, ``activations``, ``architecture``, ``fid``).
"""

import inspect
from collections.abc import Callable, Iterable
from typing import Any

from hpclab.errors import USER_ERRORS, ConfigError
from hpclab.registry import Registry, UnknownName

ANALYSES = Registry("analysis", __name__)

SPLIT_ARGUMENTS = ("split", "reference", "real", "floor_split")  # arguments that name a split of the run's data


def requires(check: Callable[..., None]) -> Callable[[Callable], Callable]:
    """Attach ``check(cfg, **kwargs)``, which raises a one-line user error when something the
    analysis needs (staged weights, another run) is missing, so a run finds out before step 0."""

    def attach(fn: Callable) -> Callable:
        fn.prerequisite = check
        return fn

    return attach


def analysis_items(items: Iterable[Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(name, kwargs)`` of each entry of a config's ``analysis`` list ("name" or {name: ..., **kwargs})."""
    from omegaconf import OmegaConf

    out = []
    for item in items:
        kwargs = {"name": item} if isinstance(item, str) else OmegaConf.to_container(item, resolve=True)
        if not isinstance(kwargs, dict) or not isinstance(kwargs.get("name"), str):
            raise ConfigError(f"config key 'analysis': {item!r} is neither a name nor {{name: ..., key: value}}")
        out.append((kwargs.pop("name"), kwargs))
    return out


def _item_text(name: str, kwargs: dict[str, Any]) -> str:
    return name if not kwargs else "{" + ",".join([f"name:{name}", *(f"{k}:{v}" for k, v in kwargs.items())]) + "}"


def check_analyses(cfg: Any, splits: set[str]) -> None:
    """Before a run starts: every analysis it lists exists, takes the arguments given, names
    splits its data has, and has what it needs (its ``requires`` check). Each failure is one
    line that ends with the way out: the same run without that analysis."""
    items = analysis_items(cfg.analysis)
    for index, (name, kwargs) in enumerate(items):
        rest = "[" + ",".join(_item_text(n, k) for i, (n, k) in enumerate(items) if i != index) + "]"
        way_out = f"; or run without it: analysis={rest}"
        try:
            fn = ANALYSES[name]
        except UnknownName as exc:
            raise ConfigError(f"config key 'analysis': {exc}") from None
        params = inspect.signature(fn).parameters
        try:
            bound = inspect.signature(fn).bind(None, None, **kwargs)
        except TypeError as exc:
            raise ConfigError(
                f"config key 'analysis': {name}: {exc} (arguments: {', '.join(list(params)[2:])}){way_out}"
            ) from None
        for arg in SPLIT_ARGUMENTS:
            value = bound.arguments.get(arg, params[arg].default if arg in params else None)
            if isinstance(value, str) and value not in splits:
                raise ConfigError(
                    f"config key 'analysis': {name} reads split '{value}', which the data has not "
                    f"(it has {', '.join(sorted(splits))}): pass {arg}=...{way_out}"
                )
        check = getattr(fn, "prerequisite", None)
        if check is not None:
            try:
                check(cfg, **kwargs)
            except USER_ERRORS as exc:
                raise type(exc)(f"analysis '{name}': {str(exc).splitlines()[0]}{way_out}") from None
