"""What a recipe run leaves behind: the results JSON, a model-card section, summary lines, the Hub push.

* `build_results` gathers one run's numbers into a dict with a **measured** part (train time,
  rows per step, energy from codecarbon) and a **derived** part (what keeping k copies to the end
  would have cost, computed from the measured steps; see `hf_critical.savings`).
* `write_results` writes it as JSON after `redact_secrets`: Hub tokens and anything that looks
  like a secret never reach a file.
* `model_card_section` / `update_model_card` add the numbers to the ``README.md`` model card.
* `defer_hub_push` / `push_outputs`: the Hub push happens once, at the end, after everything is
  written locally; a failed push raises `HubPushError` saying where the local files are.

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
                      of the evaluation data (`hf_critical.robustness`, ``docs/robustness.md``)
====================  ===========================================================================
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import platform
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..callback import INITIAL_WEIGHTS_FILE
from .energy import EnergyMeasurement, validate_country_iso_code
from .robustness import epsilon_label
from .savings import TrainingCostCallback, compute_savings, estimate_cost

__all__ = [
    "REDACTED",
    "RESULTS_FILE",
    "HubPushError",
    "HubPushRequest",
    "ReportingArguments",
    "build_results",
    "defer_hub_push",
    "environment_secrets",
    "finish_run",
    "is_secret_name",
    "k_schedule",
    "model_card_section",
    "push_outputs",
    "parse_recipe_arguments",
    "redact_secrets",
    "resume_argument",
    "summary_lines",
    "update_model_card",
    "write_results",
]

RESULTS_FILE = "critical_period_results.json"
REDACTED = "<redacted>"
#: Environment variables that hold a Hugging Face token; their values are scrubbed from every output.
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
#: How the ``measured`` and ``derived`` numbers come about (stored in every results file).
METHOD = (
    "measured: counted or timed during this run (energy: codecarbon, see `energy` for what it measured and what "
    "it modelled). derived: computed from this run's measured steps for the same run with k copies to the end, "
    "not from a second run; rows are exact, '_estimate' values assume the median k-copy step time and the same "
    "average power."
)
CARD_BEGIN = "<!-- hf_critical:begin -->"
CARD_END = "<!-- hf_critical:end -->"


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


# ---- secrets ------------------------------------------------------------------------------------

_SECRET_PARTS = {"token", "secret", "secrets", "password", "passwd", "pwd", "apikey", "credential", "credentials", "auth"}
_SECRET_SUFFIXES = ("token", "secret", "password", "apikey")


def is_secret_name(name: str) -> bool:
    """Whether a field called ``name`` may hold a secret: ``hub_token``, ``api_key``, ``db_password``...

    Matches on the name's ``_``/``-``-separated parts, so ``tokenizer_name`` or
    ``include_tokens_per_second`` are not secrets while ``hub_token`` and ``openai_api_key`` are.
    """
    parts = [p for p in re.split(r"[^a-z0-9]+", str(name).lower()) if p]
    return any(
        part in _SECRET_PARTS or part.endswith(_SECRET_SUFFIXES) or part in ("key", "keys") for part in parts
    )


def environment_secrets() -> list[str]:
    """The Hugging Face tokens set in the environment (values of `TOKEN_ENV_VARS`)."""
    return [os.environ[name] for name in TOKEN_ENV_VARS if os.environ.get(name)]


def redact_secrets(obj: Any, secrets: Iterable[str | None] = (), include_environment: bool = True) -> Any:
    """A copy of ``obj`` (dicts, lists, scalars) without secrets.

    * a value under a secret-looking key (`is_secret_name`) becomes ``"<redacted>"`` unless it is
      None, a bool or empty;
    * every occurrence of a known secret (``secrets``, and the Hugging Face tokens of the
      environment unless ``include_environment=False``) inside any string is replaced by
      ``"<redacted>"``.
    """
    known = sorted({s for s in secrets if isinstance(s, str) and s}, key=len, reverse=True)
    if include_environment:
        known = sorted(set(known) | set(environment_secrets()), key=len, reverse=True)

    def scrub_text(text: str) -> str:
        for secret in known:
            text = text.replace(secret, REDACTED)
        return text

    def walk(value: Any, key: str | None = None) -> Any:
        if key is not None and is_secret_name(key) and value is not None and not isinstance(value, bool) and value != "":
            return REDACTED
        if isinstance(value, Mapping):
            return {k: walk(v, str(k)) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v) for v in value]
        if isinstance(value, str):
            return scrub_text(value)
        return value

    return walk(obj)


# ---- JSON -----------------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    """Plain JSON types; non-finite floats become None (no NaN in the file)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return _jsonable(value.item())
    if hasattr(value, "value") and not callable(value.value):  # enums
        return _jsonable(value.value)
    return str(value)


