"""Deprecated alias of `hf_critical.experiments.savings`, kept for one release: import that instead.

This module replaces itself with the new one in `sys.modules`, so ``import hf_critical.savings`` gives the
very module object of ``hf_critical.experiments.savings`` (and monkeypatching either patches both).
"""

import importlib
import sys
import warnings

warnings.warn(
    "hf_critical.savings moved to hf_critical.experiments.savings; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("hf_critical.experiments.savings")
