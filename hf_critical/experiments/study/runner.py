"""Running the planned runs, each in its own process, resumably; the validation baseline; the time left.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...detectors import parse_span
from .config import (
    ARGS_FILE,
    FAILURE_FILE,
    LOG_FILE,
    MODEL_FILE_PATTERNS,
    WALL_FILE,
    Run,
    StudyConfig,
    _task,
    _wall_seconds,
    run_status,
)
from .rows import committed_rows

# ---- validation baseline ----------------------------------------------------------------------------


def eval_history(output_dir: str, metric: str = "eval_accuracy") -> list[tuple[int, float, float]]:
    """(step, epoch, value) of every evaluation during training, from the run's ``trainer_state.json``."""
    path = os.path.join(output_dir, "trainer_state.json")
    with open(path, encoding="utf-8") as fh:
        state = json.load(fh)
    return [
        (int(entry["step"]), float(entry.get("epoch", 0.0)), float(entry[metric]))
        for entry in state.get("log_history", [])
        if metric in entry and "step" in entry
    ]


def validation_switch_step(
    history: Sequence[tuple[int, float, float]], patience: int, min_delta: float = 0.0
) -> int | None:
    """The step of the evaluation after which ``patience`` evaluations in a row brought no improvement.

    Early stopping's rule (best value so far must rise by more than ``min_delta``) used to end the
    critical period: it fires at the evaluation where the patience ran out. None if it never does.
    """
    best, waited = -math.inf, 0
    for step, _epoch, value in history:
        if value > best + min_delta:
            best, waited = value, 0
        else:
            waited += 1
            if waited >= patience:
                return step
    return None


# ---- running ----------------------------------------------------------------------------------------


def recipe_path(recipe: str) -> str:
    """``recipes/<recipe>.py`` next to the package (a source checkout)."""
    path = Path(__file__).resolve().parents[3] / "recipes" / f"{recipe}.py"  # hf_critical/experiments/study/ -> the checkout
    if not path.is_file():
        raise FileNotFoundError(f"recipe {recipe!r} not found at {path}: the study runs from a source checkout")
    return str(path)




def execute(
    config: StudyConfig,
    runs: Sequence[Run],
    *,
    retry_failed: bool = True,
    timeout: float | None = None,
    jobs: int = 1,
    echo: Any = print,
) -> dict[str, str]:
    """Run every pending run, each in its own process, ``jobs`` at a time; returns key -> status.

    Runs start in the planned order. A ``validation`` run waits for the ``full`` run of its seed
    (whose evaluations it reads) when that one is still running.
    """
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"`jobs` must be an integer >= 1, got {jobs!r}")
    finished = {run.key: threading.Event() for run in runs}
    committed = committed_rows(config)
    statuses: dict[str, str] = {}
    # A committed run that keeps its model (a pretraining) is rerun where its model is missing only
    # if something else is left to run here, which may read it: otherwise nothing needs the model.
    pending = {run.key for run in runs if run_status(run) != "done" and run.key not in committed}

    def one(index: int, run: Run) -> None:
        prefix = f"[{index}/{len(runs)}]"
        others_pending = bool(pending - {run.key})
        try:
            statuses[run.key] = _run_or_skip(
                config, run, retry_failed, timeout, prefix, finished, echo, committed, others_pending
            )
        finally:
            finished[run.key].set()

    if jobs == 1:
        for index, run in enumerate(runs, start=1):
            one(index, run)
    else:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
            for future in [pool.submit(one, index, run) for index, run in enumerate(runs, start=1)]:
                future.result()
    return {run.key: statuses[run.key] for run in runs}


def _run_or_skip(
    config: StudyConfig,
    run: Run,
    retry_failed: bool,
    timeout: float | None,
    prefix: str,
    finished: Mapping[str, threading.Event],
    echo: Any,
    committed: Mapping[str, Any] | None = None,
    others_pending: bool = True,
) -> str:
    status = run_status(run)
    if status == "done" or (status == "failed" and not retry_failed):
        echo(f"{prefix} {run.key}: {status}, skipped")
        return status
    keep = config.keep_models or _task(config, run.task).keep_models
    if run.key in (committed or {}):
        if not (keep and not _has_model_files(run.output_dir) and others_pending):
            echo(f"{prefix} {run.key}: done (its row is in the committed runs.csv), skipped")
            return "done"
        # Its row is committed but the model it keeps for later runs (a pretraining) is not on this machine.
        echo(f"{prefix} {run.key}: its row is in the committed runs.csv but its kept model is not here; rerunning")
    args = dict(run.args)
    if run.arm.kind == "validation":
        full_key = f"{run.task}/full/seed{run.seed}"
        if full_key in finished:
            finished[full_key].wait()
        full_dir = os.path.join(config.output_dir, "runs", run.task, "full", f"seed{run.seed}")
        try:
            history = eval_history(full_dir, _task(config, run.task).metric)
        except FileNotFoundError:
            return _fail(run, None, "the 'full' arm of this seed has no trainer_state.json", echo)
        step = validation_switch_step(history, config.validation_patience, config.validation_min_delta)
        if step is None:
            args["detector"] = "never"  # the rule never fired: the same run as 'full'
        else:
            args["detector_switch_step"] = step
    env = dict(os.environ)
    if config.threads is not None:
        env.update(OMP_NUM_THREADS=str(config.threads), MKL_NUM_THREADS=str(config.threads))
    return _execute_one(run, args, keep, timeout, env, prefix, echo)




