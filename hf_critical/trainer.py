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
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from transformers import PreTrainedModel, Trainer
from transformers.trainer import TRAINER_STATE_NAME
from transformers.utils import SAFE_WEIGHTS_NAME

from .arguments import detector_kwargs
from .augmentation import AUGMENT_ON_DEVICE_KEY as ON_DEVICE_KEY
from .augmentation import RESERVED_KEYS, SEED_KEY, SINGLE_KEY, AugmentationCollator
from .augmentation import ROWS_PER_SAMPLE_KEY as ROWS_KEY
from .callback import DynamicsCallback
from .detectors import Detector, NeverSwitch, build_detector
from .launch import check_accelerate_cpu_launch
from .metrics import PairwiseGradientCosines, confusion_from_norms, squared_norms
from .repeat import AUGMENT_MODES, RepeatTrainerMixin
from .switch import CriticalPeriodCallback

__all__ = ["CriticalPeriodTrainer", "split_batch", "count_items", "check_deepspeed", "check_fsdp", "check_launch", "RESERVED_KEYS"]


logger = logging.getLogger(__name__)


def _batch_rows(batch: Mapping[str, Any]) -> int | None:
    for value in batch.values():
        if torch.is_tensor(value) and value.dim() > 0:
            return value.shape[0]
    return None


def count_items(batch: Mapping[str, Any], shifted_labels: bool = False) -> torch.Tensor | int | None:
    """Number of items a per-batch mean loss averages over.

    Integer labels: the labels that are not ``-100`` (after the causal-LM shift when
    ``shifted_labels``); float labels (regression, multi-label): all elements; no labels: the rows.
    """
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if torch.is_tensor(labels):
        if labels.is_floating_point():
            return labels.numel()
        if shifted_labels and labels.dim() > 1:
            labels = labels[..., 1:]
        return labels.ne(-100).sum()
    return _batch_rows(batch) if isinstance(batch, Mapping) else None


