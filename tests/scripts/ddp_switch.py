"""Two-process run (torchrun, gloo) for the same-switch-step test.

Each rank's detector fires at a different step (rank 1 at step 3, rank 0 at step 6), as if its local
metric values differed; the decision is reduced across ranks, so both must switch at step 3. Every
rank writes ``rank{N}.json`` with its switch step and the rows its model received at each step.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from helpers import RowRecorder, common_args, image_dataset, tiny_vit

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer, ImageAugmentationCollator
from hf_critical.detectors import Detector


class FireAtRankStep(Detector):
    name = "fire_at_rank_step_test"

    def __init__(self, steps: dict):
        super().__init__()
        self.steps = steps

    def _args(self):
        return {"steps": self.steps}

    def _observe(self, step, measured):
        return step >= self.steps[str(int(os.environ.get("RANK", "0")))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    model = tiny_vit()
    recorder = RowRecorder(model, "pixel_values")
    args = CriticalPeriodArguments(
        **common_args(
            cli.output_dir,
            per_device_train_batch_size=4,
            max_steps=8,
            ddp_backend="gloo",
            dynamics_every_n_steps=2,
            dynamics_metrics=["gradient_predictability", "layer_rotation"],
            detector="never",
        )
    )
    trainer = CriticalPeriodTrainer(
        model=model,
        args=args,
        train_dataset=image_dataset(96),
        data_collator=ImageAugmentationCollator(policy="affine", copies=2),
        detector=FireAtRankStep({"0": 6, "1": 3}),
    )
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    period = trainer.critical_period
    with open(os.path.join(cli.output_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump({"switch_step": None if period is None else period["switch_step"], "rows": recorder.rows}, f)


if __name__ == "__main__":
    main()
