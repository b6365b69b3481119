"""The end of a recipe run, on the main process: results JSON, dynamics plot, model card, summary, Hub push."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

from ..names import DYNAMICS_FILE
from ..plotting import plot_dynamics
from .energy import EnergyMeasurement
from .hub import HubPushRequest, push_outputs
from .model_card import model_card_section, summary_lines, update_model_card
from .redaction import redact_secrets
from .results import ReportingArguments, build_results, jsonable, write_results
from .savings import TrainingCostCallback

__all__ = ["finish_run"]


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
    `hf_critical.experiments.robustness` measured, stored under the ``robustness`` key (None: no key).
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
    results = redact_secrets(jsonable(results), secrets)
    paths = {"results": write_results(os.path.join(output_dir, reporting.results_file), results, secrets)}

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
