"""Out-of-tree shim for transformers' own ``tests/trainer``: binds hf_critical's classes in their place.

Copied next to the extracted upstream tests (never into this repository) by ``run.sh``.
``HFC_MODE``: ``plain`` (transformers' classes), ``off`` (`CriticalPeriodTrainer` with
`CriticalPeriodArguments` defaulting to ``dynamics_metrics="none"``, ``detector="never"``) or
``default`` (`CriticalPeriodArguments` with its own defaults: every metric, the stability detector).
"""

import dataclasses
import os
import sys

import transformers
import transformers.trainer  # noqa: F401  (loading the trainer replaces the sys.modules entry)
from transformers import Trainer, TrainingArguments  # noqa: F401

transformers = sys.modules["transformers"]
MODE = os.environ.get("HFC_MODE", "plain")

if MODE != "plain":
    from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer

    if MODE == "off":

        @dataclasses.dataclass
        class OffArguments(CriticalPeriodArguments):
            dynamics_metrics: list = dataclasses.field(default_factory=lambda: ["none"])
            detector: str = "never"

        Arguments = OffArguments
    elif MODE == "default":
        Arguments = CriticalPeriodArguments
    else:
        raise SystemExit(f"HFC_MODE must be plain, off or default, got {MODE!r}")
    transformers.Trainer = CriticalPeriodTrainer
    transformers.TrainingArguments = Arguments

# transformers 5.24 no longer has GlueDataset/GlueDataTrainingArguments, which one module imports
# (for a test that needs the Hub): placeholders let the module's other tests run.
for _name in ("GlueDataset", "GlueDataTrainingArguments"):
    if not hasattr(transformers, _name):
        setattr(transformers, _name, type(_name, (), {}))
