"""The dynamics log, ``output_dir/dynamics.jsonl``: one JSON record per measurement, written and read here.

A record (written by `DynamicsCallback` on the main process)::

    {"step": 20, "epoch": 0.5, "current_copies": 4, "learning_rate": 0.0009, "learning_rate_sum": 0.019,
     "frozen_parameters": 0,
     "gradient_confusion": {"value": 0.12, "min": 0.12, "num_pairs": 1, "batch_step": 19,
                            "per_layer": {...}, "skipped": {...}},
     "gradient_predictability": {"value": 0.61, "per_layer": {...}, "skipped": {...}},
     "layer_rotation": {"value": 0.004, "weighted_mean": 0.003, "per_layer": {...}, "skipped": {...}}}

``current_copies`` is the copies of each sample at that step (k, or 1 after the switch; called
``augment_copies`` before 0.2). A metric that could not be computed is ``{"value": null, "unavailable": true}``. Each record is
flushed as it is written; on resume the lines past the checkpoint (written by the interrupted run,
and measured again) are dropped first, and a line cut short by a kill ends the kept part.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Mapping
from typing import Any

from ..names import DYNAMICS_FILE

__all__ = ["append_dynamics_record", "prepare_dynamics_log", "read_dynamics"]


def prepare_dynamics_log(output_dir: str, keep_up_to_step: int) -> str:
    """Start the log for a run: keep the records up to ``keep_up_to_step`` (0: none); returns its path."""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, DYNAMICS_FILE)
    kept: list[str] = []
    if keep_up_to_step > 0 and os.path.isfile(path):
        # Lines past the checkpoint were written by the interrupted run and are measured again.
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    if json.loads(line)["step"] <= keep_up_to_step:
                        kept.append(line if line.endswith("\n") else line + "\n")
                except (json.JSONDecodeError, KeyError, TypeError):
                    break  # a line cut short by a kill; everything after it is newer
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return path


def append_dynamics_record(output_dir: str, record: Mapping[str, Any]) -> None:
    """Append one record (strict JSON: a NaN is an error, not a silent ``NaN`` token) and flush it."""
    with open(os.path.join(output_dir, DYNAMICS_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=False) + "\n")
        f.flush()


def read_dynamics(jsonl_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``dynamics.jsonl`` file, gzipped (a ``.gz`` name) or not, in file order.

    Blank lines are skipped.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if a line is not valid JSON or not a JSON object; the message names the file and
            the 1-based line number.
    """
    path = os.fspath(jsonl_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dynamics file not found: {path}")
    records: list[dict[str, Any]] = []
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {lineno}: malformed JSON ({err.msg})") from err
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {lineno}: expected a JSON object, got {type(obj).__name__}")
            records.append(obj)
    return records
