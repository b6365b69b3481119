"""What cutting augmentation at the critical period saved: measured per-step work, and the counterfactual.

`TrainingCostCallback` **measures**, for every optimizer step, the training rows the model
received (a forward pre-hook, so k augmented copies count k times) and the step's wall time.
`compute_savings` then **derives** what a run that kept k copies to the end would have cost:

* rows without the switch = rows up to the switch + rows after it x (copies before / copies after):
  exact for the rows, since the same samples would have been drawn;
* train time without the switch = measured train time + steps after the switch x (median step time
  before the switch - median step time after it): an estimate (a k-copy step costs less than k clean
  steps: fixed per-step costs);
* energy without the switch = measured energy x (time without / time with): an estimate that
  assumes the same average power.

With dataset repetition (``augment_mode="repeat"``, `hf_critical.trainer.repeat_plan`) a step always holds B rows
and the switch shortens the epochs after the switch epoch from k passes to one: the run without the
switch has k - 1 more rows and steps for every row and step of those one-pass epochs (steps after
``one_pass_from_step``; exact when a pass fills whole batches), and those extra steps are augmented
steps, priced at the median step time before the switch.

`estimate_cost` turns hours and kWh into money at prices the user gives. The study prices its runs
with `DEFAULT_PRICE_PER_KWH` and `DEFAULT_PRICE_PER_ACCELERATOR_HOUR` unless told otherwise; both are
public list prices, named with their source below, and both are arguments (a user's own prices differ).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import TrainerCallback

__all__ = [
    "COST_STATE_KEY",
    "DEFAULT_PRICE_PER_ACCELERATOR_HOUR",
    "DEFAULT_PRICE_PER_KWH",
    "TrainingCostCallback",
    "compute_savings",
    "estimate_cost",
]

#: USD per kWh: the U.S. commercial-sector average retail price of electricity, about 13 cents/kWh in
#: 2024 (U.S. Energy Information Administration, Electric Power Monthly, Table 5.6.B "Average Price of
#: Electricity to Ultimate Customers by End-Use Sector"). States ranged from under 8 to over 25 cents.
DEFAULT_PRICE_PER_KWH = 0.13
#: USD per accelerator-hour: AWS's "effective accelerator hourly rate" of one H100 in a p5.48xlarge
#: EC2 Capacity Block for ML, US East, $39.33 per instance-hour / 8 GPUs = $4.916 (aws.amazon.com/ec2/
#: capacityblocks/pricing, rates of late 2024; on-demand p5 rates were higher, tier-2 clouds lower).
DEFAULT_PRICE_PER_ACCELERATOR_HOUR = 4.916

#: Key of the callback's state in `TrainerState.stateful_callbacks` (saved inside trainer_state.json).
COST_STATE_KEY = "hf_critical.TrainingCostCallback"


def _rows_of(args: tuple, kwargs: Mapping[str, Any]) -> int:
    for value in (*kwargs.values(), *args):
        if torch.is_tensor(value) and value.dim() > 0:
            return int(value.shape[0])
    return 0


class TrainingCostCallback(TrainerCallback):
    """Records ``{"step", "rows", "seconds"}`` for every optimizer step in ``steps``.

    ``rows``: rows of all training forward passes of the step (every micro-batch; with
    gradient-confusion half-batches, both halves), counted on this process. ``seconds``: wall time
    from the end of the previous step's logging/evaluation/saving (or from the start of training)
    to the end of this step, so data loading and collation are included and evaluation is not.
    The record survives a resume from a checkpoint, and so does the wall time the run had spent when
    the checkpoint was written: :attr:`seconds_before_resume` (0 for a run that did not resume), which
    the reports add to the resumed segment's ``train_runtime`` (the work an interrupted segment did
    after its last checkpoint is not part of the run).
    """

    def __init__(self):
        self.steps: list[dict[str, float]] = []
        #: Wall time of the run up to the checkpoint this segment resumed from (earlier segments, summed).
        self.seconds_before_resume = 0.0
        self._rows = 0
        self._mark: float | None = None
        self._segment_start: float | None = None
        self._hook = None

    def state(self) -> dict[str, Any]:
        elapsed = 0.0 if self._segment_start is None else time.perf_counter() - self._segment_start
        return {"steps": [dict(s) for s in self.steps], "seconds": self.seconds_before_resume + elapsed}

    def _count(self, module, args, kwargs):
        if module.training and torch.is_grad_enabled():
            self._rows += _rows_of(args, kwargs)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        saved = (state.stateful_callbacks or {}).get(COST_STATE_KEY) if state.global_step > 0 else None
        self.steps = [s for s in saved["steps"] if s["step"] <= state.global_step] if saved else []
        self.seconds_before_resume = float(saved.get("seconds", 0.0)) if saved else 0.0
        self._segment_start = time.perf_counter()
        self._rows = 0
        if self._hook is not None:
            self._hook.remove()
        if model is not None:
            self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)
        self._mark = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        seconds = now - self._mark if self._mark is not None else float("nan")
        self.steps.append({"step": state.global_step, "rows": self._rows, "seconds": seconds})
        self._rows = 0
        self._mark = now
        if control.should_save:
            state.stateful_callbacks[COST_STATE_KEY] = self.state()

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:  # save_strategy="epoch": the checkpoint is written after this event
            state.stateful_callbacks[COST_STATE_KEY] = self.state()

    def _restart_clock(self, *args, **kwargs):
        # Logging, evaluation and checkpointing run between steps: not part of the next step.
        self._mark = time.perf_counter()

    on_log = on_evaluate = on_save = _restart_clock

    def on_train_end(self, args, state, control, **kwargs):
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v == v]  # drop NaN
    return float(statistics.median(values)) if values else None


def compute_savings(
    steps: Sequence[Mapping[str, float]],
    switch_step: int | None,
    copies_before: int,
    copies_after: int = 1,
    train_seconds: float | None = None,
    train_energy_kwh: float | None = None,
    augment_mode: str = "batch",
    one_pass_from_step: int | None = None,
) -> dict[str, Any]:
    """Measured work of a run and the derived cost of the same run without the switch.

    Args:
        steps: `TrainingCostCallback.steps`.
        switch_step: the optimizer step at which the critical period ended (steps after it train on
            ``copies_after`` rows per sample); None if it never ended.
        copies_before, copies_after: rows per sample before / after the switch.
        train_seconds: measured train time (e.g. the Trainer's ``train_runtime``).
        train_energy_kwh: measured (or codecarbon-estimated) energy of training.
        augment_mode: ``"batch"`` (k rows per sample in a step) or ``"repeat"`` (k passes per epoch).
        one_pass_from_step: repeat mode, with a switch: the last step of the switch epoch (steps after
            it are in one-pass epochs; ``trainer.critical_period["one_pass_from_step"]``).

    Returns a dict with ``measured`` and ``derived`` parts; see the module docstring.
    """
    for name, value in (("copies_before", copies_before), ("copies_after", copies_after)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")
    if switch_step is not None and (isinstance(switch_step, bool) or not isinstance(switch_step, int) or switch_step < 0):
        raise ValueError(f"`switch_step` must be None or an int >= 0, got {switch_step!r}")
    if augment_mode not in ("batch", "repeat"):
        raise ValueError(f"`augment_mode` must be 'batch' or 'repeat', got {augment_mode!r}")
    switched = switch_step is not None
    if augment_mode == "repeat" and switched and one_pass_from_step is None:
        raise ValueError("augment_mode='repeat' with a switch needs `one_pass_from_step` (the switch epoch's last step)")
    before = [s for s in steps if not switched or s["step"] <= switch_step]
    after = [s for s in steps if switched and s["step"] > switch_step]
    rows_before = int(sum(s["rows"] for s in before))
    rows_after = int(sum(s["rows"] for s in after))
    rows_with = rows_before + rows_after
    rows_without = rows_before + round(rows_after * copies_before / copies_after)
    short = [s for s in steps if switched and s["step"] > one_pass_from_step] if augment_mode == "repeat" else []
    if augment_mode == "repeat":
        rows_without = rows_with + (copies_before - 1) * int(sum(s["rows"] for s in short))

    # The first step also pays for start-up (workers, allocations): leave it out of the typical step time.
    timed_before = before[1:] if len(before) > 1 else before
    median_before = _median([s["seconds"] for s in timed_before])
    median_after = _median([s["seconds"] for s in after])
    seconds_without = None
    if train_seconds is not None:
        if augment_mode == "repeat":
            if not short:
                seconds_without = float(train_seconds)
            elif median_before is not None:
                seconds_without = float(train_seconds) + (copies_before - 1) * len(short) * median_before
        elif not after:
            seconds_without = float(train_seconds)
        elif median_before is not None and median_after is not None:
            seconds_without = float(train_seconds) + len(after) * (median_before - median_after)
    energy_without = None
    if train_energy_kwh is not None and seconds_without is not None and train_seconds:
        energy_without = float(train_energy_kwh) * seconds_without / float(train_seconds)

    def saved(without: float | None, with_: float | None) -> tuple[float | None, float | None]:
        if without is None or with_ is None:
            return None, None
        return without - with_, ((without - with_) / without if without else 0.0)

    rows_saved, rows_saved_fraction = saved(rows_without, rows_with)
    seconds_saved, seconds_saved_fraction = saved(seconds_without, train_seconds)
    energy_saved, energy_saved_fraction = saved(energy_without, train_energy_kwh)
    return {
        "measured": {
            "optimizer_steps_recorded": len(steps),
            "steps_before_switch": len(before),
            "steps_after_switch": len(after),
            "augment_mode": augment_mode,
            "steps_in_one_pass_epochs": len(short),
            "copies_before_switch": copies_before,
            "copies_after_switch": copies_after,
            "train_rows": rows_with,
            "train_rows_before_switch": rows_before,
            "train_rows_after_switch": rows_after,
            "median_step_seconds_before_switch": median_before,
            "median_step_seconds_after_switch": median_after,
            "train_seconds": None if train_seconds is None else float(train_seconds),
            "train_energy_kwh": None if train_energy_kwh is None else float(train_energy_kwh),
        },
        "derived": {
            "train_rows_without_switch": rows_without,
            "train_rows_saved": rows_saved,
            "train_rows_saved_fraction": rows_saved_fraction,
            "train_seconds_without_switch_estimate": seconds_without,
            "train_seconds_saved_estimate": seconds_saved,
            "train_seconds_saved_fraction_estimate": seconds_saved_fraction,
            "train_energy_kwh_without_switch_estimate": energy_without,
            "train_energy_kwh_saved_estimate": energy_saved,
            "train_energy_saved_fraction_estimate": energy_saved_fraction,
        },
    }


def estimate_cost(
    seconds: float | None,
    energy_kwh: float | None = None,
    price_per_hour: float | None = None,
    price_per_kwh: float | None = None,
) -> dict[str, float | None]:
    """Money at the user's prices: machine time (``price_per_hour``) and electricity (``price_per_kwh``)."""
    for name, value in (("price_per_hour", price_per_hour), ("price_per_kwh", price_per_kwh)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or value < 0):
            raise ValueError(f"`{name}` must be None or a number >= 0, got {value!r}")
    machine = None if price_per_hour is None or seconds is None else float(seconds) / 3600.0 * price_per_hour
    electricity = None if price_per_kwh is None or energy_kwh is None else float(energy_kwh) * price_per_kwh
    return {"machine_cost": machine, "electricity_cost": electricity}
