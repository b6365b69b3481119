"""Cost of a rounding-free layer rotation against the library's, side by side.

`hf_critical.metrics.layer_rotation` takes ``1 - θ0·θt/(|θ0||θt|)`` from float32 dot products, which is
rounding-limited below rotations of about 1e-6 (docs/metrics.md). The alternative measured here is half
the squared distance of the unit vectors, ``|θt/|θt| - θ0/|θ0||² / 2``, computed per layer as this script
does. Both run on the same weights in one process, alternated: a model's weights as ``θ0`` and a slightly
moved copy as ``θt``. Prints the milliseconds per call, the ratio, and both forms' largest error against
float64.

    python benchmarks/rotation_cost.py --model minilm --reps 20
"""

from __future__ import annotations

import statistics
import time

import torch
from machine import machine_description
from overhead import one_model_from_command_line

from hf_critical.metrics import layer_rotation


def unit_vector_rotation(initial: dict, current: dict, initial_sq_norms: dict) -> dict[str, float]:
    """``|θt/|θt| - θ0/|θ0||² / 2`` per layer, one host synchronisation at the end."""
    values = {}
    for name, theta_t in current.items():
        flat_t, flat_0 = theta_t.reshape(-1), initial[name].reshape(-1)
        norm_t = torch.dot(flat_t, flat_t).sqrt()
        difference = flat_t / norm_t - flat_0 / initial_sq_norms[name] ** 0.5
        values[name] = torch.dot(difference, difference) / 2
    return dict(zip(values, torch.stack(list(values.values())).tolist()))


def main(argv: list[str] | None = None) -> None:
    options, spec, model = one_model_from_command_line(__doc__.split("\n\n")[0], argv)
    generator = torch.Generator().manual_seed(0)
    initial = {n: p.detach().clone() for n, p in model.named_parameters() if p.dim() >= 2}
    current = {n: t + 1e-4 * torch.randn(t.shape, generator=generator) for n, t in initial.items()}
    norms = {n: float(torch.dot(t.reshape(-1), t.reshape(-1))) for n, t in initial.items()}
    forms = {
        "unit vectors": lambda: unit_vector_rotation(initial, current, norms),
        "library": lambda: layer_rotation(initial, current, initial_sq_norms=norms).per_layer,
    }
    seconds: dict[str, list[float]] = {name: [] for name in forms}
    for _ in range(options.reps):
        for name, form in forms.items():
            started = time.perf_counter()
            form()
            seconds[name].append(time.perf_counter() - started)
    reference = {}
    for name, theta_t in current.items():
        a, b = initial[name].reshape(-1).double(), theta_t.reshape(-1).double()
        reference[name] = float(1 - torch.dot(a, b) / (a.norm() * b.norm()))
    size = sum(t.numel() for t in initial.values())
    print(f"Machine: {machine_description()}")
    print(f"`{spec.name}`: {len(initial)} weight matrices, {size / 1e6:.1f} M values; median of {options.reps} calls")
    for name, values in seconds.items():
        per_layer = forms[name]()
        worst = max(abs(per_layer[n] - v) / v for n, v in reference.items() if v > 0)
        print(f"{name:>13}: {1000 * statistics.median(values):.1f} ms per call; largest error vs float64 {100 * worst:.2f} %")
    ratio = statistics.median(seconds["unit vectors"]) / statistics.median(seconds["library"])
    print(f"unit vectors / library: {ratio:.2f}")


if __name__ == "__main__":
    main()
