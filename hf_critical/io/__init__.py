"""What hf_critical reads and writes: the dynamics log (``dynamics.jsonl``) and streamed tensor files."""

from __future__ import annotations

from .dynamics_log import append_dynamics_record, prepare_dynamics_log, read_dynamics
from .tensor_file import TensorFile, write_tensors

__all__ = ["TensorFile", "append_dynamics_record", "prepare_dynamics_log", "read_dynamics", "write_tensors"]
