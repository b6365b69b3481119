"""Replay detectors on the study's committed full-arm metric logs: where would each one have fired?

    python benchmarks/replay_detectors.py [recipes/configs/study_testbeds.yaml] [--tasks a,b]
    python benchmarks/replay_detectors.py --run OUTPUT_DIR [--run OUTPUT_DIR ...]   # finished recipe runs

Before its switch a detector's run *is* the full arm (same seed, data and augmentations), so feeding
a full arm's ``dynamics.jsonl`` to a detector, step by step as `CriticalPeriodCallback` does, gives
the step it fires at without training again (`hf_critical.study.replay_detector`). Logs written
before the learning rate was recorded get it from the task's schedule (transformers' own scheduler,
same arguments). Output: a markdown table of fire epochs (and % of the run) per task and detector.

With ``--run``, each finished recipe run (its ``dynamics.jsonl`` and ``trainer_state.json``) is
replayed instead, and the noise of each metric about its trend is printed: the robust standard
deviation of successive differences over sqrt(2) (1.4826 times their median absolute deviation),
with the metric's mean in the first and last quarter of the run.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch
import yaml
from transformers import get_scheduler

from hf_critical.detectors import replay_detector
from hf_critical.experiments.study import config_from_dict, read_dynamics_file, steps_per_epoch_of

METRICS = ("gradient_confusion", "gradient_predictability", "layer_rotation")

DETECTORS = {
    "rate": ("rate", {}),
    "plateau (confusion)": ("plateau", {}),
    "plateau (predictability)": ("plateau", {"metric": "gradient_predictability"}),
    "stability (1ep, study)": ("stability", {"metrics": "layer_rotation", "window": "1ep", "warmup": "2ep"}),
    "fukase_rotation_angle": ("fukase_rotation_angle", {}),
}


def schedule(args: dict, total_steps: int) -> list[float]:
    """The learning rate of each optimizer step of a run with these recipe arguments (HF's scheduler)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=float(args.get("learning_rate", 5e-5)))
    warmup = float(args.get("warmup_steps", 0) or 0)
    warmup_steps = math.ceil(warmup * total_steps) if 0 < warmup < 1 else int(warmup)
    scheduler = get_scheduler(
        args.get("lr_scheduler_type", "linear"), optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )
    rates = []
    for _ in range(total_steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def noise(records: list[dict], metric: str) -> tuple[float, float, float, int] | None:
    """(robust std about the trend, mean of the first quarter, of the last quarter, pairs per value) of a metric."""
    values = [r[metric]["value"] for r in records if isinstance(r.get(metric), dict) and r[metric].get("value") is not None]
    if len(values) < 8:
        return None
    v = np.asarray(values, dtype=np.float64)
    d = np.diff(v)
    sigma = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / math.sqrt(2)
    quarter = len(v) // 4
    pairs = next((r[metric].get("num_pairs") for r in records if isinstance(r.get(metric), dict) and r[metric].get("num_pairs")), 0)
    return sigma, float(v[:quarter].mean()), float(v[-quarter:].mean()), int(pairs or 0)


def replay_runs(folders: list[str]) -> None:
    """Fire epochs of every detector, and each metric's noise, on finished recipe runs."""
    print("| run | steps/epoch | epochs | " + " | ".join(DETECTORS) + " |")
    print("|---|---|---|" + "---|" * len(DETECTORS))
    noise_rows = []
    for folder in folders:
        records = read_dynamics_file(os.path.join(folder, "dynamics.jsonl"))
        steps_per_epoch, epochs = steps_per_epoch_of(folder)
        total = math.ceil(steps_per_epoch * epochs)
        cells = []
        for detector, options in DETECTORS.values():
            step = replay_detector(records, steps_per_epoch, epochs, detector, **options)  # rates from the log
            cells.append("never" if step is None else f"{step / steps_per_epoch:.2f} ({step / total:.0%})")
        print(f"| {os.path.basename(os.path.normpath(folder))} | {steps_per_epoch} | {epochs:g} | " + " | ".join(cells) + " |")
        for metric in METRICS:
            stats = noise(records, metric)
            if stats is not None:
                noise_rows.append((os.path.basename(os.path.normpath(folder)), metric, *stats))
    print("\n| run | metric | pairs | robust std about the trend | mean, first quarter | mean, last quarter |")
    print("|---|---|---|---|---|---|")
    for run, metric, sigma, first, last, pairs in noise_rows:
        print(f"| {run} | {metric} | {pairs or '-'} | {sigma:.3f} | {first:.3f} | {last:.3f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="recipes/configs/study_testbeds.yaml")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: every logged one)")
    parser.add_argument("--run", action="append", default=None, help="a finished recipe run's output_dir (repeatable)")
    args = parser.parse_args(argv)
    if args.run:
        replay_runs(args.run)
        return 0
    with open(args.config, encoding="utf-8") as fh:
        config = config_from_dict(yaml.safe_load(fh))
    logs_dir = os.path.join(config.results_dir or config.output_dir, "dynamics")
    print("| task | seed | steps/epoch | epochs | " + " | ".join(DETECTORS) + " |")
    print("|---|---|---|---|" + "---|" * len(DETECTORS))
    for task in config.tasks:
        if args.tasks and task.name not in args.tasks.split(","):
            continue
        folder = os.path.join(logs_dir, task.name)
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            records = read_dynamics_file(os.path.join(folder, name))
            epochs = float(task.args["num_train_epochs"])
            first = next(r for r in records if r.get("epoch"))
            steps_per_epoch = round(first["step"] / first["epoch"])
            total = math.ceil(steps_per_epoch * epochs)
            rates = schedule(task.args, total)
            cells = []
            for detector, options in DETECTORS.values():
                step = replay_detector(records, steps_per_epoch, epochs, detector, learning_rates=rates, **options)
                cells.append("never" if step is None else f"{step / steps_per_epoch:.2f} ({step / total:.0%})")
            seed = name.split(".")[0]
            print(f"| {task.name} | {seed} | {steps_per_epoch} | {epochs:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
