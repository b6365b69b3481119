"""Deprecated path, kept for one release: `hf_critical.sketch` is now `hf_critical.metrics.sketch`.

This module is that module (an alias in ``sys.modules``), so imports and monkeypatches of either
name reach the same objects.
"""

import sys

from .metrics import sketch as _module

sys.modules[__name__] = _module
