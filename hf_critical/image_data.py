"""Deprecated alias of `hf_critical.experiments.image_data`, kept for one release: import that instead.

This module replaces itself with the new one in `sys.modules`, so ``import hf_critical.image_data`` gives the
very module object of ``hf_critical.experiments.image_data`` (and monkeypatching either patches both).
"""

import importlib
import sys
import warnings

warnings.warn(
    "hf_critical.image_data moved to hf_critical.experiments.image_data; the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = importlib.import_module("hf_critical.experiments.image_data")
