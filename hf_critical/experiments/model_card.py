"""A run's results for people: the model-card section (``README.md``) and the lines printed at the end.

Both read the dict of `hf_critical.experiments.results.build_results` and share its formatting;
`model_card_section` / `update_model_card` put the section between `CARD_BEGIN` and `CARD_END`,
replacing an earlier one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from .results import RESULTS_FILE
from .robustness import epsilon_label

__all__ = ["CARD_BEGIN", "CARD_END", "model_card_section", "summary_lines", "update_model_card"]

CARD_BEGIN = "<!-- hf_critical:begin -->"
CARD_END = "<!-- hf_critical:end -->"


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
