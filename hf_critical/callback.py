"""Deprecated path, kept for one release: `hf_critical.callback` is now `hf_critical.callbacks.dynamics`.

This module is that module (an alias in ``sys.modules``), so imports and monkeypatches of either
name reach the same objects.
"""

import sys

from .callbacks import dynamics as _module

sys.modules[__name__] = _module
