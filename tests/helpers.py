"""Tiny models and data sets built from config, shared by the tests (no download, no pretrained weights)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification

#: The test tree mirrors the package (tests/<package>/test_*.py); paths for tests in any folder.
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
SCRIPTS_DIR = os.path.join(TESTS_DIR, "scripts")


def tiny_bert(
    seed: int = 0, num_labels: int = 2, dropout: float = 0.0, vocab_size: int = 100
) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config)


def tiny_vit(seed: int = 0, num_labels: int = 3) -> ViTForImageClassification:
    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=num_labels,
    )
    return ViTForImageClassification(config)


def text_dataset(rows: int = 64, length: int = 12, seed: int = 1) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (rows, length), generator=g)
    labels = torch.randint(0, 2, (rows,), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})


def image_dataset(rows: int = 48, seed: int = 2) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randn(rows, 1, 8, 8, generator=g)
    labels = torch.randint(0, 3, (rows,), generator=g)
    return Dataset.from_dict({"pixel_values": pixels.tolist(), "labels": labels.tolist()}).with_format("torch")


def common_args(output_dir, **overrides) -> dict:
    """Arguments shared by the integration tests: SGD, constant LR, no saving, no reporting."""
    args = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=16,
        learning_rate=0.1,
        optim="sgd",
        lr_scheduler_type="constant",
        max_steps=6,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        seed=0,
        dataloader_drop_last=True,
        disable_tqdm=True,
        use_cpu=True,
    )
    args.update(overrides)
    return args


def read_jsonl(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line, parse_constant=_reject_constant) for line in f]


def _reject_constant(name: str):
    raise AssertionError(f"non-finite constant {name} in JSON")


def dynamics_entries(log_history: list[dict]) -> list[dict]:
    return [h for h in log_history if any(k.startswith("dynamics/") for k in h)]


def jsonl_path(output_dir) -> str:
    return os.path.join(str(output_dir), "dynamics.jsonl")


def tiny_tokenizer():
    """A word-piece tokenizer built offline from letters and a few words (no download)."""
    import string

    from transformers import BertTokenizerFast

    letters = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    words = ["the", "a", "film", "movie", "good", "bad", "is", "was", "very", "not", "plot", "fun"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.digits, *string.punctuation, *letters, *words]
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(dict.fromkeys(vocab))}, do_lower_case=True)


def sentence_dataset(rows: int = 48, seed: int = 3) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    words = ["the", "film", "movie", "is", "was", "very", "not", "good", "bad", "fun", "plot"]
    sentences = []
    for _ in range(rows):
        length = int(torch.randint(3, 9, (1,), generator=g))
        sentences.append(" ".join(words[int(i)] for i in torch.randint(0, len(words), (length,), generator=g)))
    labels = torch.randint(0, 2, (rows,), generator=g).tolist()
    return Dataset.from_dict({"sentence": sentences, "label": labels})


class RowRecorder:
    """Forward pre-hook recording the number of rows the model receives in each training forward pass."""

    def __init__(self, model, field: str):
        self.field = field
        self.rows: list[int] = []
        model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        if module.training:
            self.rows.append(int(kwargs[self.field].shape[0]))


def load_recipe(name: str):
    """Import ``recipes/<name>.py`` as a module (the recipes are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", os.path.join(REPO_ROOT, "recipes", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module
