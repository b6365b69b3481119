"""Text augmentation: nlpaug noise (keyboard typos, word swaps, word deletion), token-span cutoff, and the collator.

nlpaug is imported only when `default_text_augmenter` builds its augmenters (``pip install hf-critical[text]``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..extras import require
from ..names import (
    DEFAULT_AFTER_SWITCH,
    ROWS_PER_SAMPLE_KEY,
    SINGLE_KEY,
)
from .base import (
    AugmentationCollator,
    _check_features,
    _copy_indices_bytes,
    _field,
    _label_tensor,
    _needs_single_view,
    _optional_labels,
    _short,
    seeded_python_numpy_rng,
)

#: How `TextAugmentationCollator` pads: to the longest row of the batch, or to ``max_length``.
PADDING_MODES = ("longest", "max_length")


class RandomChoiceTextAugmenter:
    """Apply one augmenter chosen at random (python ``random``) to each text, text by text.

    Has an nlpaug-style ``augment(text) -> [text]`` and a batch ``__call__(texts) -> texts``.

    Args:
        augmenters: objects with ``augment(text)`` returning a list (nlpaug) or a string.
        names: labels for ``__repr__`` (nlpaug augmenters have no readable repr).
    """

    def __init__(self, augmenters: Sequence[Any], names: Sequence[str] | None = None):
        if len(augmenters) == 0:
            raise ValueError("`augmenters` must not be empty")
        for aug in augmenters:
            if not hasattr(aug, "augment"):
                raise ValueError(f"`augmenters` entries need an `augment` method, got {_short(aug)}")
        if names is not None and len(names) != len(augmenters):
            raise ValueError(f"`names` has {len(names)} entries for {len(augmenters)} augmenters")
        self.augmenters = list(augmenters)
        self.names = list(names) if names is not None else [type(a).__name__ for a in augmenters]

    def augment(self, text: str) -> list[str]:
        if text == "":
            return [""]
        out = random.choice(self.augmenters).augment(text)
        if isinstance(out, str):
            return [out]
        # nlpaug returns [] when it finds nothing to change (empty or odd input): keep the text.
        return list(out) if len(out) else [text]

    def __call__(self, texts: Sequence[str]) -> list[str]:
        return [self.augment(t)[0] for t in texts]

    def __repr__(self) -> str:
        return f"{type(self).__name__}([{', '.join(self.names)}])"


TEXT_NOISE_KINDS = ("keyboard", "word_swap", "word_delete")


def default_text_augmenter(kinds: Sequence[str] = TEXT_NOISE_KINDS) -> RandomChoiceTextAugmenter:
    """Light offline character/word noise: each text gets one of keyboard typos, a word swap, a word deletion.

    Built from nlpaug augmenters that need no download (``SynonymAug`` / ``ContextualWordEmbsAug``
    do not work offline here). At most two characters or two words change per text. Throughput is
    in the thousands of 12-word sentences per second on one CPU core. Measured on SST-2 with
    MiniLM, this kind of noise *hurt* accuracy: treat it as a baseline to measure, not a default
    that helps.

    Args:
        kinds: which of ``"keyboard"``, ``"word_swap"``, ``"word_delete"`` to choose from;
            ``("word_swap", "word_delete")`` keeps the two offline operations of EDA
            (Wei & Zou, 2019) and drops the typos.
    """
    # A slow import (it pulls in transformers): only when used.
    nac = require("nlpaug.augmenter.char", "default_text_augmenter")
    naw = require("nlpaug.augmenter.word", "default_text_augmenter")

    unknown = [kind for kind in kinds if kind not in TEXT_NOISE_KINDS]
    if unknown or not kinds:
        raise ValueError(f"`kinds` must be a non-empty subset of {list(TEXT_NOISE_KINDS)}, got {list(kinds)}")
    settings = {
        "keyboard": (
            "KeyboardAug",
            nac.KeyboardAug,
            dict(
                aug_char_p=0.1,
                aug_char_max=2,
                aug_word_p=0.1,
                aug_word_max=2,
                include_special_char=False,
                include_numeric=False,
                include_upper_case=False,
            ),
        ),
        "word_swap": ("RandomWordAug", naw.RandomWordAug, dict(action="swap", aug_p=0.1, aug_max=2)),
        "word_delete": ("RandomWordAug", naw.RandomWordAug, dict(action="delete", aug_p=0.1, aug_max=2)),
    }
    chosen = [settings[kind] for kind in TEXT_NOISE_KINDS if kind in kinds]
    augmenters = [cls(**kwargs) for _, cls, kwargs in chosen]
    names = [f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})" for name, _, kwargs in chosen]
    return RandomChoiceTextAugmenter(augmenters, names)


class TokenSpanCutoff:
    """Span cutoff (Shen et al. 2020, "A Simple but Tough-to-Beat Data Augmentation Approach"): drop one
    contiguous span of tokens from each text.

    The text is split into the model's own (sub-word) tokens, a span of ``ratio`` of them (at least
    one, at a uniformly drawn start) is removed, and the rest is joined back into a string; texts of
    one token are returned unchanged. Shen et al. zero the span's embeddings; dropping the tokens
    removes them from attention in the same way, but the later tokens move up by the span's length.
    Random draws use python's ``random``, which `TextAugmentationCollator` seeds per call.

    Args:
        tokenizer: the model's Hugging Face tokenizer (its ``tokenize`` / ``convert_tokens_to_string``).
        ratio: share of the tokens in the span, in (0, 1); Shen et al. used 0.1.
    """

    def __init__(self, tokenizer: Any, ratio: float = 0.1):
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio < 1:
            raise ValueError(f"`ratio` must be a number in (0, 1), got {ratio!r}")
        if not (hasattr(tokenizer, "tokenize") and hasattr(tokenizer, "convert_tokens_to_string")):
            raise ValueError(f"`tokenizer` must be a Hugging Face tokenizer, got {_short(tokenizer)}")
        self.tokenizer = tokenizer
        self.ratio = float(ratio)

    def cut(self, text: str) -> str:
        tokens = self.tokenizer.tokenize(text)
        if len(tokens) < 2:
            return text
        length = min(len(tokens) - 1, max(1, round(self.ratio * len(tokens))))
        start = random.randrange(len(tokens) - length + 1)
        return self.tokenizer.convert_tokens_to_string(tokens[:start] + tokens[start + length :])

    def __call__(self, texts: Sequence[str]) -> list[str]:
        return [self.cut(text) for text in texts]

    def __repr__(self) -> str:
        return f"TokenSpanCutoff(ratio={self.ratio:g}, tokenizer={type(self.tokenizer).__name__})"


class TextAugmentationCollator(AugmentationCollator):
    """Collate raw texts into k augmented copies per sample, then tokenize.

    Args:
        tokenizer: a Hugging Face tokenizer (fast or slow).
        augmenter: an nlpaug augmenter or flow (anything with ``augment``), called text by text
            because flows silently drop inputs when given a list (the first output is used); or a
            callable ``list[str] -> list[str]`` called once per copy and text field with the batch's
            non-empty texts. None: `default_text_augmenter()`.
        copies, after_switch, original_first, seed: see `AugmentationCollator`.
        text_fields: one field (single sentences) or two (sentence pairs, tokenized as a pair;
            both sentences are augmented, independently).
        label_field: the label's key in each feature; output key ``labels`` (int -> long,
            float -> float32, e.g. STS-B).
        max_length: truncate to this many tokens (None: the tokenizer's model_max_length when it
            has one, else no truncation).
        padding: ``"longest"`` or ``"max_length"`` (needs ``max_length``).

    Empty strings are allowed and never augmented (every nlpaug augmenter returns ``[]`` for them).
    With ``seed``, python ``random`` and numpy's global state (both used by nlpaug) are seeded per
    batch from (seed, epoch, the batch's texts) and restored afterwards (see `AugmentationCollator._seeds`).
    ``hf_critical_single`` (when present) is tokenized on its own, with its own padding length; with
    ``after_switch="augmented"`` it holds the first augmented copy of each sample (copy 1 with
    ``original_first``, else copy 0), i.e. rows already in the batch.
    """

    def __init__(
        self,
        tokenizer: Any,
        augmenter: Any = None,
        copies: int = 4,
        text_fields: Sequence[str] | str = ("sentence",),
        label_field: str = "label",
        after_switch: str = DEFAULT_AFTER_SWITCH,
        original_first: bool = False,
        max_length: int | None = None,
        padding: str = "longest",
        seed: int | None = None,
    ):
        super().__init__(copies, after_switch=after_switch, original_first=original_first, seed=seed)
        if not callable(tokenizer):
            raise ValueError(f"`tokenizer` must be a Hugging Face tokenizer, got {_short(tokenizer)}")
        if isinstance(text_fields, str):
            text_fields = (text_fields,)
        text_fields = tuple(text_fields)
        if len(text_fields) not in (1, 2) or not all(isinstance(f, str) and f for f in text_fields):
            raise ValueError(f"`text_fields` must be one or two field names, got {text_fields!r}")
        if not isinstance(label_field, str) or not label_field:
            raise ValueError(f"`label_field` must be a field name, got {label_field!r}")
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"`max_length` must be None or an int >= 1, got {max_length!r}")
        if padding not in PADDING_MODES:
            raise ValueError(f"`padding` must be one of {PADDING_MODES}, got {padding!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError("`padding='max_length'` needs `max_length`")
        if augmenter is None:
            augmenter = default_text_augmenter()
        if not (hasattr(augmenter, "augment") or callable(augmenter)):
            raise ValueError(
                f"`augmenter` must have an `augment` method (nlpaug) or be a callable list[str] -> list[str], "
                f"got {_short(augmenter)}"
            )
        self.tokenizer = tokenizer
        self.augmenter = augmenter
        self.text_fields = text_fields
        self.label_field = label_field
        self.max_length = max_length
        self.padding = padding

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._settings_repr()}, augmenter={self.augmenter!r}, "
            f"text_fields={self.text_fields!r}, label_field={self.label_field!r}, max_length={self.max_length}, "
            f"padding={self.padding!r}, tokenizer={type(self.tokenizer).__name__})"
        )

    # -- augmentation -----------------------------------------------------------------------------

    def _augment_one(self, text: str) -> str:
        out = self.augmenter.augment(text)
        if isinstance(out, str):
            return out
        if not isinstance(out, list | tuple) or len(out) == 0 or not isinstance(out[0], str):
            raise ValueError(
                f"augmenter {_short(self.augmenter)} returned {_short(out)} for the text {_short(text)}; "
                "expected a list holding at least one string"
            )
        return out[0]

    def augment_texts(self, texts: Sequence[str]) -> list[str]:
        """One augmented version of each text; empty strings are returned as they are."""
        keep = [i for i, t in enumerate(texts) if t != ""]
        result = list(texts)
        if not keep:
            return result
        if hasattr(self.augmenter, "augment"):
            outputs = [self._augment_one(texts[i]) for i in keep]
        else:
            inputs = [texts[i] for i in keep]
            outputs = self.augmenter(inputs)
            if not isinstance(outputs, list | tuple) or len(outputs) != len(inputs):
                count = len(outputs) if isinstance(outputs, list | tuple) else type(outputs).__name__
                raise ValueError(
                    f"augmenter {_short(self.augmenter)} returned {count} items for {len(inputs)} texts "
                    f"({_short(outputs)}); it must return one string per text"
                )
            bad = [o for o in outputs if not isinstance(o, str)]
            if bad:
                raise ValueError(
                    f"augmenter {_short(self.augmenter)} returned non-strings {_short(bad)}; "
                    "it must return one string per text"
                )
        for i, out in zip(keep, outputs):
            result[i] = out
        return result

    # -- collation --------------------------------------------------------------------------------

    def _texts(self, features: Sequence[Mapping]) -> list[list[str]]:
        columns = []
        for field in self.text_fields:
            column = []
            for row in range(len(features)):
                text = _field(features, row, field, "text")
                if not isinstance(text, str):
                    raise ValueError(f"text field {field!r} in row {row} must be a string, got {_short(text)}")
                column.append(text)
            columns.append(column)
        return columns

    def _tokenize(self, columns: list[list[str]], labels: torch.Tensor | None) -> dict[str, Any]:
        truncation = self.max_length is not None or self.tokenizer.model_max_length < 1_000_000
        encoded = self.tokenizer(
            *columns,
            padding=self.padding,
            truncation=truncation,
            max_length=self.max_length,
            return_tensors="pt",
        )
        batch = dict(encoded)
        if labels is not None:
            batch["labels"] = labels
        return batch

    def collate_clean(self, features: Sequence[Mapping]) -> dict[str, Any]:
        features = _check_features(features)
        return self._tokenize(self._texts(features), _optional_labels(features, self.label_field))

    def __call__(self, features: Sequence[Mapping]) -> dict[str, Any]:
        features = _check_features(features)
        rows, augmented, single_copy = self._plan()  # reads the shared flag once: one layout per batch
        originals = self._texts(features)
        labels = _label_tensor(
            [_field(features, r, self.label_field, "label") for r in range(len(features))], self.label_field
        )
        with seeded_python_numpy_rng(self._seeds(_texts_bytes(originals) + _copy_indices_bytes(features))):
            # copies[c][f]: the texts of field f in copy c
            copies = [
                [self.augment_texts(column) if aug else list(column) for column in originals] for aug in augmented
            ]
        batch_size = len(features)
        flat = [[copies[c][f][i] for i in range(batch_size) for c in range(rows)] for f in range(len(originals))]
        batch = self._tokenize(flat, labels.repeat_interleave(rows, dim=0))
        batch[ROWS_PER_SAMPLE_KEY] = rows
        if _needs_single_view(rows, augmented, self.after_switch):
            single_texts = originals if single_copy is None else copies[single_copy]
            batch[SINGLE_KEY] = self._tokenize(single_texts, labels)
        return batch


def _texts_bytes(columns: list[list[str]]) -> bytes:
    # Lengths first: ("ab", "c") and ("a", "bc") must not give the same bytes.
    texts = [t for column in columns for t in column]
    return json.dumps([len(columns), texts], ensure_ascii=False).encode("utf-8")
