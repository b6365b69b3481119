"""Deprecated: `hf_critical.reporting` was split by concern; kept for one release. Import the new modules.

========================================  ===============================================================
name                                      now in
========================================  ===============================================================
results JSON, `ReportingArguments`        `hf_critical.experiments.results`
model-card section, summary lines         `hf_critical.experiments.model_card`
secret names and redaction                `hf_critical.experiments.redaction`
the deferred Hub push                     `hf_critical.experiments.hub`
recipe command line (config files)        `hf_critical.experiments.cli`
`finish_run`                              `hf_critical.experiments.finish`
========================================  ===============================================================

Every public name is re-exported here (the same objects), but this module is no longer where the
functions look each other up: monkeypatch the new modules.
"""

import warnings

from .experiments.cli import parse_recipe_arguments, resume_argument
from .experiments.finish import finish_run
from .experiments.hub import HubPushError, HubPushRequest, defer_hub_push, push_outputs
from .experiments.model_card import CARD_BEGIN, CARD_END, model_card_section, summary_lines, update_model_card
from .experiments.redaction import REDACTED, TOKEN_ENV_VARS, environment_secrets, is_secret_name, redact_secrets
from .experiments.results import (
    METHOD,
    RECORDED_PACKAGES,
    RESULTS_FILE,
    ReportingArguments,
    build_results,
    k_schedule,
    write_results,
)

warnings.warn(
    "hf_critical.reporting was split into hf_critical.experiments.results, .model_card, .redaction, .hub, .cli and "
    ".finish (all its names are also in hf_critical.experiments); the old path goes in the next release",
    DeprecationWarning,
    stacklevel=2,
)

__all__ = [
    "CARD_BEGIN",
    "CARD_END",
    "METHOD",
    "RECORDED_PACKAGES",
    "REDACTED",
    "RESULTS_FILE",
    "TOKEN_ENV_VARS",
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