def split_batch(batch: Mapping[str, Any], rows_per_sample: int = 1, parts: int = 2) -> tuple[dict, ...] | None:
    """Split a batch into ``parts`` chunks of distinct samples, or return ``None`` if it cannot be split.

    Rows ``[i * rows_per_sample, (i + 1) * rows_per_sample)`` belong to sample ``i`` (the layout of
    the k-copy augmentation collators) and always land in the same chunk; chunk ``c`` holds samples
    ``[floor(c * S / parts), floor((c + 1) * S / parts))`` of the ``S`` samples. Every tensor whose
    first dimension is the batch is sliced; other values are passed to every chunk. A batch is not
    split when it holds fewer samples than ``parts`` or a tensor whose first dimension is not the
    batch size.
    """
    if isinstance(parts, bool) or not isinstance(parts, int) or parts < 2:
        raise ValueError(f"`parts` must be an integer >= 2, got {parts!r}")
    rows = _batch_rows(batch)
    if rows is None or rows_per_sample < 1 or rows % rows_per_sample:
        return None
    samples = rows // rows_per_sample
    if samples < parts:
        return None
    cuts = [(c * samples // parts) * rows_per_sample for c in range(parts + 1)]
    chunks: list[dict[str, Any]] = [{} for _ in range(parts)]
    for key, value in batch.items():
        if torch.is_tensor(value) and value.dim() > 0:
            if value.shape[0] != rows:
                return None
            for c in range(parts):
                chunks[c][key] = value[cuts[c] : cuts[c + 1]]
        else:
            for chunk in chunks:
                chunk[key] = value
    return tuple(chunks)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` folder that holds a ``trainer_state.json`` (written last by the Trainer), or None.

    `transformers.trainer_utils.get_last_checkpoint` returns the newest folder even when the process
    was killed while writing it; resuming from that fails. Incomplete folders are skipped with a warning.
    A missing ``output_dir`` raises FileNotFoundError, as in `get_last_checkpoint`.
    """
    steps = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps.append(int(match.group(1)))
    for step in sorted(steps, reverse=True):
        folder = os.path.join(output_dir, f"checkpoint-{step}")
        if os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME)):
            return folder
        logger.warning("Skipping %s: it has no %s (interrupted while being written)", folder, TRAINER_STATE_NAME)
    return None


def _reload_renamed_weights(model, checkpoint: str) -> None:
    """Load weights that `Trainer._load_from_checkpoint` missed because their names changed on save.

    transformers 5 saves some models (e.g. ViT) under their legacy parameter names and renames
    them in `from_pretrained`, but the Trainer's resume loads the file with a plain, non-strict
    `load_state_dict`: those weights silently keep their current values. This reloads them
    through `from_pretrained`, which applies the renaming.
    """
    path = os.path.join(checkpoint, SAFE_WEIGHTS_NAME)
    if not isinstance(model, PreTrainedModel) or not os.path.isfile(path):
        return
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        saved = set(f.keys())
    if set(model.state_dict()) <= saved:
        return
    logger.info("Checkpoint %s stores renamed parameters; reloading them through from_pretrained", checkpoint)
    reloaded = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    missing, unexpected = model.load_state_dict(reloaded.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"could not restore {len(missing)} parameters from {checkpoint}, e.g. {missing[:3]}")


def _augments_on_device(batch) -> bool:
    return isinstance(batch, Mapping) and bool(batch.get(ON_DEVICE_KEY, False))


#: Size of the flat buffers the per-rank confusion step all-reduces gradients in (DDP's default bucket size).
REDUCE_BUCKET_BYTES = 25 * 2**20


def check_deepspeed(args: Any, metrics: Any, enabled: bool = False) -> None:
    """Raise if DeepSpeed is configured while dynamics metrics are on.

    ZeRO stage 2 partitions the gradients and stage 3 also the weights across processes: each
    process would measure its own partition and report it as the model's, silently wrong. Checked
    before ``Trainer.__init__`` (which imports deepspeed) from ``args.deepspeed`` and from
    ``ACCELERATE_USE_DEEPSPEED`` (set by ``accelerate launch`` with a DeepSpeed config), and after it
    with ``enabled`` (the Trainer's ``is_deepspeed_enabled``, e.g. a plugin set on the accelerator).
    """
    configured = (
        enabled
        or bool(getattr(args, "deepspeed", None))
        or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    )
    if configured and metrics:
        raise ValueError(
            f"CriticalPeriodTrainer does not support DeepSpeed together with dynamics metrics {list(metrics)}: "
            "ZeRO stages 2 and 3 partition gradients (and stage 3 the weights) across processes, so the metrics "
            "would be computed on partitions. Use DDP or FSDP (see docs/distributed.md), or set "
            "dynamics_metrics='none' with detector='fixed' or 'never'."
        )


def check_launch(args: Any) -> None:
    """Raise when a launcher started several processes but the training arguments run each one alone.

    Under ``torchrun`` on a machine without GPUs, `TrainingArguments` sets up distributed training
    only with ``use_cpu=True``; otherwise every process trains its own model on the whole data set
    and, being rank 0 of a world of one, writes the same ``output_dir`` (dynamics.jsonl, checkpoints).
    """
    check_accelerate_cpu_launch()
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    world = getattr(args, "world_size", 1)
    if launched > 1 and world == 1:
        raise ValueError(
            f"launched as {launched} processes (WORLD_SIZE={launched}) but the TrainingArguments run a single "
            "process each: every process would train its own model on all the data and write the same output_dir. "
            "On a machine without GPUs pass use_cpu=True (--use_cpu true) to train with DDP over gloo."
        )


def destroy_process_group_at_exit() -> None:
    """Register (once) an exit handler that destroys the default process group before the interpreter finalizes.

    Why: a gloo worker thread frees a finished collective's work object a moment after the
    collective returns. When the work holds tensors created in Python (an ``all_gather`` output,
    an ``all_reduce`` flag) and the process is already exiting, freeing them needs the GIL, which a
    finalizing interpreter no longer hands out: the thread is unwound and the process aborts with
    "terminate called without an active exception" (gdb: ``~AsyncAllgatherWork`` in
    ``ProcessGroupGloo::runLoop``, the main thread in ``Py_FinalizeEx``). Destroying the group from
    Python releases the GIL while its worker threads finish and are joined. Measured on the project
    machine: two processes doing three collectives and exiting aborted in 8 of 30 launches, none of
    30 with the group destroyed at exit.
    """
    global _EXIT_HANDLER_REGISTERED
    if _EXIT_HANDLER_REGISTERED:
        return
    import atexit

    atexit.register(_destroy_default_process_group)
    _EXIT_HANDLER_REGISTERED = True


_EXIT_HANDLER_REGISTERED = False


def _destroy_default_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_fsdp(fsdp_plugin: Any, metrics: Any) -> None:
    """Raise for FSDP version 1 with dynamics metrics on (FSDP2 is supported).

    FSDP1 flattens each wrapped module's parameters into one sharded buffer: the named parameters
    the metrics select become views of uneven slices (or empty), not tensors that say which slice
    they hold, so per-layer partial sums cannot be matched across ranks. FSDP2 (``fully_shard``)
    keeps every parameter as a DTensor shard, which the metrics reduce correctly.
    """
    if fsdp_plugin is not None and metrics and getattr(fsdp_plugin, "fsdp_version", 1) == 1:
        raise ValueError(
            f"CriticalPeriodTrainer measures {list(metrics)} under FSDP version 2 only, got version 1: set "
            "fsdp_config={'version': 2, ...} (see docs/distributed.md), or dynamics_metrics='none'."
        )


def _ddp_module(model) -> torch.nn.parallel.DistributedDataParallel | None:
    return model if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None


@dataclass
class _StepPlan:
    """Book-keeping for the micro-batches of one optimizer step."""

    step: int
    counts: list[torch.Tensor | int | None]
    next_index: int = 0
    tracker: PairwiseGradientCosines | None = None
    parts: list[list[torch.Tensor | None]] = field(default_factory=list)
    #: Measure confusion between the ranks' gradients (DDP): backward runs without DDP's sync.
    per_rank: bool = False
    #: Under several processes: the step's items over all ranks divided by the number of ranks.
    shared_total: torch.Tensor | float | None = None

    @property
    def total(self) -> torch.Tensor | int | float | None:
        if self.shared_total is not None:
            return self.shared_total
        if any(c is None for c in self.counts):
            return None
        return sum(self.counts)


class CriticalPeriodTrainer(RepeatTrainerMixin, Trainer):
    """`transformers.Trainer` that measures gradient confusion, gradient predictability and layer rotation.

    Same constructor as `Trainer`. Settings come from `CriticalPeriodArguments` (plain
    `TrainingArguments` give the defaults) or from a `DynamicsCallback` passed in ``callbacks`` or as
    ``dynamics_callback``. Values are logged under ``dynamics/*`` and written per layer to
    ``output_dir/dynamics.jsonl``; see `hf_critical.callback` for the keys.
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
        dynamics_callback.confusion_provider = True
        self.dynamics = dynamics_callback

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
        self._step_copies = 1
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
        if self.args.remove_unused_columns:
            # The collator reads raw fields (e.g. the text) that the model's forward does not take.
            logger.info("remove_unused_columns set to False: the augmentation collator reads raw dataset columns")
            self.args.remove_unused_columns = False

    def _configure_augment_mode(self) -> None:
        """augment_mode="repeat": k passes per epoch of one augmented row each (see hf_critical.repeat)."""
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
        return self.switch.critical_period

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """`Trainer.log`; a training log (one with ``loss``) also carries what hf_critical measured since the last.

        Measurements never make log entries of their own: code reading ``state.log_history`` or
        receiving ``on_log`` sees the Trainer's entries only. Evaluation logs are left as they are.
        """
        if "loss" in logs:
            for key, value in {**self.dynamics.take_unlogged(), **self.switch.take_unlogged()}.items():
                logs.setdefault(key, value)
            if self.augmentation is not None:
                logs.setdefault("augment/copies", self._step_copies)
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
        self.dynamics.resume_checkpoint = path if isinstance(path, str) else None
        try:
            return super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            self._step_plan = None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        _reload_renamed_weights(model if model is not None else self.model, resume_from_checkpoint)

    # ---- micro-batches --------------------------------------------------------------------------

    def rows_per_sample(self) -> int:
        """Rows each sample occupies in this step's training batches (the number of augmented copies)."""
        return self._step_rows_per_sample

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batch_samples = []
        for _ in range(num_batches):
            try:
                batch_samples.append(next(epoch_iterator))
            except StopIteration:
                break
        self._step_copies = self.switch.copies
        # Repeat mode makes its copies over passes: one row per sample in every step.
        self._step_rows_per_sample = 1 if self.repeat_plan is not None else self._step_copies
        batch_samples = [self._materialize(batch) for batch in batch_samples]
        num_items_in_batch = self._get_num_items_in_batch(batch_samples, device)
        shifted = bool(getattr(self, "_loss_shifts_labels", False))
        counts = [count_items(b, shifted) for b in batch_samples]
        if any(_augments_on_device(b) for b in batch_samples):
            # Those batches get their k rows per sample in training_step; labels are repeated k times.
            k = self._step_rows_per_sample
            counts = [c * k if c is not None and _augments_on_device(b) else c for c, b in zip(counts, batch_samples)]
            if num_items_in_batch is not None:
                num_items_in_batch = num_items_in_batch * k
        step = self.state.global_step + 1
        plan = _StepPlan(step=step, counts=counts)
        if self.args.world_size > 1 and self.args.average_tokens_across_devices and not self._loss_normalized_by_items():
            plan.shared_total = self._shared_total(counts)
        if batch_samples and self.dynamics.wants_confusion(step) and self.dynamics.selection is not None:
            if self.args.world_size == 1:
                plan.tracker = PairwiseGradientCosines(self.dynamics.selection.names)
            elif _ddp_module(self.model_wrapped) is not None:
                plan.per_rank = True
            elif not self._warned_no_confusion:
                logger.warning(
                    "gradient_confusion is skipped: under %d processes it is measured between the ranks' gradients, "
                    "which needs DDP (the model is wrapped in %s). See docs/distributed.md.",
                    self.args.world_size,
                    type(self.model_wrapped).__name__,
                )
                self._warned_no_confusion = True
        self._step_plan = plan
        return batch_samples, num_items_in_batch

    def _shared_total(self, counts) -> torch.Tensor | None:
        """The step's items summed over all ranks, divided by the number of ranks (one tiny all-reduce).

        DDP averages the ranks' gradients; weighting each micro-batch by ``count / shared_total`` makes
        that average the mean over every item of the step on every rank, as one process with the
        whole batch would compute (ranks may hold different numbers of labelled tokens).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return None
        known = all(c is not None for c in counts)
        local = float(sum(counts)) if known and counts else 0.0
        device = self.args.device if dist.get_backend() == "nccl" else torch.device("cpu")
        buffer = torch.tensor([local, 0.0 if known and counts else 1.0], dtype=torch.float64, device=device)
        dist.all_reduce(buffer)
        total, unknown = buffer.tolist()
        if unknown > 0 or total <= 0:
            return None  # some rank cannot count its items: each rank weights its own micro-batches
        return total / dist.get_world_size()

    def _materialize(self, batch):
        """Give a collated batch the rows per sample of the current step (k before the switch, 1 after)."""
        if not isinstance(batch, Mapping) or not any(key in batch for key in RESERVED_KEYS):
            return batch
        batch = dict(batch)
        if batch.get(ON_DEVICE_KEY, False):
            # Augmented in training_step, after the Trainer restores the RNG state on resume.
            batch.pop(ROWS_KEY, None)
            batch.pop(SINGLE_KEY, None)
            return batch
        rows = batch.pop(ROWS_KEY, 1)
        single = batch.pop(SINGLE_KEY, None)
        wanted = self._step_rows_per_sample
        if single is not None and self.augmentation.switched:
            # Collated (prefetched) before the switch: its post-switch view is what this step trains on.
            return dict(single)
        if rows == wanted:
            return batch
        raise RuntimeError(
            f"a training batch holds {rows} rows per sample but this step needs {wanted}; "
            "was the augmentation collator switched back during training?"
        )

    def _augment_on_device(self, batch):
        batch = dict(batch)
        batch.pop(ON_DEVICE_KEY)
        batch = dict(self.augmentation.augment_batch(self._prepare_inputs(batch), copies=self._step_rows_per_sample))
        batch.pop(ROWS_KEY, None)
        batch.pop(SINGLE_KEY, None)
        batch.pop(SEED_KEY, None)
        return batch

    def training_step(self, model, inputs, num_items_in_batch=None):
        if _augments_on_device(inputs):
            inputs = self._augment_on_device(inputs)
        plan = self._step_plan
        if plan is None or plan.next_index >= len(plan.counts):
            # Called outside the training loop's batching: behave exactly like Trainer.
            return super().training_step(model, inputs, num_items_in_batch)
        index = plan.next_index
        plan.next_index += 1
        if plan.per_rank:
            # Every micro-batch, the last one included, accumulates locally; the all-reduce follows below.
            ddp = _ddp_module(model)
            with ddp.no_sync() if ddp is not None else contextlib.nullcontext():
                loss = self._weighted_step(
                    model, inputs, num_items_in_batch, plan.counts[index], plan.total, len(plan.counts)
                )
            if index == len(plan.counts) - 1:
                self._reduce_with_confusion(model, plan)
            return loss
        if plan.tracker is None:
            return self._weighted_step(
                model, inputs, num_items_in_batch, plan.counts[index], plan.total, len(plan.counts)
            )
        if len(plan.counts) == 1:
            halves = split_batch(inputs, self.rows_per_sample(), self.dynamics.confusion_chunks)
            if halves is None:
                self._skip_confusion(plan, inputs)
                return self._weighted_step(model, inputs, num_items_in_batch, plan.counts[index], plan.total, 1)
            shifted = bool(getattr(self, "_loss_shifts_labels", False))
            loss = None
            for half_index, half in enumerate(halves):
                if half_index:
                    self._set_grads_aside(plan)
                if plan.total is None:
                    count, total = _batch_rows(half), _batch_rows(inputs)
                else:
                    count, total = count_items(half, shifted), plan.total
                half_loss = self._weighted_step(model, half, num_items_in_batch, count, total, len(halves))
                plan.tracker.add(self._selected_grads())
                loss = half_loss if loss is None else loss + half_loss
            self._finish_confusion(plan)
            return loss
        if index > 0:
            self._set_grads_aside(plan)
        loss = self._weighted_step(
            model, inputs, num_items_in_batch, plan.counts[index], plan.total, len(plan.counts)
        )
        plan.tracker.add(self._selected_grads())
        if index == len(plan.counts) - 1:
            self._finish_confusion(plan)
        return loss

    def _loss_normalized_by_items(self) -> bool:
        """Whether `compute_loss` already divides by ``num_items_in_batch`` (the caller said so)."""
        if self.loss_is_scaled_for_ga is not None:
            return bool(self.loss_is_scaled_for_ga)
        return self.compute_loss_func is not None

    def _weighted_step(self, model, inputs, num_items_in_batch, count, total, num_parts: int):
        if self._loss_normalized_by_items():
            return super().training_step(model, inputs, num_items_in_batch)
        if count is None or total is None:
            # Nothing to count: equal weights.
            self.current_gradient_accumulation_steps = num_parts
        else:
            # Trainer divides the per-batch mean loss by this: count/total weights it by its share of the items.
            self.current_gradient_accumulation_steps = total / count
        # The model returns its own per-batch mean: never hand it num_items_in_batch (see module docstring).
        return super().training_step(model, inputs, None)

    def _selected_grads(self) -> list[torch.Tensor | None]:
        return [p.grad for p in self.dynamics.selection.parameters.values()]

    def _set_grads_aside(self, plan: _StepPlan) -> None:
        params = list(self.dynamics.selection.parameters.values())
        plan.parts.append([p.grad for p in params])
        for p in params:
            p.grad = None

    def _finish_confusion(self, plan: _StepPlan) -> None:
        params = list(self.dynamics.selection.parameters.values())
        for part in plan.parts:
            for p, g in zip(params, part):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        plan.parts.clear()
        self.dynamics.record_confusion(plan.step, plan.tracker.result())
        plan.tracker = None

    def _skip_confusion(self, plan: _StepPlan, inputs) -> None:
        if not self._warned_unsplittable:
            logger.warning(
                "gradient_confusion skipped at step %d: the batch (%s rows, %d per sample) cannot be split into %d "
                "chunks of distinct samples.",
                plan.step,
                _batch_rows(inputs),
                self.rows_per_sample(),
                self.dynamics.confusion_chunks,
            )
            self._warned_unsplittable = True
        plan.tracker = None

    # ---- several processes ------------------------------------------------------------------------

    def _reduce_with_confusion(self, model, plan: _StepPlan) -> None:
        """All-reduce the local gradients as DDP would, and measure confusion between the ranks' gradients.

        Communication beyond DDP's own: one all-gather of a float32 vector with one squared norm per
        measured layer (4 bytes per layer per rank).
        """
        ddp = _ddp_module(model)
        group = ddp.process_group if ddp is not None else None
        world = dist.get_world_size(group)
        params = list(self.dynamics.selection.parameters.values())
        present = [i for i, p in enumerate(params) if p.grad is not None]
        device = params[0].device if params else torch.device("cpu")
        if dist.get_backend(group) != "nccl":
            device = torch.device("cpu")
        local = torch.full((len(params),), -1.0, dtype=torch.float32, device=device)
        if present:
            local[present] = squared_norms([params[i].grad for i in present]).to(device)
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local, group=group)
        _all_reduce_mean(ddp.module if ddp is not None else model, group, world)
        reduced_present = [i for i, p in enumerate(params) if p.grad is not None]
        sum_sq = [float("nan")] * len(params)
        if reduced_present:
            norms = squared_norms([params[i].grad for i in reduced_present]).tolist()
            for i, value in zip(reduced_present, norms):
                sum_sq[i] = value * world * world  # |sum_r g_r|^2 from the mean
        rows = [[None if v < 0 else v for v in row.tolist()] for row in gathered]
        self.dynamics.record_confusion(plan.step, confusion_from_norms(self.dynamics.selection.names, rows, sum_sq))


def _all_reduce_mean(module: torch.nn.Module, group, world: int) -> None:
    """Average the gradients of ``module``'s trainable parameters across ranks, like DDP's all-reduce.

    As DDP does, each gradient is divided by the number of ranks and the flat buckets are summed
    (exactly DDP's result for a power-of-two number of ranks). A gradient that is ``None`` on this
    rank counts as zeros; it is set from the result unless the result is all zeros (unused everywhere).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    buckets: dict[tuple, list[list[torch.nn.Parameter]]] = {}
    for p in params:
        key = (p.device, p.dtype)
        chain = buckets.setdefault(key, [[]])
        if chain[-1] and sum(q.numel() for q in chain[-1]) * p.element_size() > REDUCE_BUCKET_BYTES:
            chain.append([])
        chain[-1].append(p)
    for (_, dtype), chain in buckets.items():
        for bucket in chain:
            flat = torch.cat(
                [
                    (p.grad if p.grad is not None else torch.zeros_like(p, dtype=dtype)).reshape(-1).to(dtype)
                    for p in bucket
                ]
            )
            flat.div_(world)
            dist.all_reduce(flat, group=group)
            offset = 0
            for p in bucket:
                part = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                if p.grad is not None:
                    p.grad.copy_(part)
                elif bool(part.any()):
                    p.grad = part.clone()
