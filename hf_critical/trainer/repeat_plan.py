"""Dataset repetition (``augment_mode="repeat"``): k augmented passes per epoch until the switch, one after.

The second way to make k copies of every sample, the one of the seed's {D}^k and of the reference
code of Fukase et al. 2025 (the data set tiled k times): an epoch before the switch visits every
sample k times, as k differently augmented rows spread over k times the optimizer steps at the same
batch size; the epochs that start after the switch visit every sample once. Batch augmentation
(the default, `hf_critical.augmentation`) keeps the steps and multiplies the rows of each step.

Pieces, each small:

* `RepeatPlan`: the pure arithmetic of the epochs (passes, batches and optimizer steps per epoch,
  the epoch of a step, training progress in epochs) and the per-process batch indices of an epoch,
  a pure function of (seed, epoch, pass, the epoch in which the switch happened);
* `RepeatBatchSampler` and `RepeatDataset`: the DataLoader side; a row's index ``c * N + i`` is copy
  ``c`` of sample ``i`` and the row carries ``c`` (``COPY_INDEX_KEY``) into the collator's seed, so the
  k copies of a sample are augmented differently;
* `epoch_lr_schedule`: the Trainer's ``lr_scheduler_type`` defined over epochs, not over a step count
  fixed at the start, so it stays meaningful when the epochs get shorter at the switch;
* `RepeatTrainerMixin` (`hf_critical.trainer.repeat`): the hooks `CriticalPeriodTrainer` needs (the train
  DataLoader, the per-epoch lengths it hands the Trainer's epoch loop, resume, the schedule, the step total).

**The epoch in which the switch happens keeps its k passes** (its remaining rows are one copy, clean
or augmented as ``after_switch`` says, from the next optimizer step on): an epoch's length, and so
its share of the schedule, is fixed when it starts. Every later epoch is one pass. The reference
protocol switches at an epoch boundary, where both readings agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..names import COPY_INDEX_KEY

#: The Trainer's schedule lambdas take a step count; an epoch is this many of their "steps".
UNITS_PER_EPOCH = 1_000_000


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return value


class RepeatPlan:
    """The epochs of dataset repetition, for one process of ``num_processes``.

    Every pass is a fresh permutation of the N samples (seeded by seed, epoch and pass), padded as
    `torch.utils.data.DistributedSampler` does to a multiple of the number of processes (the first
    samples of the permutation are repeated), of which process r takes every ``num_processes``-th
    sample from r on: ``ceil(N / num_processes)`` rows per process and pass. The passes of an epoch
    are concatenated and cut into batches of ``batch_size`` rows (a batch may span two passes, as in
    the tiled data set of the reference code); the last batch of an epoch is partial, or dropped
    with ``drop_last``. An optimizer step takes ``accumulation`` batches (the last of an epoch fewer).

    Epochs ``0 .. switch_epoch`` have ``copies`` passes; later ones one. ``switch_epoch`` is None
    until `switch_at` is called.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        copies: int,
        num_processes: int = 1,
        process_index: int = 0,
        drop_last: bool = False,
        accumulation: int = 1,
        seed: int = 0,
    ):
        self.num_samples = _positive_int("num_samples (the training set's length)", num_samples)
        self.batch_size = _positive_int("per_device_train_batch_size", batch_size)
        self.copies = _positive_int("augment_copies", copies)
        self.num_processes = _positive_int("num_processes", num_processes)
        if isinstance(process_index, bool) or not isinstance(process_index, int) or not 0 <= process_index < num_processes:
            raise ValueError(f"`process_index` must be an int in [0, {num_processes}), got {process_index!r}")
        self.process_index = process_index
        self.drop_last = bool(drop_last)
        self.accumulation = _positive_int("gradient_accumulation_steps", accumulation)
        self.seed = int(seed)
        self.rows_per_pass = math.ceil(num_samples / num_processes)
        if self.drop_last and self.rows_per_pass < batch_size:
            raise ValueError(
                f"dataloader_drop_last with per_device_train_batch_size={batch_size} drops every batch of a one-pass epoch "
                f"({self.rows_per_pass} rows per process): use a smaller batch size or dataloader_drop_last=False"
            )
        self.switch_epoch: int | None = None
        #: The epoch the DataLoader serves now (set by the trainer before each epoch's iterator is made).
        self.epoch = 0

    def __repr__(self) -> str:
        return (
            f"RepeatPlan(num_samples={self.num_samples}, batch_size={self.batch_size}, copies={self.copies}, "
            f"num_processes={self.num_processes}, process_index={self.process_index}, drop_last={self.drop_last}, "
            f"accumulation={self.accumulation}, seed={self.seed}, switch_epoch={self.switch_epoch})"
        )

    # ---- lengths ------------------------------------------------------------------------------

    def passes(self, epoch: int) -> int:
        """Passes over the data in ``epoch``: k up to the switch epoch (included), then 1."""
        return self.copies if self.switch_epoch is None or epoch <= self.switch_epoch else 1

    def rows(self, epoch: int) -> int:
        """Rows this process trains on in ``epoch``."""
        rows = self.passes(epoch) * self.rows_per_pass
        return rows - rows % self.batch_size if self.drop_last else rows

    def batches(self, epoch: int) -> int:
        """Batches (micro-batches) this process takes in ``epoch``."""
        rows = self.passes(epoch) * self.rows_per_pass
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def updates(self, epoch: int) -> int:
        """Optimizer steps of ``epoch``."""
        return max(1, math.ceil(self.batches(epoch) / self.accumulation))

    def epoch_start(self, epoch: int) -> int:
        """Optimizer steps done before ``epoch`` starts."""
        return sum(self.updates(e) for e in range(epoch))

    def total_updates(self, num_epochs: int) -> int:
        """Optimizer steps of ``num_epochs`` epochs under the plan as it stands (no later switch)."""
        return self.epoch_start(num_epochs)

    def total_rows(self, num_epochs: int) -> int:
        return sum(self.rows(e) for e in range(num_epochs))

    def rows_done(self, steps_done: int) -> int:
        """Rows this process has trained on after ``steps_done`` optimizer steps."""
        epoch, done = self.locate(steps_done)
        partial = min(self.rows(epoch), done * self.accumulation * self.batch_size)
        return self.total_rows(epoch) + partial

    def locate(self, steps_done: int) -> tuple[int, int]:
        """(epoch, steps of it done) after ``steps_done`` optimizer steps; a finished epoch gives (next, 0)."""
        if isinstance(steps_done, bool) or not isinstance(steps_done, int) or steps_done < 0:
            raise ValueError(f"`steps_done` must be an int >= 0, got {steps_done!r}")
        epoch = 0
        while steps_done >= self.updates(epoch):
            steps_done -= self.updates(epoch)
            epoch += 1
        return epoch, steps_done

    def epoch_of_step(self, step: int) -> int:
        """The epoch in which optimizer step ``step`` (counted from 1) runs."""
        return self.locate(step - 1)[0]

    def progress(self, steps_done: int) -> float:
        """Training progress in epochs after ``steps_done`` optimizer steps: epoch + steps done / its steps."""
        epoch, done = self.locate(steps_done)
        return epoch + done / self.updates(epoch)

    def switch_at(self, step: int) -> None:
        """The switch fired at the end of optimizer step ``step``: epochs after the one it ran in are one pass."""
        if self.switch_epoch is None:
            self.switch_epoch = self.epoch_of_step(step)

    def reset(self) -> None:
        self.switch_epoch = None
        self.epoch = 0

    # ---- indices ------------------------------------------------------------------------------

    def pass_rows(self, epoch: int, copy: int) -> np.ndarray:
        """This process's rows of pass ``copy`` of ``epoch``: dataset indices ``copy * N + sample``."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, epoch, copy]))
        order = rng.permutation(self.num_samples)
        padded = self.rows_per_pass * self.num_processes
        if padded > self.num_samples:
            order = np.concatenate([order, order[: padded - self.num_samples]])
        return order[self.process_index :: self.num_processes] + copy * self.num_samples

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` for this process, as lists of dataset indices."""
        rows = np.concatenate([self.pass_rows(epoch, c) for c in range(self.passes(epoch))])
        count = self.batches(epoch)
        return [rows[b * self.batch_size : (b + 1) * self.batch_size].tolist() for b in range(count)]


