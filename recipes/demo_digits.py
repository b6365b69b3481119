"""Demo: a tiny ViT from config on scikit-learn's digits, k=4 augmented copies until the critical period ends.

Runs offline on 2 CPU cores (`make demo`):

    python recipes/demo_digits.py --output_dir outputs/demo

Each batch of 64 digits becomes 256 rows (4 random affine copies of each) until the stability
detector sees layer rotation stop changing; from the next optimizer step on, every batch holds the
64 clean digits. Prints where the detector fired, the accuracy and the train time, and writes
``dynamics.jsonl`` and ``dynamics.png`` (the three metrics, the switch marked) to the output folder.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from datasets import Dataset
from sklearn.datasets import load_digits
from transformers import ViTConfig, ViTForImageClassification

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer, ImageAugmentationCollator
from hf_critical.plotting import plot_dynamics


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/demo")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--train_size", type=int, default=500, help="digits used for training; the rest is the test set")
    parser.add_argument("--every_n_steps", type=int, default=2, help="measure the metrics every N optimizer steps")
    parser.add_argument("--copies", type=int, default=4, help="augmented copies per digit before the switch")
    parser.add_argument("--detector", default="stability", help="stability, fixed, never, fukase_rotation_angle, ...")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def digits_splits(train_size: int, seed: int) -> tuple[Dataset, Dataset]:
    digits = load_digits()
    if not 0 < train_size < len(digits.target):
        raise ValueError(f"--train_size must be between 1 and {len(digits.target) - 1}, got {train_size}")
    order = np.random.default_rng(seed).permutation(len(digits.target))
    pixels = (digits.images.astype(np.float32) / 16.0 - 0.5) / 0.5  # [0, 16] -> [-1, 1]
    pixels = pixels[:, None, :, :]

    def subset(indices):
        return Dataset.from_dict({"pixel_values": pixels[indices], "labels": digits.target[indices]}).with_format("torch")

    return subset(order[:train_size]), subset(order[train_size:])


def tiny_vit(seed: int) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=10,
    )
    return ViTForImageClassification(config)


def accuracy(eval_prediction) -> dict[str, float]:
    logits, labels = eval_prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def main() -> None:
    cli = parse_args()
    train, test = digits_splits(cli.train_size, cli.seed)
    args = CriticalPeriodArguments(
        output_dir=cli.output_dir,
        num_train_epochs=cli.epochs,
        per_device_train_batch_size=64,
        per_device_eval_batch_size=256,
        learning_rate=3e-3,
        weight_decay=0.05,
        warmup_steps=0.05,
        lr_scheduler_type="cosine",
        logging_steps=20,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        seed=cli.seed,
        disable_tqdm=True,
        dynamics_every_n_steps=cli.every_n_steps,
        detector=cli.detector,
        detector_metrics=["layer_rotation"],
        detector_window="1ep",
        detector_warmup="2ep",
        detector_threshold=0.05,
        detector_patience=2,
        detector_switch_epoch=10.0 if cli.detector == "fixed" else None,
        fukase_check_every_epochs=5,
        augment_copies=cli.copies,
    )
    # The setting that helped on digits (../shared/ENVIRONMENT.md): small affine jitter, on the training device.
    collator = ImageAugmentationCollator(policy="affine", copies=cli.copies, value_range=(-1.0, 1.0), seed=cli.seed)
    trainer = CriticalPeriodTrainer(
        model=tiny_vit(cli.seed),
        args=args,
        train_dataset=train,
        eval_dataset=test,
        data_collator=collator,
        compute_metrics=accuracy,
    )
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    jsonl = os.path.join(cli.output_dir, "dynamics.jsonl")
    period = trainer.critical_period
    png = plot_dynamics(
        jsonl,
        os.path.join(cli.output_dir, "dynamics.png"),
        switch_step=None if period is None else period["switch_step"],
        title=f"tiny ViT on digits, k={cli.copies} until the switch",
    )

    history = trainer.dynamics.history
    print("\n== hf_critical demo: tiny ViT (from config) on scikit-learn digits ==")
    print(f"train / test images      : {len(train)} / {len(test)}")
    print(f"optimizer steps          : {trainer.state.global_step} ({cli.epochs} epochs)")
    print(f"train time               : {train_seconds:.1f} s")
    if period is None:
        print(f"critical period          : not detected; {cli.copies} copies throughout")
    else:
        print(
            f"critical period ended    : step {period['switch_step']} (epoch {period['switch_epoch']:.2f}), "
            f"{period['detector']}; {period['copies_before']} -> {period['copies_after']} copies"
        )
    print(f"test accuracy            : {metrics['eval_accuracy']:.4f}")
    print(f"measurements             : {len(history)} (every {cli.every_n_steps} steps)")
    for key in ("gradient_confusion", "gradient_predictability", "layer_rotation"):
        values = [h[f"dynamics/{key}"] for h in history if f"dynamics/{key}" in h]
        if values:
            print(f"{key:<25}: first {values[0]:+.4f}  last {values[-1]:+.4f}")
    print(f"per-layer values         : {jsonl}")
    print(f"plot                     : {png}")


if __name__ == "__main__":
    main()
