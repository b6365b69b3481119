"""The streaming safetensors writer/reader used for layer rotation's initial weights."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from hf_critical.io.tensor_file import TensorFile, write_tensors


def test_round_trip_every_dtype_and_compatibility_with_safetensors(tmp_path):
    torch.manual_seed(0)
    tensors = {
        "a.weight": torch.randn(3, 5),
        "b.weight": torch.randn(7).to(torch.bfloat16),
        "c.weight": torch.randn(2, 2, 2).to(torch.float16),
        "d.index": torch.arange(4),
        "e.empty": torch.zeros(0, 3),
        "f.noncontiguous": torch.randn(4, 6).t(),
    }
    path = str(tmp_path / "w.safetensors")
    write_tensors(path, tensors.items(), {"layers": "weights"})
    stored = TensorFile(path)
    assert set(stored) == set(tensors) and len(stored) == len(tensors) and "a.weight" in stored
    assert stored.metadata == {"layers": "weights"}
    for name, tensor in tensors.items():
        assert stored[name].dtype == tensor.dtype and torch.equal(stored[name], tensor), name
    with safe_open(path, framework="pt") as f:  # a standard safetensors file
        assert torch.equal(f.get_tensor("b.weight"), tensors["b.weight"])
        assert f.metadata() == {"layers": "weights"}


def test_truncated_file_is_reported(tmp_path):
    path = str(tmp_path / "w.safetensors")
    write_tensors(path, [("x", torch.randn(100))])
    with open(path, "r+b") as f:
        f.truncate(f.seek(0, 2) - 8)
    with pytest.raises(ValueError, match="truncated"):
        TensorFile(path)["x"]
