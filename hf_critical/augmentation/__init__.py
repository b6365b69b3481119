"""Batch-augmentation collators: k augmented copies of every sample until the switch, one copy after it.

Before the switch every training batch of B samples becomes B * k rows, **sample-major**: rows
``[i * k, (i + 1) * k)`` are the copies of sample ``i`` and ``labels`` is repeated to match
(``repeat_interleave``). After the switch each sample gives one row: one augmented copy
(``after_switch="augmented"``, the default) or its clean original (``after_switch="clean"``); the
oracle sweeps behind the default are in docs/results.md.

The switch must act at an exact optimizer step although DataLoader workers hold their own copy of
the collator and have already collated a few batches ahead. Two mechanisms make that work:

* the flag lives in a one-byte tensor in shared memory (``share_memory_()``), so ``switch()`` in the
  main process is seen by every worker (fork or spawn, persistent or not) at its next batch;
* a batch collated before the switch also carries its post-switch form under
  ``"hf_critical_single"``, so a batch prefetched before the switch can be used at the switch step
  without collating it again.

With a ``seed``, a batch's augmentation is a pure function of (seed, epoch, the batch's clean
content): its random draws are seeded from those three, never from a call counter, a worker's seed
or the global RNG. A resumed run (which sees the same batches in the same epochs) therefore draws the
same copies bit for bit, with any number of DataLoader workers, persistent or not, on the device or
in the workers. The epoch lives in shared memory like the switch flag; `CriticalPeriodTrainer` sets it
at the start of every epoch (`set_epoch`).

Reserved keys (the trainer pops them before the model sees the batch):

==================================  ===========================================================
key                                 value
==================================  ===========================================================
``hf_critical_rows_per_sample``     python int: rows per sample in *this* batch (k, or 1).
``hf_critical_single``              when the batch differs from its post-switch form (rows per
                                    sample > 1, or one augmented copy before a switch to clean):
                                    the batch as it must look after the switch, one row per
                                    sample (model inputs and labels only, no reserved keys).
``hf_critical_augment_on_device``   only from `ImageAugmentationCollator` with ``on_device=True``:
                                    the batch is clean; call ``augment_batch`` on the device.
``hf_critical_seed``                with ``on_device=True`` and a ``seed``: python int, the seed of
                                    this batch's augmentation, taken from its clean content on
                                    the CPU (no copy back from the device).
==================================  ===========================================================

Example::

    collator = TextAugmentationCollator(tokenizer, copies=4, text_fields=("sentence1", "sentence2"))
    loader = DataLoader(train_rows, batch_size=32, collate_fn=collator, num_workers=2)
    ...                      # at the switch step, in the main process:
    collator.switch()        # batches collated from now on have one row per sample

Where things are: the switch protocol and seeding in `base`, text (nlpaug noise, cutoff) in `text`,
images in `image` with their kornia policies in `image_policies`.
"""

from __future__ import annotations

from ..names import AFTER_SWITCH_MODES, AUGMENT_ON_DEVICE_KEY, RESERVED_KEYS, ROWS_PER_SAMPLE_KEY, SEED_KEY, SINGLE_KEY
from .base import AugmentationCollator, CleanCollator, seeded_python_numpy_rng
from .image import ImageAugmentationCollator
from .image_policies import IMAGE_POLICIES
from .text import (
    PADDING_MODES,
    RandomChoiceTextAugmenter,
    TextAugmentationCollator,
    TokenSpanCutoff,
    default_text_augmenter,
)

__all__ = [
    "AFTER_SWITCH_MODES",
    "AUGMENT_ON_DEVICE_KEY",
    "IMAGE_POLICIES",
    "PADDING_MODES",
    "RESERVED_KEYS",
    "ROWS_PER_SAMPLE_KEY",
    "SEED_KEY",
    "SINGLE_KEY",
    "AugmentationCollator",
    "CleanCollator",
    "ImageAugmentationCollator",
    "RandomChoiceTextAugmenter",
    "TextAugmentationCollator",
    "TokenSpanCutoff",
    "default_text_augmenter",
    "seeded_python_numpy_rng",
]
