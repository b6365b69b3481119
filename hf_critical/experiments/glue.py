"""The nine GLUE tasks: canonical columns, label sets, and readers for local GLUE files.

Every reader returns a `datasets.Dataset` with the columns of the Hugging Face ``nyu-mll/glue``
copy (``sentence`` / ``sentence1`` + ``sentence2`` / ``question1`` + ``question2`` / ``premise`` +
``hypothesis`` / ``question`` + ``sentence``, then ``label`` and ``idx``), so that a run on local
files and a run on the Hub copy train on the same columns.

Accepted local files (by extension):

* ``.tsv``: the files of GLUE's ``download_glue_data.py``, read byte-faithfully
  (``csv.QUOTE_NONE``: quotes inside sentences are text). CoLA's files have **no header**
  (``source<TAB>label<TAB>original-label<TAB>sentence``); the other tasks' files have one, with
  GLUE's own column names, e.g. MRPC's ``Quality``, ``#1 String``, ``#2 String`` (after a UTF-8
  BOM), QQP's ``is_duplicate``, STS-B's ``score``, MNLI's ``sentence1``/``sentence2``/``gold_label``.
* ``.csv``: a header row with the canonical names or GLUE's own names.
* ``.json`` / ``.jsonl``: JSON lines (one object per line) or one JSON list of objects.

Labels may be given as indices (``0``, ``"1"``) or as GLUE's label names (``"entailment"``);
STS-B's are similarity scores in [0, 5]. Anything else raises a `ValueError` that names the file,
the line and the value.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["FILE_EXTENSIONS", "GLUE_TASKS", "GlueTask", "get_glue_task", "read_glue_file", "load_glue_files"]


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task.

    Attributes:
        name: the task's name in the Hub copy (``"sst2"``).
        text_fields: the one or two text columns, in the order the model reads them.
        label_names: class names, index = label id; empty for the regression task (STS-B).
        metrics: what GLUE reports for the task (the local ``glue`` evaluate module computes them).
        validation_split: the split of the Hub copy to evaluate on.
        aliases: GLUE's own column names (files of ``download_glue_data.py``) -> canonical names.
        headerless_columns: column names of a TSV without a header (CoLA), else empty.
    """

    name: str
    text_fields: tuple[str, ...]
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    validation_split: str = "validation"
    aliases: dict[str, str] = field(default_factory=dict)
    headerless_columns: tuple[str, ...] = ()

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.text_fields, "label")


#: STS-B similarity scores lie in this range.
STSB_RANGE = (0.0, 5.0)

GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask(
            "cola",
            ("sentence",),
            ("unacceptable", "acceptable"),
            ("matthews_correlation",),
            headerless_columns=("source", "label", "original_label", "sentence"),
        ),
        GlueTask("sst2", ("sentence",), ("negative", "positive"), ("accuracy",)),
        GlueTask(
            "mrpc",
            ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"),
            ("accuracy", "f1"),
            aliases={"Quality": "label", "#1 String": "sentence1", "#2 String": "sentence2"},
        ),
        GlueTask(
            "qqp",
            ("question1", "question2"),
            ("not_duplicate", "duplicate"),
            ("accuracy", "f1"),
            aliases={"is_duplicate": "label"},
        ),
        GlueTask("stsb", ("sentence1", "sentence2"), (), ("pearson", "spearmanr"), aliases={"score": "label"}),
        GlueTask(
            "mnli",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            ("accuracy",),
            validation_split="validation_matched",
            aliases={"sentence1": "premise", "sentence2": "hypothesis", "gold_label": "label"},
        ),
        GlueTask("qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",)),
        GlueTask("rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",)),
        GlueTask("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",)),
    )
}

FILE_EXTENSIONS = (".tsv", ".csv", ".json", ".jsonl")


def get_glue_task(name: str) -> GlueTask:
    """The task called ``name`` (case-insensitive; ``"sst-2"`` works too)."""
    if not isinstance(name, str):
        raise ValueError(f"`task_name` must be one of {sorted(GLUE_TASKS)}, got {name!r}")
    key = name.lower().replace("-", "")
    if key not in GLUE_TASKS:
        raise ValueError(f"`task_name` must be one of {sorted(GLUE_TASKS)}, got {name!r}")
    return GLUE_TASKS[key]


# ---- raw rows -----------------------------------------------------------------------------------


def _read_tsv(path: str, task: GlueTask) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, fields) rows of a GLUE TSV."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        lines = [(number, line.rstrip("\r\n")) for number, line in enumerate(f, start=1)]
    lines = [(number, line) for number, line in lines if line.strip()]
    if not lines:
        raise ValueError(f"{path}: the file is empty")
    rows = [(number, line.split("\t")) for number, line in lines]
    first = rows[0][1]
    if task.headerless_columns and not _looks_like_header(first, task):
        header = list(task.headerless_columns)
    else:
        header, rows = [name.strip() for name in first], rows[1:]
    for number, fields in rows:
        if len(fields) != len(header):
            raise ValueError(
                f"{path}: line {number} has {len(fields)} tab-separated fields, the header has {len(header)} "
                f"({header}); is this a {task.name} file?"
            )
    return header, rows


def _looks_like_header(fields: Sequence[str], task: GlueTask) -> bool:
    names = {name.strip() for name in fields}
    return bool(names & ({"label", *task.text_fields} | set(task.aliases)))


