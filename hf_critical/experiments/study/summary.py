"""Summaries: per-arm means, the markdown tables, detector replays on the full arms, and the oracle sweep.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from ...arguments import AFTER_SWITCH_MODES
from ...detectors import replay_detector
from .config import Arm, Run, StudyConfig, Task, _task, exported_dynamics_path, parse_arm, run_status
from .rows import committed_rows


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation per (task, arm) over seeds, with savings against the ``full`` arm's mean."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("status") == "done":
            groups.setdefault((row["task"], row["arm"]), []).append(row)
    numeric = [
        "accuracy",
        "switch_epoch",
        "switch_step",
        "train_seconds",
        "train_energy_kwh",
        "train_emissions_kg",
        "training_rows",
        "optimizer_steps",
        "protocol_saving",
        "cost_usd",
        "wall_seconds",
    ]
    robust = sorted({key for row in rows for key in row if key.startswith("robust/")})
    summary = []
    for (task, arm), members in groups.items():
        entry: dict[str, Any] = {"task": task, "arm": arm, "seeds": len(members)}
        for key in numeric + robust:
            entry[key], entry[f"{key}_std"] = _mean_std([m.get(key) for m in members])
        entry["switched"] = sum(m.get("switch_step") is not None for m in members)
        summary.append(entry)
    for entry in summary:
        full = next((e for e in summary if e["task"] == entry["task"] and e["arm"] == "full"), None)
        for key, label in (
            ("train_seconds", "time"),
            ("train_energy_kwh", "energy"),
            ("training_rows", "rows"),
            ("cost_usd", "cost"),
        ):
            base = full.get(key) if full else None
            entry[f"{label}_saving"] = (1 - entry[key] / base) if base and entry.get(key) is not None else None
        base_acc = full.get("accuracy") if full else None
        entry["accuracy_vs_full_pp"] = (
            100 * (entry["accuracy"] - base_acc)
            if base_acc is not None and entry.get("accuracy") is not None
            else None
        )
    return summary


def _cell(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if mean is None:
        return "–"
    if std is None or std == 0:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown_table(summary: Sequence[Mapping[str, Any]], task: str) -> str:
    """One task's arms as a markdown table (accuracy in %, time in s, energy in Wh, CO2 in g)."""
    entries = [e for e in summary if e["task"] == task]
    robust = sorted(
        {
            key
            for e in entries
            for key, value in e.items()
            if key.startswith("robust/") and not key.endswith("_std") and value is not None
        },
        key=lambda key: (key != "robust/clean", key),
    )
    header = [
        "arm",
        "seeds",
        "accuracy %",
        "Δ vs full (pp)",
        "switch epoch",
        "train s",
        "energy Wh",
        "CO2 g",
        "cost US¢",
        "time saved",
        "energy saved",
        "rows saved",
        "steps",
        "(k−1)(E−e)/(kE)",
        *[
            ("robust subset clean %" if key == "robust/clean" else f"{key.removeprefix('robust/')} %")
            for key in robust
        ],
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for e in entries:
        pct = lambda v: "–" if v is None else f"{100 * v:.0f} %"  # noqa: E731
        switched = "" if e["switched"] == e["seeds"] else f" ({e['switched']}/{e['seeds']} fired)"
        cells = [
            e["arm"],
            str(e["seeds"]),
            _cell(e["accuracy"], e["accuracy_std"], 100, 2),
            "–" if e["accuracy_vs_full_pp"] is None else f"{e['accuracy_vs_full_pp']:+.2f}",
            _cell(e["switch_epoch"], e["switch_epoch_std"], 1, 1)
            + (switched if e["switch_epoch"] is not None else ""),
            _cell(e["train_seconds"], e["train_seconds_std"], 1, 1),
            _cell(e["train_energy_kwh"], e["train_energy_kwh_std"], 1000, 3),
            _cell(e["train_emissions_kg"], e["train_emissions_kg_std"], 1000, 3),
            _cell(e.get("cost_usd"), e.get("cost_usd_std"), 100, 2),
            pct(e["time_saving"]),
            pct(e["energy_saving"]),
            pct(e["rows_saving"]),
            _cell(e.get("optimizer_steps"), e.get("optimizer_steps_std"), 1, 0),
            "–" if e.get("protocol_saving") is None else f"{100 * e['protocol_saving']:.1f} %",
            *[_cell(e.get(key), e.get(f"{key}_std"), 100, 1) for key in robust],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- replaying detectors on a logged run ------------------------------------------------------------


def steps_per_epoch_of(output_dir: str) -> tuple[int, float]:
    """(optimizer steps per epoch, epochs) of a finished run, from its ``trainer_state.json``."""
    with open(os.path.join(output_dir, "trainer_state.json"), encoding="utf-8") as fh:
        state = json.load(fh)
    max_steps, epochs = int(state["max_steps"]), float(state["num_train_epochs"])
    return max(1, round(max_steps / epochs)), epochs


def task_detector_kwargs(task: Task, arm: Arm) -> dict[str, Any] | None:
    """`build_detector` arguments of a detector arm with the task's detector settings (None: not a detector arm)."""
    import dataclasses
    from types import SimpleNamespace

    from ...arguments import CriticalPeriodArguments, detector_kwargs

    if arm.kind not in ("stability", "fukase", "detector"):
        return None
    defaults = {
        f.name: (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
        for f in dataclasses.fields(CriticalPeriodArguments)
        if f.name.startswith(("detector", "fukase"))
    }
    settings = {**defaults, **{k: v for k, v in task.args.items() if k in defaults}, **arm.recipe_args({})}
    return detector_kwargs(SimpleNamespace(**settings))


def replay_rows(config: StudyConfig, runs: Sequence[Run]) -> list[dict[str, Any]]:
    """For each finished ``full`` run: the step at which every detector arm of the study would have fired.

    Every detector arm listed by any task is replayed on every task, so depth variants that only
    run ``full`` get the same detectors. Where the detector arm also ran, its real switch step
    is given beside the replayed one (they agree when training is deterministic).
    """
    detector_arms: dict[str, Arm] = {}
    for task in config.tasks:
        for arm in task.arms:
            if arm.kind in ("stability", "fukase", "detector"):
                detector_arms.setdefault(arm.name, arm)
    from ...io.dynamics_log import read_dynamics
    from ...names import DYNAMICS_FILE

    done = {run.key: run for run in runs if run_status(run) == "done"}
    committed = committed_rows(config)
    rows = []
    for run in runs:
        if run.arm.kind != "full" or (run.key not in done and run.key not in committed):
            continue
        task = _task(config, run.task)
        try:
            if run.key in done:
                records = read_dynamics(os.path.join(run.output_dir, DYNAMICS_FILE))
                steps_per_epoch, epochs = steps_per_epoch_of(run.output_dir)
            else:
                # A fresh clone: the run's outputs are gone, its exported log and its committed row are not.
                records = read_dynamics(exported_dynamics_path(os.path.join(config.results_dir or config.output_dir, "dynamics"), run))
                row = committed[run.key]
                epochs = float(row["num_epochs"])
                steps_per_epoch = max(1, round(int(row["optimizer_steps"]) / epochs))
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            continue
        for name, arm in detector_arms.items():
            kwargs = task_detector_kwargs(task, arm)
            kwargs_name = kwargs.pop("name")
            try:
                step = replay_detector(records, steps_per_epoch, epochs, kwargs_name, **kwargs)
            except ValueError as err:  # e.g. a rule whose plan does not fit this run's length
                rows.append({"task": run.task, "seed": run.seed, "detector": name, "error": str(err)})
                continue
            key = f"{run.task}/{name}/seed{run.seed}"
            real, real_step = done.get(key), None
            if real is not None:
                with open(real.results_path, encoding="utf-8") as fh:
                    period = json.load(fh).get("critical_period") or {}
                real_step = period.get("switch_step")
            elif key in committed:
                real_step = committed[key].get("switch_step")
            rows.append(
                {
                    "task": run.task,
                    "seed": run.seed,
                    "detector": name,
                    "replayed_step": step,
                    "replayed_epoch": None if step is None else step / steps_per_epoch,
                    "run_switch_step": real_step,
                    "steps_per_epoch": steps_per_epoch,
                    "epochs": epochs,
                }
            )
    return rows


def oracle_point(summary: Sequence[Mapping[str, Any]], task: str, tolerance_pp: float = 0.3) -> dict[str, Any] | None:
    """The earliest fixed switch whose mean accuracy is within ``tolerance_pp`` of the full arm's mean."""
    full = next((e for e in summary if e["task"] == task and e["arm"] == "full"), None)
    if full is None or full.get("accuracy") is None:
        return None
    fixed = sorted(
        (
            e
            for e in summary
            if e["task"] == task and e["arm"].startswith("fixed@") and e.get("switch_epoch") is not None
        ),
        key=lambda e: e["switch_epoch"],
    )
    for entry in fixed:
        if entry["accuracy"] is not None and 100 * (full["accuracy"] - entry["accuracy"]) <= tolerance_pp:
            return {"arm": entry["arm"], "switch_epoch": entry["switch_epoch"], "accuracy": entry["accuracy"]}
    return None


# ---- the oracle sweep in fractions of the run ---------------------------------------------------------


def fraction_points(summary: Sequence[Mapping[str, Any]], task: str, mode: str) -> list[tuple[float, Mapping[str, Any]]]:
    """(switch point as a fraction of the run, summary entry) of one meaning of k = 1, from 0 to 1.

    The ends are shared arms: 0 is ``none`` for ``clean`` and ``fixed@0%:augmented`` (one augmented
    copy throughout) for ``augmented``; 1 is ``full`` for both.
    """
    if mode not in AFTER_SWITCH_MODES:
        raise ValueError(f"`mode` must be one of {list(AFTER_SWITCH_MODES)}, got {mode!r}")
    points = []
    for entry in summary:
        if entry["task"] != task or entry.get("accuracy") is None:
            continue
        if entry["arm"] == "full":
            points.append((1.0, entry))
        elif entry["arm"] == "none" and mode == "clean":
            points.append((0.0, entry))
        else:
            try:
                arm = parse_arm(entry["arm"])
            except ValueError:
                continue
            if arm.fraction is not None and arm.after_switch == mode:
                points.append((arm.fraction, entry))
    return sorted(points, key=lambda point: point[0])


def earliest_no_loss_fraction(
    points: Sequence[tuple[float, Mapping[str, Any]]], tolerance_pp: float = 0.3
) -> float | None:
    """The smallest switch fraction (below 1) whose mean accuracy is within ``tolerance_pp`` of ``full``'s."""
    full = next((entry for fraction, entry in points if fraction == 1.0), None)
    if full is None:
        return None
    for fraction, entry in points:
        if fraction < 1.0 and 100 * (full["accuracy"] - entry["accuracy"]) <= tolerance_pp:
            return fraction
    return None


def best_fraction(points: Sequence[tuple[float, Mapping[str, Any]]]) -> tuple[float, Mapping[str, Any]] | None:
    """The switch point (0 and 1 included) with the highest mean accuracy, and its summary entry."""
    return max(points, key=lambda point: point[1]["accuracy"], default=None)


def augmentation_gain(rows: Sequence[Mapping[str, Any]], task: str) -> dict[str, Any] | None:
    """``full`` − ``none`` accuracy of one task (pp), per seed and on average, with two t-tests' p-values.

    Returns None unless both arms have at least two finished seeds. ``per_seed`` pairs the arms by seed
    (a seed draws the same training subset for both); ``welch_p`` is the unpaired test (unequal
    variances), ``paired_p`` the test on the seeds both arms finished (None with fewer than two).
    """
    from scipy import stats

    accuracy = {arm: {} for arm in ("none", "full")}
    for row in rows:
        if row.get("task") == task and row.get("status") == "done" and row.get("arm") in accuracy:
            if row.get("accuracy") is not None:
                accuracy[row["arm"]][int(row["seed"])] = 100 * float(row["accuracy"])
    none, full = accuracy["none"], accuracy["full"]
    if len(none) < 2 or len(full) < 2:
        return None
    seeds = sorted(set(none) & set(full))
    per_seed = {seed: full[seed] - none[seed] for seed in seeds}
    gain = {
        "gain_pp": statistics.fmean(full.values()) - statistics.fmean(none.values()),
        "none_std": statistics.stdev(none.values()),
        "full_std": statistics.stdev(full.values()),
        "per_seed": per_seed,
        "welch_p": float(stats.ttest_ind(list(full.values()), list(none.values()), equal_var=False).pvalue),
        "paired_p": None,
    }
    if len(seeds) >= 2:
        gain["paired_p"] = float(stats.ttest_rel([full[s] for s in seeds], [none[s] for s in seeds]).pvalue)
    return gain


def near_best_fraction(points: Sequence[tuple[float, Mapping[str, Any]]]) -> float | None:
    """The earliest switch point whose mean accuracy reaches the best point's mean minus its std over seeds.

    Unlike `earliest_no_loss_fraction` it does not need ``full`` to be the best arm: where augmenting to the
    end loses (``full`` below an earlier switch), "within 0.3 pp of full" is met at once and says nothing.
    """
    best = best_fraction(points)
    if best is None:
        return None
    floor = best[1]["accuracy"] - (best[1].get("accuracy_std") or 0.0)
    return next(fraction for fraction, entry in points if entry["accuracy"] >= floor)


def _percent(fraction: float | None) -> str:
    return "–" if fraction is None else f"{100 * fraction:g} %"


def depth_oracle_table(summary: Sequence[Mapping[str, Any]], members: Sequence[tuple[str, int]], mode: str) -> str:
    """One meaning of k = 1: accuracy (mean ± std) per switch point (rows) and depth (columns).

    ``members``: (task, number of layers). Below the points, each depth's best point, its earliest point
    within one std of the best (`near_best_fraction`), its earliest within 0.3 pp of ``full`` and the
    best point's gain over never augmenting (``none`` for ``clean``, one augmented copy throughout for
    ``augmented``: the 0 % point).
    """
    ordered = sorted(members, key=lambda member: member[1])
    columns = {task: dict(fraction_points(summary, task, mode)) for task, _ in ordered}
    fractions = sorted({f for points in columns.values() for f in points})
    if not any(fraction < 1.0 for fraction in fractions):
        return ""  # no sweep of this meaning: only the shared end, ``full``

    lines = [
        "| switch at | " + " | ".join(f"{depth} layers: accuracy %" for _, depth in ordered) + " |",
        "|---|" + "---|" * len(ordered),
    ]
    for fraction in fractions:
        cells = []
        for task, _ in ordered:
            entry = columns[task].get(fraction)
            cells.append("–" if entry is None else _cell(entry["accuracy"], entry["accuracy_std"], 100, 2))
        lines.append(f"| {100 * fraction:g} % | " + " | ".join(cells) + " |")
    best, near, no_loss, gain = [], [], [], []
    for task, _ in ordered:
        points = list(columns[task].items())  # fraction_points are sorted
        top = best_fraction(points)
        best.append("–" if top is None else f"{_percent(top[0])} ({100 * top[1]['accuracy']:.2f})")
        near.append(_percent(near_best_fraction(points)))
        no_loss.append(_percent(earliest_no_loss_fraction(points)))
        start = columns[task].get(0.0)
        gain.append("–" if top is None or start is None else f"{100 * (top[1]['accuracy'] - start['accuracy']):+.2f}")
    lines += [
        "| best point | " + " | ".join(best) + " |",
        "| earliest within one std of the best | " + " | ".join(near) + " |",
        "| earliest within 0.3 pp of full | " + " | ".join(no_loss) + " |",
        "| best − 0 % (pp) | " + " | ".join(gain) + " |",
    ]
    return "\n".join(lines)


def oracle_switch_table(summary: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> str:
    """One row per task with an oracle sweep: where each meaning of k = 1 is best, and how early it gets there.

    Per meaning: the best switch point and its accuracy, the earliest point within one std of the best
    (`near_best_fraction`) and the earliest within 0.3 pp of ``full`` (`earliest_no_loss_fraction`).
    A task whose meaning has no point before ``full`` shows dashes for it; a task with neither is left out.
    """

    lines = []
    for task in tasks:
        cells, swept = [], False
        for mode in AFTER_SWITCH_MODES:
            points = fraction_points(summary, task, mode)
            if not any(fraction < 1.0 for fraction, _ in points) or len(points) < 3:
                cells += ["–", "–", "–"]
                continue
            swept = True
            top = best_fraction(points)
            cells += [
                f"{_percent(top[0])} ({100 * top[1]['accuracy']:.2f})",
                _percent(near_best_fraction(points)),
                _percent(earliest_no_loss_fraction(points)),
            ]
        if swept:
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    header = [
        "| task | "
        + " | ".join(
            f"k=1 {mode}: {what}"
            for mode in AFTER_SWITCH_MODES
            for what in ("best point (accuracy %)", "earliest within one std of the best", "earliest within 0.3 pp of full")
        )
        + " |",
        "|---|" + "---|" * 3 * len(AFTER_SWITCH_MODES),
    ]
    return "\n".join(header + lines)


def fraction_table(summary: Sequence[Mapping[str, Any]], task: str) -> str:
    """Accuracy (mean ± std) and train time per switch point, both meanings of k = 1 side by side."""
    columns = {mode: dict(fraction_points(summary, task, mode)) for mode in AFTER_SWITCH_MODES}
    fractions = sorted({f for points in columns.values() for f in points})
    if not fractions:
        return ""
    lines = [
        "| switch at | clean: accuracy % | clean: train s | augmented: accuracy % | augmented: train s "
        "| training rows vs full | seeds (clean/augmented) |",
        "|---|---|---|---|---|---|---|",
    ]
    for fraction in fractions:
        cells = [f"{100 * fraction:g} %"]
        seeds, rows = [], None
        for mode in AFTER_SWITCH_MODES:
            entry = columns[mode].get(fraction)
            if entry is None:
                cells += ["–", "–"]
                seeds.append("–")
                continue
            seeds.append(str(entry["seeds"]))
            rows = rows if rows is not None else entry.get("rows_saving")
            cells += [
                _cell(entry["accuracy"], entry["accuracy_std"], 100, 2),
                _cell(entry["train_seconds"], entry["train_seconds_std"], 1, 1),
            ]
        # Rows are exact (the same rows per step for both meanings of k = 1); times are noisy on a shared CPU.
        cells.append("–" if rows is None else f"{100 * (1 - rows):.0f} %")
        lines.append("| " + " | ".join([*cells, "/".join(seeds)]) + " |")
    return "\n".join(lines)
