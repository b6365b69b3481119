"""Training run used by the resume / SIGKILL tests: tiny ViT, 4 augmented copies, stability detector.

Writes ``summary.json`` (switch step, parameter checksum, rows seen after a resume) when it finishes.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from helpers import RowRecorder, common_args, image_dataset, tiny_vit
from transformers import TrainerCallback

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer
from hf_critical.augmentation import ImageAugmentationCollator


class SlowDown(TrainerCallback):
    """Gives the test time to kill the process between steps."""

    def __init__(self, delay: float):
        self.delay = delay

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.delay)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--max_steps", type=int, default=24)
    parser.add_argument("--step_delay", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--resume_from", default=None)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    model = tiny_vit()
    recorder = RowRecorder(model, "pixel_values")
    args = CriticalPeriodArguments(
        **common_args(
            cli.output_dir,
            per_device_train_batch_size=4,
            learning_rate=0.05,
            max_steps=cli.max_steps,
            save_strategy="steps",
            save_steps=2,
            logging_steps=2,
            dynamics_every_n_steps=2,
            dynamics_metrics=["gradient_predictability", "layer_rotation"],
            detector="stability",
            detector_metrics=["layer_rotation"],
            detector_window="4",
            detector_warmup="4",
            # Tuned on this run's layer rotation so that it fires mid-run (at step 20 of 24).
            detector_threshold=0.35,
            detector_patience=1,
        )
    )
    collator = ImageAugmentationCollator(policy="affine", copies=4, on_device=True)
    trainer = CriticalPeriodTrainer(
        model=model,
        args=args,
        train_dataset=image_dataset(64),
        data_collator=collator,
        callbacks=[SlowDown(cli.step_delay)] if cli.step_delay else None,
    )
    resume = cli.resume_from or (True if cli.resume else None)
    trainer.train(resume_from_checkpoint=resume)
    period = trainer.critical_period
    summary = {
        "switch_step": None if period is None else period["switch_step"],
        "max_steps": cli.max_steps,
        "batch_size": 4,
        "resumed_from": trainer.dynamics.resume_checkpoint,
        "param_checksum": float(sum(p.double().sum() for p in model.parameters())),
        "rows_after_resume": recorder.rows,
    }
    with open(os.path.join(cli.output_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main()
