"""The whole report of a study (tables, plots, the full arms' metric logs), written into its results folder.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

from ...arguments import AFTER_SWITCH_MODES
from .config import Run, StudyConfig, exported_dynamics_path, run_status
from .plots import plot_arm_curves, plot_depth, plot_depth_oracle, plot_fraction_oracle, plot_metric_curves, plot_task
from .rows import collect, write_csv
from .summary import (
    augmentation_gain,
    best_fraction,
    depth_oracle_table,
    earliest_no_loss_fraction,
    fraction_points,
    fraction_table,
    markdown_table,
    oracle_point,
    oracle_switch_table,
    replay_rows,
    summarize,
)

# ---- the full arms' metric logs ---------------------------------------------------------------------


def export_dynamics(runs: Sequence[Run], folder: str) -> list[str]:
    """Gzip every finished ``full`` run's ``dynamics.jsonl`` to ``<folder>/<task>/seed<s>.jsonl.gz``.

    Before its switch a detector's run is the full run, so these logs let any detector be replayed
    on every setting later (`replay_detector` on `read_dynamics_file`) without training again. The
    gzip header carries no time stamp: an unchanged log gives the same bytes.
    """
    import gzip

    from ...names import DYNAMICS_FILE

    written = []
    for run in runs:
        source = os.path.join(run.output_dir, DYNAMICS_FILE)
        if run.arm.kind != "full" or run_status(run) != "done" or not os.path.isfile(source):
            continue
        target = exported_dynamics_path(folder, run)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(source, "rb") as src, open(target, "wb") as raw, gzip.GzipFile(
            fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename=""
        ) as dst:
            shutil.copyfileobj(src, dst)
        written.append(target)
    return written


def read_dynamics_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``dynamics.jsonl`` file, gzipped (``.gz``, as `export_dynamics` writes) or not."""
    from ...io.dynamics_log import read_dynamics

    return read_dynamics(path)


# ---- the whole report -------------------------------------------------------------------------------