def write_results(path: str | os.PathLike, results: Mapping[str, Any], secrets: Iterable[str | None] = ()) -> str:
    """Write ``results`` as indented JSON, secrets redacted (see `redact_secrets`); returns the path."""
    path = os.fspath(path)
    clean = redact_secrets(_jsonable(results), secrets)
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
        train_energy, eval_energy: the handles of `hf_critical.energy.track_energy`.
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


# ---- human-readable -----------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _energy_label(results: Mapping[str, Any]) -> str:
    report = (results.get("energy") or {}).get("train")
    if report is None:
        return "not tracked"
    return "ESTIMATE" if report["estimated"] else "measured"


def summary_lines(results: Mapping[str, Any], paths: Mapping[str, str] | None = None) -> list[str]:
    """Lines for the console: where the period ended, the eval metrics, and rows / time / energy / cost saved."""
    measured, derived, period = results["measured"], results["derived"], results["critical_period"]
    lines = []
    if period is None:
        lines.append(
            f"critical period          : not detected ({results['detector']}); "
            f"{measured['copies_before_switch']} copies throughout"
        )
    else:
        lines.append(
            f"critical period ended    : step {period['switch_step']} of {measured['optimizer_steps']} "
            f"(epoch {period['switch_epoch']:.2f}), {period['detector']}; "
            f"{period['copies_before']} -> {period['copies_after']} copies"
        )
    for key, value in (results["metrics"].get("eval") or {}).items():
        if key.startswith("eval_") and key not in ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_epoch"):
            lines.append(f"{key:<25}: {value:.4f}" if isinstance(value, float) else f"{key:<25}: {value}")
    metric = (results.get("run") or {}).get("metric")
    if metric:
        name = metric["name"] if metric.get("config_name") is None else f"{metric['name']}/{metric['config_name']}"
        where = "evaluate's Hub module" if metric["source"] == "hub" else "the copy shipped with hf_critical"
        if metric["source"] != "hub" and metric.get("hub_error"):
            where += " (the Hub module did not load)"
        lines.append(f"{'metric':<25}: {name}, {where}")
    lines.append(
        f"training rows            : {measured['train_rows']:,} measured; {derived['train_rows_without_switch']:,} "
        f"without the switch (derived); saved {_pct(derived['train_rows_saved_fraction'])}"
    )
    lines.append(
        f"train time               : {_fmt(measured['train_seconds'], '.1f', ' s')} measured; "
        f"{_fmt(derived['train_seconds_without_switch_estimate'], '.1f', ' s')} without the switch (estimate); "
        f"saved {_pct(derived['train_seconds_saved_fraction_estimate'])}"
    )
    label = _energy_label(results)
    if label == "not tracked":
        lines.append(f"{'train energy':<25}: not tracked")
    else:
        lines.append(
            f"{f'train energy ({label})':<25}: {_fmt(measured['train_energy_kwh'], '.6f', ' kWh')}, "
            f"{_fmt(measured['train_emissions_kg'], '.6f', ' kg CO2eq')}; "
            f"{_fmt(derived['train_energy_kwh_without_switch_estimate'], '.6f', ' kWh')} without the switch (estimate)"
        )
    cost = derived["cost"]
    for kind in ("machine_cost", "electricity_cost"):
        with_switch, without = cost["with_switch"][kind], cost["without_switch_estimate"][kind]
        if with_switch is not None:
            name = kind.replace("_", " ")
            lines.append(
                f"{name:<25}: {with_switch:.4f} {cost['currency']}; {_fmt(without, '.4f')} {cost['currency']} "
                "without the switch (estimate)"
            )
    lines += _robustness_summary(results.get("robustness"))
    for note in results.get("notes", []):
        lines.append(f"note                     : {note}")
    for name, path in (paths or {}).items():
        lines.append(f"{name:<25}: {path}")
    return lines


def _robustness_summary(robustness: Mapping[str, Any] | None) -> list[str]:
    if not robustness:
        return []
    lines = [
        f"{'robustness':<25}: clean {robustness['clean_accuracy']:.4f} on {robustness['num_examples']} examples "
        f"(seed {robustness['seed']}), {_fmt(robustness.get('seconds'), '.1f', ' s')}"
    ]
    for name, entry in robustness["attacks"].items():
        lines.append(f"{'robust ' + name:<25}: {entry['accuracy']:.4f}")
    return lines


