"""Secrets never reach a file: which names look like secrets, the Hub tokens of the environment, redaction.

`redact_secrets` is applied to everything a recipe writes (`hf_critical.experiments.results`) and to
the Hub push's error messages (`hf_critical.experiments.hub`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["REDACTED", "TOKEN_ENV_VARS", "environment_secrets", "is_secret_name", "redact_secrets"]

REDACTED = "<redacted>"
#: Environment variables that hold a Hugging Face token; their values are scrubbed from every output.
TOKEN_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

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