def report(config: StudyConfig, runs: Sequence[Run]) -> dict[str, str]:
    """Write ``runs.csv``, ``replay.csv``, ``summary.md`` and the plots into the study's results folder."""
    out = config.results_dir or config.output_dir
    os.makedirs(out, exist_ok=True)
    rows = collect(config, runs)
    summary = summarize(rows)
    replayed = replay_rows(config, runs)
    paths = {"runs": write_csv(rows, os.path.join(out, "runs.csv"))}
    if replayed:
        first = ("task", "seed", "detector", "replayed_step", "replayed_epoch", "run_switch_step")
        paths["replay"] = write_csv(replayed, os.path.join(out, "replay.csv"), first)
    lines = [f"# Study summary ({len([r for r in rows if r['status'] == 'done'])} of {len(rows)} runs done)", ""]
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        lines += [
            "Failed runs (see their study_failure.json): "
            + ", ".join(f"{r['task']}/{r['arm']}/seed{r['seed']}" for r in failed),
            "",
        ]
    for task in config.tasks:
        if not any(e["task"] == task.name for e in summary):
            continue
        lines += [f"## {task.name}", "", markdown_table(summary, task.name), ""]
        gain = augmentation_gain(rows, task.name)
        if gain is not None:
            paired = "–" if gain["paired_p"] is None else f"{gain['paired_p']:.2f}"
            lines += [
                f"Augmentation gain (full − none): {gain['gain_pp']:+.2f} pp (stds {gain['none_std']:.2f} / "
                f"{gain['full_std']:.2f}); per seed "
                + ", ".join(f"{seed}: {d:+.2f}" for seed, d in gain["per_seed"].items())
                + f"; Welch p {gain['welch_p']:.2f}, paired p {paired}.",
                "",
            ]
        # Only a task with arms at fractions of the run has a sweep (its `full` alone is not one).
        sweep = fraction_table(summary, task.name) if any(arm.fraction is not None for arm in task.arms) else ""
        if sweep:
            lines += ["Oracle sweep (switch point in % of the run; mean ± std over seeds):", "", sweep, ""]
            for mode in AFTER_SWITCH_MODES:
                points = fraction_points(summary, task.name, mode)
                earliest = earliest_no_loss_fraction(points)
                best = best_fraction(points)
                lines.append(
                    f"- k=1 {mode}: earliest switch within 0.3 pp of full: "
                    + ("none of the points" if earliest is None else f"{100 * earliest:g} % of the run")
                    + ("" if best is None else f"; best point: {100 * best[0]:g} % ({100 * best[1]['accuracy']:.2f} %)")
                )
            lines.append("")
            plot = plot_fraction_oracle(summary, task.name, os.path.join(out, "plots", f"{task.name}_fractions.png"))
            if plot:
                lines += [f"![{os.path.basename(plot)}](plots/{os.path.basename(plot)})", ""]
        oracle = oracle_point(summary, task.name) if not sweep else None
        if oracle is not None:
            lines += [
                f"Earliest fixed switch within 0.3 pp of full augmentation: {oracle['arm']} ({100 * oracle['accuracy']:.2f} %).",
                "",
            ]
        task_replay = [r for r in replayed if r["task"] == task.name and "replayed_step" in r]
        if task_replay:
            lines += [
                "Replayed on the full arm (fire epoch per seed; the detector arm's own switch step in brackets):",
                "",
            ]
            for name in sorted({r["detector"] for r in task_replay}):
                cells = [
                    f"seed {r['seed']}: "
                    + ("never" if r["replayed_step"] is None else f"{r['replayed_epoch']:.2f}")
                    + ("" if r["run_switch_step"] is None else f" [{r['run_switch_step']}]")
                    for r in task_replay
                    if r["detector"] == name
                ]
                lines.append(f"- {name}: " + "; ".join(cells))
            lines.append("")
        several_arms = sum(e["task"] == task.name for e in summary) > 1
        plots = plot_task(summary, task.name, os.path.join(out, "plots", task.name)) if several_arms else []
        for plot in plots:
            lines.append(f"![{os.path.basename(plot)}](plots/{os.path.basename(plot)})")
        full_run = next(
            (r for r in runs if r.task == task.name and r.arm.kind == "full" and run_status(r) == "done"), None
        )
        # The metric curves of one full run: from its outputs, else (a fresh clone) from its committed log.
        curve_run, records = full_run, None
        if full_run is None:
            logs = os.path.join(out, "dynamics")
            curve_run = next(
                (r for r in runs if r.task == task.name and r.arm.kind == "full"
                 and os.path.isfile(exported_dynamics_path(logs, r))),
                None,
            )
            records = None if curve_run is None else read_dynamics_file(exported_dynamics_path(logs, curve_run))
        if curve_run is not None:
            curve = plot_metric_curves(
                curve_run,
                [r for r in task_replay if r["seed"] == curve_run.seed],
                os.path.join(out, "plots", f"{task.name}_metrics.png"),
                records=records,
            )
            if curve:
                lines.append(f"![{os.path.basename(curve)}](plots/{os.path.basename(curve)})")
        if full_run is not None:
            seed_runs = [
                r for r in runs if r.task == task.name and r.seed == full_run.seed and run_status(r) == "done"
            ]
            # With an oracle sweep (15 arms) one panel per metric holds too many curves to read: skipped.
            arms_plot = (
                plot_arm_curves(seed_runs, os.path.join(out, "plots", f"{task.name}_arms.png"))
                if several_arms and not sweep
                else None
            )
            if arms_plot:
                lines.append(f"![{os.path.basename(arms_plot)}](plots/{os.path.basename(arms_plot)})")
        lines.append("")
    switch_table = oracle_switch_table(summary, [task.name for task in config.tasks])
    if switch_table:
        lines += [
            "## The oracle's switch point per task",
            "",
            "Each task's oracle sweep in one row (switch points in % of the run; 0 % is `none` for clean and one "
            "augmented copy throughout for augmented, 100 % is `full`): the ground truth a detector's fire point "
            "is scored against.",
            "",
            switch_table,
            "",
        ]
    if config.depth_groups:
        groups = {family: list(members.items()) for family, members in config.depth_groups.items()}
        depth_plot = plot_depth(replayed, groups, os.path.join(out, "plots", "depth.png"))
        if depth_plot:
            lines += ["## Depth", "", "![depth.png](plots/depth.png)", ""]
        for family, members in groups.items():
            tables = [(mode, depth_oracle_table(summary, members, mode)) for mode in AFTER_SWITCH_MODES]
            if not any(table for _, table in tables):
                continue
            lines += [f"## Depth against the oracle: {family}", ""]
            for mode, table in tables:
                if table:
                    lines += [f"k=1 {mode} after the switch (mean ± std over seeds):", "", table, ""]
            plot = plot_depth_oracle(summary, family, members, os.path.join(out, "plots", f"depth_oracle_{family}.png"))
            if plot:
                lines += [f"![{os.path.basename(plot)}](plots/{os.path.basename(plot)})", ""]
    export_dynamics(runs, os.path.join(out, "dynamics"))
    # The logs exported here and those committed by earlier parts (on a fresh clone, their outputs are gone).
    logs = [
        path
        for run in runs
        if run.arm.kind == "full" and os.path.isfile(path := exported_dynamics_path(os.path.join(out, "dynamics"), run))
    ]
    if logs:
        lines += [
            "## Metric logs",
            "",
            f"The {len(logs)} finished full runs' dynamics.jsonl (all metrics, every measured step), gzipped in "
            "dynamics/<task>/seed<s>.jsonl.gz: `hf_critical.experiments.study.read_dynamics_file` reads them and "
            "`replay_detector` replays any detector on them.",
            "",
        ]
    prices = (
        f"Money at {config.price_per_accelerator_hour:g} USD per accelerator-hour (the train time) plus "
        f"{config.price_per_kwh:g} USD per kWh (the estimated energy); sources of the defaults in hf_critical.experiments.savings."
    )
    lines.insert(2, prices)
    lines.insert(3, "")
    summary_path = os.path.join(out, "summary.md")
    with open(summary_path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    paths["summary"] = summary_path
    with open(os.path.join(out, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump({"arms": summary, "replay": replayed}, fh, indent=1)
    return paths