def _robustness_card(robustness: Mapping[str, Any] | None) -> list[str]:
    if not robustness:
        return []
    table = [
        "| attack | accuracy | kind | ε | steps |",
        "|---|---|---|---|---|",
        f"| clean | {robustness['clean_accuracy']:.4f} | | | |",
    ]
    for name, entry in robustness["attacks"].items():
        epsilon = "" if entry.get("epsilon") is None else epsilon_label(entry["epsilon"])
        steps = "" if entry.get("steps") is None else entry["steps"]
        table.append(f"| {name} | {entry['accuracy']:.4f} | {entry['kind']} | {epsilon} | {steps} |")
    return [
        "",
        "### Robustness",
        "",
        f"Accuracy under adversarial attacks on {robustness['num_examples']} evaluation examples (a seeded subset, "
        f"seed {robustness['seed']}); an example counts only if it is right both clean and under the attack. ε is in "
        "[0, 1] pixel units (L∞) for images, relative to the mean word-embedding norm (L2 per token) for text "
        "embeddings; worst-of-n text attacks need every one of n perturbed copies right.",
        "",
        *table,
    ]


def model_card_section(results: Mapping[str, Any], results_file: str = RESULTS_FILE, plot_file: str | None = None) -> str:
    """A Markdown section for the model card: the switch, the numbers with and without it, emissions, the plot.

    ``plot_file``: the dynamics plot, relative to the card (it is shown in the card when given).
    """
    measured, derived, period = results["measured"], results["derived"], results["critical_period"]
    k = measured["copies_before_switch"]
    if period is None:
        when = f"The detector ({results['detector']}) did not fire: every step trained on {k} copies per sample."
    else:
        when = (
            f"The detector ({period['detector']}) ended the critical period at optimizer step {period['switch_step']} "
            f"of {measured['optimizer_steps']} (epoch {period['switch_epoch']:.2f}); from the next step on, each sample "
            f"gave {period['copies_after']} row instead of {period['copies_before']} augmented copies."
        )
    label = _energy_label(results)
    rows = [
        ("training rows (measured; derived)", f"{measured['train_rows']:,}", f"{derived['train_rows_without_switch']:,}",
         _pct(derived["train_rows_saved_fraction"])),
        ("train time, s (measured; estimate)", _fmt(measured["train_seconds"], ".1f"),
         _fmt(derived["train_seconds_without_switch_estimate"], ".1f"), _pct(derived["train_seconds_saved_fraction_estimate"])),
    ]
    if label != "not tracked":
        rows.append((f"train energy, kWh (codecarbon, {label}; estimate)", _fmt(measured["train_energy_kwh"], ".6f"),
                     _fmt(derived["train_energy_kwh_without_switch_estimate"], ".6f"),
                     _pct(derived["train_energy_saved_fraction_estimate"])))
    table = ["| | this run | k copies throughout | saved |", "|---|---|---|---|"]
    table += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    evals = [
        f"`{key}` {value:.4f}" for key, value in (results["metrics"].get("eval") or {}).items()
        if key.startswith("eval_") and isinstance(value, float) and not key.endswith(("runtime", "per_second", "epoch"))
    ]
    lines = [
        CARD_BEGIN,
        "## Critical period and augmentation (hf_critical)",
        "",
        f"Trained with hf_critical's k-copy augmentation (k={k}) until the end of the critical "
        "learning period, detected from the training dynamics. " + when,
        "",
        *table,
        "",
        "\"this run\" is measured; \"k copies throughout\" is derived from this run's measured per-step rows and step "
        "times (no second run): exact for rows, an estimate for time and energy.",
    ]
    if evals:
        lines += ["", "Evaluation: " + ", ".join(evals) + "."]
    energy_notes = dict.fromkeys(
        report["note"] for report in (results.get("energy") or {}).values() if report is not None and report["estimated"]
    )
    emissions = [
        (phase, report) for phase, report in (results.get("energy") or {}).items()
        if report is not None and report.get("emissions_kg") is not None
    ]  # fmt: skip
    if emissions:
        countries = ", ".join(dict.fromkeys(str(report.get("country_iso_code")) for _, report in emissions))
        estimate = " (ESTIMATE)" if any(report.get("estimated") for _, report in emissions) else ""
        parts = [
            f"{phase} {report['emissions_kg']:.6f} kg CO2eq ({_fmt(report.get('energy_kwh'), '.6f', ' kWh')})"
            for phase, report in emissions
        ]
        lines += ["", f"Emissions (codecarbon, electricity mix of {countries}){estimate}: " + "; ".join(parts) + "."]
    if energy_notes:
        lines += ["", "Energy: " + " ".join(energy_notes)]
    lines += _robustness_card(results.get("robustness"))
    if plot_file:
        lines += [
            "",
            f"![Training dynamics over optimizer steps: the metrics, the switch marked, k copies shown]({plot_file})",
        ]
    lines += ["", f"All numbers: `{results_file}`.", CARD_END, ""]
    return "\n".join(lines)


