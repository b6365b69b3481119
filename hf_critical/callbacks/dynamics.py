"""`DynamicsCallback`: measures the training-dynamics metrics inside a `transformers.Trainer` loop.

Logged keys (global values; per-layer values go to ``output_dir/dynamics.jsonl``):

==========================================  ==============================================================
Key                                         Meaning
==========================================  ==============================================================
``dynamics/gradient_confusion``             mean pairwise cosine between micro-batch gradients at one step
``dynamics/gradient_confusion_min``         minimum pairwise cosine (equals the mean with two micro-batches)
``dynamics/gradient_predictability``        cosine between the gradients of consecutive optimizer steps
``dynamics/layer_rotation``                 mean over layers of ``1 - cos(theta_0, theta_t)``
``dynamics/layer_rotation_weighted``        the same, weighted by each layer's parameter count
==========================================  ==============================================================

The values go out with the Trainer's own training log (every ``logging_steps``, next to ``loss``):
each such entry carries the latest measurement taken since the previous one, and a measurement is
never an entry of its own in ``state.log_history``. Every measurement, at its exact step, is in
``dynamics.jsonl`` and in :attr:`DynamicsCallback.history`.

A key is left out of a log entry when its value could not be computed (e.g. every layer's gradient
was non-finite on an AMP overflow step); the reason is counted in the jsonl record. No NaN is logged.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from transformers import TrainerCallback

from ..arguments import DEFAULT_EVERY_N_STEPS, validate_confusion_chunks, validate_every_n_steps
from ..io.dynamics_log import append_dynamics_record, prepare_dynamics_log
from ..io.tensor_file import TensorFile
from ..metrics import MetricResult, gradient_predictability, layer_rotation, local_shard
from ..metrics.gradient_snapshot import GradientKeeper
from ..metrics.layers import LayerSelection, select_parameters, validate_layer_selection
from ..metrics.lora import EffectiveWeights, lora_layers
from ..metrics.sketch import ShardLayout, shard_layout, sketch_keys, sketch_tensors, sketched_layer_rotation
from ..names import (
    CURRENT_COPIES_FIELD,
    DYNAMICS_FILE,
    DYNAMICS_STATE_KEY,
    GRAD_SNAPSHOT_FILE,
    INITIAL_WEIGHTS_FILE,
    INITIAL_WEIGHTS_STORAGE,
    METRIC_LOG_KEYS,
    METRIC_NAMES,
    normalize_metric_names,
)
from ..state import RunState
from .files import CheckpointFilesMixin, shard_reduction

__all__ = ["DynamicsCallback", "DYNAMICS_FILE", "INITIAL_WEIGHTS_FILE", "GRAD_SNAPSHOT_FILE", "STATE_KEY", "shard_reduction"]

logger = logging.getLogger(__name__)

#: Key of this callback's state in `TrainerState.stateful_callbacks` (the name it had before `hf_critical.names`).
STATE_KEY = DYNAMICS_STATE_KEY


class DynamicsCallback(CheckpointFilesMixin, TrainerCallback):
    """Computes gradient confusion, gradient predictability and layer rotation during training.

    With a plain `transformers.Trainer` this callback measures gradient predictability and layer
    rotation; gradient confusion needs the gradients of two distinct mini-batches at the same
    parameters, which only `CriticalPeriodTrainer` can take without an extra pass (it is skipped,
    with a warning, under a plain Trainer). Under `CriticalPeriodTrainer` the values also go out with
    the Trainer's training logs (``report_to`` integrations, ``state.log_history``); under a plain
    Trainer they are in ``dynamics.jsonl`` and :attr:`history` only.

    Args:
        metrics: Names from :data:`hf_critical.arguments.METRIC_NAMES`, ``"all"`` or ``"none"``.
        every_n_steps: Measure at optimizer steps ``every_n_steps, 2*every_n_steps, ...``.
        layers: ``"weights"``, ``"all"`` or a regular expression over parameter names.
        initial_weights: Where layer rotation keeps the initial weights: ``"disk"`` (streamed one layer at
            a time from the file written at the start of training), ``"host"`` or ``"device"``.
        sketch_dim: Keep fixed random per-layer sketches of ``sketch_dim`` floats instead of full tensors for
            gradient predictability and layer rotation (`hf_critical.metrics.sketch`: the state no longer grows with the
            model; the initial weights file is written for resume but never read during training). ``None``: exact.
    """

    def __init__(
        self,
        metrics: str | Iterable[str] = METRIC_NAMES,
        every_n_steps: int = DEFAULT_EVERY_N_STEPS,
        layers: str = "weights",
        initial_weights: str = "disk",
        confusion_chunks: int = 2,
        sketch_dim: int | None = None,
    ):
        self.metrics = normalize_metric_names(metrics, "metrics")
        if sketch_dim is not None and (isinstance(sketch_dim, bool) or not isinstance(sketch_dim, int) or sketch_dim < 1):
            raise ValueError(f"`sketch_dim` must be a positive integer (floats per layer) or None, got {sketch_dim!r}")
        #: Floats per layer of the sketches replacing full tensors (None: exact metrics).
        self.sketch_dim = sketch_dim
        self._sketch_keys: dict[str, tuple[int, int, int, int]] = {}
        self._initial_sketches: dict[str, torch.Tensor] = {}
        # Sharded sketches: where each parameter's local shard sits in the full tensor (its gradient's too).
        self._layouts: dict[str, ShardLayout] | None = None
        self._rotation_keys: dict[str, tuple[int, int, int, int]] = {}
        #: Chunks of distinct samples the measured step's batch is split into for gradient confusion
        #: (without gradient accumulation): all their pairs are compared.
        self.confusion_chunks = validate_confusion_chunks(confusion_chunks, "confusion_chunks")
        self.every_n_steps = validate_every_n_steps(every_n_steps, "every_n_steps")
        validate_layer_selection(layers, "layers")
        self.layers = layers
        if initial_weights not in INITIAL_WEIGHTS_STORAGE:
            raise ValueError(
                f"`initial_weights` must be one of {list(INITIAL_WEIGHTS_STORAGE)}, got {initial_weights!r}"
            )
        self.initial_weights = initial_weights
        #: One compact entry per measurement: step, epoch and the global values.
        self.history: list[dict[str, Any]] = []
        #: The state shared with `CriticalPeriodTrainer` and the switch callback (`hf_critical.state`): the
        #: trainer adopts this object; the callback writes the latest measurement and its log values into it.
        self.run_state = RunState()
        #: Called with the global values of each measurement; by default they wait in the run state for the
        #: Trainer's next training log (`CriticalPeriodTrainer.log` takes them from there).
        self.log_fn: Callable[[dict[str, float]], None] | None = self._keep_for_log
        self.selection: LayerSelection | None = None
        self._initial: Mapping[str, torch.Tensor] | None = None
        self._snapshot: tuple[int, list[torch.Tensor | None]] | None = None
        #: Squared norms of the kept gradient's layers when they were taken at its own step (measured at consecutive steps).
        self._snapshot_sq_norms: dict[str, torch.Tensor] | None = None
        self._keeper = GradientKeeper()
        #: LoRA layers whose rotation is that of their effective weight (hf_critical.metrics.lora), by weight name.
        self._lora: dict = {}
        #: Squared norm of each layer's initial tensor (or effective weight), taken once per run.
        self._initial_sq: dict[str, float] | None = None
        self._pending: dict[str, MetricResult | None] = {}
        #: Gradient confusion measured during the micro-batches of a step, by step (read at the next step).
        self._confusion: dict[int, MetricResult] = {}
        self._warned_confusion = False
        self._reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    @classmethod
    def from_args(cls, args: Any) -> DynamicsCallback:
        """Build from `CriticalPeriodArguments` (plain `TrainingArguments` give the defaults)."""
        return cls(
            metrics=getattr(args, "dynamics_metrics", METRIC_NAMES),
            every_n_steps=getattr(args, "dynamics_every_n_steps", DEFAULT_EVERY_N_STEPS),
            layers=getattr(args, "dynamics_layers", "weights"),
            initial_weights=getattr(args, "dynamics_initial_weights", "disk"),
            confusion_chunks=getattr(args, "dynamics_confusion_chunks", 2),
            sketch_dim=getattr(args, "dynamics_sketch_dim", None),
        )

    def attach(self, trainer: Any) -> DynamicsCallback:
        """Add this callback to ``trainer``; returns the callback.

        A plain Trainer's log entries are left as they are (the values are in ``dynamics.jsonl`` and
        :attr:`history`); `CriticalPeriodTrainer` sends them out with its training logs.
        """
        trainer.add_callback(self)
        return self

    def _keep_for_log(self, values: dict[str, float]) -> None:
        # The latest measurement replaces the previous one's values whole.
        self.run_state.queue_log(values, replace_prefix="dynamics/")

    @property
    def confusion_provider(self) -> bool:
        """Whether the trainer feeds gradient confusion through :meth:`record_confusion` (`CriticalPeriodTrainer`)."""
        return self.run_state.confusion_from_trainer

    @property
    def resume_checkpoint(self) -> str | None:
        """The checkpoint folder the current run resumed from (set by `CriticalPeriodTrainer.train`)."""
        return self.run_state.resume_checkpoint

    # ---- schedule -------------------------------------------------------------------------------

    def is_measured_step(self, step: int) -> bool:
        return bool(self.metrics) and step > 0 and step % self.every_n_steps == 0

    def wants_confusion(self, step: int) -> bool:
        """Whether ``step``'s micro-batches feed gradient confusion.

        Confusion for the measurement at step ``s`` is taken on the batch of step ``s - 1``, the step
        whose gradient predictability keeps a copy of: that way the half-batch gradient set aside for
        confusion and the gradient kept for predictability are never held at the same time.
        """
        return "gradient_confusion" in self.metrics and self.is_measured_step(step + 1)

    def record_confusion(self, step: int, result: MetricResult) -> None:
        """Hand over the gradient confusion measured during the micro-batches of ``step``.

        It belongs to the measurement at ``step + 1``; with a measurement every step, the confusion of
        ``step`` and that of ``step - 1`` (read by the measurement at ``step``) are both pending.
        """
        self._confusion[step] = result

    # ---- events ---------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("DynamicsCallback needs the model in on_train_begin; is it registered with a Trainer?")
        self.selection = select_parameters(model, self.layers)
        if not self.selection.parameters:
            logger.warning(
                "%s has no trainable parameter for dynamics_layers=%r: nothing to measure in this run",
                type(model).__name__,
                self.layers,
            )
            self.selection = None
            self.history = [] if state.global_step == 0 else self.history
            return
        # Sharded parameters (FSDP2): metrics are partial sums over local shards, summed across the shard group.
        self._reduce = shard_reduction(self.selection.parameters.values())
        self._layouts = None
        if self._reduce is not None and self.sketch_dim is not None:
            self._layouts = {name: shard_layout(p) for name, p in self.selection.parameters.items()}
        seed = int(getattr(args, "seed", 0))
        self._sketch_keys = {name: sketch_keys(seed, i) for i, name in enumerate(self.selection.names)}
        self._pending = {}
        self._confusion = {}
        self._snapshot = None
        self._snapshot_sq_norms = None
        self._keeper = GradientKeeper()
        resumed = state.global_step > 0
        if "gradient_confusion" in self.metrics and not self.confusion_provider and not self._warned_confusion:
            logger.warning(
                "gradient_confusion needs CriticalPeriodTrainer (it splits the measured step's batch); "
                "with this Trainer it is skipped."
            )
            self._warned_confusion = True
        if resumed:
            self._restore(args, state)
        else:
            self.history = []
        if "layer_rotation" in self.metrics:
            self._initial = self._load_initial(args, state) if resumed else self._take_initial(args, state)
            self._prepare_rotation(model)
        if state.is_world_process_zero:
            prepare_dynamics_log(args.output_dir, state.global_step if resumed else 0)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if "gradient_predictability" not in self.metrics or self.selection is None:
            return
        step = state.global_step + 1
        grads = [p.grad for p in self.selection.parameters.values()]
        if self.sketch_dim is not None and (self.is_measured_step(step) or self.is_measured_step(step + 1)):
            keys = [self._sketch_keys[name] for name in self.selection.names]
            # Fresh tensors: kept as they are. Sharded: each rank sketches its shards, summed into the full sketches.
            layouts = None if self._layouts is None else [self._layouts[name] for name in self.selection.names]
            grads = sketch_tensors(grads, self.sketch_dim, keys, reduce=self._reduce, layouts=layouts)
        current_sq_norms: dict[str, torch.Tensor] = {}
        if self.is_measured_step(step):
            previous = None
            if self._snapshot is not None and self._snapshot[0] == step - 1:
                previous = self._keeper.take(self._snapshot[1])
            if previous is not None:
                names = self.selection.names
                self._pending["gradient_predictability"] = gradient_predictability(
                    dict(zip(names, previous)),
                    dict(zip(names, grads)),
                    reduce=None if self.sketch_dim is not None else self._reduce,  # sketches are replicated
                    previous_sq_norms=self._snapshot_sq_norms,
                    current_sq_norms=current_sq_norms,
                )
            else:
                self._pending["gradient_predictability"] = None
            self._snapshot = None
        self._snapshot_sq_norms = None
        if self.is_measured_step(step + 1):
            # Kept by reference while nothing writes to them in place (hf_critical.metrics.gradient_snapshot), else copied.
            self._snapshot = (step, self._keeper.keep(grads))
            # Measured at consecutive steps, the kept gradient's norms were just taken: the next measurement reuses them.
            self._snapshot_sq_norms = current_sq_norms or None

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.is_measured_step(step) and self.selection is not None:
            self._finish_measurement(args, state, control, step)
        if control.should_save:
            self._before_checkpoint(args, state)

    def on_epoch_end(self, args, state, control, **kwargs):
        if control.should_save:
            self._before_checkpoint(args, state)

    def on_train_end(self, args, state, control, **kwargs):
        self._snapshot = None
        self._snapshot_sq_norms = None
        self._initial = None

    # ---- measurement ----------------------------------------------------------------------------

    def _finish_measurement(self, args, state, control, step: int) -> None:
        results: dict[str, MetricResult | None] = {}
        if "gradient_confusion" in self.metrics:
            results["gradient_confusion"] = self._confusion.pop(step - 1, None)
            # Anything older belongs to no measurement; the confusion of `step` itself feeds step + 1.
            self._confusion = {s: r for s, r in self._confusion.items() if s >= step}
        if "gradient_predictability" in self.metrics:
            results["gradient_predictability"] = self._pending.pop("gradient_predictability", None)
        if "layer_rotation" in self.metrics and self._initial is not None:
            initial, current = self._rotation_views()
            if self.sketch_dim is not None:
                results["layer_rotation"] = sketched_layer_rotation(
                    self._initial_sketches,
                    self._initial_sq,
                    current,
                    self.sketch_dim,
                    self._rotation_keys,
                    reduce=self._reduce,
                    layouts=self._layouts,
                )
            else:
                results["layer_rotation"] = layer_rotation(
                    initial, current, reduce=self._reduce, initial_sq_norms=self._initial_sq
                )
        record: dict[str, Any] = {"step": step, "epoch": state.epoch}
        run = self.run_state
        if run.current_copies is not None:
            record[CURRENT_COPIES_FIELD] = run.current_copies
        if run.learning_rate is not None:
            # This step's learning rate and the sum so far: a replay follows the schedule (hf_critical.detectors.replay).
            record["learning_rate"] = run.learning_rate
            record["learning_rate_sum"] = run.learning_rate_sum
        record["frozen_parameters"] = len(self.selection.frozen)
        values: dict[str, float] = {}
        for name, result in results.items():
            if result is None:
                record[name] = {"value": None, "unavailable": True}
                continue
            record[name] = result.to_dict()
            if name == "gradient_confusion":
                record[name]["batch_step"] = step - 1
            for field_name, key in METRIC_LOG_KEYS[name]:
                value = result.value if field_name == "value" else result.extra.get(field_name)
                if value is not None and math.isfinite(value):
                    values[key] = float(value)
        self.history.append({"step": step, "epoch": state.epoch, **values})
        run.last_measurement = record
        if state.is_world_process_zero:
            append_dynamics_record(args.output_dir, record)
        if values:
            if self.log_fn is not None:
                # Trainer.log clears control.should_log; the Trainer's own log of this step must still happen.
                should_log = control.should_log
                self.log_fn(dict(values))
                control.should_log = should_log
            else:
                state.log_history.append({**values, "epoch": state.epoch, "step": step})

    def _prepare_rotation(self, model) -> None:
        """Find LoRA layers (rotation of their effective weight) and take the initial squared norms once."""
        self._lora = {}
        if self._reduce is None:  # sharded factors (FSDP2) are measured as parameters
            self._lora, unsupported = lora_layers(model, self.selection.parameters)
            if unsupported:
                logger.warning(
                    "layer_rotation measures the adapter factors of %d adapted modules as parameters (DoRA, merged "
                    "adapters or a trainable base weight), e.g. %s",
                    len(unsupported),
                    unsupported[0],
                )
        initial, _ = self._rotation_views()
        norms = {}
        for name in initial:
            tensor = local_shard(initial[name]).detach().reshape(-1)
            flat = tensor if tensor.dtype == torch.float64 else tensor.float()
            norms[name] = torch.dot(flat, flat)
        self._initial_sq = {}
        if norms:
            stacked = torch.stack([v.double() for v in norms.values()])
            if self.sketch_dim is not None and self._reduce is not None:
                stacked = self._reduce(stacked)  # the sketched rotation takes the full layers' norms
            self._initial_sq = dict(zip(norms, stacked.tolist()))
        if self.sketch_dim is not None:
            # Rotation keys by the measured name (a LoRA layer's effective weight takes its A factor's key).
            self._rotation_keys = {}
            for name in initial:
                layer = self._lora.get(name)
                self._rotation_keys[name] = self._sketch_keys[layer.factors[0][0] if layer else name]
            names = list(initial)
            # Sharded: the file holds this rank's shards; the parameters say where they sit in the full layers.
            layouts = None if self._layouts is None else [self._layouts[name] for name in names]
            sketches = sketch_tensors(
                [initial[name] for name in names],
                self.sketch_dim,
                [self._rotation_keys[name] for name in names],
                reduce=self._reduce,
                layouts=layouts,
            )
            self._initial_sketches = dict(zip(names, sketches))

    def _rotation_views(self) -> tuple[Mapping[str, torch.Tensor], Mapping[str, torch.Tensor]]:
        current = {name: p.detach() for name, p in self.selection.parameters.items()}
        if not self._lora:
            return self._initial, current
        return EffectiveWeights(self._initial, self._lora), EffectiveWeights(current, self._lora)

    # ---- persistence ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """JSON-ready state, saved in checkpoints under ``TrainerState.stateful_callbacks[DYNAMICS_STATE_KEY]``."""
        return {
            "args": {
                "metrics": list(self.metrics),
                "every_n_steps": self.every_n_steps,
                "layers": self.layers,
                "initial_weights": self.initial_weights,
                "confusion_chunks": self.confusion_chunks,
                "sketch_dim": self.sketch_dim,
            },
            "attributes": {
                "history": list(self.history),
                # Confusion measured on the batch before a checkpoint belongs to the measurement after it.
                "pending_confusion": None
                if not self._confusion
                else {"step": max(self._confusion), "result": self._confusion[max(self._confusion)].to_dict()},
            },
        }

    def _restore(self, args, state) -> None:
        saved = state.stateful_callbacks.get(DYNAMICS_STATE_KEY) if state.stateful_callbacks else None
        if saved is None:
            logger.warning(
                "Resuming at step %d from a checkpoint without hf_critical state; the metric history restarts here.",
                state.global_step,
            )
            self.history = []
        else:
            attributes = saved["attributes"]
            self.history = [h for h in attributes["history"] if h["step"] <= state.global_step]
            pending = attributes.get("pending_confusion")
            if pending is not None and pending["step"] == state.global_step:
                self._confusion = {pending["step"]: MetricResult.from_dict(pending["result"])}
        folder = self.resume_checkpoint or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        snapshot_path = os.path.join(folder, self._per_rank_name(GRAD_SNAPSHOT_FILE))
        if "gradient_predictability" in self.metrics and os.path.isfile(snapshot_path):
            stored = TensorFile(snapshot_path)
            step = int(stored.metadata.get("step", "-1"))
            params = self.selection.parameters
            self._snapshot = (
                step,
                [stored[n].to(p.device, copy=True) if n in stored else None for n, p in params.items()],
            )