class RepeatBatchSampler:
    """Batch sampler of the epoch the plan serves now (``plan.epoch``): its length changes with the plan.

    No ``batch_size`` attribute on purpose: accelerate's `BatchSamplerShard` (neutralised to one
    process by the trainer) then passes batches through without padding the last one.
    """

    def __init__(self, plan: RepeatPlan):
        self.plan = plan

    def __len__(self) -> int:
        return self.plan.batches(self.plan.epoch)

    def __iter__(self):
        yield from self.plan.epoch_batches(self.plan.epoch)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.plan!r})"


class RepeatDataset(torch.utils.data.Dataset):
    """Row ``c * N + i`` is sample ``i`` of ``dataset`` with ``COPY_INDEX_KEY: c`` added (N = len(dataset)).

    The augmentation collators fold the copy index into the batch's seed and otherwise ignore it.
    """

    def __init__(self, dataset: Any):
        try:
            self.num_samples = len(dataset)
        except TypeError:
            raise ValueError(
                "augment_mode='repeat' needs a training set with a length (a map-style dataset), "
                f"got {type(dataset).__name__}"
            ) from None
        self.dataset = dataset

    def __len__(self) -> int:
        return self.num_samples

    def _row(self, item: Any, copy: int) -> dict:
        if not isinstance(item, Mapping):
            raise ValueError(
                f"augment_mode='repeat' needs training rows that are mappings (dicts), got {type(item).__name__}"
            )
        return {**item, COPY_INDEX_KEY: copy}

    def __getitem__(self, index: int) -> dict:
        copy, sample = divmod(int(index), self.num_samples)
        return self._row(self.dataset[sample], copy)

    def __getitems__(self, indices: Sequence[int]) -> list[dict]:
        pairs = [divmod(int(i), self.num_samples) for i in indices]
        fetch = getattr(self.dataset, "__getitems__", None)
        items = fetch([s for _, s in pairs]) if fetch is not None else [self.dataset[s] for _, s in pairs]
        return [self._row(item, c) for item, (c, _) in zip(items, pairs)]


