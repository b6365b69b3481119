"""Layer rotation with the initial weights on disk: mapped reads against plain reads, side by side.

``dynamics_initial_weights="disk"`` (the default) reads each layer's initial weights from
``critical_period_initial_weights.safetensors`` at every measurement. `hf_critical.io.tensor_file.TensorFile`
maps each tensor's bytes (``mapped=True``, the default) instead of reading them into a new buffer
(``mapped=False``, the earlier behaviour). This script writes a model's measured weights to such a file,
then times `hf_critical.metrics.layer_rotation` from each reader, and from the weights in memory
(``dynamics_initial_weights="host"``) as the floor, alternated in one process. The file is in the page
cache in every case (it was just written, as during training). Prints milliseconds per measurement and
the ratios.

    python benchmarks/initial_weights_read.py --model minilm --reps 20
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

import torch
from machine import machine_description
from overhead import one_model_from_command_line

from hf_critical.io.tensor_file import TensorFile, write_tensors
from hf_critical.metrics import layer_rotation
from hf_critical.metrics.layers import select_parameters


def main(argv: list[str] | None = None) -> None:
    options, spec, model = one_model_from_command_line(__doc__.split("\n\n")[0], argv)
    params = select_parameters(model, "weights").parameters
    generator = torch.Generator().manual_seed(0)
    current = {n: p.detach() + 1e-3 * torch.randn(p.shape, generator=generator) for n, p in params.items()}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "initial.safetensors")
        write_tensors(path, params.items())
        in_memory = {n: p.detach().clone() for n, p in params.items()}
        sources = {"plain read": TensorFile(path, mapped=False), "mapped": TensorFile(path), "in memory": in_memory}
        norms = {n: float(torch.dot(t.reshape(-1), t.reshape(-1))) for n, t in in_memory.items()}
        seconds: dict[str, list[float]] = {name: [] for name in sources}
        values = {}
        for _ in range(options.reps):
            for name, source in sources.items():
                started = time.perf_counter()
                values[name] = layer_rotation(source, current, initial_sq_norms=norms).per_layer
                seconds[name].append(time.perf_counter() - started)
        if values["mapped"] != values["plain read"] or values["mapped"] != values["in memory"]:
            raise RuntimeError("the readers gave different rotations")
        size = os.path.getsize(path)
    median = {name: 1000 * statistics.median(s) for name, s in seconds.items()}
    print(f"Machine: {machine_description()}")
    print(f"`{spec.name}`: {len(params)} measured tensors, {size / 2**20:.1f} MiB on disk; median of {options.reps} calls")
    for name, ms in median.items():
        print(f"{name:>10}: {ms:.1f} ms per layer-rotation measurement")
    print(f"plain read / mapped: {median['plain read'] / median['mapped']:.2f}")
    print(f"mapped / in memory: {median['mapped'] / median['in memory']:.2f}")


if __name__ == "__main__":
    main()
