#!/usr/bin/env python
"""Run a study: a grid of recipe runs (tasks x arms x seeds), then its CSV, tables and plots.

    python recipes/run_study.py recipes/configs/study_cpu.yaml            # run what is missing, then report
    python recipes/run_study.py recipes/configs/study_cpu.yaml --tasks digits --dry_run
    python recipes/run_study.py recipes/configs/study_cpu.yaml --report_only
    python recipes/run_study.py recipes/configs/study_testbeds.yaml --tasks digits_lr1e-3 --arms none full --seeds 0

Runs whose results already exist are skipped, so an interrupted study resumes where it stopped; a
failed run leaves ``study_failure.json`` in its folder and the others go on (it is retried on the
next invocation unless ``--skip_failed``). Writes ``runs.csv``, ``replay.csv``, ``summary.md``,
``summary.json`` and ``plots/`` into the study's ``output_dir``. See ``hf_critical.study`` for the
file format and the arms.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from hf_critical.experiments import study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the study file (.yaml or .json)")
    parser.add_argument("--tasks", nargs="+", help="run only these tasks (all by default)")
    parser.add_argument("--arms", nargs="+", help="run only these arms (all by default)")
    parser.add_argument("--seeds", nargs="+", type=int, help="run only these seeds (all by default)")
    parser.add_argument("--data_dir", help="replaces the file's data_dir (default ../shared/data)")
    parser.add_argument("--output_dir", help="replaces the file's output_dir")
    parser.add_argument("--dry_run", action="store_true", help="list the runs and their status, run nothing")
    parser.add_argument("--report_only", action="store_true", help="run nothing, write the report from what exists")
    parser.add_argument("--skip_failed", action="store_true", help="do not retry runs that failed before")
    parser.add_argument("--timeout", type=float, default=None, help="seconds after which a run is stopped and failed")
    parser.add_argument(
        "--jobs", type=int, default=1, help="runs side by side (each with the study's `threads`); default 1"
    )
    args = parser.parse_args(argv)

    config = study.load_config(args.config, {"data_dir": args.data_dir, "output_dir": args.output_dir})
    if not os.path.isdir(config.data_dir):
        needs_data = any("{data_dir}" in repr(task.args) + repr(task.clean) for task in config.tasks)
        if needs_data:
            print(
                f"data_dir {config.data_dir!r} does not exist: give --data_dir (the GLUE TSVs and CIFAR-10 npz files)"
            )
            return 2
    runs = study.plan_runs(config, args.tasks, arms=args.arms, seeds=args.seeds)
    if args.dry_run:
        committed = study.committed_rows(config)
        estimates = study.estimate_wall_seconds(study.plan_runs(config), committed)
        status_of = {run.key: "done" if run.key in committed else study.run_status(run) for run in runs}
        pending_seconds, unknown, done_seconds = 0.0, 0, 0.0
        done_by_task: dict[str, float] = {}
        for run in runs:
            status, estimate = status_of[run.key], estimates.get(run.key)
            shown = "" if estimate is None else f", {estimate:.0f} s" + (" measured" if status == "done" else " estimated")
            print(f"{status:8s} {run.key}  ({run.recipe}, {run.output_dir}{shown})")
            if status != "done":
                pending_seconds += estimate or 0.0
                unknown += estimate is None
            elif estimate is not None:
                done_seconds += estimate
                done_by_task[run.task] = done_by_task.get(run.task, 0.0) + estimate
        for task, seconds in done_by_task.items():
            print(f"measured {task}: {seconds / 3600:.2f} h of run wall time")
        pending = sum(status != "done" for status in status_of.values())
        print(
            f"{len(runs)} runs, {pending} to run: about {pending_seconds / 3600:.1f} h with one job"
            + (f" for those with a basis ({unknown} without one: no finished none/full run of their task)" if unknown else "")
        )
        print(
            f"the {len(runs) - pending} finished runs measured {done_seconds / 3600:.1f} h of wall time in all, "
            f"about {done_seconds / 3600 / max(args.jobs, 1):.1f} h run {args.jobs} at a time (--jobs), if each keeps its time"
        )
        return 0
    start = time.perf_counter()
    if not args.report_only:
        statuses = study.execute(config, runs, retry_failed=not args.skip_failed, timeout=args.timeout, jobs=args.jobs)
        failed = [key for key, status in statuses.items() if status == "failed"]
        print(
            f"study: {len(statuses) - len(failed)} runs done, {len(failed)} failed, {time.perf_counter() - start:.0f} s"
        )
    paths = study.report(config, study.plan_runs(config))
    for name, path in paths.items():
        print(f"{name:8s}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
