"""GPU benchmark: overhead of the metrics, k=4 against k=1 compute, and peak memory, for BERT-base and ViT-B/16.

Run from the repository root on a machine with one GPU (needs only torch, transformers, accelerate and
hf_critical itself; meant to fit in 8 minutes with the defaults, not yet timed on a GPU)::

    python benchmarks/gpu.py --output gpu.md
    python benchmarks/gpu.py --tiny --steps 6 --reps 1 --no-bf16    # the CPU smoke test's sizes

Models are built from config (random weights, no download): BERT-base (``BertConfig()``: 12 layers,
hidden 768, 110 M parameters; sequence length 128) and ViT-B/16 (``ViTConfig()``: image 224, patch 16,
86 M parameters), batch 32, bf16 mixed precision (``bf16=True``), AdamW, synthetic random data.

Per model, alternated within each repetition (``plain, default, every_step, k1, k4, plain, ...``):

* ``plain``: `transformers.Trainer`; ``default``: `CriticalPeriodTrainer`, all three metrics every 10
  steps; ``every_step``: every step. Step time from ``on_step_begin`` to ``on_step_end`` (CUDA
  synchronised at both ends), first ``--warmup`` steps dropped; median over repetitions of the mean.
* ``k1`` / ``k4``: `CriticalPeriodTrainer` without metrics on batches of B rows and of 4 B rows (4
  copies of each of the B samples, as the k-copy collators lay them out). An epoch has the same number
  of steps either way, so the ratio of their step times is the ratio of a k=4 epoch's time to a k=1
  epoch's: the ceiling of what switching to one copy saves. The augmentation itself is left out
  (its cost depends on the policy; ``benchmarks/augmentation.py`` measures it).
* peak memory: ``torch.cuda.max_memory_allocated`` of each run (median), and its excess over ``plain``.

Output: a markdown table on stdout (and in ``--output``), with the GPU named.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import transformers  # noqa: E402
from machine import machine_description, progress  # noqa: E402
from overhead import ModelSpec, text_inputs, train_steps  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification  # noqa: E402

COPIES = 4
#: Configuration -> (measure every N steps or None for none, copies per sample, plain Trainer?).
CONFIGURATIONS = {
    "plain": (None, 1, True),
    "default": (10, 1, False),
    "every_step": (1, 1, False),
    "k1": (None, 1, False),
    "k4": (None, COPIES, False),
}


def model_specs(tiny: bool) -> dict[str, ModelSpec]:
    """The benchmarked models by name (BERT-base and ViT-B/16, or tiny ones for the CPU smoke test)."""
    if tiny:
        bert = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=32, num_labels=2)
        vit = ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=10)
        seq, batch = 16, 4
    else:
        bert, vit, seq, batch = BertConfig(num_labels=2), ViTConfig(num_labels=10), 128, 32
    bert.num_labels, vit.num_labels = 2, 10

    def images(n, g):
        size = vit.image_size
        return {"pixel_values": torch.randn(n, 3, size, size, generator=g), "labels": torch.randint(0, 10, (n,), generator=g)}

    bert_name, vit_name = ("bert-tiny", "vit-tiny") if tiny else ("bert-base", "vit-b16")
    return {
        bert_name: ModelSpec(
            name=bert_name,
            description=f"BERT from config (hidden {bert.hidden_size}, {bert.num_hidden_layers} layers), seq {seq}",
            batch_size=batch,
            build=lambda: BertForSequenceClassification(bert),
            make_inputs=lambda n, g: text_inputs(n, seq, bert.vocab_size, num_labels=2, generator=g),
        ),
        vit_name: ModelSpec(
            name=vit_name,
            description=f"ViT from config (image {vit.image_size}, patch {vit.patch_size}, hidden {vit.hidden_size}, "
            f"{vit.num_hidden_layers} layers)",
            batch_size=batch,
            build=lambda: ViTForImageClassification(vit),
            make_inputs=images,
        ),
    }


def train_once(spec: ModelSpec, configuration: str, steps: int, bf16: bool, output_dir: str) -> tuple[list[float], float | None]:
    every, copies, plain = CONFIGURATIONS[configuration]
    result = train_steps(
        spec,
        steps,
        output_dir,
        plain=plain,
        every_n_steps=every,
        copies=copies,
        training_args={"bf16": bf16, "use_cpu": not torch.cuda.is_available()},
        critical_period_args={"detector": "never"},
    )
    return result.step_seconds, result.cuda_peak_mib


def benchmark(name, spec, options) -> dict[str, dict[str, list[float]]]:
    results = {c: {"step": [], "peak": []} for c in CONFIGURATIONS}
    for repetition in range(options.reps):
        for configuration in CONFIGURATIONS:
            with tempfile.TemporaryDirectory(prefix="hf_critical_gpu_") as output_dir:
                seconds, peak = train_once(spec, configuration, options.steps, options.bf16, output_dir)
            results[configuration]["step"].append(statistics.fmean(seconds[options.warmup :]))
            if peak is not None:
                results[configuration]["peak"].append(peak)
            progress(f"{name} rep {repetition + 1}/{options.reps} {configuration:>10}: {1000 * results[configuration]['step'][-1]:.1f} ms/step")
    return results


def markdown(all_results: dict, specs: dict, options, seconds: float) -> str:
    lines = [
        "## GPU benchmark (`benchmarks/gpu.py`)",
        "",
        f"Machine: {machine_description()}",
        "",
        f"{'bf16 mixed precision' if options.bf16 else 'float32'}, AdamW, {options.steps} steps per run (first "
        f"{options.warmup} dropped), median over {options.reps} repetitions, configurations alternated.",
        "",
        "| model | configuration | step (ms) | vs plain | peak memory (MiB) | extra peak vs plain (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for name, results in all_results.items():
        plain_step = statistics.median(results["plain"]["step"])
        plain_peak = statistics.median(results["plain"]["peak"]) if results["plain"]["peak"] else None
        for configuration, values in results.items():
            step = statistics.median(values["step"])
            peak = statistics.median(values["peak"]) if values["peak"] else None
            ratio = step / (statistics.median(results["k1"]["step"]) if configuration == "k4" else plain_step)
            label = f"{ratio:.3f}" + (" (vs k1)" if configuration == "k4" else "")
            extra = "" if peak is None or plain_peak is None or configuration == "plain" else f"{peak - plain_peak:+.0f}"
            lines.append(
                f"| {name} | {configuration} | {1000 * step:.1f} | {label} | "
                f"{'n/a' if peak is None else f'{peak:.0f}'} | {extra} |"
            )
    lines += ["", "Models:", ""]
    for name, spec in specs.items():
        lines.append(f"- `{name}`: {spec.description}, batch {spec.batch_size} samples (k4: {COPIES * spec.batch_size} rows).")
    lines += [
        "",
        f"`k4` vs `k1` is the time of a k={COPIES} epoch over a k=1 epoch (same steps, {COPIES}x the rows; "
        "augmentation excluded).",
        "",
        f"Total time: {seconds:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="first steps of each run left out (default 5)")
    parser.add_argument("--reps", type=int, default=2, help="repetitions (default 2)")
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 mixed precision")
    parser.add_argument("--tiny", action="store_true", help="tiny models and batch 4 (the CPU smoke test)")
    parser.add_argument("--models", nargs="+", help="model names to run (default: both)")
    parser.add_argument("--output", help="also write the markdown table to this file")
    options = parser.parse_args(argv)
    if options.steps <= options.warmup:
        parser.error(f"--steps ({options.steps}) must exceed --warmup ({options.warmup})")
    if options.reps < 1:
        parser.error(f"--reps must be at least 1, got {options.reps}")
    if not torch.cuda.is_available() and not options.tiny:
        progress("No CUDA device: running the full-size models on the CPU will take hours (use --tiny to check).")
    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    specs = model_specs(options.tiny)
    if options.models:
        unknown = [m for m in options.models if m not in specs]
        if unknown:
            parser.error(f"--models: unknown {unknown}; choose from {list(specs)}")
        specs = {name: spec for name, spec in specs.items() if name in options.models}
    all_results = {name: benchmark(name, spec, options) for name, spec in specs.items()}
    report = markdown(all_results, specs, options, time.perf_counter() - started)
    print(report, end="")
    if options.output:
        with open(options.output, "w", encoding="utf-8") as f:
            f.write(report)
    return report


if __name__ == "__main__":
    main()
