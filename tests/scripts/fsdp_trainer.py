"""CriticalPeriodTrainer under the Trainer's FSDP2 (GPUs only: accelerate enables FSDP for CUDA devices).

Each rank writes ``rank{N}.json`` with the metric history (layer rotation and gradient predictability
from local shards, summed across ranks).
"""

from __future__ import annotations

import argparse
import json
import os

from helpers import common_args, text_dataset, tiny_bert

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    cli = parser.parse_args()
    args = CriticalPeriodArguments(
        **{
            **common_args(cli.output_dir, per_device_train_batch_size=8, max_steps=4),
            "use_cpu": False,
            "fsdp": True,
            "fsdp_config": {"version": 2, "reshard_after_forward": True},
            "dynamics_every_n_steps": 2,
            "dynamics_metrics": ["gradient_predictability", "layer_rotation"],
            "detector": "never",
        }
    )
    trainer = CriticalPeriodTrainer(model=tiny_bert(), args=args, train_dataset=text_dataset(64))
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    with open(os.path.join(cli.output_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump({"fsdp": trainer.is_fsdp_enabled, "history": trainer.dynamics.history}, f)


if __name__ == "__main__":
    main()
