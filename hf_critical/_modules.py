"""Module plumbing shared by the packages: lazy public names, and old module paths kept as aliases.

Imports only the standard library (``import hf_critical`` stays cheap).
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__`` importing each public name from its submodule on first use.

    ``exports`` maps a public name to the submodule (relative to ``package``) that defines it. The value
    is stored in the package's namespace, so later lookups do not come back here.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


def alias_module(old: str, new: str) -> None:
    """Make the module ``old`` (being imported) the module ``new``: the same object under both names.

    For module paths that moved, kept for one release: imports and monkeypatches of either name reach
    the same objects. Warns once per process with a DeprecationWarning naming the new path.
    """
    warnings.warn(f"{old} moved to {new}; the old path goes in the next release", DeprecationWarning, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
