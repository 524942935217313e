"""Importing by name: a ``module:attribute`` someone named, and a package's lazy exports (standard library only)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["import_attribute", "lazy_exports"]


def import_attribute(module_name: str, attr: str) -> Any:
    """Import ``module_name`` and return its attribute ``attr`` (dotted: ``Class.method``).

    Raises:
        ImportError: The module does not import.
        AttributeError: It has no such attribute.
    """
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` that import each public name from its module on
    first use (``exports``: name -> module), so that importing the package stays cheap."""
    namespace = sys.modules[package].__dict__
    names = sorted(namespace.get("__all__", exports))

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__
