"""Deprecated path, kept for one release: `hf_critical.layers` is now `hf_critical.metrics.layers`.

This module is that module (an alias in ``sys.modules``), so imports and monkeypatches of either
name reach the same objects.
"""

import sys

from .metrics import layers as _module

sys.modules[__name__] = _module
