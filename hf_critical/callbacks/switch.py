"""`CriticalPeriodCallback`: runs a detector over the metrics and cuts augmentation to one copy when it fires.

Logged keys:

=================================  ===============================================================
Key                                Meaning
=================================  ===============================================================
``augment/current_copies``         copies of each sample at this log step: k before the switch, 1 after
                                   (batch mode: rows per sample in a batch; repeat mode: passes per epoch)
``critical_period/switch_step``    the optimizer step at which the detector fired (logged once);
                                   steps after it train on one copy per sample
``critical_period/switch_epoch``   the same, in epochs (logged once)
=================================  ===============================================================

They go out with the Trainer's training log (every ``logging_steps``): the switch keys with the first
training log at or after the switch step, never as a log entry of their own; ``augment/current_copies`` with
every training log (not with evaluation metrics, which use one clean copy).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainerCallback

from ..detectors import Detector, detector_from_state, detector_values
from ..names import SWITCH_STATE_KEY
from .dynamics import DynamicsCallback

__all__ = ["CriticalPeriodCallback", "SWITCH_STATE_KEY"]

logger = logging.getLogger(__name__)



class CriticalPeriodCallback(TrainerCallback):
    """Feeds every measurement to a detector; when it fires, switches the augmentation collator to one copy.

    The detector's inputs at a measured step are `hf_critical.detectors.detector_values` of the
    measurement's record, which the `DynamicsCallback` puts in the shared `RunState` in its own
    ``on_step_end``: this callback must come after it (`CriticalPeriodTrainer` adds it so, and a
    measurement missing at a measured step is an error, not a silent skip). The switch is decided in
    ``on_step_end`` of step ``s`` and applies to the batches of step ``s + 1`` onward: the collator's shared flag tells DataLoader workers, and the trainer trims batches that
    were collated (prefetched) before the decision. Under several processes the decision is reduced
    across ranks (fired anywhere = fired everywhere), so every rank switches at the same step.

    Args:
        detector: A :class:`~hf_critical.detectors.Detector`.
        dynamics: The `DynamicsCallback` whose measurements feed the detector.
        collator: The augmentation collator to switch (``None``: detect and log only).
    """

    def __init__(self, detector: Detector, dynamics: DynamicsCallback, collator: Any = None):
        if not isinstance(detector, Detector):
            raise ValueError(f"`detector` must be an hf_critical Detector, got {type(detector).__name__}")
        self.detector = detector
        self.dynamics = dynamics
        self.collator = collator
        #: Shared with the dynamics callback and the trainer (`hf_critical.state`).
        self.run_state = dynamics.run_state
        self._steps_per_epoch = 1

    # ---- state ----------------------------------------------------------------------------------

    @property
    def critical_period(self) -> dict[str, Any] | None:
        """None until the detector fires; then the switch step, epoch, detector and metric values."""
        return self.run_state.critical_period

    @property
    def learning_rate_sum(self) -> float:
        """The sum of the learning rates of all optimizer steps so far."""
        return self.run_state.learning_rate_sum

    @property
    def plan(self):
        """augment_mode="repeat": the run's `hf_critical.trainer.repeat_plan.RepeatPlan` (in the `RunState`), else None."""
        return self.run_state.repeat_plan

    @property
    def copies(self) -> int:
        """Copies of each sample from the next step on: k before the switch, 1 after.

        In batch mode the rows per sample of the next training batches; in repeat mode the passes per epoch
        (every step holds one row per sample).
        """
        if self.collator is None:
            return 1
        if self.plan is not None:
            # Repeat mode: one row per sample and step; k is the passes (copies) per epoch.
            return 1 if self.collator.switched else self.plan.copies
        return self.collator.rows_per_sample

    def state(self) -> dict[str, Any]:
        """The detector's state (the switch itself and the learning-rate sum are in the `RunState`)."""
        return {"detector": self.detector.state()}

    # ---- events ---------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        steps_per_epoch = _steps_per_epoch(train_dataloader, args, state)
        if self.plan is not None:
            # Detector windows in epochs mean the augmented epochs, the ones the detector watches.
            steps_per_epoch = self.plan.updates(0)
        self._steps_per_epoch = steps_per_epoch
        saved = (state.stateful_callbacks or {}).get(SWITCH_STATE_KEY) if state.global_step > 0 else None
        if saved is not None:
            # The switch and the learning-rate sum came back with the RunState (restored by the trainer).
            self.detector = detector_from_state(saved["detector"])
        elif state.global_step > 0:
            logger.warning("Resuming from a checkpoint without hf_critical switch state: the detector starts afresh.")
            self.run_state.start()
        else:
            if self.detector.state()["attributes"]["last_step"] > 0:
                # A new run (e.g. a second train()): the detector starts afresh, with the same settings.
                self.detector = type(self.detector)(**self.detector.state()["args"])
        self.run_state.learning_rate = None
        self.detector.configure(
            steps_per_epoch=steps_per_epoch,
            num_epochs=float(state.num_train_epochs),
            max_steps=int(state.max_steps) if state.max_steps and state.max_steps > 0 else None,
        )
        if self.collator is not None:
            if self.critical_period is not None:
                self.collator.switch()
            else:
                self.collator.reset()
        self.run_state.current_copies = self.copies

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        # The learning rate of this step: the scheduler moves it to the next step's before on_step_end.
        run = self.run_state
        run.learning_rate = _learning_rate_of(optimizer)
        if run.learning_rate is not None:
            # The dynamics callback writes both into this step's record, so that a replay can follow the schedule.
            run.learning_rate_sum += run.learning_rate

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.collator is not None and hasattr(self.collator, "set_epoch"):
            # Before the epoch's DataLoader iterator exists: every batch of the epoch is seeded with it.
            if self.plan is not None:
                self.collator.set_epoch(self.plan.locate(state.global_step)[0])
            else:
                self.collator.set_epoch(state.global_step // self._steps_per_epoch)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        run = self.run_state
        learning_rate, run.learning_rate = run.learning_rate, None
        if self.critical_period is None:
            record = run.last_measurement
            measured = record is not None and record["step"] == step
            if not measured and self.dynamics.is_measured_step(step) and self.dynamics.selection is not None:
                raise RuntimeError(
                    f"step {step} is a measured step but the CriticalPeriodCallback ran before the DynamicsCallback "
                    "measured it: register the CriticalPeriodCallback after the DynamicsCallback"
                )
            # The same function turns a finished run's records into a replay's inputs (hf_critical.detectors.replay).
            values = detector_values(record) if measured else None
            fired = _agree(self.detector.update(step, float(state.epoch or 0.0), values, learning_rate=learning_rate))
            if fired:
                self._switch(args, state, control, step)
        if control.should_save:
            state.stateful_callbacks[SWITCH_STATE_KEY] = self.state()

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:
            state.stateful_callbacks[SWITCH_STATE_KEY] = self.state()

    def _switch(self, args, state, control, step: int) -> None:
        epoch = float(state.epoch or 0.0)
        before = self.copies
        if self.collator is not None:
            self.collator.switch()
        if self.plan is not None:
            self.plan.switch_at(step)
        last = self.dynamics.history[-1] if self.dynamics.history else {}
        self.run_state.critical_period = {
            "switch_step": step,
            "switch_epoch": epoch,
            "detector": self.detector.describe(),
            "copies_before": before,
            "copies_after": self.copies,
            "metrics_at_switch": dict(self.detector.values_at_fire or {}),
            "last_measurement_step": last.get("step"),
        }
        if self.plan is not None:
            # The epoch the switch ran in keeps its k passes; the later ones are one pass (hf_critical.trainer.repeat_plan).
            period = self.run_state.critical_period
            period["augment_mode"] = "repeat"
            period["one_pass_from_epoch"] = self.plan.switch_epoch + 1
            period["one_pass_from_step"] = self.plan.epoch_start(self.plan.switch_epoch + 1)
        self.run_state.current_copies = self.copies
        logger.info("Critical period ended at step %d (epoch %.3f): augmentation %d -> %d copies", step, epoch, before, self.copies)
        self.run_state.queue_log({"critical_period/switch_step": float(step), "critical_period/switch_epoch": epoch})


def _steps_per_epoch(train_dataloader, args, state) -> int:
    try:
        batches = len(train_dataloader)
    except (TypeError, AttributeError):
        batches = None
    if batches:
        accumulation = max(1, args.gradient_accumulation_steps)
        return max(1, math.ceil(batches / accumulation))
    if state.max_steps and state.num_train_epochs:
        return max(1, math.ceil(state.max_steps / state.num_train_epochs))
    return 1


def _learning_rate_of(optimizer) -> float | None:
    """The learning rate of the optimizer's first parameter group (None if there is none to read)."""
    groups = getattr(optimizer, "param_groups", None)
    if not groups:
        return None
    value = groups[0].get("lr")
    if torch.is_tensor(value):
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _agree(fired: bool) -> bool:
    """Fired on any rank means fired on every rank (a rank that disagreed would desynchronise DDP)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fired
    backend = dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    flag = torch.tensor([1 if fired else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())
