"""Deprecated path, kept for one release: `hf_critical.switch` is now `hf_critical.callbacks.switch`.

This module is that module (an alias in ``sys.modules``), so imports and monkeypatches of either
name reach the same objects.
"""

import sys

from .callbacks import switch as _module

sys.modules[__name__] = _module
