"""Replay detectors on the study's committed full-arm metric logs: where would each one have fired?

    python benchmarks/replay_detectors.py [recipes/configs/study_testbeds.yaml] [--tasks a,b]
    python benchmarks/replay_detectors.py --run OUTPUT_DIR [--run OUTPUT_DIR ...]   # finished recipe runs
    python benchmarks/replay_detectors.py --score [--after_switch augmented]        # fire points against the oracle

Before its switch a detector's run *is* the full arm (same seed, data and augmentations), so feeding
a full arm's ``dynamics.jsonl`` to a detector, step by step as `CriticalPeriodCallback` does, gives
the step it fires at without training again (`hf_critical.study.replay_detector`). Logs written
before the learning rate was recorded get it from the task's schedule (transformers' own scheduler,
same arguments). Output: a markdown table of fire epochs (and % of the run) per task and detector.

With ``--run``, each finished recipe run (its ``dynamics.jsonl`` and ``trainer_state.json``) is
replayed instead, and the noise of each metric about its trend is printed: the robust standard
deviation of successive differences over sqrt(2) (1.4826 times their median absolute deviation),
with the metric's mean in the first and last quarter of the run.

With ``--score``, each replayed fire point is set against its task's oracle sweep (the committed
``runs.csv``): per seed, the accuracy the sweep's points give at the fire fraction (linear between the
two neighbouring switch points of that seed; a detector that never fires is ``full``), its shortfall
from the seed's best switch point ("regret", pp), and the training rows it keeps against ``full``.
Fixed fractions of the run (the schedule-only null every metric rule must beat) are scored the same
way. The accuracy at a fire point between two switch points is an interpolation, not a run.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys

import numpy as np
import torch
import yaml
from transformers import get_scheduler

from hf_critical.detectors import replay_detector
from hf_critical.experiments.study import config_from_dict, fraction_points, read_dynamics_file, steps_per_epoch_of

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


def replay_log(task, path: str) -> tuple[int, int, dict[str, int | None]]:
    """(steps per epoch, planned steps, label -> fire step or None) of every detector on one committed log.

    The learning rates come from the task's schedule (older logs did not record them).
    """
    records = read_dynamics_file(path)
    epochs = float(task.args["num_train_epochs"])
    first = next(r for r in records if r.get("epoch"))
    steps_per_epoch = round(first["step"] / first["epoch"])
    total = math.ceil(steps_per_epoch * epochs)
    rates = schedule(task.args, total)
    fires = {
        label: replay_detector(records, steps_per_epoch, epochs, detector, learning_rates=rates, **options)
        for label, (detector, options) in DETECTORS.items()
    }
    return steps_per_epoch, total, fires


NULL_FRACTIONS = (0.1, 0.2, 0.3, 0.5)


def seed_sweeps(rows: list[dict], after_switch: str) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(task, seed) -> [(switch fraction, accuracy %)] of one meaning of k = 1 (`fraction_points` on the
    seed's finished rows), from 0 (its one-copy arm) to 1 (``full``); only seeds with both ends and a point
    between them."""
    by_seed: dict[tuple[str, int], list[dict]] = {}
    for row in rows:
        if row.get("status") == "done" and row.get("accuracy") not in (None, ""):
            entry = {"task": row["task"], "arm": row["arm"], "accuracy": 100 * float(row["accuracy"])}
            by_seed.setdefault((row["task"], int(row["seed"])), []).append(entry)
    sweeps = {}
    for (task, seed), entries in by_seed.items():
        points = [(fraction, entry["accuracy"]) for fraction, entry in fraction_points(entries, task, after_switch)]
        if len(points) > 2 and points[0][0] == 0.0 and points[-1][0] == 1.0:
            sweeps[(task, seed)] = points
    return sweeps


def accuracy_at(points: list[tuple[float, float]], fraction: float) -> float:
    """The sweep's accuracy at a switch fraction: linear between the two neighbouring measured points."""
    fraction = min(max(fraction, 0.0), 1.0)
    for (f0, a0), (f1, a1) in zip(points, points[1:]):
        if f0 <= fraction <= f1:
            return a0 if f1 == f0 else a0 + (fraction - f0) / (f1 - f0) * (a1 - a0)
    raise ValueError(f"fraction {fraction} outside the sweep {points}")


