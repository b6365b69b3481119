"""Deprecated alias of `hf_critical.experiments.vit_configs`, kept for one release: import that instead.

This module is that module (an alias in ``sys.modules``), so imports and monkeypatches of either
name reach the same objects.
"""

from ._modules import alias_module

alias_module(__name__, "hf_critical.experiments.vit_configs")
