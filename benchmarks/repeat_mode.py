"""Batch augmentation against dataset repetition, with and without a switch, on scikit-learn's digits.

Four runs of the tiny ViT of ``make demo`` (vit-digits, 500 training images, the other 1,297 for
accuracy, batch 64, AdamW 3e-3 cosine, k = 3 random affine copies on the CPU, one process, no
dynamics measured): ``augment_mode`` batch or repeat, with a fixed switch at the end of epoch
``--switch_epoch`` or none. Prints optimizer steps, training rows, wall and CPU seconds of
``train()``, accuracy, and the time each switch saved against its own mode's run without a switch,
next to One Period's arithmetic (k - 1)(E - e) / (kE). CPU seconds are the process's (all its
threads): on a shared machine they move less with the load than wall seconds do.

    PYTHONPATH=. python benchmarks/repeat_mode.py [--epochs 9 --switch_epoch 3 --copies 3 --seed 0]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
from datasets import Dataset
from transformers import ViTForImageClassification

from hf_critical import (
    CriticalPeriodArguments,
    CriticalPeriodTrainer,
    FixedSwitch,
    ImageAugmentationCollator,
    NeverSwitch,
)
from hf_critical.experiments import small_vit_config


def digits(seed: int, train: int = 500):
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(seed).permutation(len(data.target))
    images = torch.tensor(data.images[order] / 16.0, dtype=torch.float32).unsqueeze(1)
    labels = data.target[order].tolist()

    def part(rows):
        return Dataset.from_dict({"pixel_values": images[rows].tolist(), "labels": [labels[i] for i in rows]}).with_format(
            "torch"
        )

    return part(list(range(train))), part(list(range(train, len(labels))))


def run(mode: str, switch_epoch: int | None, cli) -> dict:
    train, test = digits(cli.seed)
    torch.manual_seed(cli.seed)
    model = ViTForImageClassification(small_vit_config("vit-digits", 8, 1, num_labels=10))
    with tempfile.TemporaryDirectory() as folder:
        args = CriticalPeriodArguments(
            output_dir=folder, per_device_train_batch_size=64, per_device_eval_batch_size=256,
            num_train_epochs=cli.epochs, learning_rate=0.003, weight_decay=0.05, warmup_steps=0.05,
            lr_scheduler_type="cosine", logging_steps=10_000, save_strategy="no", report_to=[], disable_tqdm=True,
            use_cpu=True, seed=cli.seed, dynamics_metrics="none", detector="never", augment_mode=mode,
        )
        detector = FixedSwitch(epoch=switch_epoch) if switch_epoch is not None else NeverSwitch()
        collator = ImageAugmentationCollator(policy="affine", copies=cli.copies, on_device=True, seed=cli.seed)
        trainer = CriticalPeriodTrainer(
            model=model, args=args, train_dataset=train, eval_dataset=test, data_collator=collator, detector=detector
        )
        rows = [0]
        model.register_forward_pre_hook(
            lambda m, a, kw: rows.__setitem__(0, rows[0] + kw["pixel_values"].shape[0]) if m.training else None,
            with_kwargs=True,
        )
        wall, cpu = time.perf_counter(), time.process_time()
        trainer.train()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        accuracy = float(
            np.mean(np.argmax(trainer.predict(test).predictions, axis=-1) == np.array(test["labels"]))
        )
    return {"mode": mode, "switch": switch_epoch, "steps": trainer.state.global_step, "rows": rows[0],
            "wall": wall, "cpu": cpu, "accuracy": accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--switch_epoch", type=int, default=3)
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    cli = parser.parse_args()
    torch.set_num_threads(2)
    results = [run(mode, switch, cli) for mode in ("batch", "repeat") for switch in (None, cli.switch_epoch)]
    k, epochs, e = cli.copies, cli.epochs, cli.switch_epoch
    print(f"digits, vit-digits, k={k}, E={epochs}, switch after epoch e={e} (fixed), seed {cli.seed}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"One Period's arithmetic (repeat mode): (k-1)(E-e)/(kE) = {(k - 1) * (epochs - e) / (k * epochs):.1%}")
    print("| mode | switch | steps | rows | wall s | CPU s | accuracy | wall saved | CPU saved |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        base = next(b for b in results if b["mode"] == r["mode"] and b["switch"] is None)
        saved = ("", "") if r is base else (f"{1 - r['wall'] / base['wall']:.1%}", f"{1 - r['cpu'] / base['cpu']:.1%}")
        switch = "none" if r["switch"] is None else f"epoch {r['switch']}"
        print(f"| {r['mode']} | {switch} | {r['steps']} | {r['rows']:,} | {r['wall']:.1f} | {r['cpu']:.1f} | "
              f"{r['accuracy']:.1%} | {saved[0]} | {saved[1]} |")


if __name__ == "__main__":
    main()