def update_model_card(readme_path: str | os.PathLike, section: str) -> str:
    """Add ``section`` to the model card at ``readme_path``, replacing an earlier hf_critical section."""
    readme_path = os.fspath(readme_path)
    text = ""
    if os.path.isfile(readme_path):
        with open(readme_path, encoding="utf-8") as f:
            text = f.read()
    pattern = re.compile(re.escape(CARD_BEGIN) + r".*?" + re.escape(CARD_END) + r"\n?", re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section, text, count=1)
    else:
        text = (text.rstrip("\n") + "\n\n" if text.strip() else "") + section
    with open(readme_path, "w", encoding="utf-8") as f:
        f.write(text)
    return readme_path


# ---- the Hub --------------------------------------------------------------------------------------


class HubPushError(RuntimeError):
    """The Hub push failed; the message says where the local outputs are."""


@dataclass
class HubPushRequest:
    """What ``--push_to_hub`` asked for, kept aside until the outputs are written (the token is not printed)."""

    repo_id: str | None
    token: str | None = field(default=None, repr=False)
    private: bool | None = None
    revision: str | None = None


def defer_hub_push(args: Any) -> HubPushRequest | None:
    """Take the Hub push out of the Trainer's hands; None if ``args.push_to_hub`` is off.

    With ``push_to_hub`` the Trainer creates the repository in its constructor and pushes
    checkpoints during training, so an unreachable Hub stops the run before anything is trained.
    This turns both off; `push_outputs` pushes once, at the end. It also clears ``hub_token`` from
    the arguments, pushing or not, so that ``training_args.bin`` and the results never hold it.
    """
    token = getattr(args, "hub_token", None)
    args.hub_token = None
    if not getattr(args, "push_to_hub", False):
        return None
    args.push_to_hub = False
    return HubPushRequest(
        repo_id=args.hub_model_id,
        token=token,
        private=args.hub_private_repo,
        revision=getattr(args, "hub_revision", None),
    )


def push_outputs(request: HubPushRequest, output_dir: str, commit_message: str = "End of training") -> str:
    """Upload ``output_dir`` (checkpoints excluded) to the Hub; returns the commit URL.

    Raises `HubPushError` naming the repository and the local folder when anything fails; the
    token never appears in the message.
    """
    repo_name = request.repo_id or Path(output_dir).absolute().name
    try:
        from huggingface_hub import HfApi

        api = HfApi(token=request.token)
        repo_id = api.create_repo(repo_name, private=request.private, exist_ok=True).repo_id
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            commit_message=commit_message,
            revision=request.revision,
            # The initial weights kept for layer rotation are a copy of the starting model: not a result.
            ignore_patterns=["_*", "checkpoint-*", "*.tmp", INITIAL_WEIGHTS_FILE],
        )
    except Exception as err:
        reason = redact_secrets(f"{type(err).__name__}: {err}", [request.token])
        raise HubPushError(
            f"pushing {output_dir} to the Hub repository {repo_name!r} failed ({reason}). Everything is saved "
            f"locally in {output_dir}; upload it later with `hf upload {repo_name} {output_dir}` once the Hub is "
            "reachable and a token with write access is set (HF_TOKEN or `hf auth login`)."
        ) from None
    return str(getattr(commit, "commit_url", commit))


