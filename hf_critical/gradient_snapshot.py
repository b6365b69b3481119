"""Deprecated path, kept for one release: `hf_critical.gradient_snapshot` is now `hf_critical.metrics.gradient_snapshot`.

This module is that module (an alias in ``sys.modules``), so imports and monkeypatches of either
name reach the same objects.
"""

import sys

from .metrics import gradient_snapshot as _module

sys.modules[__name__] = _module
