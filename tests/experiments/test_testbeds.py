"""What the testbeds add: a class subset of an image set, a small BatchNorm ResNet by name, span cutoff for text."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, tiny_tokenizer

from hf_critical import TextAugmentationCollator
from hf_critical.augmentation import TokenSpanCutoff
from hf_critical.experiments.image_data import _images_dataset, select_classes
from hf_critical.experiments.vit_configs import SMALL_MODEL_CONFIGS, small_model_config

sys.path.insert(0, os.path.join(REPO_ROOT, "recipes"))


def test_a_class_subset_keeps_those_rows_relabelled_in_the_given_order():
    images = np.arange(6 * 2 * 2, dtype=np.float32).reshape(6, 2, 2, 1) / 24
    dataset = _images_dataset(images, np.array([0, 1, 2, 3, 2, 1]), ["a", "b", "c", "d"])
    subset = select_classes(dataset, [2, 1])
    assert subset["label"] == [1, 0, 0, 1]  # rows 1, 2, 4, 5: b -> 1, c -> 0
    assert subset.features["label"].names == ["c", "b"]
    assert np.allclose(np.asarray(subset[1]["image"]), images[2])
    with pytest.raises(ValueError, match="distinct labels in 0..3"):
        select_classes(dataset, [1, 1])
    with pytest.raises(ValueError, match="distinct labels in 0..3"):
        select_classes(dataset, [4])


def test_the_small_resnet_has_batchnorm_and_classifies_cifar_sized_images():
    from transformers import AutoModelForImageClassification

    assert "resnet-cifar" in SMALL_MODEL_CONFIGS and "vit-digits" in SMALL_MODEL_CONFIGS
    config = small_model_config("resnet-cifar", 32, 3, num_labels=10)
    assert config.model_type == "resnet" and config.image_size == 32 and config.hidden_sizes == [16, 32, 64]
    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(config)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    logits = model(pixel_values=torch.randn(4, 3, 32, 32)).logits
    assert logits.shape == (4, 10)
    assert small_model_config("vit-digits", 8, 1).model_type == "vit"
    with pytest.raises(ValueError, match="unknown small model config 'resnet-huge'"):
        small_model_config("resnet-huge", 32, 3)


def test_new_classifier_redraws_only_the_head():
    from run_vit import reset_classifier
    from transformers import AutoModelForImageClassification

    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_config(small_model_config("vit-digits", 8, 1, num_labels=5))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    reset_classifier(model)
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == {"classifier.weight", "classifier.bias"}


def test_span_cutoff_drops_one_contiguous_span_of_tokens():
    tokenizer = tiny_tokenizer()
    cutoff = TokenSpanCutoff(tokenizer, ratio=0.25)
    text = "the film was very good not bad fun"  # 8 word-piece tokens: a span of 2 goes
    tokens = tokenizer.tokenize(text)
    random.seed(0)
    outs = cutoff([text] * 20)
    for out in outs:
        kept = tokenizer.tokenize(out)
        assert len(kept) == len(tokens) - 2
        start = next((i for i, (a, b) in enumerate(zip(kept, tokens)) if a != b), len(kept))
        assert kept == tokens[:start] + tokens[start + 2 :]  # the dropped tokens were adjacent
    assert len(set(outs)) > 1  # the span's start is drawn
    assert cutoff(["fun"]) == ["fun"]  # one token: nothing to cut
    for bad in (0, 1.0, "0.1"):
        with pytest.raises(ValueError, match="`ratio` must be a number in"):
            TokenSpanCutoff(tokenizer, ratio=bad)


def test_span_cutoff_in_the_collator_is_seeded_and_keeps_the_clean_row_after_a_switch():
    tokenizer = tiny_tokenizer()
    features = [{"sentence": "the film was very good not bad fun", "label": 1}, {"sentence": "a bad plot", "label": 0}]

    def collate():
        collator = TextAugmentationCollator(
            tokenizer, augmenter=TokenSpanCutoff(tokenizer), copies=3, seed=7, after_switch="clean"
        )
        return collator, collator(features)

    first_collator, first = collate()
    _, again = collate()
    assert torch.equal(first["input_ids"], again["input_ids"])
    assert first["input_ids"].shape[0] == 6
    lengths = first["attention_mask"].sum(dim=1).tolist()
    assert lengths[:3] == [9, 9, 9]  # [CLS] + 8 tokens - 1 cut + [SEP]
    first_collator.switch()
    clean = first_collator(features)
    assert clean["attention_mask"].sum(dim=1).tolist() == [10, 5]
