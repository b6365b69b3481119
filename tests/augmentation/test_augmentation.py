"""k-copy augmentation collators: layout, the shared switch flag in DataLoader workers, bad inputs."""

from __future__ import annotations

import pickle
import random
import string

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from transformers import BertTokenizerFast

from hf_critical.augmentation import (
    AUGMENT_ON_DEVICE_KEY,
    IMAGE_POLICIES,
    ROWS_PER_SAMPLE_KEY,
    SEED_KEY,
    SINGLE_KEY,
    AugmentationCollator,
    ImageAugmentationCollator,
    RandomChoiceTextAugmenter,
    TextAugmentationCollator,
    default_text_augmenter,
)

SENTENCES = [
    "the film was a joy to watch from start to end",
    "a dull and lifeless story with no heart",
    "i liked the actors but the plot was thin",
    "",
    "great music",
]
WORDS = "the film was a joy to watch from start end dull and lifeless story with no heart i liked actors but plot thin great music".split()


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizerFast:
    """A word-piece tokenizer built offline: whole test words plus single letters, so typos stay visible."""
    letters = list(string.ascii_lowercase) + ["##" + c for c in string.ascii_lowercase]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.digits, *string.punctuation, *letters]
    vocab += [w for w in dict.fromkeys(WORDS) if w not in vocab]
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)


