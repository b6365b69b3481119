"""Deprecated path, kept for one release: `hf_critical.weights_file` is now `hf_critical.io.tensor_file`.

This module is that module (an alias in ``sys.modules``), so imports and monkeypatches of either
name reach the same objects.
"""

import sys

from .io import tensor_file as _module

sys.modules[__name__] = _module
