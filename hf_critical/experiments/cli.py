"""The recipes' command line: argument dataclasses from flags, or from a JSON/YAML config file plus flags."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

__all__ = ["parse_recipe_arguments", "resume_argument"]


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
