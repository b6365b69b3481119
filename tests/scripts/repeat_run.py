"""A repeat-mode run (augment_mode="repeat") for the resume, SIGKILL and two-process tests.

24 images, k = 3 passes per epoch until the switch (a fixed detector at ``--switch_step``), 3 epochs,
batch ``--batch_size`` per process. Every rank writes ``rank{N}.json``: per optimizer step the samples
its model received and whether each row was the clean image or its augmentation (the policy is a
deterministic horizontal flip, so every row can be traced back to its sample), the logged learning
rates and epochs, the switch, and the final parameters (``rank{N}.safetensors``).

    python tests/scripts/repeat_run.py --output_dir /tmp/repeat [--resume] [--step_delay 0.15]
    torchrun --nproc_per_node 2 tests/scripts/repeat_run.py --output_dir /tmp/repeat --batch_size 4
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from helpers import common_args, image_dataset, tiny_vit
from transformers import TrainerCallback

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer, ImageAugmentationCollator

NUM_SAMPLES = 24


def flip(images: torch.Tensor) -> torch.Tensor:
    """The augmentation: a horizontal flip (deterministic, so a row tells which sample it came from)."""
    return images.flip(-1)


class SampleRecorder:
    """Forward pre-hook: for every training forward, (sample, augmented) of each row."""

    def __init__(self, model, dataset):
        self.clean = {dataset[i]["pixel_values"].numpy().tobytes(): i for i in range(len(dataset))}
        self.flipped = {flip(dataset[i]["pixel_values"]).numpy().tobytes(): i for i in range(len(dataset))}
        self.steps: list[list[list]] = []
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if not module.training:
            return
        rows = []
        for image in kwargs["pixel_values"]:
            key = image.detach().numpy().tobytes()
            rows.append([self.clean[key], False] if key in self.clean else [self.flipped[key], True])
        self.steps.append(rows)


class Delay(TrainerCallback):
    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_step_end(self, args, state, control, **kwargs):
        time.sleep(self.seconds)


def run(
    output_dir: str,
    batch_size: int = 4,
    switch_step: int = 9,
    save_steps: int = 7,
    step_delay: float = 0.0,
    resume: str | bool | None = None,
    **overrides,
) -> dict:
    """Train, write rank{N}.json and rank{N}.safetensors into ``output_dir``, and return the result.

    ``overrides``: more `CriticalPeriodArguments` (e.g. DataLoader workers).
    """
    dataset = image_dataset(NUM_SAMPLES)
    model = tiny_vit()
    recorder = SampleRecorder(model, dataset)
    args = CriticalPeriodArguments(
        **common_args(
            output_dir,
            per_device_train_batch_size=batch_size,
            max_steps=-1,
            num_train_epochs=3,
            lr_scheduler_type="cosine",
            warmup_steps=0.1,
            save_strategy="steps",
            save_steps=save_steps,
            ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
            dynamics_metrics="none",
            detector="fixed",
            detector_switch_step=switch_step,
            augment_mode="repeat",
            augment_copies=3,
        )
        | overrides
    )
    trainer = CriticalPeriodTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=ImageAugmentationCollator(policy=flip, copies=3, on_device=False, after_switch="clean"),
        callbacks=[Delay(step_delay)] if step_delay else None,
    )
    trainer.train(resume_from_checkpoint=resume)
    rank = trainer.args.process_index
    logs = [h for h in trainer.state.log_history if "loss" in h]
    result = {
        "steps": recorder.steps,
        "first_step": trainer.state.global_step - len(recorder.steps) + 1,
        "learning_rate": {str(h["step"]): h["learning_rate"] for h in logs},
        "epoch": {str(h["step"]): h["epoch"] for h in logs},
        "critical_period": trainer.critical_period,
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
    }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    save_file(state, os.path.join(output_dir, f"rank{rank}.safetensors"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--switch_step", type=int, default=9)
    parser.add_argument("--save_steps", type=int, default=7)
    parser.add_argument("--step_delay", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    cli = parser.parse_args()
    torch.set_num_threads(1)
    run(cli.output_dir, cli.batch_size, cli.switch_step, cli.save_steps, cli.step_delay, True if cli.resume else None)


if __name__ == "__main__":
    main()
