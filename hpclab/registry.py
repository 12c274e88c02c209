"""Name -> entry registries (models, tasks, analyses, dataset sources, weight files), so a new
one is one file that registers itself, and every unknown name gets the same one-line error."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from hpclab.errors import ConfigError
from hpclab.utils import did_you_mean

T = TypeVar("T")


class UnknownName(ConfigError, KeyError):
    """A name that no entry of a registry has; also a KeyError, as a mapping lookup should be."""

    __str__ = BaseException.__str__  # KeyError's would print the message in quotes


class Registry(dict):
    """A dict of named entries of one ``kind``. With ``package``, the first lookup imports every
    module of that package, so their ``register`` calls have run; ``build`` passes a constructor
    only the kwargs it takes."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        super().__init__()
        self.kind = kind
        self.package = package
        self._loaded = package is None

    def add(self, name: str, entry: T, replace: bool = False) -> T:
        """Register ``entry`` as ``name``; a second entry of one name is a bug unless ``replace``."""
        if not replace and dict.__contains__(self, name):  # not `in self`: that would import the package mid-import
            raise KeyError(f"{self.kind} '{name}' registered twice")
        dict.__setitem__(self, name, entry)
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """``add`` as a decorator."""
        return lambda entry: self.add(name, entry)

    def load_all(self) -> Registry:
        """Import every module of the package once, so their registrations run."""
        if not self._loaded:
            self._loaded = True
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{self.package}.{info.name}")
        return self

    def __getitem__(self, name: str) -> Any:
        self.load_all()
        if not dict.__contains__(self, name):
            raise UnknownName(
                f"unknown {self.kind} '{name}'{did_you_mean(str(name), self)} (known: {', '.join(sorted(self))})"
            )
        return dict.__getitem__(self, name)

    # every read loads first, so `name in MODELS` or `sorted(SOURCES)` never sees a partial registry
    def __contains__(self, name: object) -> bool:
        return dict.__contains__(self.load_all(), name)

    def __iter__(self) -> Iterator[str]:
        return dict.__iter__(self.load_all())

    def __len__(self) -> int:
        return dict.__len__(self.load_all())

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self.load_all(), name, default)

    def keys(self):  # type: ignore[override]
        return dict.keys(self.load_all())

    def values(self):  # type: ignore[override]
        return dict.values(self.load_all())

    def items(self):  # type: ignore[override]
        return dict.items(self.load_all())

    def build(self, name: str, kwargs: dict[str, Any], **context: Any) -> Any:
        """Construct ``name`` with ``kwargs`` plus the ``context`` values its signature accepts."""
        cls = self[name]
        params = inspect.signature(cls).parameters
        extra = {k: v for k, v in context.items() if k in params and k not in kwargs}
        return cls(**kwargs, **extra)


CONTEXT_PARAMETERS = ("self", "in_channels", "image_size", "num_classes")  # filled in from the data set


def check_kwargs(section: str, node: DictConfig, registry: Registry) -> None:
    """``node`` is ``{name: ..., **kwargs}``; the kwargs must match the registered class."""
    name = node.get("name")
    if name is None:
        raise ConfigError(f"config key '{section}.name': missing (choose one of {', '.join(sorted(registry))})")
    try:
        params = inspect.signature(registry[name]).parameters
    except UnknownName as exc:
        raise UnknownName(f"config key '{section}.name': {exc}") from None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    settable = [k for k in params if k not in CONTEXT_PARAMETERS]
    for key in node:
        if key != "name" and key not in params:
            raise ConfigError(
                f"config key '{section}.{key}': not a parameter of {section} '{name}'"
                f"{did_you_mean(f'{section}.{key}', [f'{section}.{k}' for k in settable])} "
                f"(parameters: {', '.join(settable)})"
            )


def kwargs_of(node: DictConfig) -> dict[str, Any]:
    """The constructor kwargs of a ``{name: ..., **kwargs}`` section as plain Python values."""
    out = OmegaConf.to_container(node, resolve=True)
    assert isinstance(out, dict)
    out.pop("name", None)
    return out
