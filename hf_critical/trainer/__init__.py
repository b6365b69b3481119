"""`CriticalPeriodTrainer`: a drop-in `transformers.Trainer` that measures the training dynamics.

What it does that a callback cannot:

* **Gradient confusion without an extra pass.** At a measured step the gradients of distinct
  mini-batches are taken apart: with gradient accumulation, one per micro-batch; without, the
  step's batch is split in two halves (all rows of a sample in the same half) and each half goes
  through its own forward/backward, weighted so that the two gradients sum to the unsplit one.
  The accumulated gradient is restored before clipping and the optimizer step.
* **Gradient confusion across processes (DDP).** At a measured step every rank keeps its own
  gradient (its backward passes run without DDP's synchronisation); the trainer gathers the
  per-layer squared norms of those gradients, averages the gradients across ranks itself (the
  same all-reduce DDP would have run) and takes confusion from the norms of the sum. See
  ``docs/distributed.md``.
* **The loss scale.** transformers passes ``num_items_in_batch`` to models whose ``forward``
  takes ``**kwargs`` and then trusts them to normalise by it; several (e.g.
  ``BertForSequenceClassification``) ignore it, so the gradients grow with the accumulation
  steps. This trainer lets every model return its own per-batch mean and weights each
  micro-batch by its share of the step's items, which gives the mean over the whole step for
  every accumulation setting.
* **The switch from k copies to one at an exact step.** With an hf_critical augmentation
  collator, each step's batches get the current number of rows per sample as they are taken
  from the DataLoader (a batch prefetched before the switch is replaced by its one-copy view),
  and images marked for on-device augmentation are augmented in `training_step`.
* **Resume of models saved under renamed keys** (e.g. ViT in transformers 5), which the
  Trainer's own resume silently leaves at their current values.

Where things are: `trainer` (the subclass: wiring and overrides), `batches` (micro-batches, the
loss-scale fix, confusion on the step's own batches), `distributed` (the ranks' confusion and the
all-reduce), `guards` (set-ups refused with a clear error), `checkpoints` (resume workarounds),
`repeat` and `repeat_plan` (``augment_mode="repeat"``).
"""

from __future__ import annotations

from ..names import RESERVED_KEYS
from .batches import count_items, split_batch
from .checkpoints import last_complete_checkpoint
from .guards import check_deepspeed, check_fsdp, check_launch, destroy_process_group_at_exit
from .trainer import CriticalPeriodTrainer

__all__ = [
    "CriticalPeriodTrainer",
    "split_batch",
    "count_items",
    "check_deepspeed",
    "check_fsdp",
    "check_launch",
    "destroy_process_group_at_exit",
    "last_complete_checkpoint",
    "RESERVED_KEYS",
]