def _execute_one(
    run: Run,
    args: dict[str, Any],
    keep_models: bool,
    timeout: float | None,
    env: Mapping[str, str],
    prefix: str,
    echo: Any,
) -> str:
    os.makedirs(run.output_dir, exist_ok=True)
    failure = os.path.join(run.output_dir, FAILURE_FILE)
    if os.path.exists(failure):
        os.remove(failure)
    args_path = os.path.join(run.output_dir, ARGS_FILE)
    with open(args_path, "w", encoding="utf-8") as fh:
        json.dump(args, fh, indent=1)
    log_path = os.path.join(run.output_dir, LOG_FILE)
    echo(f"{prefix} {run.key}: running")
    start = time.perf_counter()
    try:
        with open(log_path, "w", encoding="utf-8") as log:
            proc = subprocess.run(
                [sys.executable, recipe_path(run.recipe), args_path],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                env=dict(env),
                check=False,
            )
        returncode = proc.returncode
    except subprocess.TimeoutExpired:
        returncode = None
    seconds = time.perf_counter() - start
    with open(os.path.join(run.output_dir, WALL_FILE), "w", encoding="utf-8") as fh:
        json.dump({"wall_seconds": seconds, "returncode": returncode}, fh)
    if returncode == 0 and os.path.isfile(run.results_path):
        if not keep_models:
            _drop_model_files(run.output_dir)
        echo(f"{prefix} {run.key}: done in {seconds:.0f} s")
        return "done"
    reason = f"timed out after {timeout} s" if returncode is None else f"exit code {returncode}"
    return _fail(run, returncode, reason, echo, log_path)


def _fail(run: Run, returncode: int | None, reason: str, echo: Any, log_path: str | None = None) -> str:
    os.makedirs(run.output_dir, exist_ok=True)
    tail = ""
    if log_path is not None and os.path.isfile(log_path):
        with open(log_path, encoding="utf-8", errors="replace") as fh:
            tail = "".join(fh.readlines()[-40:])
    with open(os.path.join(run.output_dir, FAILURE_FILE), "w", encoding="utf-8") as fh:
        json.dump({"run": run.key, "returncode": returncode, "reason": reason, "log_tail": tail}, fh, indent=1)
    echo(f"   {run.key}: FAILED ({reason}); see {log_path or run.output_dir}")
    return "failed"


def _has_model_files(output_dir: str) -> bool:
    root = Path(output_dir)
    return root.is_dir() and any(next(root.rglob(pattern), None) is not None for pattern in MODEL_FILE_PATTERNS)


def _drop_model_files(output_dir: str) -> None:
    root = Path(output_dir)
    for pattern in MODEL_FILE_PATTERNS:
        for path in root.rglob(pattern):
            path.unlink()
    for checkpoint in root.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)


# ---- estimating what is left ------------------------------------------------------------------------


def _run_fraction(run: Run) -> float | None:
    """Where the run switches, as a fraction of its epochs (0: one copy throughout, 1: k copies throughout)."""
    if run.arm.kind == "none":
        return 0.0
    if run.arm.kind == "full":
        return 1.0
    if run.arm.kind == "fixed":
        if run.arm.fraction is not None:
            return run.arm.fraction
        epochs = run.args.get("num_train_epochs")
        span = parse_span(run.arm.span, "fixed switch", allow_zero=False)
        if span.in_epochs and isinstance(epochs, (int, float)) and epochs > 0:
            return min(1.0, span.amount / float(epochs))
    return None


def estimate_wall_seconds(
    runs: Sequence[Run], committed: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, float | None]:
    """An estimate of each run's wall time from the finished runs' measured ones (key -> seconds; None: no basis).

    A finished run gives its own time (from its output folder, else from its ``wall_seconds`` in the
    ``committed`` rows, `committed_rows`: a fresh clone has no outputs); a pending one the mean of its
    (task, arm) over finished seeds, else a line between the task's one-copy arms (``none``,
    ``fixed@0%:augmented``) and its ``full`` arm at the run's switch fraction (a step after the switch
    costs about a one-copy step).
    """
    measured = {run.key: _wall_seconds(run.output_dir) for run in runs if run_status(run) == "done"}
    for run in runs:
        row = (committed or {}).get(run.key)
        if measured.get(run.key) is None and row is not None and row.get("wall_seconds") not in (None, ""):
            measured[run.key] = float(row["wall_seconds"])
    by_arm: dict[tuple[str, str], list[float]] = {}
    for run in runs:
        if measured.get(run.key) is not None:
            by_arm.setdefault((run.task, run.arm.name), []).append(measured[run.key])
    ends: dict[str, dict[float, list[float]]] = {}
    for run in runs:
        fraction = _run_fraction(run)
        if measured.get(run.key) is not None and fraction in (0.0, 1.0):
            ends.setdefault(run.task, {}).setdefault(fraction, []).append(measured[run.key])
    estimates: dict[str, float | None] = {}
    for run in runs:
        if measured.get(run.key) is not None:
            estimates[run.key] = measured[run.key]
        elif (run.task, run.arm.name) in by_arm:
            estimates[run.key] = statistics.fmean(by_arm[(run.task, run.arm.name)])
        else:
            fraction, task_ends = _run_fraction(run), ends.get(run.task, {})
            if fraction is None or 0.0 not in task_ends or 1.0 not in task_ends:
                estimates[run.key] = None
            else:
                one, full = statistics.fmean(task_ends[0.0]), statistics.fmean(task_ends[1.0])
                estimates[run.key] = one + fraction * (full - one)
    return estimates