def parse_recipe_arguments(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """Parse a recipe's argument dataclasses from the command line, or from a config file plus flags.

    ``run.py config.yaml --seed 1 --resume_from_checkpoint X``: the ``.json``/``.yaml`` file gives the
    values, the flags after it override them. A key of the file that no dataclass has is refused.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types)
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or not argv[0].endswith((".json", ".yaml", ".yml")):
        return parser.parse_args_into_dataclasses(args=argv)
    path, flags = os.path.abspath(argv[0]), argv[1:]
    values = _read_config_file(path)
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{argv[0]}: unknown key(s) {unknown}; `--help` lists the recipe's arguments")
    for action in parser._actions:
        if action.dest in values:
            # The file's value becomes the default; a flag given after the file overrides it.
            action.default = values[action.dest]
            action.required = False
    return parser.parse_args_into_dataclasses(args=flags)


def resume_argument(value: str | None) -> str | bool | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or ``latest``/``true`` for the newest complete one in output_dir."""
    if isinstance(value, str) and value.strip().lower() in ("latest", "true"):
        return True
    return value


def _read_config_file(path: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".json"):
            values = json.load(f)
        else:
            import yaml

            values = yaml.safe_load(f)
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values, got {type(values).__name__}")
    return values


# ---- the end of a recipe ----------------------------------------------------------------------------


@contextlib.contextmanager
def _from_scratch_card(model):
    """Make the Trainer's model card say "trained from scratch" for a model built from a config.

    `TrainingSummary.from_trainer` takes ``config._name_or_path`` as the base model unless it is a
    folder; for a model built from a config it is ``""``, which gave "a fine-tuned version of
    [](https://huggingface.co/)". A folder name (``"."``) is not taken as a base model.
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_name_or_path", None) != "":
        yield
        return
    config._name_or_path = "."
    try:
        yield
    finally:
        config._name_or_path = ""


def finish_run(
    trainer: Any,
    costs: TrainingCostCallback,
    *,
    title: str,
    train_metrics: Mapping[str, float] | None,
    eval_metrics: Mapping[str, float] | None,
    reporting: ReportingArguments,
    arguments: Mapping[str, Any],
    run: Mapping[str, Any],
    train_energy: EnergyMeasurement | None = None,
    eval_energy: EnergyMeasurement | None = None,
    model_card_kwargs: Mapping[str, Any] | None = None,
    push_request: HubPushRequest | None = None,
    robustness: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Everything a recipe does after training, on the main process (returns None elsewhere).

    In order: the results JSON (secrets redacted), the dynamics plot, the model card with the
    hf_critical section, the summary printed to stdout; then, if asked, the Hub push, which raises
    `HubPushError` when it fails, with everything already on disk. ``robustness``: what
    `hf_critical.robustness` measured, stored under the ``robustness`` key (None: no key).
    """
    if not trainer.is_world_process_zero():
        return None
    output_dir = trainer.args.output_dir
    secrets = [push_request.token] if push_request is not None else []
    results = build_results(
        trainer,
        costs,
        train_metrics=train_metrics,
        eval_metrics=eval_metrics,
        reporting=reporting,
        arguments=arguments,
        run=run,
        train_energy=train_energy,
        eval_energy=eval_energy,
    )
    if robustness is not None:
        results["robustness"] = dict(robustness)
    results = redact_secrets(_jsonable(results), secrets)
    paths = {"results": write_results(os.path.join(output_dir, reporting.results_file), results, secrets)}

    from ..callback import DYNAMICS_FILE
    from ..plotting import plot_dynamics

    jsonl = os.path.join(output_dir, DYNAMICS_FILE)
    period = results["critical_period"]
    try:
        paths["dynamics plot"] = plot_dynamics(
            jsonl,
            os.path.join(output_dir, "dynamics.png"),
            switch_step=None if period is None else period["switch_step"],
            title=title,
        )
    except (FileNotFoundError, ValueError) as err:  # no measurement in this run (dynamics off, or too few steps)
        paths["dynamics plot"] = f"none ({err})"

    card_kwargs = dict(model_card_kwargs or {})
    tags = card_kwargs.get("tags") or []
    card_kwargs["tags"] = [tags] if isinstance(tags, str) else list(tags)
    card_kwargs["tags"] += [tag for tag in ("hf_critical", "critical-learning-period") if tag not in card_kwargs["tags"]]
    with _from_scratch_card(trainer.model):
        trainer.create_model_card(**card_kwargs)
    plot_file = os.path.basename(paths["dynamics plot"]) if os.path.isfile(paths["dynamics plot"]) else None
    paths["model card"] = update_model_card(
        os.path.join(output_dir, "README.md"), model_card_section(results, reporting.results_file, plot_file)
    )
    print(f"\n== hf_critical: {title} ==")
    for line in summary_lines(results, paths):
        print(line)
    if push_request is not None:
        url = push_outputs(push_request, output_dir)
        print(f"{'pushed to the Hub':<25}: {url}")
    return results
