"""Write and read tensors one at a time in the safetensors format, never holding all of them in memory.

`safetensors.torch.save_file` serialises every tensor into memory before writing, and reading
through it maps the file; layer rotation only ever needs one layer of the initial weights at a
time, so this module streams them: written tensor by tensor at the start of training, read back
tensor by tensor at each measurement. A tensor is read by mapping its bytes (a private, copy-on-write
map of that one tensor, unmapped when the tensor is freed): the pages come from the page cache with no
copy and no fresh allocation to fault in, 4.0x faster than reading into a new buffer on MiniLM
(docs/benchmarks.md). The files are ordinary safetensors files (`safetensors.safe_open` reads them).
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
from collections.abc import Iterable, Iterator, Mapping

import torch

__all__ = ["write_tensors", "TensorFile"]

_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_TORCH = {name: dtype for dtype, name in _DTYPES.items()}


def write_tensors(path: str, tensors: Iterable[tuple[str, torch.Tensor]], metadata: dict[str, str] | None = None) -> None:
    """Write ``(name, tensor)`` pairs to a safetensors file, copying one tensor to host memory at a time.

    The file is written next to ``path`` under a name of this process's own and renamed into place, so a
    reader never sees half a file, and processes on several nodes may write the same (shared) path.
    """
    items = [(name, t.detach()) for name, t in tensors]
    header: dict[str, object] = {}
    offset = 0
    for name, t in items:
        if t.dtype not in _DTYPES:
            raise ValueError(f"cannot store tensor {name!r} of dtype {t.dtype}")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for _, t in items:
            # reshape(-1): a 0-dimensional tensor (a scalar parameter) cannot be viewed as bytes.
            host = t.to("cpu").contiguous().reshape(-1)
            f.write(host.view(torch.uint8).numpy().tobytes() if host.numel() else b"")
    os.replace(tmp, path)


class TensorFile(Mapping):
    """Read-only mapping over a safetensors file that reads a tensor only when it is indexed.

    Args:
        path: The file.
        devices: Optional name -> device to put each tensor on when it is read.
        mapped: Map each tensor's bytes instead of reading them into a new buffer (the default). A mapped
            tensor is private and writable (copy-on-write: writes never reach the file); the file must not
            be truncated in place while such a tensor lives (this module replaces files by renaming). A
            tensor whose offset in the file is not a multiple of its element size, or that is empty, is read.
    """

    def __init__(self, path: str, devices: Mapping[str, torch.device] | None = None, mapped: bool = True):
        self.path = path
        self.devices = dict(devices or {})
        self.mapped = mapped
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
        self._entries = header
        self._data_start = 8 + length

    def __getitem__(self, name: str) -> torch.Tensor:
        entry = self._entries[name]
        start, end = entry["data_offsets"]
        dtype = _TORCH[entry["dtype"]]
        offset = self._data_start + start
        with open(self.path, "rb") as f:
            if os.fstat(f.fileno()).st_size < self._data_start + end:
                raise ValueError(f"{self.path} is truncated: tensor {name!r} is incomplete")
            if self.mapped and end > start and offset % dtype.itemsize == 0:
                flat = _map_bytes(f.fileno(), offset, end - start, dtype)
            else:
                raw = torch.empty(end - start, dtype=torch.uint8)
                f.seek(offset)
                if f.readinto(raw.numpy()) != end - start:
                    raise ValueError(f"{self.path} is truncated: tensor {name!r} is incomplete")
                flat = raw.view(dtype)
        tensor = flat.reshape(entry["shape"])
        device = self.devices.get(name)
        return tensor if device is None else tensor.to(device)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)


def _map_bytes(fd: int, offset: int, length: int, dtype: torch.dtype) -> torch.Tensor:
    """A 1-D tensor over ``length`` bytes of the file at ``offset``, in a private map of its own.

    The map starts at the allocation boundary at or before ``offset`` and lives as long as the tensor
    (which holds the only reference to it).
    """
    base = offset - offset % mmap.ALLOCATIONGRANULARITY
    view = mmap.mmap(fd, offset - base + length, offset=base, access=mmap.ACCESS_COPY)
    return torch.frombuffer(view, dtype=dtype, count=length // dtype.itemsize, offset=offset - base)