def epoch_lr_schedule(
    optimizer: torch.optim.Optimizer,
    progress: Any,
    lr_scheduler_type: Any,
    num_epochs: float,
    warmup_epochs: float = 0.0,
    scheduler_specific_kwargs: dict | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The Trainer's schedule ``lr_scheduler_type`` over ``num_epochs`` epochs instead of a number of steps.

    ``progress(n)`` gives the epochs done after n optimizer steps (`RepeatPlan.progress`); the
    multiplier after n steps is transformers' own schedule function (the same shape, warmup and
    options) evaluated at ``progress(n) * UNITS_PER_EPOCH`` of ``num_epochs * UNITS_PER_EPOCH``
    steps. Only the schedules transformers builds as a `LambdaLR` (linear, cosine, polynomial,
    constant, ...) can be re-timed this way; others raise a ValueError naming the option.
    """
    from transformers import get_scheduler

    probe = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        inner = get_scheduler(
            lr_scheduler_type,
            optimizer=probe,
            num_warmup_steps=round(warmup_epochs * UNITS_PER_EPOCH),
            num_training_steps=round(num_epochs * UNITS_PER_EPOCH),
            scheduler_specific_kwargs=dict(scheduler_specific_kwargs or {}),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"`lr_scheduler_type` {lr_scheduler_type!r} cannot be built for augment_mode='repeat': {err}") from None
    lambdas = getattr(inner, "lr_lambdas", None)
    if not isinstance(inner, torch.optim.lr_scheduler.LambdaLR) or not lambdas or len(lambdas) != 1:
        raise ValueError(
            f"`lr_scheduler_type` {str(lr_scheduler_type)!r} is not a schedule of the training progress "
            f"({type(inner).__name__}); augment_mode='repeat' re-times the LambdaLR schedules (linear, cosine, "
            "cosine_with_restarts, polynomial, constant, constant_with_warmup, inverse_sqrt, warmup_stable_decay, ...)"
        )
    shape = lambdas[0]
    # A closure, not a callable object: LambdaLR.state_dict() would try to save an object's attributes.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda steps: shape(progress(steps) * UNITS_PER_EPOCH))
