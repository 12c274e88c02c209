"""Name -> class registries filled by decorators, so a new model or task is one file."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Callable, TypeVar

from omegaconf import DictConfig, OmegaConf

from hpclab.errors import ConfigError

T = TypeVar("T")


class Registry(dict):
    """A dict of named constructors; ``build`` passes only the kwargs a constructor takes."""

    def __init__(self, kind: str, package: str) -> None:
        super().__init__()
        self.kind = kind
        self.package = package
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def wrap(obj: T) -> T:
            if dict.__contains__(self, name):  # not `in self`: that would import the package mid-import
                raise KeyError(f"{self.kind} '{name}' registered twice")
            self[name] = obj
            return obj

        return wrap

    def load_all(self) -> "Registry":
        """Import every module of the package once, so their decorators run."""
        if not self._loaded:
            self._loaded = True
            pkg = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(pkg.__path__):
                importlib.import_module(f"{self.package}.{info.name}")
        return self

    # dict views trigger loading so `name in MODELS` works before any explicit import
    def __contains__(self, key: object) -> bool:
        self.load_all()
        return super().__contains__(key)

    def __getitem__(self, key: str) -> Any:
        self.load_all()
        return super().__getitem__(key)

    def __iter__(self):  # type: ignore[override]
        self.load_all()
        return super().__iter__()

    def build(self, name: str, kwargs: dict[str, Any], **context: Any) -> Any:
        """Construct ``name`` with ``kwargs`` plus the ``context`` values its signature accepts."""
        cls = self[name]
        params = inspect.signature(cls).parameters
        extra = {k: v for k, v in context.items() if k in params and k not in kwargs}
        return cls(**kwargs, **extra)


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
