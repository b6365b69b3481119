"""Replay: turn a run's measurement records into detector inputs, live or offline, through one code path.

`detector_values` is what the switch callback feeds its detector at a measured step, and what
`replay_detector` feeds one offline from a finished run's ``dynamics.jsonl``: the study scores every
detector on the ``full`` arm's log without training again, valid because both paths are this code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ..names import METRIC_LOG_KEYS
from .registry import build_detector

__all__ = ["detector_values", "learning_rates_from_records", "replay_detector"]


def detector_values(record: Mapping[str, Any]) -> dict[str, float]:
    """The values a detector is fed for one measurement, from its ``dynamics.jsonl`` record.

    The one code path from a measurement to a detector's inputs: `CriticalPeriodCallback` calls it on
    the record `DynamicsCallback` has just written, and `replay_detector` on the records of a finished
    run, so a replay sees exactly what the live detector saw. Keys are the metrics' log keys without
    the ``dynamics/`` prefix (``gradient_confusion``, ``gradient_confusion_min``, ...); a value that is
    missing or not finite is left out.
    """
    values = {}
    for metric, keys in METRIC_LOG_KEYS.items():
        result = record.get(metric)
        if not isinstance(result, Mapping):
            continue
        for field_name, log_key in keys:
            value = result.get(field_name)
            if isinstance(value, (int, float)) and math.isfinite(value):
                values[log_key.removeprefix("dynamics/")] = float(value)
    return values


def replay_detector(
    records: Sequence[Mapping[str, Any]],
    steps_per_epoch: int,
    num_epochs: float,
    name: str,
    learning_rates: Sequence[float] | None = None,
    **kwargs: Any,
) -> int | None:
    """The step at which detector ``name`` would have fired on a run's logged metrics (None: never).

    Before its switch a detector's run is the same run as one that never switches (same seed, same
    data, same augmentations), so replaying the detector on the ``full`` arm's ``dynamics.jsonl``
    gives the step at which it fires, without training again. Detectors that follow the learning
    rate get it as `CriticalPeriodCallback` gives it: ``learning_rates[step - 1]`` when given, else
    from the records' ``learning_rate_sum`` (spread evenly over the steps between two records, which
    keeps the sum at every measured step exact).
    """
    detector = build_detector(name, **kwargs)
    total = math.ceil(steps_per_epoch * num_epochs)
    detector.configure(steps_per_epoch=steps_per_epoch, num_epochs=num_epochs, max_steps=total)
    by_step = {int(record["step"]): record for record in records}
    if learning_rates is None:
        learning_rates = learning_rates_from_records(records, total)
    for step in range(1, total + 1):
        record = by_step.get(step)
        values = detector_values(record) if record is not None else None
        epoch = step / steps_per_epoch
        rate = None if learning_rates is None or step > len(learning_rates) else learning_rates[step - 1]
        if detector.update(step, epoch, values, learning_rate=rate):
            return step
    return None


def learning_rates_from_records(records: Sequence[Mapping[str, Any]], total_steps: int) -> list[float] | None:
    """Per-step learning rates from the ``learning_rate_sum`` of ``dynamics.jsonl`` records (None: not logged).

    Between two records the difference of their sums is spread evenly over the steps in between;
    after the last record its own learning rate is kept.
    """
    points = sorted(
        (int(r["step"]), float(r["learning_rate_sum"]))
        for r in records
        if isinstance(r.get("learning_rate_sum"), (int, float))
    )
    if not points:
        return None
    rates: list[float] = []
    previous_step, previous_sum = 0, 0.0
    for step, total in points:
        if step <= previous_step:
            continue
        rates.extend([(total - previous_sum) / (step - previous_step)] * (step - previous_step))
        previous_step, previous_sum = step, total
    last = rates[-1] if rates else 0.0
    rates.extend([last] * max(0, total_steps - len(rates)))
    return rates[:total_steps]
