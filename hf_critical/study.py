"""Deprecated path, kept for one release: `hf_critical.study` is now `hf_critical.experiments.study`.

This module is that package (an alias in ``sys.modules``), so imports of either name reach the same objects.
"""

import sys

from .experiments import study as _module

sys.modules[__name__] = _module
