"""A 3-step run of tiny BERT with every metric on, for launch tests (exit codes, launcher checks).

``--trainer plain`` runs transformers' Trainer instead, for comparison. Under several processes it
trains with DDP over gloo (``use_cpu=True``).
"""

from __future__ import annotations

import argparse

import torch
from helpers import common_args, text_dataset, tiny_bert
from transformers import Trainer, TrainingArguments

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--trainer", choices=("hf_critical", "plain"), default="hf_critical")
    cli = parser.parse_args()
    torch.set_num_threads(1)
    settings = common_args(cli.output_dir, max_steps=3, per_device_train_batch_size=8, ddp_backend="gloo")
    if cli.trainer == "plain":
        trainer = Trainer(model=tiny_bert(), args=TrainingArguments(**settings), train_dataset=text_dataset())
    else:
        args = CriticalPeriodArguments(**settings, dynamics_every_n_steps=1, detector="fixed", detector_switch_step=2)
        trainer = CriticalPeriodTrainer(model=tiny_bert(), args=args, train_dataset=text_dataset())
    trainer.train()


if __name__ == "__main__":
    main()
