"""`RunState`: the one object the trainer and the two callbacks share during a run, saved and restored once.

Who writes and who reads each field:

========================  =========================  ===========================================
field                     written by                 read by
========================  =========================  ===========================================
``copies``                the trainer (k)            the switch callback, the results
``current_copies``        the switch callback        the trainer (each step's batches), the
                                                     dynamics log (``current_copies``)
``critical_period``       the switch callback        the trainer (``trainer.critical_period``)
``last_measurement``      the dynamics callback      the switch callback (the detector's inputs)
``learning_rate(_sum)``   the switch callback        the detector, the dynamics log
``resume_checkpoint``     the trainer (``train``)    the dynamics callback (files to restore)
``confusion_from_...``    the trainer                the dynamics callback
``unlogged``              both callbacks             the trainer's next training log
``repeat_plan``           the trainer (repeat mode)  the switch callback (epoch lengths)
========================  =========================  ===========================================

`CriticalPeriodTrainer` saves the persistent fields into every checkpoint's ``trainer_state.json``
(``stateful_callbacks["hf_critical.RunState"]``) and restores them before the callbacks' ``on_train_begin``.

Why not transformers' `ExportableState`: on resume the Trainer restores an `ExportableState` callback
by building a *new* instance from its saved arguments and replacing the old one in the callback list
(and only with ``restore_callback_states_from_checkpoint=True``). The trainer and the callbacks hold
references to each other's state, which a replacement would silently cut; this object is restored in
place, on every resume.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .names import RUN_STATE_KEY, SWITCH_STATE_KEY

__all__ = ["RunState"]


@dataclass
class RunState:
    """What the trainer, `DynamicsCallback` and `CriticalPeriodCallback` share; see the module docstring."""

    #: k: the augmented copies per sample until the switch (1 without an augmentation collator).
    copies: int = 1
    #: The copies of each sample training sees from the next step on: k before the switch, 1 after (batch
    #: mode: rows per sample in a batch; repeat mode: passes per epoch). None without an augmentation collator.
    current_copies: int | None = None
    #: None until the detector fires; then the switch step, epoch, detector and metric values.
    critical_period: dict[str, Any] | None = None
    #: The latest measurement: its ``dynamics.jsonl`` record (the detector's inputs come from it).
    last_measurement: dict[str, Any] | None = None
    #: The learning rate of the current optimizer step (between ``on_optimizer_step`` and ``on_step_end``).
    learning_rate: float | None = None
    #: The sum of the learning rates of all optimizer steps so far.
    learning_rate_sum: float = 0.0
    #: The checkpoint folder the current ``train()`` resumed from (None: a fresh start).
    resume_checkpoint: str | None = None
    #: Whether the trainer feeds gradient confusion (a plain Trainer cannot: the callback warns).
    confusion_from_trainer: bool = False
    #: Log values measured since the last training log; the trainer's next training log takes them.
    unlogged: dict[str, float] = field(default_factory=dict)
    #: augment_mode="repeat": the run's `hf_critical.trainer.repeat_plan.RepeatPlan` (epochs of varying
    #: length), set by the trainer, read by the switch callback; None in batch mode.
    repeat_plan: Any = None

    #: Fields saved in checkpoints; the others are rebuilt by every run.
    PERSISTENT = ("critical_period", "learning_rate_sum")

    def start(self) -> None:
        """Forget the previous run's progress (a fresh ``train()``); the settings (``copies``) stay."""
        self.critical_period = None
        self.last_measurement = None
        self.learning_rate = None
        self.learning_rate_sum = 0.0
        self.unlogged = {}

    def to_dict(self) -> dict[str, Any]:
        """The persistent fields, JSON-ready."""
        return {name: copy.deepcopy(getattr(self, name)) for name in self.PERSISTENT}

    def restore(self, stateful_callbacks: Mapping[str, Any] | None) -> bool:
        """Restore from a checkpoint's ``TrainerState.stateful_callbacks``; False if it holds no hf_critical state.

        Checkpoints written before this object existed kept the same fields in the switch callback's entry.
        """
        saved = (stateful_callbacks or {}).get(RUN_STATE_KEY)
        if saved is None:
            legacy = (stateful_callbacks or {}).get(SWITCH_STATE_KEY)
            if legacy is None:
                return False
            # Absent before 0.2: a trend detector's own sum, else the sum restarts (only the jsonl field shows it).
            fallback = legacy.get("detector", {}).get("attributes", {}).get("lr_sum", 0.0)
            saved = {
                "critical_period": legacy.get("critical_period"),
                "learning_rate_sum": legacy.get("learning_rate_sum", fallback),
            }
        self.start()
        self.critical_period = copy.deepcopy(saved.get("critical_period"))
        self.learning_rate_sum = float(saved.get("learning_rate_sum", 0.0))
        return True

    def queue_log(self, values: Mapping[str, float], replace_prefix: str | None = None) -> None:
        """Add values for the next training log; ``replace_prefix`` first drops the waiting keys that start with it.

        A measurement replaces the previous one's values whole (``replace_prefix="dynamics/"``): a key the
        newer measurement could not compute is not logged with an older value.
        """
        if replace_prefix is not None:
            self.unlogged = {k: v for k, v in self.unlogged.items() if not k.startswith(replace_prefix)}
        self.unlogged.update(values)

    def take_unlogged(self) -> dict[str, float]:
        """The values waiting for a training log, and forget them."""
        values, self.unlogged = self.unlogged, {}
        return values
