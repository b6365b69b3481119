"""`CriticalPeriodTrainer`: the drop-in `transformers.Trainer` subclass, its wiring and its overrides.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch
from transformers import Trainer

from ..arguments import detector_kwargs
from ..augmentation import AugmentationCollator
from ..callbacks.dynamics import DynamicsCallback
from ..callbacks.switch import CriticalPeriodCallback
from ..detectors import Detector, NeverSwitch, build_detector
from ..names import AUGMENT_MODES, CURRENT_COPIES_LOG_KEY, RUN_STATE_KEY
from .batches import MicroBatchMixin, _StepPlan
from .checkpoints import _reload_renamed_weights, last_complete_checkpoint
from .guards import check_deepspeed, check_fsdp, check_launch, destroy_process_group_at_exit
from .repeat import RepeatTrainerMixin

logger = logging.getLogger(__name__)


class CriticalPeriodTrainer(MicroBatchMixin, RepeatTrainerMixin, Trainer):
    """`transformers.Trainer` that measures gradient confusion, gradient predictability and layer rotation.

    Same constructor as `Trainer`. Settings come from `CriticalPeriodArguments` (plain
    `TrainingArguments` give the defaults) or from a `DynamicsCallback` passed in ``callbacks`` or as
    ``dynamics_callback``. Values are logged under ``dynamics/*`` and written per layer to
    ``output_dir/dynamics.jsonl``; see `hf_critical.callbacks.dynamics` for the keys.

    The trainer and its two callbacks share one `hf_critical.state.RunState` (``trainer.run_state``), saved
    into every checkpoint and restored on resume before the callbacks' ``on_train_begin``.
    """

    def __init__(
        self,
        *args,
        dynamics_callback: DynamicsCallback | None = None,
        detector: Detector | None = None,
        **kwargs,
    ):
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if dynamics_callback is not None:
            metrics = dynamics_callback.metrics
        else:
            metrics = getattr(training_args, "dynamics_metrics", None) if training_args is not None else None
            metrics = DynamicsCallback(metrics=metrics).metrics if metrics is not None else ["default"]
        check_deepspeed(training_args, metrics)
        if training_args is not None:
            check_launch(training_args)
        super().__init__(*args, **kwargs)
        existing = [cb for cb in self.callback_handler.callbacks if isinstance(cb, DynamicsCallback)]
        if dynamics_callback is not None and existing and dynamics_callback is not existing[0]:
            raise ValueError("pass the DynamicsCallback either in `callbacks` or as `dynamics_callback`, not both")
        if dynamics_callback is None:
            dynamics_callback = existing[0] if existing else DynamicsCallback.from_args(self.args)
        if dynamics_callback.metrics and dynamics_callback not in self.callback_handler.callbacks:
            # Nothing measured: no callback (code listing the Trainer's callbacks sees the Trainer's own).
            self.add_callback(dynamics_callback)
        self.dynamics = dynamics_callback
        #: Shared with both callbacks (hf_critical.state): the switch, the latest measurement, the log values.
        self.run_state = dynamics_callback.run_state
        self.run_state.confusion_from_trainer = True

        self.augmentation = self.data_collator if isinstance(self.data_collator, AugmentationCollator) else None
        self._configure_augmentation()
        if detector is None:
            detector = build_detector(**detector_kwargs(self.args))
        # Added after the DynamicsCallback: its on_step_end reads the measurement of the same step.
        self.switch = CriticalPeriodCallback(detector, dynamics_callback, self.augmentation)
        if self.augmentation is not None or not isinstance(detector, NeverSwitch):
            self.add_callback(self.switch)

        check_deepspeed(self.args, self.dynamics.metrics, enabled=self.is_deepspeed_enabled)
        if self.args.world_size > 1:
            destroy_process_group_at_exit()
        check_fsdp(getattr(self.accelerator.state, "fsdp_plugin", None), self.dynamics.metrics)

        self._step_plan: _StepPlan | None = None
        self._step_rows_per_sample = 1
        self._step_current_copies = 1
        self._warned_unsplittable = False
        self._warned_no_confusion = False

    def _configure_augmentation(self) -> None:
        copies = getattr(self.args, "augment_copies", None)
        after_switch = getattr(self.args, "augment_after_switch", None)
        if self.augmentation is None:
            if getattr(self.args, "augment_mode", "batch") != "batch":
                raise ValueError(
                    f"`augment_mode={self.args.augment_mode!r}` needs an hf_critical augmentation collator "
                    f"(TextAugmentationCollator, ImageAugmentationCollator) as `data_collator`, got "
                    f"{type(self.data_collator).__name__}"
                )
            if copies not in (None, 1) or after_switch is not None:
                raise ValueError(
                    "`augment_copies`/`augment_after_switch` need an hf_critical augmentation collator "
                    "(TextAugmentationCollator, ImageAugmentationCollator) as `data_collator`, got "
                    f"{type(self.data_collator).__name__}"
                )
            return
        if copies is not None:
            self.augmentation.copies = copies
        if after_switch is not None:
            self.augmentation.after_switch = after_switch
        self._configure_augment_mode()
        self.run_state.copies = self._repeat_copies or self.augmentation.copies
        if self.args.remove_unused_columns:
            # The collator reads raw fields (e.g. the text) that the model's forward does not take.
            logger.info("remove_unused_columns set to False: the augmentation collator reads raw dataset columns")
            self.args.remove_unused_columns = False

    def _configure_augment_mode(self) -> None:
        """augment_mode="repeat": k passes per epoch of one augmented row each (see hf_critical.trainer.repeat_plan)."""
        mode = getattr(self.args, "augment_mode", "batch")
        if mode not in AUGMENT_MODES:
            raise ValueError(f"`augment_mode` must be one of {list(AUGMENT_MODES)}, got {mode!r}")
        self._repeat_copies = None
        # A collator an earlier repeat-mode trainer set to one row per sample still knows its k.
        remembered = getattr(self.augmentation, "_repeat_mode_copies", None)
        if remembered is not None and self.augmentation.copies == 1 and getattr(self.args, "augment_copies", None) is None:
            self.augmentation.copies = remembered
        if mode == "batch":
            return
        if self.augmentation.original_first:
            raise ValueError(
                "`original_first=True` is a batch-augmentation layout (copy 0 of every sample clean); "
                "augment_mode='repeat' augments every pass: use original_first=False"
            )
        if self.args.train_sampling_strategy != "random":
            raise ValueError(
                f"augment_mode='repeat' draws its own epochs (k shuffled passes); `train_sampling_strategy` must be "
                f"'random', got {self.args.train_sampling_strategy!r}"
            )
        if self.train_dataset is not None and isinstance(self.train_dataset, torch.utils.data.IterableDataset):
            raise ValueError("augment_mode='repeat' needs a map-style training set with a length, got an IterableDataset")
        # k passes of one row each: the collator makes one augmented row per sample, the plan k passes.
        self._repeat_copies = self.augmentation.copies
        self.augmentation._repeat_mode_copies = self._repeat_copies
        self.augmentation.copies = 1

    @property
    def critical_period(self) -> dict[str, Any] | None:
        """The switch step, epoch, detector and metric values at the switch; None if the detector never fired."""
        return self.run_state.critical_period

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """`Trainer.log`; a training log (one with ``loss``) also carries what hf_critical measured since the last.

        Measurements never make log entries of their own: code reading ``state.log_history`` or
        receiving ``on_log`` sees the Trainer's entries only. Evaluation logs are left as they are.
        """
        if "loss" in logs:
            for key, value in self.run_state.take_unlogged().items():
                logs.setdefault(key, value)
            if self.augmentation is not None:
                logs.setdefault(CURRENT_COPIES_LOG_KEY, self._step_current_copies)
        super().log(logs, start_time)

    # ---- evaluation uses clean, single-copy batches ----------------------------------------------

    def get_eval_dataloader(self, eval_dataset=None):
        with self._clean_collator():
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._clean_collator():
            return super().get_test_dataloader(test_dataset)

    @contextlib.contextmanager
    def _clean_collator(self):
        if self.augmentation is None:
            yield
            return
        self.data_collator = self.augmentation.for_evaluation()
        try:
            yield
        finally:
            self.data_collator = self.augmentation

    # ---- entry point ----------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        path = resume_from_checkpoint
        if path is True:
            path = last_complete_checkpoint(self.args.output_dir)
            if path is None:
                raise ValueError(f"No valid checkpoint found in output directory ({self.args.output_dir})")
            resume_from_checkpoint = path
        self.run_state.start()
        self.run_state.resume_checkpoint = path if isinstance(path, str) else None
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._step_plan = None

    def _load_callback_state(self) -> None:
        # Called by the Trainer on resume, after it loaded trainer_state.json and before on_train_begin.
        super()._load_callback_state()
        self.run_state.restore(self.state.stateful_callbacks)

    def _save_checkpoint(self, model, trial) -> None:
        # The callbacks' on_step_end has run; the Trainer writes trainer_state.json last, with this entry in it.
        self.state.stateful_callbacks[RUN_STATE_KEY] = self.run_state.to_dict()
        super()._save_checkpoint(model, trial)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        _reload_renamed_weights(model if model is not None else self.model, resume_from_checkpoint)
