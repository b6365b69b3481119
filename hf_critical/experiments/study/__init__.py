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

Where things are: `config` (arms, tasks, the config file, the planned runs), `runner` (running,
the validation baseline, the time left), `rows` (one row per run, the CSV), `summary` (per-arm
means, tables, detector replays, the oracle sweep), `plots`, and `report` (all of it, written out).
The old path `hf_critical.study` is this package, for one release.
"""

from __future__ import annotations

# Names the flat hf_critical.study module exposed through its imports, kept for one release.
from ...arguments import AFTER_SWITCH_MODES, DETECTOR_NAMES, METRIC_NAMES
from ...detectors import detector_values, learning_rates_from_records, parse_span, replay_detector
from ..results import RESULTS_FILE
from ..savings import DEFAULT_PRICE_PER_ACCELERATOR_HOUR, DEFAULT_PRICE_PER_KWH, estimate_cost
from .config import (
    ARGS_FILE,
    DETECTOR_ARMS,
    FAILURE_FILE,
    LOG_FILE,
    MODEL_FILE_PATTERNS,
    RECIPES,
    WALL_FILE,
    Arm,
    Run,
    StudyConfig,
    Task,
    config_from_dict,
    exported_dynamics_path,
    load_config,
    parse_arm,
    plan_runs,
)
from .plots import plot_arm_curves, plot_depth, plot_depth_oracle, plot_fraction_oracle, plot_metric_curves, plot_task
from .report import export_dynamics, read_dynamics_file, report
from .rows import (
    COLUMNS,
    collect,
    committed_rows,
    in_training_eval_seconds,
    money_columns,
    protocol_saving,
    read_csv_rows,
    result_row,
    write_csv,
)
from .runner import estimate_wall_seconds, eval_history, execute, recipe_path, run_status, validation_switch_step
from .summary import (
    augmentation_gain,
    best_fraction,
    depth_oracle_table,
    earliest_no_loss_fraction,
    fraction_points,
    fraction_table,
    markdown_table,
    near_best_fraction,
    oracle_point,
    oracle_switch_table,
    replay_rows,
    steps_per_epoch_of,
    summarize,
    task_detector_kwargs,
)

__all__ = [
    "AFTER_SWITCH_MODES",
    "DEFAULT_PRICE_PER_ACCELERATOR_HOUR",
    "DEFAULT_PRICE_PER_KWH",
    "DETECTOR_NAMES",
    "METRIC_NAMES",
    "RESULTS_FILE",
    "estimate_cost",
    "parse_span",
    "ARGS_FILE",
    "Arm",
    "COLUMNS",
    "DETECTOR_ARMS",
    "FAILURE_FILE",
    "LOG_FILE",
    "MODEL_FILE_PATTERNS",
    "RECIPES",
    "Run",
    "StudyConfig",
    "Task",
    "WALL_FILE",
    "augmentation_gain",
    "best_fraction",
    "depth_oracle_table",
    "collect",
    "committed_rows",
    "exported_dynamics_path",
    "config_from_dict",
    "detector_values",
    "earliest_no_loss_fraction",
    "estimate_wall_seconds",
    "eval_history",
    "execute",
    "export_dynamics",
    "fraction_points",
    "fraction_table",
    "in_training_eval_seconds",
    "learning_rates_from_records",
    "load_config",
    "markdown_table",
    "near_best_fraction",
    "money_columns",
    "oracle_point",
    "oracle_switch_table",
    "parse_arm",
    "plan_runs",
    "plot_arm_curves",
    "plot_depth",
    "plot_depth_oracle",
    "plot_fraction_oracle",
    "plot_metric_curves",
    "plot_task",
    "protocol_saving",
    "read_csv_rows",
    "read_dynamics_file",
    "recipe_path",
    "replay_detector",
    "replay_rows",
    "report",
    "result_row",
    "run_status",
    "steps_per_epoch_of",
    "summarize",
    "task_detector_kwargs",
    "validation_switch_step",
    "write_csv",
]
