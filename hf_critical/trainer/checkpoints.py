"""Checkpoint workarounds: the newest *complete* checkpoint, and weights saved under renamed keys.
"""

from __future__ import annotations

import logging
import os
import re

from transformers import PreTrainedModel
from transformers.trainer import TRAINER_STATE_NAME
from transformers.utils import SAFE_WEIGHTS_NAME

logger = logging.getLogger(__name__)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` folder that holds a ``trainer_state.json`` (written last by the Trainer), or None.

    `transformers.trainer_utils.get_last_checkpoint` returns the newest folder even when the process
    was killed while writing it; resuming from that fails. Incomplete folders are skipped with a warning.
    A missing ``output_dir`` raises FileNotFoundError, as in `get_last_checkpoint`.
    """
    steps = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(r"checkpoint-(\d+)", name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            steps.append(int(match.group(1)))
    for step in sorted(steps, reverse=True):
        folder = os.path.join(output_dir, f"checkpoint-{step}")
        if os.path.isfile(os.path.join(folder, TRAINER_STATE_NAME)):
            return folder
        logger.warning("Skipping %s: it has no %s (interrupted while being written)", folder, TRAINER_STATE_NAME)
    return None


def _reload_renamed_weights(model, checkpoint: str) -> None:
    """Load weights that `Trainer._load_from_checkpoint` missed because their names changed on save.

    transformers 5 saves some models (e.g. ViT) under their legacy parameter names and renames
    them in `from_pretrained`, but the Trainer's resume loads the file with a plain, non-strict
    `load_state_dict`: those weights silently keep their current values. This reloads them
    through `from_pretrained`, which applies the renaming.
    """
    path = os.path.join(checkpoint, SAFE_WEIGHTS_NAME)
    if not isinstance(model, PreTrainedModel) or not os.path.isfile(path):
        return
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        saved = set(f.keys())
    if set(model.state_dict()) <= saved:
        return
    logger.info("Checkpoint %s stores renamed parameters; reloading them through from_pretrained", checkpoint)
    reloaded = type(model).from_pretrained(checkpoint, dtype=next(model.parameters()).dtype)
    missing, unexpected = model.load_state_dict(reloaded.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"could not restore {len(missing)} parameters from {checkpoint}, e.g. {missing[:3]}")