class ReverseWords:
    """Deterministic callable augmenter: reverses the word order (picklable, module level)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, texts):
        self.calls += 1
        return [" ".join(reversed(t.split())) for t in texts]

    def __repr__(self):
        return "ReverseWords()"


class RandomLetter:
    """nlpaug-style augmenter (``augment(text) -> [text]``) that appends a random letter."""

    def augment(self, text):
        return [text + " " + random.choice(string.ascii_lowercase)]


def _features(sentences=SENTENCES, labels=None):
    labels = labels if labels is not None else [i % 2 for i in range(len(sentences))]
    return [{"sentence": s, "label": y, "idx": i} for i, (s, y) in enumerate(zip(sentences, labels))]


def _decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=True)


def _digits(n: int = 6, seed: int = 0) -> torch.Tensor:
    """Digit-like 8x8 images: values 0..16 (as sklearn's digits), a bright stroke on a dark ground."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 8, 8)
    for i in range(n):
        col = int(torch.randint(2, 6, (1,), generator=g))
        images[i, 0, 1:7, col] = 16.0
        images[i, 0, 1, col - 1 : col + 2] = torch.randint(4, 17, (3,), generator=g).float()
    return images


# ---- base class ------------------------------------------------------------------------------------


@pytest.mark.parametrize("copies", [0, -1, True, 2.0, "4", None])
def test_copies_must_be_positive_int(copies) -> None:
    with pytest.raises(ValueError, match="copies"):
        AugmentationCollator(copies)


def test_settings_checked_and_switch_flag() -> None:
    with pytest.raises(ValueError, match="after_switch"):
        AugmentationCollator(2, after_switch="none")
    with pytest.raises(ValueError, match="original_first"):
        AugmentationCollator(1, original_first=True)
    with pytest.raises(ValueError, match="seed"):
        AugmentationCollator(2, seed=-3)
    collator = AugmentationCollator(3)
    assert collator._switched.is_shared()
    assert not collator.switched and collator.rows_per_sample == 3
    collator.switch()
    assert collator.switched and collator.rows_per_sample == 1
    collator.reset()
    assert collator.rows_per_sample == 3
    assert "copies=3" in repr(collator) and "after_switch='augmented'" in repr(collator)


# ---- text ------------------------------------------------------------------------------------------


def test_text_layout_is_sample_major(tokenizer) -> None:
    collator = TextAugmentationCollator(tokenizer, augmenter=ReverseWords(), copies=3)
    features = _features()
    batch = collator(features)
    k, b = 3, len(features)
    assert batch[ROWS_PER_SAMPLE_KEY] == k
    assert batch["input_ids"].shape[0] == b * k and batch["attention_mask"].shape == batch["input_ids"].shape
    assert batch["labels"].tolist() == [f["label"] for f in features for _ in range(k)]
    assert batch["labels"].dtype == torch.long
    for i, f in enumerate(features):
        expected = " ".join(reversed(f["sentence"].split()))
        for c in range(k):
            assert _decode(tokenizer, batch["input_ids"][i * k + c]) == expected
    assert collator.augmenter.calls == k  # one call per copy, the batch's texts at once
    assert "idx" not in batch


def test_text_original_first_and_clean_single(tokenizer) -> None:
    collator = TextAugmentationCollator(tokenizer, augmenter=ReverseWords(), copies=2, original_first=True, after_switch="clean")
    features = _features()
    batch = collator(features)
    single = batch[SINGLE_KEY]
    assert set(single) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert single["input_ids"].shape[0] == len(features)
    for i, f in enumerate(features):
        assert _decode(tokenizer, batch["input_ids"][2 * i]) == f["sentence"]
        assert _decode(tokenizer, batch["input_ids"][2 * i + 1]) == " ".join(reversed(f["sentence"].split()))
        assert _decode(tokenizer, single["input_ids"][i]) == f["sentence"]
    assert single["labels"].tolist() == [f["label"] for f in features]


def test_text_single_padded_on_its_own(tokenizer) -> None:
    # An augmenter that lengthens every text: the single (clean) view must not carry the extra padding.
    collator = TextAugmentationCollator(tokenizer, augmenter=lambda ts: [t + " great music great music" for t in ts], after_switch="clean")
    batch = collator(_features())
    assert batch[SINGLE_KEY]["input_ids"].shape[1] == batch["input_ids"].shape[1] - 4


def test_text_augmented_single_is_first_augmented_copy(tokenizer) -> None:
    for original_first, first_aug in ((False, 0), (True, 1)):
        collator = TextAugmentationCollator(
            tokenizer,
            augmenter=RandomLetter(),
            copies=3,
            after_switch="augmented",
            original_first=original_first,
            seed=0,
        )
        batch = collator(_features())
        single = batch[SINGLE_KEY]
        for i in range(len(SENTENCES)):
            assert _decode(tokenizer, single["input_ids"][i]) == _decode(
                tokenizer, batch["input_ids"][3 * i + first_aug]
            )


def test_text_after_switch(tokenizer) -> None:
    features = _features()
    clean = TextAugmentationCollator(tokenizer, augmenter=ReverseWords(), copies=4, after_switch="clean")
    clean.switch()
    batch = clean(features)
    assert batch[ROWS_PER_SAMPLE_KEY] == 1 and SINGLE_KEY not in batch
    assert [_decode(tokenizer, ids) for ids in batch["input_ids"]] == [f["sentence"] for f in features]
    augmented = TextAugmentationCollator(tokenizer, augmenter=ReverseWords(), copies=4, after_switch="augmented")
    augmented.switch()
    batch = augmented(features)
    assert batch["input_ids"].shape[0] == len(features) and SINGLE_KEY not in batch
    assert _decode(tokenizer, batch["input_ids"][0]) == " ".join(reversed(SENTENCES[0].split()))
    # copies=1 before any switch: plain one-copy augmentation
    # (it carries its clean view: a batch prefetched before a switch to clean trains on that)
    one = TextAugmentationCollator(tokenizer, augmenter=ReverseWords(), copies=1, after_switch="clean")
    batch = one(features)
    assert batch[ROWS_PER_SAMPLE_KEY] == 1
    assert [_decode(tokenizer, ids) for ids in batch[SINGLE_KEY]["input_ids"]] == [f["sentence"] for f in features]
    assert _decode(tokenizer, batch["input_ids"][0]) == " ".join(reversed(SENTENCES[0].split()))


def test_text_pairs_and_float_labels(tokenizer) -> None:
    augmenter = ReverseWords()
    collator = TextAugmentationCollator(
        tokenizer, augmenter=augmenter, copies=2, text_fields=("sentence1", "sentence2"), max_length=12,
        after_switch="clean",
    )
    features = [
        {"sentence1": "the film was great", "sentence2": "a joy to watch", "label": 4.2},
        {"sentence1": "dull story", "sentence2": "no heart at all in the plot and a thin end", "label": 1.0},
    ]
    batch = collator(features)
    assert augmenter.calls == 4  # per copy and per field
    assert batch["labels"].dtype == torch.float32
    assert batch["labels"].tolist() == pytest.approx([4.2, 4.2, 1.0, 1.0])
    assert batch["input_ids"].shape == (4, 12)  # truncated to max_length
    row = batch["input_ids"][0].tolist()
    assert row.count(tokenizer.sep_token_id) == 2 and batch["token_type_ids"][0].max() == 1
    assert tokenizer.decode(row, skip_special_tokens=False).startswith("[CLS] great was film the [SEP] watch to joy a")
    single = batch[SINGLE_KEY]
    assert _decode(tokenizer, single["input_ids"][0]) == "the film was great a joy to watch"
    assert single["labels"].dtype == torch.float32


def test_text_padding_max_length(tokenizer) -> None:
    collator = TextAugmentationCollator(
        tokenizer, augmenter=ReverseWords(), copies=2, max_length=16, padding="max_length"
    )
    batch = collator(_features())
    assert batch["input_ids"].shape == (10, 16) and batch[SINGLE_KEY]["input_ids"].shape == (5, 16)


def test_default_augmenter_kinds_choose_its_operations() -> None:
    words = default_text_augmenter(("word_swap", "word_delete"))
    assert "KeyboardAug" not in repr(words) and "action='swap'" in repr(words) and "action='delete'" in repr(words)
    assert len(words.augmenters) == 2
    with pytest.raises(ValueError, match=r"`kinds` must be a non-empty subset of .*got \['synonym'\]"):
        default_text_augmenter(("synonym",))
    with pytest.raises(ValueError, match="`kinds` must be a non-empty subset"):
        default_text_augmenter(())


def test_default_augmenter_changes_texts_and_keeps_count(tokenizer) -> None:
    augmenter = default_text_augmenter()
    assert isinstance(augmenter, RandomChoiceTextAugmenter)
    assert "KeyboardAug" in repr(augmenter) and "action='swap'" in repr(augmenter) and "delete" in repr(augmenter)
    texts = SENTENCES * 4
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(0)
    np.random.seed(0)
    try:
        out = augmenter(texts)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    assert len(out) == len(texts) and all(isinstance(t, str) for t in out)
    assert out[3] == "" and out[8] == ""  # empty strings are left alone
    assert sum(a != b for a, b in zip(texts, out)) >= len(texts) // 2
    # in the collator: nlpaug's [] for an empty string keeps the empty string; copies of one sample differ
    collator = TextAugmentationCollator(tokenizer, copies=4, seed=3)
    assert "RandomChoiceTextAugmenter" in repr(collator)
    batch = collator(_features())
    rows = [_decode(tokenizer, ids) for ids in batch["input_ids"]]
    assert rows[12:16] == [""] * 4
    assert len(set(rows[0:4])) > 1


def test_text_seed_reproducible_and_restores_global_rng(tokenizer) -> None:
    features = _features()
    first = TextAugmentationCollator(tokenizer, augmenter=RandomLetter(), copies=3, seed=7)
    second = TextAugmentationCollator(tokenizer, augmenter=RandomLetter(), copies=3, seed=7)
    random.seed(123)
    state = random.getstate()
    a1 = first(features)
    first.set_epoch(1)
    a2 = first(features)
    assert random.getstate() == state
    # A pure function of (seed, epoch, texts): no call counter, so a resumed run draws the same texts.
    b2 = second.__class__(tokenizer, augmenter=RandomLetter(), copies=3, seed=7)
    b2.set_epoch(1)
    b1, b2 = second(features), b2(features)
    assert torch.equal(a1["input_ids"], b1["input_ids"]) and torch.equal(a2["input_ids"], b2["input_ids"])
    assert torch.equal(second(features)["input_ids"], b1["input_ids"])  # the same batch again, same epoch
    assert not torch.equal(a1["input_ids"], a2["input_ids"])  # a new draw in a new epoch
    assert not torch.equal(first(features[:3])["input_ids"], a2["input_ids"][:9])  # another batch, new draws
    rows = [_decode(tokenizer, ids) for ids in a1["input_ids"][:3]]
    assert len(set(rows)) > 1  # the copies of one sample differ


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"text_fields": ()}, "text_fields"),
        ({"text_fields": ("a", "b", "c")}, "text_fields"),
        ({"label_field": ""}, "label_field"),
        ({"padding": "max_length"}, "max_length"),
        ({"padding": "do_not_pad"}, "padding"),
        ({"max_length": 0}, "max_length"),
        ({"augmenter": 42}, "augmenter"),
        ({"after_switch": "off"}, "after_switch"),
        ({"copies": 0}, "copies"),
    ],
)
def test_text_bad_settings(tokenizer, kwargs, match) -> None:
    kwargs.setdefault("augmenter", ReverseWords())
    with pytest.raises(ValueError, match=match):
        TextAugmentationCollator(tokenizer, **kwargs)


