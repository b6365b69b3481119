"""Replay detectors on the study's committed full-arm metric logs: where would each one have fired?

    python benchmarks/replay_detectors.py [recipes/configs/study_testbeds.yaml] [--tasks a,b]

Before its switch a detector's run *is* the full arm (same seed, data and augmentations), so feeding
a full arm's ``dynamics.jsonl`` to a detector, step by step as `CriticalPeriodCallback` does, gives
the step it fires at without training again (`hf_critical.study.replay_detector`). Logs written
before the learning rate was recorded get it from the task's schedule (transformers' own scheduler,
same arguments). Output: a markdown table of fire epochs (and % of the run) per task and detector.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import torch
import yaml
from transformers import get_scheduler

from hf_critical.study import config_from_dict, read_dynamics_file, replay_detector

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="recipes/configs/study_testbeds.yaml")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: every logged one)")
    args = parser.parse_args(argv)
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
