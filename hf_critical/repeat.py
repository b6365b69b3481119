"""Deprecated path, kept for one release: `hf_critical.repeat` is now `hf_critical.trainer.repeat_plan`
(the plan, sampler, dataset and schedule) and `hf_critical.trainer.repeat` (the Trainer hooks)."""

from .names import AUGMENT_MODES, COPY_INDEX_KEY
from .trainer.repeat import RepeatTrainerMixin
from .trainer.repeat_plan import UNITS_PER_EPOCH, RepeatBatchSampler, RepeatDataset, RepeatPlan, epoch_lr_schedule

__all__ = [
    "AUGMENT_MODES",
    "COPY_INDEX_KEY",
    "UNITS_PER_EPOCH",
    "RepeatBatchSampler",
    "RepeatDataset",
    "RepeatPlan",
    "RepeatTrainerMixin",
    "epoch_lr_schedule",
]