def score(config, rows: list[dict], after_switch: str, tasks: list[str] | None = None) -> list[dict]:
    """One row per (task, rule): mean fire fraction, accuracy at it, regret and rows kept (means over seeds)."""
    sweeps = seed_sweeps(rows, after_switch)
    logs_dir = os.path.join(config.results_dir or config.output_dir, "dynamics")
    out = []
    for task in config.tasks:
        seeds = sorted(seed for name, seed in sweeps if name == task.name)
        if not seeds or (tasks and task.name not in tasks):
            continue
        copies = int(task.args.get("augment_copies", 1))
        fires: dict[str, list[float]] = {f"fixed {100 * f:g} %": [f] * len(seeds) for f in NULL_FRACTIONS}
        for seed in seeds:
            path = os.path.join(logs_dir, task.name, f"seed{seed}.jsonl.gz")
            if not os.path.isfile(path):
                continue
            _, total, steps = replay_log(task, path)
            for label, step in steps.items():
                fires.setdefault(label, []).append(1.0 if step is None else min(1.0, step / total))
        for label, fractions in fires.items():
            if len(fractions) != len(seeds):
                continue  # a seed without its log: no fair mean
            accuracy = [accuracy_at(sweeps[(task.name, s)], f) for s, f in zip(seeds, fractions)]
            best = [max(a for _, a in sweeps[(task.name, s)]) for s in seeds]
            out.append({
                "task": task.name, "rule": label, "seeds": len(seeds),
                "fire": statistics.fmean(fractions), "fire_min": min(fractions), "fire_max": max(fractions),
                "accuracy": statistics.fmean(accuracy), "regret": statistics.fmean(b - a for b, a in zip(best, accuracy)),
                "rows_kept": statistics.fmean((1 + (copies - 1) * f) / copies for f in fractions),
            })
    return out


def print_score(scored: list[dict], after_switch: str) -> None:
    print(f"k = 1 {after_switch} after the switch; accuracy at the fire point from the seed's own sweep (interpolated)\n")
    print("| task | rule | fire (% of run, mean [min-max]) | accuracy % | regret (pp) | training rows vs full |")
    print("|---|---|---|---|---|---|")
    for r in scored:
        print(
            f"| {r['task']} | {r['rule']} | {100 * r['fire']:.0f} [{100 * r['fire_min']:.0f}-{100 * r['fire_max']:.0f}] "
            f"| {r['accuracy']:.2f} | {r['regret']:.2f} | {100 * r['rows_kept']:.0f} % |"
        )
    rules = list(dict.fromkeys(r["rule"] for r in scored))
    tasks = {r["task"] for r in scored}
    print(f"\nMean over the {len(tasks)} tasks (each task's regret in pp, then averaged):\n")
    print("| rule | mean regret (pp) | worst task's regret (pp) | mean training rows vs full |")
    print("|---|---|---|---|")
    for rule in sorted(rules, key=lambda name: statistics.fmean(r["regret"] for r in scored if r["rule"] == name)):
        mine = [r for r in scored if r["rule"] == rule]
        if len(mine) != len(tasks):
            continue
        print(
            f"| {rule} | {statistics.fmean(r['regret'] for r in mine):.2f} | {max(r['regret'] for r in mine):.2f} "
            f"| {100 * statistics.fmean(r['rows_kept'] for r in mine):.0f} % |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="recipes/configs/study_testbeds.yaml")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: every logged one)")
    parser.add_argument("--run", action="append", default=None, help="a finished recipe run's output_dir (repeatable)")
    parser.add_argument("--score", action="store_true", help="score the fire points against the oracle sweeps")
    parser.add_argument("--after_switch", choices=("augmented", "clean"), default="augmented", help="with --score")
    args = parser.parse_args(argv)
    if args.run:
        replay_runs(args.run)
        return 0
    with open(args.config, encoding="utf-8") as fh:
        config = config_from_dict(yaml.safe_load(fh))
    if args.score:
        with open(os.path.join(config.results_dir or config.output_dir, "runs.csv"), encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        scored = score(config, rows, args.after_switch, args.tasks.split(",") if args.tasks else None)
        if not scored:
            print("no task has both an oracle sweep and its full arms' metric logs")
            return 1
        print_score(scored, args.after_switch)
        return 0
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
            steps_per_epoch, total, steps = replay_log(task, os.path.join(folder, name))
            cells = [
                "never" if step is None else f"{step / steps_per_epoch:.2f} ({step / total:.0%})"
                for step in steps.values()
            ]
            seed = name.split(".")[0]
            epochs = float(task.args["num_train_epochs"])
            print(f"| {task.name} | {seed} | {steps_per_epoch} | {epochs:g} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
