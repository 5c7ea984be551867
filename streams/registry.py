"""Registries of named classes (task families, models, strategies), each extensible by one file.

A class joins a registry with the registry's decorator (`@register`) and is then known by its `name`;
a class defined anywhere else is named by its import path, `package.module:Class`, exactly as a
registered one is named by its name. Extras that bring many classes at once (the Avalanche bridge) plug
in through a prefix table: names starting with the prefix are resolved by a function named by import
path, imported only when such a name is used.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Generic, TypeVar

from streams.checks import did_you_mean

T = TypeVar("T", bound=type)


def import_object(path: str, what: str) -> Any:
    """The object at `package.module:attribute`; ValueError naming `what` when it cannot be imported."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what}: an import path is written 'package.module:Name', got '{path}'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{what}: cannot import it ({e})") from None


def field_defaults(config_class: type) -> dict[str, Any]:
    """A dataclass's fields and their defaults (None for a field without one)."""
    out = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = None
    return out


class Registry(Generic[T]):
    """Subclasses of `base` by name. Every class needs a `name` and a one-line `description`."""

    def __init__(self, kind: str, base: type, prefixes: dict[str, tuple[str, str]] | None = None):
        self.kind, self.base = kind, base
        self.classes: dict[str, T] = {}
        # name prefix -> ('module:function', what it needs): function(name) returns the class; `what it needs`
        # completes "<kind> '<name>' needs ..." when the module's own dependencies are not installed
        self.prefixes = dict(prefixes or {})

    def register(self, cls: T) -> T:
        """Class decorator: `@register` on a subclass with `name` and `description` class attributes."""
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"{cls!r} is not a subclass of {self.base.__name__}")
        if not getattr(cls, "name", "") or not getattr(cls, "description", ""):
            raise TypeError(f"{cls.__name__} needs a name and a one-line description to be a registered {self.kind}")
        self.classes[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(self.classes)

    def get(self, name: str) -> T:
        """The class registered as `name`, resolved by a prefix, or imported from `package.module:Class`."""
        if not isinstance(name, str):
            raise ValueError(f"{self.kind} {name!r}: must be a name or an import path 'package.module:Class'")
        if name in self.classes:
            return self.classes[name]
        for prefix, (resolver, needs) in self.prefixes.items():
            if name.startswith(prefix):
                module = resolver.partition(":")[0]
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as e:
                    if (e.name or "").split(".")[0] == module.split(".")[0]:
                        raise  # our own module is broken: not a missing extra
                    raise ValueError(f"{self.kind} '{name}' needs {needs}") from None
                return import_object(resolver, f"{self.kind} '{name}'")(name)
        if ":" in name:
            cls = import_object(name, f"{self.kind} '{name}'")
            if not (isinstance(cls, type) and issubclass(cls, self.base)):
                where = f"{self.base.__module__.split('.')[0]}.{self.base.__name__}"
                raise ValueError(f"{self.kind} '{name}': not a subclass of {where}")
            return cls
        known = self.names()
        raise ValueError(f"unknown {self.kind} '{name}'; known: {', '.join(known)}, or an import path "
                         f"'package.module:Class'.{did_you_mean(name, known)}")