def _read_csv(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        records = [(reader.line_num, fields) for fields in reader if any(x.strip() for x in fields)]
    if not records:
        raise ValueError(f"{path}: the file is empty")
    header = [name.strip() for name in records[0][1]]
    rows = records[1:]
    for number, fields in rows:
        if len(fields) != len(header):
            raise ValueError(f"{path}: line {number} has {len(fields)} fields, the header has {len(header)} ({header})")
    return header, rows


def _read_json(path: str) -> list[tuple[int, dict]]:
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"{path}: the file is empty")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            objects = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err.msg}, line {err.lineno})") from None
        records = list(enumerate(objects, start=1))
        where = "item"
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
        where = "line"
    for number, record in records:
        if not isinstance(record, dict):
            raise ValueError(f"{path}: {where} {number} is not a JSON object: {str(record)[:80]!r}")
    return records


# ---- conversion ---------------------------------------------------------------------------------


def _label_value(raw, task: GlueTask, path: str, where: str):
    if task.is_regression:
        try:
            score = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{path}: {where}: label {raw!r} is not a number (STS-B scores lie in [0, 5])") from None
        if not math.isfinite(score) or not STSB_RANGE[0] <= score <= STSB_RANGE[1]:
            raise ValueError(f"{path}: {where}: label {raw!r} is outside the STS-B range [0, 5]")
        return score
    allowed = f"{list(range(task.num_labels))} or {list(task.label_names)}"
    if isinstance(raw, bool) or raw is None:
        raise ValueError(f"{path}: {where}: label {raw!r} is not in the {task.name} label set {allowed}")
    if isinstance(raw, str):
        text = raw.strip()
        if text in task.label_names:
            return task.label_names.index(text)
        try:
            raw = int(text)
        except ValueError:
            raise ValueError(f"{path}: {where}: label {text!r} is not in the {task.name} label set {allowed}") from None
    if isinstance(raw, float) and raw.is_integer():
        raw = int(raw)
    if not isinstance(raw, int) or not 0 <= raw < task.num_labels:
        raise ValueError(f"{path}: {where}: label {raw!r} is not in the {task.name} label set {allowed}")
    return raw


def _canonical_header(header: Sequence[str], task: GlueTask, path: str) -> dict[str, int]:
    """Canonical column -> position in the file; a canonical name wins over an alias."""
    positions: dict[str, int] = {}
    for index, name in enumerate(header):
        if name in task.columns and name not in positions:
            positions[name] = index
    for index, name in enumerate(header):
        target = task.aliases.get(name)
        if target is not None and target not in positions:
            positions[target] = index
    missing = [column for column in task.columns if column not in positions]
    if missing:
        expected = list(task.columns)
        aliases = {alias: target for alias, target in task.aliases.items() if target in missing}
        hint = f" (GLUE's own names {aliases} are accepted too)" if aliases else ""
        raise ValueError(
            f"{path}: missing column(s) {missing} for task {task.name!r}; found {list(header)}, "
            f"expected {expected}{hint}"
        )
    return positions


def read_glue_file(path: str | os.PathLike, task: str | GlueTask):
    """Read one local file of ``task`` into a `datasets.Dataset` with GLUE's canonical columns."""
    from datasets import ClassLabel, Dataset, Features, Value

    task = task if isinstance(task, GlueTask) else get_glue_task(task)
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    extension = os.path.splitext(path)[1].lower()
    if extension not in FILE_EXTENSIONS:
        raise ValueError(f"{path}: unsupported file type {extension!r}; expected one of {list(FILE_EXTENSIONS)}")

    columns: dict[str, list] = {name: [] for name in task.columns}
    if extension in (".json", ".jsonl"):
        records = _read_json(path)
        header = list(dict.fromkeys(key for _, record in records for key in record))
        positions = _canonical_header(header, task, path)
        rows = [(number, [record.get(name) for name in header]) for number, record in records]
    else:
        header, rows = _read_tsv(path, task) if extension == ".tsv" else _read_csv(path)
        positions = _canonical_header(header, task, path)
    if not rows:
        raise ValueError(f"{path}: no data rows (only a header)")

    for number, fields in rows:
        where = f"line {number}"
        for name in task.text_fields:
            value = fields[positions[name]]
            if not isinstance(value, str):
                raise ValueError(f"{path}: {where}: column {name!r} must be text, got {value!r}")
            columns[name].append(value)
        columns["label"].append(_label_value(fields[positions["label"]], task, path, where))
    columns["idx"] = list(range(len(rows)))

    label_feature = Value("float32") if task.is_regression else ClassLabel(names=list(task.label_names))
    features = Features({**{name: Value("string") for name in task.text_fields}, "label": label_feature, "idx": Value("int32")})
    return Dataset.from_dict(columns, features=features)


def load_glue_files(task: str | GlueTask, files: dict[str, str | os.PathLike | None]):
    """Read ``{"train": path, "validation": path, ...}`` (None entries skipped) into a `datasets.DatasetDict`."""
    from datasets import DatasetDict

    task = task if isinstance(task, GlueTask) else get_glue_task(task)
    splits = {split: read_glue_file(path, task) for split, path in files.items() if path is not None}
    if not splits:
        raise ValueError("no data files given: pass `train_file` and/or `validation_file`")
    return DatasetDict(splits)
