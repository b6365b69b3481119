"""Collecting: one row per finished run (accuracy, time, energy, money, savings, robustness), and the CSV.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ..savings import estimate_cost
from .config import Run, StudyConfig, _task, _wall_seconds, run_status

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


def _cell_value(text: str) -> Any:
    """A CSV cell back as the value `write_csv` wrote: None, a bool, an int, a float or the string."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def read_csv_rows(path: str) -> list[dict[str, Any]]:
    """The rows of a CSV written by `write_csv`, with the values parsed back ([] if there is no file)."""
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8", newline="") as fh:
        return [{key: _cell_value(value) for key, value in row.items()} for row in csv.DictReader(fh)]


def committed_rows(config: StudyConfig) -> dict[str, dict[str, Any]]:
    """The finished runs' rows of the study's committed ``runs.csv``, by run key (``task/arm/seed<s>``).

    A run whose outputs are gone (a fresh clone: ``output_dir`` is not committed) but whose row was
    committed is finished: `execute` skips it and `collect` keeps its row, so no finished run is redone
    or dropped from the tables.
    """
    if not config.results_dir:
        return {}
    rows = read_csv_rows(os.path.join(config.results_dir, "runs.csv"))
    return {f"{row['task']}/{row['arm']}/seed{row['seed']}": row for row in rows if row.get("status") == "done"}


def collect(config: StudyConfig, runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One row per run (finished or not) with the numbers its results file (or its committed row) holds."""
    committed = committed_rows(config)
    rows = []
    for run in runs:
        row: dict[str, Any] = {"task": run.task, "arm": run.arm.name, "seed": run.seed, "status": run_status(run)}
        if row["status"] != "done" and run.key in committed:
            rows.append(dict(committed[run.key]))
            continue
        if row["status"] == "done":
            with open(run.results_path, encoding="utf-8") as fh:
                results = json.load(fh)
            row.update(result_row(results, _task(config, run.task).metric, run.output_dir))
            row.update(money_columns(row, config.price_per_accelerator_hour, config.price_per_kwh))
            row["wall_seconds"] = _wall_seconds(run.output_dir)
        rows.append(row)
    return rows




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
        from ..robustness import robustness_columns
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
