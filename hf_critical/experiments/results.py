"""A recipe run's numbers as JSON: the `ReportingArguments`, `build_results`, `write_results`.

* `build_results` gathers one run's numbers into a dict with a **measured** part (train time,
  rows per step, energy from codecarbon) and a **derived** part (what keeping k copies to the end
  would have cost, computed from the measured steps; see `hf_critical.experiments.savings`).
* `write_results` writes it as JSON after `redact_secrets` (`hf_critical.experiments.redaction`):
  Hub tokens and anything that looks like a secret never reach a file.

Result JSON keys (``critical_period_results.json`` by default):

====================  ===========================================================================
key                   content
====================  ===========================================================================
``method``            how the measured and derived numbers come about
``run``               what the recipe ran (task, data set, model, sizes, the metric module used)
``critical_period``   the switch step / epoch, detector, copies, metric values; null if no switch
``k_schedule``        copies per sample over the optimizer steps: ``[{"from_step", "to_step", "copies"}]``
``measured``          train time, steps, training rows before/after the switch, step times, energy
``derived``           rows / time / energy without the switch (estimates say so), and costs
``energy``            codecarbon's report per phase (``train``, ``eval``), each saying what it
                      measured and what it estimated
``metrics``           the Trainer's train and eval metrics
``arguments``         every argument of the run, secrets redacted
``environment``       software versions, device, world size
``notes``             caveats that apply to these numbers
``robustness``        with ``--robustness_eval``: accuracy under adversarial attacks on a seeded subset
                      of the evaluation data (`hf_critical.experiments.robustness`, ``docs/robustness.md``)
====================  ===========================================================================
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import platform
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .energy import EnergyMeasurement, validate_country_iso_code
from .redaction import redact_secrets
from .savings import TrainingCostCallback, compute_savings, estimate_cost

__all__ = [
    "METHOD",
    "RECORDED_PACKAGES",
    "RESULTS_FILE",
    "ReportingArguments",
    "build_results",
    "jsonable",
    "k_schedule",
    "write_results",
]

RESULTS_FILE = "critical_period_results.json"
#: How the ``measured`` and ``derived`` numbers come about (stored in every results file).
METHOD = (
    "measured: counted or timed during this run (energy: codecarbon, see `energy` for what it measured and what "
    "it modelled). derived: computed from this run's measured steps for the same run with k copies to the end, "
    "not from a second run; rows are exact, '_estimate' values assume the median k-copy step time and the same "
    "average power."
)


@dataclass
class ReportingArguments:
    """How a recipe measures energy and prices the run (parsed by `HfArgumentParser` with the others)."""

    track_energy: bool = field(
        default=True,
        metadata={"help": "Track the energy of training and evaluation with codecarbon (main process only)."},
    )
    energy_country_iso_code: str = field(
        default="USA",
        metadata={"help": "ISO 3166-1 alpha-3 code of the country whose electricity mix gives the emissions."},
    )
    price_per_hour: float | None = field(
        default=None, metadata={"help": "Price of one hour of the machine, to turn train time into a cost."}
    )
    price_per_kwh: float | None = field(
        default=None, metadata={"help": "Price of one kWh of electricity, to turn energy into a cost."}
    )
    currency: str = field(default="USD", metadata={"help": "Label of the prices' currency in the outputs."})
    results_file: str = field(
        default=RESULTS_FILE, metadata={"help": "Name of the results JSON written into `output_dir`."}
    )

    def __post_init__(self):
        if not isinstance(self.track_energy, bool):
            raise ValueError(f"`track_energy` must be True or False, got {self.track_energy!r}")
        if self.track_energy:
            self.energy_country_iso_code = validate_country_iso_code(self.energy_country_iso_code)
        for name in ("price_per_hour", "price_per_kwh"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0):
                raise ValueError(f"`{name}` must be a number >= 0 (or unset), got {value!r}")
        if not isinstance(self.results_file, str) or os.path.basename(self.results_file) != self.results_file:
            raise ValueError(f"`results_file` must be a file name (no folder), got {self.results_file!r}")
        if not self.results_file.endswith(".json"):
            raise ValueError(f"`results_file` must end in .json, got {self.results_file!r}")


def jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None (no NaN in the file)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return jsonable(value.item())
    if hasattr(value, "value") and not callable(value.value):  # enums
        return jsonable(value.value)
    return str(value)


def write_results(path: str | os.PathLike, results: Mapping[str, Any], secrets: Iterable[str | None] = ()) -> str:
    """Write ``results`` as indented JSON, secrets redacted (see `redact_secrets`); returns the path."""
    path = os.fspath(path)
    clean = redact_secrets(jsonable(results), secrets)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(clean, f, indent=2, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _arguments_dict(arguments: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name, value in arguments.items():
        if hasattr(value, "to_dict"):  # TrainingArguments: enums made plain, *_token fields masked
            out[name] = value.to_dict()
        elif dataclasses.is_dataclass(value):
            out[name] = dataclasses.asdict(value)
        else:
            out[name] = value
    return out


#: Distributions whose versions every results file records (None when one is not installed).
RECORDED_PACKAGES = (
    "accelerate", "codecarbon", "datasets", "evaluate", "huggingface_hub", "kornia", "nlpaug", "numpy", "scikit-learn",
)  # fmt: skip


def _package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _environment(trainer: Any) -> dict[str, Any]:
    import torch
    import transformers

    from .. import __version__

    args = trainer.args
    device = str(args.device)
    if args.device.type == "cuda":
        device = f"{device} ({torch.cuda.get_device_name(args.device)})"
    return {
        "hf_critical": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        **{name: _package_version(name) for name in RECORDED_PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "cpu_count": os.cpu_count(),
        "world_size": args.world_size,
    }


def k_schedule(total_steps: int, switch_step: int | None, copies_before: int, copies_after: int) -> list[dict[str, int]]:
    """Copies per sample over optimizer steps ``1..total_steps``: one segment, or two around the switch.

    The step at which the detector fires still trains on ``copies_before``; the next one on ``copies_after``.
    """
    if total_steps < 1:
        return []
    if switch_step is None or switch_step >= total_steps:
        return [{"from_step": 1, "to_step": total_steps, "copies": copies_before}]
    schedule = [{"from_step": 1, "to_step": switch_step, "copies": copies_before}] if switch_step >= 1 else []
    return schedule + [{"from_step": switch_step + 1, "to_step": total_steps, "copies": copies_after}]


def build_results(
    trainer: Any,
    costs: TrainingCostCallback,
    *,
    train_metrics: Mapping[str, float] | None,
    eval_metrics: Mapping[str, float] | None,
    reporting: ReportingArguments,
    arguments: Mapping[str, Any],
    run: Mapping[str, Any],
    train_energy: EnergyMeasurement | None = None,
    eval_energy: EnergyMeasurement | None = None,
) -> dict[str, Any]:
    """Gather the numbers of a finished `CriticalPeriodTrainer` run (see the module docstring for the keys).

    Args:
        trainer: the trainer after ``train()`` (and ``evaluate()``).
        costs: the `TrainingCostCallback` that was in the trainer's callbacks.
        train_metrics, eval_metrics: what ``train()`` / ``evaluate()`` returned (``TrainOutput.metrics``).
        reporting: the run's `ReportingArguments` (prices).
        arguments: name -> arguments dataclass (``{"model": ..., "data": ..., "training": ...}``).
        run: what the recipe ran (task, model, data sizes), stored as given.
        train_energy, eval_energy: the handles of `hf_critical.experiments.energy.track_energy`.
    """
    period = trainer.critical_period
    augmentation = getattr(trainer, "augmentation", None)
    plan = getattr(trainer, "repeat_plan", None)  # augment_mode="repeat": k passes, one row per sample and step
    copies_unswitched = plan.copies if plan is not None else (augmentation.copies if augmentation is not None else 1)
    copies_before = period["copies_before"] if period else copies_unswitched
    copies_after = period["copies_after"] if period else copies_before
    segment_seconds = (train_metrics or {}).get("train_runtime")
    before_resume = costs.seconds_before_resume
    # A resumed run: its train time is the earlier segments' (up to the checkpoint) plus this one's.
    train_seconds = None if segment_seconds is None else before_resume + float(segment_seconds)
    energy_reports = {
        phase: handle.report for phase, handle in (("train", train_energy), ("eval", eval_energy)) if handle is not None
    }
    train_report = energy_reports.get("train")
    train_energy_kwh = train_report.energy_kwh if train_report is not None else None
    if train_energy_kwh is not None and before_resume and segment_seconds:
        # Energy was tracked in this segment only: scaled to the whole run by time (same average power).
        train_energy_kwh = train_energy_kwh * train_seconds / float(segment_seconds)
    savings = compute_savings(
        costs.steps,
        period["switch_step"] if period else None,
        copies_before,
        copies_after,
        train_seconds=train_seconds,
        train_energy_kwh=train_energy_kwh,
        augment_mode="repeat" if plan is not None else "batch",
        one_pass_from_step=period.get("one_pass_from_step") if period else None,
    )
    measured, derived = savings["measured"], savings["derived"]
    measured["train_seconds_before_resume"] = before_resume
    measured["train_energy_scaled_from_last_segment"] = bool(train_energy_kwh is not None and before_resume)
    measured["optimizer_steps"] = trainer.state.global_step
    emissions = train_report.emissions_kg if train_report is not None else None
    if emissions is not None and before_resume and segment_seconds:
        emissions = emissions * train_seconds / float(segment_seconds)
    measured["train_emissions_kg"] = emissions
    # codecarbon's figure: a model, not a reading, where the machine has no power counter (see `energy`).
    measured["train_energy_is_estimate"] = train_report.estimated if train_report is not None else None
    derived["cost"] = {
        "currency": reporting.currency,
        "with_switch": estimate_cost(
            train_seconds, measured["train_energy_kwh"], reporting.price_per_hour, reporting.price_per_kwh
        ),
        "without_switch_estimate": estimate_cost(
            derived["train_seconds_without_switch_estimate"],
            derived["train_energy_kwh_without_switch_estimate"],
            reporting.price_per_hour,
            reporting.price_per_kwh,
        ),
    }

    notes = []
    world_size = trainer.args.world_size
    if world_size > 1:
        notes.append(f"training rows are counted on the main process; {world_size} processes each train that many.")
    if measured["optimizer_steps_recorded"] < trainer.state.global_step:
        notes.append(
            f"only {measured['optimizer_steps_recorded']} of {trainer.state.global_step} steps were recorded "
            "(resumed from a checkpoint without cost state): rows and savings cover those steps only."
        )
    for phase, report in energy_reports.items():
        if report is not None and report.estimated:
            notes.append(f"{phase} energy is an {report.note}")
    if not energy_reports or all(report is None for report in energy_reports.values()):
        notes.append("energy was not tracked (track_energy=False, or not the main process).")

    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "method": METHOD,
        "run": dict(run),
        "critical_period": period,
        "k_schedule": k_schedule(trainer.state.global_step, period["switch_step"] if period else None, copies_before, copies_after),
        "detector": trainer.switch.detector.describe(),
        "measured": measured,
        "derived": derived,
        "energy": {phase: (report.to_dict() if report is not None else None) for phase, report in energy_reports.items()},
        "metrics": {"train": dict(train_metrics or {}), "eval": dict(eval_metrics or {})},
        "arguments": _arguments_dict(arguments),
        "environment": _environment(trainer),
        "notes": notes,
    }