@pytest.mark.parametrize(
    "features, match",
    [
        ([], "non-empty"),
        ([{"sentence": "ok", "label": 0}, "not a dict"], r"features\[1\]"),
        ([{"sentence": "ok", "label": 0}, {"label": 1}], r"'sentence' is missing in row 1"),
        ([{"sentence": None, "label": 0}], r"'sentence' in row 0 must be a string"),
        ([{"sentence": 3, "label": 0}], r"'sentence' in row 0 must be a string"),
        ([{"sentence": "ok"}], r"'label' is missing in row 0"),
        ([{"sentence": "ok", "label": 1}, {"sentence": "ok", "label": None}], r"'label' is None in row 1"),
        ([{"sentence": "ok", "label": "pos"}], r"'label' in row 0 is a string"),
    ],
)
def test_text_bad_features(tokenizer, features, match) -> None:
    collator = TextAugmentationCollator(tokenizer, augmenter=ReverseWords(), copies=2)
    with pytest.raises(ValueError, match=match):
        collator(features)


def test_text_second_field_missing(tokenizer) -> None:
    collator = TextAugmentationCollator(
        tokenizer, augmenter=ReverseWords(), copies=2, text_fields=("premise", "hypothesis")
    )
    with pytest.raises(ValueError, match=r"'hypothesis' in row 0"):
        collator([{"premise": "a", "hypothesis": None, "label": 0}])


