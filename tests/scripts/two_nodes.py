"""Two "nodes" on one machine, each with a disk of its own: one torchrun per node, one process each.

Each node's process writes into ``<root>/node<GROUP_RANK>/`` only, as on a cluster whose nodes share
no filesystem (``save_on_each_node=True``, as the Trainer asks for there). The ``full`` run trains 6 steps with a
checkpoint every 2; then, in the same processes, the ``resume`` run resumes each node from its own
copy of ``checkpoint-4`` into a new folder.
Each node writes ``<node folder>/result.json``: its metric history, final parameters' checksum and
the files it found in its folder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import torch
from helpers import common_args, text_dataset, tiny_bert

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer


def _run(root: str, mode: str, node: int) -> None:
    folder = os.path.join(root, mode, f"node{node}")
    args = CriticalPeriodArguments(
        **common_args(
            folder,
            per_device_train_batch_size=8,
            max_steps=6,
            save_strategy="steps",
            save_steps=2,
            save_on_each_node=True,
            dynamics_every_n_steps=1,
            detector="fixed",
            detector_switch_step=5,
            ddp_backend="gloo",
        )
    )
    trainer = CriticalPeriodTrainer(model=tiny_bert(), args=args, train_dataset=text_dataset())
    resume = None
    if mode == "resume":
        # This node's own copy of the full run's checkpoint, moved onto this node's disk.
        resume = os.path.join(root, "full", f"node{node}", "checkpoint-4")
        if node > 0:
            # transformers 5.24 writes the model files (config, weights) on node 0 only, even with
            # save_on_each_node: a user must copy them to the other nodes to resume there. hf_critical's
            # own files (initial weights, gradient snapshot) are on every node; nothing else is copied.
            source = os.path.join(root, "full", "node0", "checkpoint-4")
            for name in ("config.json", "model.safetensors"):
                if not os.path.exists(os.path.join(resume, name)):
                    shutil.copy(os.path.join(source, name), os.path.join(resume, name))
    trainer.train(resume_from_checkpoint=resume)
    checkpoint = os.path.join(folder, "checkpoint-4")
    result = {
        "node": node,
        "world_size": trainer.args.world_size,
        "history": trainer.dynamics.history,
        "switch_step": trainer.critical_period["switch_step"],
        "checksum": float(sum(p.double().sum() for p in trainer.model.parameters())),
        "files": sorted(os.listdir(folder)),
        "checkpoint_files": sorted(os.listdir(checkpoint)) if os.path.isdir(checkpoint) else [],
    }
    with open(os.path.join(folder, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    cli = parser.parse_args()
    torch.set_num_threads(1)
    node = int(os.environ["GROUP_RANK"])
    for mode in ("full", "resume"):  # in the same processes: one launch per node
        _run(cli.root, mode, node)


if __name__ == "__main__":
    main()
