"""Deprecated alias of `hf_critical.experiments.robustness`, kept for one release: import that instead.

This module replaces itself with the new one in `sys.modules`, so ``import hf_critical.robustness`` gives the
very module object of ``hf_critical.experiments.robustness`` (and monkeypatching either patches both).
"""

import importlib
import sys
import warnings

warnings.warn(
    "hf_critical.robustness moved to hf_critical.experiments.robustness; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("hf_critical.experiments.robustness")