class _ListAugmenter:
    def __init__(self, result):
        self.result = result

    def augment(self, text):
        return self.result

    def __repr__(self):
        return f"_ListAugmenter({self.result!r})"


@pytest.mark.parametrize(
    "augmenter, match",
    [
        (lambda texts: texts[:-1], r"returned 3 items for 4 texts"),
        (lambda texts: texts + ["extra"], r"returned 5 items for 4 texts"),
        (lambda texts: [1] * len(texts), r"non-strings \[1, 1, 1, 1\]"),
        (lambda texts: "one string", r"returned str items"),
        (_ListAugmenter([]), r"_ListAugmenter\(\[\]\) returned \[\]"),
        (_ListAugmenter([5]), r"_ListAugmenter\(\[5\]\) returned \[5\]"),
        (_ListAugmenter(None), r"returned None"),
    ],
)
def test_text_bad_augmenter_output(tokenizer, augmenter, match) -> None:
    collator = TextAugmentationCollator(tokenizer, augmenter=augmenter, copies=2)
    with pytest.raises(ValueError, match=match):
        collator(_features())  # 4 non-empty texts (the empty one is never passed)


def test_text_flow_output_takes_first_element(tokenizer) -> None:
    collator = TextAugmentationCollator(tokenizer, augmenter=_ListAugmenter(["great music", "thin plot"]), copies=2)
    batch = collator(_features())
    assert _decode(tokenizer, batch["input_ids"][0]) == "great music"
    assert _decode(tokenizer, batch["input_ids"][6]) == ""  # empty text: not augmented


