"""`RepeatTrainerMixin`: the Trainer hooks of ``augment_mode="repeat"`` (the plan is in `.repeat_plan`).
"""

from __future__ import annotations

import inspect
import math
from functools import partial

from .repeat_plan import RepeatBatchSampler, RepeatDataset, RepeatPlan, epoch_lr_schedule


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
        self.run_state.repeat_plan = self.repeat_plan
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
            # Restored by `CriticalPeriodTrainer._load_callback_state` inside the Trainer's _init_training_state.
            period = self.run_state.critical_period
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
