"""Micro-batches: the k-copy layout, the loss-scale fix, and gradient confusion taken on the step's own batches.

* **Materialisation.** Each step's batches get the step's rows per sample (k before the switch, 1
  after); a batch prefetched before the switch is replaced by its one-copy view, and images marked
  for on-device augmentation are augmented in `training_step`.
* **The loss scale.** transformers passes ``num_items_in_batch`` to models whose ``forward`` takes
  ``**kwargs`` and then trusts them to normalise by it; several (e.g. ``BertForSequenceClassification``)
  ignore it, so the gradients grow with the accumulation steps. Every model here returns its own
  per-batch mean and each micro-batch is weighted by its share of the step's items: the mean over
  the whole step for every accumulation setting.
* **Gradient confusion without an extra pass.** At a measured step the gradients of distinct
  mini-batches are taken apart: with gradient accumulation one per micro-batch; without, the batch
  is split into m chunks (all rows of a sample in one chunk), each through its own forward/backward,
  weighted so that the gradients sum to the unsplit one. The accumulated gradient is restored before
  clipping and the optimizer step.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from ..metrics import PairwiseGradientCosines
from ..names import AUGMENT_ON_DEVICE_KEY, RESERVED_KEYS, ROWS_PER_SAMPLE_KEY, SEED_KEY, SINGLE_KEY
from .distributed import _ddp_module, all_reduce_with_confusion

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


def _augments_on_device(batch) -> bool:
    return isinstance(batch, Mapping) and bool(batch.get(AUGMENT_ON_DEVICE_KEY, False))


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


class MicroBatchMixin:
    """The trainer's micro-batch handling (mixed into `CriticalPeriodTrainer`); see the module docstring."""

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
        self._step_current_copies = self.run_state.current_copies or 1
        # Repeat mode makes its copies over passes: one row per sample in every step.
        self._step_rows_per_sample = 1 if self.repeat_plan is not None else self._step_current_copies
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
        if batch.get(AUGMENT_ON_DEVICE_KEY, False):
            # Augmented in training_step, after the Trainer restores the RNG state on resume.
            batch.pop(ROWS_PER_SAMPLE_KEY, None)
            batch.pop(SINGLE_KEY, None)
            return batch
        rows = batch.pop(ROWS_PER_SAMPLE_KEY, 1)
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
        batch.pop(AUGMENT_ON_DEVICE_KEY)
        batch = dict(self.augmentation.augment_batch(self._prepare_inputs(batch), copies=self._step_rows_per_sample))
        batch.pop(ROWS_PER_SAMPLE_KEY, None)
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


    def _reduce_with_confusion(self, model, plan: _StepPlan) -> None:
        """All-reduce the local gradients as DDP would; confusion between the ranks' gradients (`.distributed`)."""
        selection = self.dynamics.selection
        self.dynamics.record_confusion(plan.step, all_reduce_with_confusion(model, selection.names, list(selection.parameters.values())))
