"""The two callbacks: `DynamicsCallback` measures the metrics, `CriticalPeriodCallback` runs the detector and switches.

Where things are: `dynamics` (the measurement schedule and the metrics' state), `switch` (the
detector and the k-copies-to-one switch), `files` (the checkpoint files the dynamics callback keeps
and the helpers they share). They share one `hf_critical.state.RunState` with the trainer.
"""

from __future__ import annotations

from .dynamics import DynamicsCallback, shard_reduction
from .switch import CriticalPeriodCallback

__all__ = ["CriticalPeriodCallback", "DynamicsCallback", "shard_reduction"]
