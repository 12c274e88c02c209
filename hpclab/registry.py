"""Name -> class registries filled by decorators, so a new model or task is one file."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from typing import Any, Callable, TypeVar

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