# ---- images ----------------------------------------------------------------------------------------


def _image_features(images: torch.Tensor, labels=None):
    labels = labels if labels is not None else list(range(len(images)))
    return [{"pixel_values": img, "labels": y} for img, y in zip(images, labels)]


@pytest.mark.parametrize("policy", IMAGE_POLICIES)
def test_each_policy_on_digit_like_images(policy) -> None:
    images = _digits(6)
    collator = ImageAugmentationCollator(policy=policy, copies=4, value_range=(0.0, 16.0), seed=0, on_device=False, after_switch="clean")
    batch = collator(_image_features(images))
    out = batch["pixel_values"]
    assert out.shape == (24, 1, 8, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.min() >= -1e-4 and out.max() <= 16.0 + 1e-4  # mapped back to the data's value range
    assert batch["labels"].tolist() == [i for i in range(6) for _ in range(4)]
    copies = out.view(6, 4, -1)
    for i in range(6):
        assert len({tuple(c.tolist()) for c in copies[i]}) > 1, f"{policy}: all copies of sample {i} are identical"
    assert torch.equal(batch[SINGLE_KEY]["pixel_values"], images)


@pytest.mark.parametrize("policy", ["trivial", "rand"])
def test_color_policies_on_rgb(policy) -> None:
    images = torch.rand(8, 3, 16, 16)
    collator = ImageAugmentationCollator(policy=policy, copies=3, seed=1)
    out = collator.augment_batch({"pixel_values": images, "labels": torch.arange(8)})["pixel_values"]
    assert out.shape == (24, 3, 16, 16) and 0.0 <= out.min() and out.max() <= 1.0
    assert not torch.equal(out[0::3], images)


def test_image_on_device_collate_then_augment_batch() -> None:
    images = _digits(5)
    collator = ImageAugmentationCollator(policy="affine", copies=3, value_range=(0, 16), seed=0, after_switch="clean")
    clean = collator(_image_features(images.numpy(), labels=[0.5] * 5))  # numpy input, float labels
    assert clean[ROWS_PER_SAMPLE_KEY] == 1 and clean[AUGMENT_ON_DEVICE_KEY] is True
    assert torch.equal(clean["pixel_values"], images) and clean["labels"].dtype == torch.float32
    clean["meta"] = "kept"
    before = {k: v.clone() if torch.is_tensor(v) else v for k, v in clean.items()}
    batch = collator.augment_batch(clean)
    assert all(torch.equal(clean[k], v) if torch.is_tensor(v) else clean[k] == v for k, v in before.items())
    assert AUGMENT_ON_DEVICE_KEY not in batch and batch["meta"] == "kept"
    assert batch[ROWS_PER_SAMPLE_KEY] == 3 and batch["pixel_values"].shape == (15, 1, 8, 8)
    assert torch.equal(batch[SINGLE_KEY]["pixel_values"], images)
    assert set(batch[SINGLE_KEY]) == {"pixel_values", "labels", "meta"}
    two = collator.augment_batch(clean, copies=2)
    assert two[ROWS_PER_SAMPLE_KEY] == 2 and two["labels"].shape == (10,)
    one = collator.augment_batch(clean, copies=1)  # 1 before the switch: plain one-copy augmentation
    assert not torch.equal(one["pixel_values"], images) and torch.equal(one[SINGLE_KEY]["pixel_values"], images)
    collator.switch()
    after = collator.augment_batch(clean)
    assert after[ROWS_PER_SAMPLE_KEY] == 1 and torch.equal(after["pixel_values"], images)
    assert torch.equal(collator.augment_batch(clean, copies=1)["pixel_values"], images)  # as the trainer calls it
    with pytest.raises(ValueError, match="copies"):
        collator.augment_batch(clean, copies=0)


def test_image_original_first_and_augmented_single() -> None:
    images = torch.rand(4, 3, 8, 8)
    collator = ImageAugmentationCollator(
        policy="crop_flip", copies=3, original_first=True, after_switch="augmented", seed=2
    )
    batch = collator.augment_batch({"pixel_values": images, "labels": torch.arange(4)})
    out = batch["pixel_values"]
    assert torch.equal(out[0::3], images)  # exact originals at copy 0
    assert torch.equal(batch[SINGLE_KEY]["pixel_values"], out[1::3])  # first augmented copy
    assert batch[SINGLE_KEY]["labels"].tolist() == [0, 1, 2, 3]
    collator.switch()
    after = collator.augment_batch({"pixel_values": images, "labels": torch.arange(4)})
    assert after["pixel_values"].shape == images.shape and not torch.equal(after["pixel_values"], images)
    # copies=1 before the switch: one augmented copy, and its clean view for a switch to clean
    one = ImageAugmentationCollator(policy="affine", copies=1, on_device=False, seed=0, after_switch="clean")
    batch = one(_image_features(images))
    assert batch[ROWS_PER_SAMPLE_KEY] == 1 and not torch.equal(batch["pixel_values"], images)
    assert torch.equal(batch[SINGLE_KEY]["pixel_values"], images)


def test_image_value_range_for_normalised_input() -> None:
    images = (torch.rand(6, 3, 8, 8) - 0.5) / 0.25  # mean/std normalised: roughly [-2, 2]
    collator = ImageAugmentationCollator(policy="trivial", copies=2, value_range=(-2.0, 2.0), seed=0)
    out = collator.augment_batch({"pixel_values": images, "labels": torch.zeros(6)})["pixel_values"]
    assert out.min() >= -2.0 - 1e-5 and out.max() <= 2.0 + 1e-5 and out.min() < 0


def test_image_seed_reproducible_and_global_rng_untouched() -> None:
    images = torch.rand(4, 1, 8, 8)
    a = ImageAugmentationCollator(policy="rand", copies=2, seed=5)
    b = ImageAugmentationCollator(policy="rand", copies=2, seed=5)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a1 = a.augment_batch({"pixel_values": images})["pixel_values"]
    a.set_epoch(3)
    a2 = a.augment_batch({"pixel_values": images})["pixel_values"]
    assert torch.equal(torch.get_rng_state(), state)
    b1 = b.augment_batch({"pixel_values": images})["pixel_values"]
    assert torch.equal(b.augment_batch({"pixel_values": images})["pixel_values"], b1)  # a pure function
    b.set_epoch(3)
    b2 = b.augment_batch({"pixel_values": images})["pixel_values"]
    assert torch.equal(a1, b1) and torch.equal(a2, b2) and not torch.equal(a1, a2)
    other = b.augment_batch({"pixel_values": images.flip(0)})["pixel_values"]
    assert not torch.equal(other.flip(0)[1::2], b2[0::2])  # another batch (the same images reordered): new draws


def test_on_device_batches_carry_the_seed_of_their_clean_content() -> None:
    images = torch.rand(4, 1, 8, 8)
    collator = ImageAugmentationCollator(policy="affine", copies=2, seed=5, value_range=(0.0, 1.0))
    batch = collator(_image_features(images))
    assert isinstance(batch[SEED_KEY], int)
    on_device = collator.augment_batch({k: v for k, v in batch.items() if k != AUGMENT_ON_DEVICE_KEY})
    in_place = collator.augment_batch({"pixel_values": images, "labels": batch["labels"]})
    assert torch.equal(on_device["pixel_values"], in_place["pixel_values"])
    assert SEED_KEY not in on_device
    with pytest.raises(ValueError, match="`epoch` must be an int >= 0"):
        collator.set_epoch(-1)


def test_image_callable_policy_and_its_checks() -> None:
    images = torch.rand(3, 1, 8, 8)
    flip = ImageAugmentationCollator(policy=lambda x: x.flip(-1), copies=2, on_device=False)
    out = flip(_image_features(images))["pixel_values"]
    assert torch.equal(out[0], images[0].flip(-1)) and torch.equal(out[1], images[0].flip(-1))
    bad = ImageAugmentationCollator(policy=lambda x: x[:, :, :4], copies=2)
    with pytest.raises(ValueError, match=r"returned \(6, 1, 4, 8\) for images of shape \(6, 1, 8, 8\)"):
        bad.augment_batch({"pixel_values": images})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"policy": "autoaugment"}, "policy"),
        ({"policy": 3}, "policy"),
        ({"value_range": (1.0, 0.0)}, "value_range"),
        ({"value_range": 1.0}, "value_range"),
        ({"on_device": "yes"}, "on_device"),
        ({"image_field": ""}, "image_field"),
        ({"copies": True}, "copies"),
    ],
)
def test_image_bad_settings(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        ImageAugmentationCollator(**kwargs)


@pytest.mark.parametrize(
    "features, match",
    [
        (
            [{"pixel_values": torch.zeros(1, 8, 8), "labels": 0}, {"pixel_values": torch.zeros(1, 8, 9), "labels": 1}],
            r"shape \[1, 8, 8\]: rows \[0\]; shape \[1, 8, 9\]: rows \[1\]",
        ),
        (
            [{"pixel_values": torch.zeros(8, 8), "labels": 0}, {"pixel_values": torch.zeros(3, 8, 8), "labels": 1}],
            r"shape \[1, 8, 8\]: rows \[0\]; shape \[3, 8, 8\]: rows \[1\]",
        ),
        ([{"pixel_values": torch.zeros(2, 1, 8, 8), "labels": 0}], r"row 0 has shape \(2, 1, 8, 8\)"),
        ([{"labels": 0}], r"'pixel_values' is missing in row 0"),
        ([{"pixel_values": object(), "labels": 0}], r"row 0 must be a tensor or numpy array"),
        ([{"pixel_values": torch.zeros(8, 8, dtype=torch.bool), "labels": 0}], r"row 0 has dtype torch.bool"),
        ([{"pixel_values": torch.zeros(8, 8)}], r"'labels' is missing in row 0"),
        ([{"pixel_values": torch.zeros(8, 8), "labels": None}], r"'labels' is None in row 0"),
    ],
)
def test_image_bad_features(features, match) -> None:
    collator = ImageAugmentationCollator(policy="affine", copies=2)
    with pytest.raises(ValueError, match=match):
        collator(features)


def test_image_uint8_is_converted() -> None:
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    collator = ImageAugmentationCollator(policy="trivial", copies=2, value_range=(0, 255), on_device=False, seed=0)
    batch = collator(_image_features(images))
    assert batch["pixel_values"].dtype == torch.float32 and batch["pixel_values"].max() <= 255.0


# ---- the trainer's view: single view == post-switch batch; evaluation collator ---------------------


def test_single_view_equals_the_post_switch_batch(tokenizer) -> None:
    features = _features()
    text = TextAugmentationCollator(tokenizer, augmenter=RandomLetter(), copies=3, seed=0, after_switch="clean")
    before = text(features)
    text.switch()
    after = text(features)
    assert after.pop(ROWS_PER_SAMPLE_KEY) == 1
    assert before[SINGLE_KEY].keys() == after.keys()
    assert all(torch.equal(before[SINGLE_KEY][k], after[k]) for k in after)
    images = _image_features(torch.rand(4, 1, 8, 8))
    image = ImageAugmentationCollator(policy="trivial", copies=3, on_device=False, seed=0, after_switch="clean")
    before = image(images)
    image.switch()
    after = image(images)
    assert after.pop(ROWS_PER_SAMPLE_KEY) == 1
    assert all(torch.equal(before[SINGLE_KEY][k], after[k]) for k in after)


def test_for_evaluation_gives_clean_batches_without_reserved_keys(tokenizer) -> None:
    text = TextAugmentationCollator(tokenizer, augmenter=ReverseWords(), copies=3)
    evaluation = pickle.loads(pickle.dumps(text.for_evaluation()))
    assert "CleanCollator(TextAugmentationCollator(" in repr(evaluation)
    batch = evaluation(_features())
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert [_decode(tokenizer, ids) for ids in batch["input_ids"]] == SENTENCES
    unlabelled = evaluation([{"sentence": s} for s in SENTENCES])  # e.g. a GLUE test split
    assert "labels" not in unlabelled and unlabelled["input_ids"].shape[0] == len(SENTENCES)
    with pytest.raises(ValueError, match=r"'label' is missing in row 1"):
        evaluation([{"sentence": "a", "label": 0}, {"sentence": "b"}])
    images = torch.rand(3, 1, 8, 8)
    image = ImageAugmentationCollator(policy="affine", copies=2, on_device=True)
    batch = image.for_evaluation()(_image_features(images))
    assert set(batch) == {"pixel_values", "labels"} and torch.equal(batch["pixel_values"], images)


def test_settings_overridden_by_the_trainer_are_checked() -> None:
    collator = ImageAugmentationCollator(policy="affine", copies=2, original_first=True)
    collator.copies = 5
    collator.after_switch = "augmented"
    assert collator.rows_per_sample == 5 and "copies=5" in repr(collator) and "'augmented'" in repr(collator)
    with pytest.raises(ValueError, match="copies"):
        collator.copies = 1  # original_first needs two copies
    with pytest.raises(ValueError, match="after_switch"):
        collator.after_switch = "both"


# ---- pickling and DataLoader workers ---------------------------------------------------------------


def test_pickle_round_trip(tokenizer) -> None:
    text = TextAugmentationCollator(tokenizer, augmenter=ReverseWords(), copies=2, seed=1)
    image = ImageAugmentationCollator(policy="trivial", copies=2, seed=1)
    image.augment_batch({"pixel_values": torch.rand(2, 1, 8, 8)})  # builds (unpicklable-ish) kornia modules
    text.switch()
    for collator in (text, image):
        clone = pickle.loads(pickle.dumps(collator))
        assert repr(clone) == repr(collator)
        assert clone._switched.is_shared()
    text_clone = pickle.loads(pickle.dumps(text))
    assert text_clone.switched and text_clone(_features())["input_ids"].shape[0] == len(SENTENCES)
    text_clone.reset()
    assert text.switched  # a plain pickle copy has its own flag
    image_clone = pickle.loads(pickle.dumps(image))
    assert image_clone.augment_batch({"pixel_values": torch.rand(2, 1, 8, 8)})["pixel_values"].shape == (4, 1, 8, 8)
    assert pickle.loads(pickle.dumps(default_text_augmenter()))(["a good film"])[0]


def _rows_seen(loader, switch_after=None, collator=None) -> list[int]:
    rows = []
    for index, batch in enumerate(loader):
        k = batch[ROWS_PER_SAMPLE_KEY]
        assert batch["pixel_values"].shape[0] == 4 * k and batch["labels"].shape[0] == 4 * k
        if k > 1:
            assert batch[SINGLE_KEY]["pixel_values"].shape[0] == 4
        else:
            assert SINGLE_KEY not in batch
        rows.append(k)
        if index == switch_after:
            collator.switch()
    return rows


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    # spawn works too but each worker imports hf_critical (and so transformers) afresh: about 15 s
    "context",
    ["fork", pytest.param("spawn", marks=pytest.mark.slow)],
)
def test_switch_reaches_persistent_workers(context) -> None:
    collator = ImageAugmentationCollator(policy="affine", copies=3, on_device=False, seed=0)
    data = _image_features(torch.rand(48, 1, 8, 8))
    loader = DataLoader(
        data,
        batch_size=4,
        collate_fn=collator,
        num_workers=2,
        persistent_workers=True,
        prefetch_factor=2,
        multiprocessing_context=context,
    )
    # switch after batch 1: batches 2-5 were already handed to the workers (2 workers x 2 prefetched)
    # and may be collated either side of the flip; from batch 6 on they were requested after it.
    first = _rows_seen(loader, switch_after=1, collator=collator)
    assert first[:2] == [3, 3] and set(first[2:6]) <= {1, 3} and first[6:] == [1] * 6
    assert _rows_seen(loader) == [1] * 12  # the same (persistent) workers, next epoch
    collator.reset()
    assert _rows_seen(loader) == [3] * 12
