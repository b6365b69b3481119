"""The optional packages (text, images, experiments), and the error that names the extra to install.

The core needs none of them to import. The modules that use one (the text and image collators, the
experiment modules) import it inside the function that needs it, through `require`, so importing them
works without it and only that function fails, with an ImportError naming the pip command and the extra
of hf-critical that installs it.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["OPTIONAL_PACKAGES", "install_hint", "is_available", "require"]

#: Top-level module -> (its pip distribution, the hf-critical extra that installs it).
OPTIONAL_PACKAGES = {
    "codecarbon": ("codecarbon", "experiments"),
    "evaluate": ("evaluate", "experiments"),
    "matplotlib": ("matplotlib", "experiments"),
    "sklearn": ("scikit-learn", "experiments"),
    "nlpaug": ("nlpaug", "text"),
    "kornia": ("kornia", "images"),
}


def _top(module: str) -> str:
    top = module.partition(".")[0]
    if top not in OPTIONAL_PACKAGES:
        raise ValueError(f"{module!r} is not an optional package of hf_critical; known: {sorted(OPTIONAL_PACKAGES)}")
    return top


def install_hint(module: str) -> str:
    """``"pip install scikit-learn (or pip install 'hf-critical[experiments]')"`` for ``"sklearn"``."""
    distribution, extra = OPTIONAL_PACKAGES[_top(module)]
    return f"pip install {distribution} (or pip install 'hf-critical[{extra}]')"


def is_available(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; nothing is imported)."""
    try:
        return importlib.util.find_spec(_top(module)) is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a module without a spec
        return False


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` (e.g. ``"sklearn.datasets"``) for ``purpose``, or say what to install."""
    top = _top(module)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and err.name.partition(".")[0] != top:
            raise  # the package is there but one of its own dependencies is not: its error says which
        distribution = OPTIONAL_PACKAGES[top][0]
        raise ImportError(f"{purpose}: {distribution} is not installed; {install_hint(module)}") from err
