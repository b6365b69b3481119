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


def test_mapped_and_read_tensors_are_equal_private_and_outlive_the_file(tmp_path):
    """Mapped reads (the default) give the same tensors as plain reads; writes to them never reach the file."""
    torch.manual_seed(0)
    # "b" (7 bfloat16 values, 14 bytes) leaves "c" (int64) at an offset that is no multiple of 8: it is read.
    tensors = {"a": torch.randn(5000, 3), "b": torch.randn(7).to(torch.bfloat16), "c": torch.arange(5), "d": torch.randn(3)}
    path = str(tmp_path / "w.safetensors")
    write_tensors(path, tensors.items())
    mapped, read = TensorFile(path), TensorFile(path, mapped=False)
    for name, tensor in tensors.items():
        assert torch.equal(mapped[name], tensor) and torch.equal(read[name], tensor), name
    view = mapped["a"]
    view.mul_(0)  # copy-on-write: the file and a later read keep the stored values
    assert torch.equal(mapped["a"], tensors["a"]) and not torch.equal(view, tensors["a"])
    kept = mapped["d"]
    write_tensors(path, [("d", torch.zeros(3))])  # replaced by renaming: the mapped tensor keeps the old bytes
    assert torch.equal(kept, tensors["d"]) and torch.equal(TensorFile(path)["d"], torch.zeros(3))


@pytest.mark.parametrize("mapped", [True, False])
def test_a_file_truncated_after_opening_is_reported_either_way(tmp_path, mapped):
    path = str(tmp_path / "w.safetensors")
    write_tensors(path, [("x", torch.randn(100))])
    stored = TensorFile(path, mapped=mapped)
    with open(path, "r+b") as f:
        f.truncate(f.seek(0, 2) - 8)
    with pytest.raises(ValueError, match="truncated"):
        stored["x"]
