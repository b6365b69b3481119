"""Training runs for the distributed equality and resume tests (torchrun, gloo; or one process).

``--mode full``: two runs one after the other in the same processes, both with 16 samples per
optimizer step in all: per-device batch ``16 / world`` without accumulation (checkpoint at step 4),
then per-device batch ``8 / world`` with 2 accumulation steps, then the first setting on token
classification where ranks hold different numbers of labelled tokens, and on a peft LoRA model (when peft is
installed); then, in the same process group (one
launch fewer), the FSDP2 sharded-metrics check of ``fsdp_metrics.py``. ``--mode stop``: the first run, stopped
right after its checkpoint at step 4. ``--mode resume``: the first run resumed from that checkpoint.

Every run writes, per rank, ``<run>/rank{N}.safetensors`` (final parameters) and ``<run>/rank{N}.json``
(metric history, switch, and, under DDP, gradient confusion next to a naive reference computed here
from all-gathered full gradients).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os

import torch
import torch.distributed as dist
from datasets import Dataset
from helpers import common_args, text_dataset, tiny_bert
from safetensors.torch import save_file
from transformers import BertConfig, BertForTokenClassification, TrainerCallback

from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer
from hf_critical.metrics import gradient_confusion


class NaiveConfusionTrainer(CriticalPeriodTrainer):
    """Records, at every per-rank confusion step, the pairwise cosines of the all-gathered local gradients."""

    reference: list[dict]

    def _reduce_with_confusion(self, model, plan):
        names = self.dynamics.selection.names
        world = dist.get_world_size()
        local = [p.grad.detach().clone() for p in self.dynamics.selection.parameters.values()]
        per_rank = [dict.fromkeys(names) for _ in range(world)]
        for name, g in zip(names, local):
            parts = [torch.empty_like(g) for _ in range(world)]
            dist.all_gather(parts, g)
            for r in range(world):
                per_rank[r][name] = parts[r]
        naive = gradient_confusion(per_rank)
        super()._reduce_with_confusion(model, plan)
        measured = self.dynamics._confusion[plan.step]
        self.reference.append(
            {
                "batch_step": plan.step,
                "naive": naive.value,
                "measured": measured.value,
                "naive_per_layer": naive.per_layer,
                "measured_per_layer": measured.per_layer,
            }
        )


class StopAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
            return control


def token_task() -> tuple[torch.nn.Module, Dataset]:
    """Token classification whose samples hold very different numbers of labelled tokens (the rest -100)."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        max_position_embeddings=64, num_labels=3)
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(1, 100, (64, 12), generator=g)
    labels = torch.randint(0, 3, (64, 12), generator=g)
    keep = torch.arange(12)[None, :] < torch.randint(1, 13, (64, 1), generator=g)  # 1 to 12 labelled tokens
    labels[~keep] = -100
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})
    return BertForTokenClassification(config), data


def train(
    output_dir: str,
    world: int,
    accumulation: int,
    stop_at: int | None = None,
    resume: bool = False,
    tokens: bool = False,
    bf16: bool = False,
    confusion: bool = True,
    lora: bool = False,
) -> None:
    torch.set_num_threads(1)
    model, data = token_task() if tokens else (tiny_bert(), text_dataset(64))
    if lora:  # peft LoRA on query and value; the new head trained in full (modules_to_save)
        import peft

        config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS", lora_dropout=0.0)
        model = peft.get_peft_model(model, config)
    args = CriticalPeriodArguments(
        **common_args(
            output_dir,
            per_device_train_batch_size=16 // world // accumulation,
            gradient_accumulation_steps=accumulation,
            max_steps=8,
            max_grad_norm=0.05,  # clipping active at every step
            save_strategy="steps",
            save_steps=4,
            ddp_backend="gloo" if world > 1 else None,
            dynamics_every_n_steps=2,
            dynamics_metrics="all" if confusion else ["gradient_predictability", "layer_rotation"],
            bf16=bf16,
            detector="stability",
            detector_metrics=["layer_rotation"],
            detector_threshold=10.0,  # every comparison counts as stable: fires at the first one, step 6
            detector_patience=1,
            detector_window="2",
            detector_warmup="2",
        )
    )
    trainer = NaiveConfusionTrainer(
        model=model,
        args=args,
        train_dataset=data,
        callbacks=[StopAt(stop_at)] if stop_at else None,
    )
    trainer.reference = []
    trainer.train(resume_from_checkpoint=True if resume else None)
    rank = int(os.environ.get("RANK", "0"))
    save_file({k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()},
              os.path.join(output_dir, f"rank{rank}.safetensors"))
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "history": trainer.dynamics.history,
                "critical_period": trainer.critical_period,
                "confusion_reference": trainer.reference,
                "global_step": trainer.state.global_step,
            },
            f,
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--mode", choices=["full", "stop", "resume"], default="full")
    cli = parser.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if cli.mode == "full":
        train(os.path.join(cli.output_dir, "batch"), world, accumulation=1)
        train(os.path.join(cli.output_dir, "accumulation"), world, accumulation=2)
        train(os.path.join(cli.output_dir, "tokens"), world, accumulation=1, tokens=True)
        # bf16 autocast and accumulation, with and without per-rank confusion: the same gradients as plain DDP.
        train(os.path.join(cli.output_dir, "bf16"), world, accumulation=2, bf16=True)
        train(os.path.join(cli.output_dir, "bf16_plain"), world, accumulation=2, bf16=True, confusion=False)
        if importlib.util.find_spec("peft") is not None:
            train(os.path.join(cli.output_dir, "lora"), world, accumulation=1, lora=True)
        if world > 1:
            from fsdp_metrics import check

            check(cli.output_dir)
    else:
        train(os.path.join(cli.output_dir, "resumed"), world, 1, stop_at=4 if cli.mode == "stop" else None,
              resume=cli.mode == "resume")


if __name__ == "__main__":
    main()
