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
* `RepeatTrainerMixin`: the hooks `CriticalPeriodTrainer` needs (the train DataLoader, the per-epoch
  lengths it hands the Trainer's epoch loop, resume, the schedule, the step total).

**The epoch in which the switch happens keeps its k passes** (its remaining rows are one copy, clean
or augmented as ``after_switch`` says, from the next optimizer step on): an epoch's length, and so
its share of the schedule, is fixed when it starts. Every later epoch is one pass. The reference
protocol switches at an epoch boundary, where both readings agree.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from .names import AUGMENT_MODES, COPY_INDEX_KEY

__all__ = [
    "AUGMENT_MODES",
    "COPY_INDEX_KEY",
    "RepeatBatchSampler",
    "RepeatDataset",
    "RepeatPlan",
    "RepeatTrainerMixin",
    "epoch_lr_schedule",
]

logger = logging.getLogger(__name__)

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


class RepeatTrainerMixin:
    """The Trainer hooks of ``augment_mode="repeat"``; inert (plain `Trainer` behaviour) in batch mode.

    The Trainer plans an epoch's length once, from ``len(train_dataloader)``. Here every epoch gets its
    own: `_run_epoch` receives the plan's batches and optimizer steps of that epoch, and the batch
    sampler serves that epoch's indices; `state.max_steps` (the progress bar's total, the stop test)
    is the plan's total as it stands at each epoch start, capped by ``max_steps`` when that is set.
    """

    repeat_plan: RepeatPlan | None = None
    #: k in repeat mode (set by the trainer from the collator), None in batch mode.
    _repeat_copies: int | None = None

    def _make_repeat_plan(self) -> RepeatPlan:
        args = self.args
        return RepeatPlan(
            num_samples=len(self._repeat_dataset),
            batch_size=self._train_batch_size,
            copies=self._repeat_copies,
            num_processes=args.world_size,
            process_index=args.process_index,
            drop_last=args.dataloader_drop_last,
            accumulation=args.gradient_accumulation_steps,
            seed=args.data_seed if args.data_seed is not None else args.seed,
        )

    def get_train_dataloader(self):
        if getattr(self, "_repeat_copies", None) is None:
            return super().get_train_dataloader()
        from accelerate.data_loader import BatchSamplerShard
        from torch.utils.data import DataLoader
        from transformers.trainer_utils import seed_worker

        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        self._repeat_dataset = RepeatDataset(self.train_dataset)
        self.repeat_plan = self._make_repeat_plan()
        self.switch.plan = self.repeat_plan
        sampler = RepeatBatchSampler(self.repeat_plan)
        args = self.args
        loader = DataLoader(
            self._repeat_dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            multiprocessing_context=args.dataloader_multiprocessing_context,
            prefetch_factor=args.dataloader_prefetch_factor,
            in_order=args.dataloader_in_order,
            worker_init_fn=partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        )
        loader = self.accelerator.prepare(loader)
        # The plan is already per process; accelerate's shard wrapper must pass batches through (as the
        # Trainer does for its own rank-aware BatchRebalanceSampler).
        shard = getattr(loader, "batch_sampler", None)
        if isinstance(shard, BatchSamplerShard) and shard.batch_sampler is sampler:
            shard.num_processes = 1
            shard.process_index = 0
        return loader

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        plan = self.repeat_plan
        if plan is None:
            return values
        _, _, num_examples, _, total_batch, _, _ = values
        epochs = math.ceil(args.num_train_epochs)
        max_steps = self._repeat_max_steps()
        rows = plan.total_rows(epochs) * args.world_size
        return epochs, plan.updates(0), num_examples, rows, total_batch, plan.batches(0), max_steps

    def _repeat_max_steps(self) -> int:
        """Steps of ``num_train_epochs`` epochs (a fraction of the last one included) under the plan, capped by max_steps."""
        plan, wanted = self.repeat_plan, float(self.args.num_train_epochs)
        whole = math.floor(wanted)
        total = plan.epoch_start(whole) + math.ceil((wanted - whole) * plan.updates(whole))
        return min(total, self.args.max_steps) if self.args.max_steps > 0 else total

    def _init_training_state(self, max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial):
        epochs_trained, skip = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        plan = self.repeat_plan
        if plan is None:
            return epochs_trained, skip
        plan.reset()
        if self.state.global_step > 0:
            from .switch import SWITCH_STATE_KEY

            saved = (self.state.stateful_callbacks or {}).get(SWITCH_STATE_KEY) or {}
            period = saved.get("critical_period")
            if period is not None:
                plan.switch_at(int(period["switch_step"]))
            epochs_trained, done = plan.locate(self.state.global_step)
            skip = 0 if self.args.ignore_data_skip else done * self.args.gradient_accumulation_steps
            self.state.max_steps = self._repeat_max_steps()
        plan.epoch = epochs_trained
        return epochs_trained, skip

    def _run_epoch(self, *args, **kwargs):
        plan = self.repeat_plan
        if plan is None:
            return super()._run_epoch(*args, **kwargs)
        bound = inspect.signature(super()._run_epoch).bind(*args, **kwargs)
        epoch = bound.arguments["epoch"]
        plan.epoch = epoch  # before the Trainer makes this epoch's DataLoader iterator
        bound.arguments["steps_in_epoch"] = plan.batches(epoch)
        bound.arguments["num_update_steps_per_epoch"] = plan.updates(epoch)
        if self.augmentation is not None:
            self.augmentation.set_epoch(epoch)
        self.state.max_steps = self._repeat_max_steps()
        for callback in self.callback_handler.callbacks:
            bar = getattr(callback, "training_bar", None)
            if bar is not None and getattr(bar, "total", None) != self.state.max_steps:
                bar.total = self.state.max_steps
                bar.refresh()
        return super()._run_epoch(*bound.args, **bound.kwargs)

    def _finalize_training(self, trial, num_train_samples, start_time):
        if self.repeat_plan is not None:
            # The rows actually trained on (the plan as it stands at the end), for train_samples_per_second.
            num_train_samples = self.repeat_plan.rows_done(self.state.global_step) * self.args.world_size
        return super()._finalize_training(trial, num_train_samples, start_time)

    def create_scheduler(self, num_training_steps, optimizer=None):
        plan = self.repeat_plan
        if plan is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        args = self.args
        epochs = float(args.num_train_epochs)
        # warmup_steps >= 1 counts optimizer steps of the augmented epochs the run starts with; < 1 is a fraction.
        warmup = args.warmup_steps / plan.updates(0) if args.warmup_steps >= 1 else args.warmup_steps * epochs
        self.lr_scheduler = epoch_lr_schedule(
            optimizer if optimizer is not None else self.optimizer,
            plan.progress,
            args.lr_scheduler_type,
            epochs,
            warmup_epochs=warmup,
            scheduler_specific_kwargs=args.lr_scheduler_kwargs,
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler
