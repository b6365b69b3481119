"""Batch-augmentation collators: k augmented copies of every sample until the switch, one copy after it.

Before the switch every training batch of B samples becomes B * k rows, **sample-major**: rows
``[i * k, (i + 1) * k)`` are the copies of sample ``i`` and ``labels`` is repeated to match
(``repeat_interleave``). After the switch each sample gives one row: its clean original
(``after_switch="clean"``, the default) or one augmented copy (``after_switch="augmented"``).

The switch must act at an exact optimizer step although DataLoader workers hold their own copy of
the collator and have already collated a few batches ahead. Two mechanisms make that work:

* the flag lives in a one-byte tensor in shared memory (``share_memory_()``), so ``switch()`` in the
  main process is seen by every worker (fork or spawn, persistent or not) at its next batch;
* a batch collated before the switch also carries its post-switch form under
  ``"hf_critical_single"``, so a batch prefetched before the switch can be used at the switch step
  without collating it again.

With a ``seed``, a batch's augmentation is a pure function of (seed, epoch, the batch's clean
content): its random draws are seeded from those three, never from a call counter, a worker's seed
or the global RNG. A resumed run (which sees the same batches in the same epochs) therefore draws the
same copies bit for bit, with any number of DataLoader workers, persistent or not, on the device or
in the workers. The epoch lives in shared memory like the switch flag; `CriticalPeriodTrainer` sets it
at the start of every epoch (`set_epoch`).

Reserved keys (the trainer pops them before the model sees the batch):

==================================  ===========================================================
key                                 value
==================================  ===========================================================
``hf_critical_rows_per_sample``     python int: rows per sample in *this* batch (k, or 1).
``hf_critical_single``              when the batch differs from its post-switch form (rows per
                                    sample > 1, or one augmented copy before a switch to clean):
                                    the batch as it must look after the switch, one row per
                                    sample (model inputs and labels only, no reserved keys).
``hf_critical_augment_on_device``   only from `ImageAugmentationCollator` with ``on_device=True``:
                                    the batch is clean; call ``augment_batch`` on the device.
``hf_critical_seed``                with ``on_device=True`` and a ``seed``: python int, the seed of
                                    this batch's augmentation, taken from its clean content on
                                    the CPU (no copy back from the device).
==================================  ===========================================================

Example::

    collator = TextAugmentationCollator(tokenizer, copies=4, text_fields=("sentence1", "sentence2"))
    loader = DataLoader(train_rows, batch_size=32, collate_fn=collator, num_workers=2)
    ...                      # at the switch step, in the main process:
    collator.switch()        # batches collated from now on have one row per sample
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import random
import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .names import COPY_INDEX_KEY

ROWS_PER_SAMPLE_KEY = "hf_critical_rows_per_sample"
SINGLE_KEY = "hf_critical_single"
AUGMENT_ON_DEVICE_KEY = "hf_critical_augment_on_device"
SEED_KEY = "hf_critical_seed"
RESERVED_KEYS = (ROWS_PER_SAMPLE_KEY, SINGLE_KEY, AUGMENT_ON_DEVICE_KEY, SEED_KEY)

AFTER_SWITCH_MODES = ("clean", "augmented")
IMAGE_POLICIES = ("trivial", "rand", "crop_flip", "affine")
PADDING_MODES = ("longest", "max_length")

__all__ = [
    "AFTER_SWITCH_MODES",
    "AUGMENT_ON_DEVICE_KEY",
    "IMAGE_POLICIES",
    "RESERVED_KEYS",
    "ROWS_PER_SAMPLE_KEY",
    "SEED_KEY",
    "SINGLE_KEY",
    "AugmentationCollator",
    "CleanCollator",
    "ImageAugmentationCollator",
    "RandomChoiceTextAugmenter",
    "TextAugmentationCollator",
    "TokenSpanCutoff",
    "default_text_augmenter",
]


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- shared base ---------------------------------------------------------------------------------


class AugmentationCollator:
    """Base of the k-copy collators: settings, the shared switch flag and per-call seeding.

    Args:
        copies: k >= 1, the rows each sample gives before the switch.
        after_switch: ``"clean"`` (the original sample) or ``"augmented"`` (one augmented copy).
        original_first: copy 0 of each sample is the un-augmented original (needs ``copies >= 2``).
        seed: if given, a batch's augmentation is a pure function of (seed, epoch, the batch's clean
            content); see `_seeds`. None: drawn from the global RNGs.
    """

    def __init__(
        self, copies: int, after_switch: str = "clean", original_first: bool = False, seed: int | None = None
    ):
        if not isinstance(original_first, bool):
            raise ValueError(f"`original_first` must be a bool, got {original_first!r}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"`seed` must be None or an int >= 0, got {seed!r}")
        self.original_first = original_first
        self.copies = copies  # validated by the setters below
        self.after_switch = after_switch
        self.seed = seed
        # Shared memory: DataLoader workers hold copies of this object, but the storage behind these
        # tensors is the same pages in every process, so a switch (or a new epoch) in the main process reaches them.
        self._switched = torch.zeros(1, dtype=torch.uint8).share_memory_()
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    # -- settings (the trainer may override them from its arguments before training) ------------

    @property
    def copies(self) -> int:
        return self._copies

    @copies.setter
    def copies(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`copies` must be an int >= 1, got {value!r}")
        if self.original_first and value < 2:
            # With one copy the "original first" row would be the only row: no augmentation at all.
            raise ValueError(f"`original_first=True` needs `copies` >= 2, got copies={value}")
        self._copies = value

    @property
    def after_switch(self) -> str:
        return self._after_switch

    @after_switch.setter
    def after_switch(self, value: str) -> None:
        if value not in AFTER_SWITCH_MODES:
            raise ValueError(f"`after_switch` must be one of {AFTER_SWITCH_MODES}, got {value!r}")
        self._after_switch = value

    # -- the switch ----------------------------------------------------------------------------

    @property
    def switched(self) -> bool:
        return bool(self._switched[0])

    def switch(self) -> None:
        """Cut to one row per sample for every batch collated from now on (call in the main process)."""
        self._switched.fill_(1)

    def reset(self) -> None:
        """Go back to k copies per sample."""
        self._switched.fill_(0)

    @property
    def epoch(self) -> int:
        """The training epoch the next batches belong to (part of every batch's seed)."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch for every batch collated from now on (call in the main process, before the epoch's batches)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"`epoch` must be an int >= 0, got {epoch!r}")
        self._epoch.fill_(epoch)

    @property
    def rows_per_sample(self) -> int:
        return 1 if self.switched else self.copies

    # -- pickling --------------------------------------------------------------------------------

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        # DataLoader workers unpickle through torch's ForkingPickler and get the same shared pages
        # (share_memory_ is then a no-op). A plain pickle copy gets its own, independent flag.
        for flag in (self._switched, self._epoch):
            if not flag.is_shared():
                flag.share_memory_()

    # -- layout helpers --------------------------------------------------------------------------

    def _plan(self, copies: int | None = None) -> tuple[int, list[bool], int | None]:
        """Rows per sample, which copies are augmented, and the copy the single view takes (None: clean).

        ``copies`` defaults to `rows_per_sample` (the shared flag is read once). One row per sample
        is the post-switch form (clean or augmented per ``after_switch``) once switched; before the
        switch it is one augmented copy (``copies=1``: plain augmentation).
        """
        switched = self.switched
        rows = (1 if switched else self.copies) if copies is None else copies
        if rows == 1:
            return 1, [self.after_switch == "augmented" if switched else True], None
        augmented = [not (self.original_first and c == 0) for c in range(rows)]
        single_copy = None if self.after_switch == "clean" else augmented.index(True)
        return rows, augmented, single_copy

    # -- evaluation ------------------------------------------------------------------------------

    def collate_clean(self, features: Sequence[Mapping]) -> dict[str, Any]:
        """The clean batch: one un-augmented row per sample, no reserved keys, labels only if present."""
        raise NotImplementedError

    def for_evaluation(self) -> CleanCollator:
        """A collator for evaluation/prediction: `collate_clean`, whatever the switch says."""
        return CleanCollator(self)

    # -- seeding ---------------------------------------------------------------------------------

    def _seeds(self, content: bytes) -> list[int] | None:
        """Two 32-bit seeds for the augmentation of one batch, or None when no seed was given.

        A pure function of (seed, epoch, ``content``, the batch's clean samples as bytes): the same
        batch in the same epoch draws the same copies in any process and after any resume; another
        epoch (or another batch) draws new ones. Rows of a batch get different copies (each row's
        random parameters are separate draws from the seeded generator).
        """
        if self.seed is None:
            return None
        digest = struct.unpack("<4I", hashlib.blake2b(content, digest_size=16).digest())
        entropy = [self.seed, self.epoch, *digest]
        return [int(s) for s in np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)]

    def _settings_repr(self) -> str:
        return (
            f"copies={self.copies}, after_switch={self.after_switch!r}, original_first={self.original_first}, "
            f"seed={self.seed}, switched={self.switched}, epoch={self.epoch}"
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._settings_repr()})"


class CleanCollator:
    """Clean single-copy batches from an augmentation collator (for evaluation); picklable."""

    def __init__(self, collator: AugmentationCollator):
        self.collator = collator

    def __call__(self, features: Sequence[Mapping]) -> dict[str, Any]:
        return self.collator.collate_clean(features)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.collator!r})"


def _optional_labels(features: Sequence[Mapping], field: str) -> torch.Tensor | None:
    """Labels when any row has the field (then every row must), else None (unlabelled data)."""
    if not any(field in f for f in features):
        return None
    return _label_tensor([_field(features, r, field, "label") for r in range(len(features))], field)


def _label_tensor(values: Sequence[Any], field: str) -> torch.Tensor:
    """Labels to a tensor: long for ints (and bools), float32 if any label is a float."""
    converted = []
    is_float = False
    for row, value in enumerate(values):
        if value is None:
            raise ValueError(f"label field {field!r} is None in row {row}")
        if torch.is_tensor(value) or isinstance(value, np.ndarray | np.generic):
            value = value.tolist()
        if isinstance(value, str | bytes):
            raise ValueError(f"label field {field!r} in row {row} is a string ({value!r}); expected a number")
        try:
            tensor = torch.as_tensor(value)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"label field {field!r} in row {row} is not numeric: {_short(value)}") from exc
        is_float = is_float or tensor.is_floating_point()
        converted.append(tensor)
    shapes = {tuple(t.shape) for t in converted}
    if len(shapes) > 1:
        raise ValueError(f"label field {field!r} has rows of different shapes: {sorted(shapes)}")
    stacked = torch.stack(converted)
    return stacked.to(torch.float32) if is_float else stacked.to(torch.long)


def _check_features(features: Any) -> Sequence[Mapping]:
    if not isinstance(features, Sequence) or isinstance(features, str | bytes) or len(features) == 0:
        raise ValueError(f"features must be a non-empty list of dicts, got {_short(features)}")
    for row, feature in enumerate(features):
        if not isinstance(feature, Mapping):
            raise ValueError(f"features[{row}] must be a dict, got {type(feature).__name__}")
    return features


def _field(features: Sequence[Mapping], row: int, field: str, what: str) -> Any:
    feature = features[row]
    if field not in feature:
        raise ValueError(f"{what} field {field!r} is missing in row {row} (keys: {sorted(feature)})")
    return feature[field]


# ---- text ------------------------------------------------------------------------------------------


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
    import nlpaug.augmenter.char as nac  # slow import (pulls in transformers): only when used
    import nlpaug.augmenter.word as naw

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


@contextlib.contextmanager
def _python_numpy_rng(seeds: list[int] | None) -> Iterator[None]:
    """Seed python ``random`` and numpy's global RNG (what nlpaug draws from), then restore both."""
    if seeds is None:
        yield
        return
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seeds[0])
    np.random.seed(seeds[1])
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


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
        after_switch: str = "clean",
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
        with _python_numpy_rng(self._seeds(_texts_bytes(originals) + _copy_indices_bytes(features))):
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


def _copy_indices_bytes(features: Sequence[Mapping]) -> bytes:
    """The rows' copy indices (augment_mode="repeat") as bytes for the seed; empty in batch mode.

    In repeat mode a sample comes back k times per epoch; its copy index keeps the k copies'
    augmentations apart even if two batches of an epoch held the same samples in the same order.
    """
    if not any(COPY_INDEX_KEY in f for f in features):
        return b""
    return b"copies" + json.dumps([int(f.get(COPY_INDEX_KEY, 0)) for f in features]).encode()


def _needs_single_view(rows: int, augmented: list[bool], after_switch: str) -> bool:
    """Whether a batch differs from its post-switch form, so it must carry ``hf_critical_single``.

    k copies always do; one augmented copy does when the switch goes to clean samples (a batch
    prefetched before the switch is then trained on as its clean view).
    """
    return rows > 1 or (augmented[0] and after_switch == "clean")


# ---- images ----------------------------------------------------------------------------------------

# Operation tables as kornia's (name, low, high) sub-policy entries. TRIVIAL follows kornia's
# TrivialAugment table except posterize, which keeps 4-8 bits as in RandAugment (kornia's 0-4 bits
# turns an image black a quarter of the time posterize is drawn).
_TRIVIAL_TABLE = [
    ("auto_contrast", 0, 1),
    ("equalize", 0, 1),
    ("rotate", -30.0, 30.0),
    ("posterize", 4.0, 8.0),
    ("solarize", 0.0, 1.0),
    ("contrast", 0.1, 1.9),
    ("brightness", 0.1, 1.9),
    ("sharpness", 0.1, 1.9),
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("translate_x", -0.5, 0.5),
    ("translate_y", -0.5, 0.5),
]
_RAND_TABLE = [
    ("auto_contrast", 0, 1),
    ("equalize", 0, 1),
    ("invert", 0, 1),
    ("rotate", -30.0, 30.0),
    ("posterize", 4.0, 8.0),
    ("solarize", 0.0, 1.0),
    ("solarize_add", 0.0, 0.43),
    ("color", 0.1, 1.9),
    ("contrast", 0.1, 1.9),
    ("brightness", 0.1, 1.9),
    ("sharpness", 0.1, 1.9),
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("translate_x", -0.1, 0.1),
    ("translate_y", -0.1, 0.1),
]
_RGB_ONLY_OPS = {"color"}  # kornia's saturation needs exactly 3 channels
_RAND_OPS_PER_IMAGE = 2
_RAND_MAGNITUDE = 10  # of kornia's 30


def _tensor_bytes(images: torch.Tensor) -> bytes:
    host = images.detach().to("cpu", torch.float32).contiguous()
    return repr(tuple(host.shape)).encode() + host.numpy().tobytes()


def _require_kornia(policy: str) -> None:
    if importlib.util.find_spec("kornia") is None:
        raise ImportError(
            f"image policy {policy!r} needs kornia: `pip install kornia` (or `pip install hf_critical[vision]`)"
        )


class _PerImageOpPolicy:
    """TrivialAugment / RandAugment with the operations drawn per image, not per batch.

    kornia's own TrivialAugment and RandAugment draw the operation once per call for the whole
    batch (only magnitudes vary per row), so the k copies of an image would share it, and for
    equalize / auto_contrast / invert would be identical. Here each row draws its own operations;
    rows that drew the same operation run through it together. Magnitudes: uniform over the range
    per image (trivial) or fixed at ``magnitude / 30`` of the range with a random sign (rand).
    Translations are fractions of the image size (kornia's TrivialAugment passes its 0.5 as pixels).
    Input and output in [0, 1].
    """

    def __init__(
        self, table: list[tuple[str, float, float]], ops_per_image: int, magnitude: int | None, channels: int
    ):
        from kornia.augmentation.auto.rand_augment import ops

        entries = [e for e in table if channels == 3 or e[0] not in _RGB_ONLY_OPS]
        self.names = [name for name, _, _ in entries]
        self.ops = [getattr(ops, name)(low, high) for name, low, high in entries]
        self.ops_per_image = ops_per_image
        self.magnitude = magnitude

    def _magnitudes(self, op: Any, rows: int, height: int, width: int) -> torch.Tensor | None:
        if op.magnitude_range is None:
            return None
        low, high = (float(v) for v in op.magnitude_range)
        if self.magnitude is None:
            fraction = torch.rand(rows)
        else:
            fraction = torch.full((rows,), self.magnitude / 30.0)
            if op._factor_name == "bits_factor":  # as kornia's RandAugment: larger m keeps fewer bits
                fraction = 1.0 - fraction
        mag = low + (high - low) * fraction
        if op._factor_name == "translate_x":
            mag = mag * width
        elif op._factor_name == "translate_y":
            mag = mag * height
        return mag

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        rows, _, height, width = images.shape
        count = len(self.ops)
        if self.ops_per_image == 1:
            choice = torch.randint(count, (rows, 1))
        else:
            choice = torch.rand(rows, count).argsort(dim=1)[:, : self.ops_per_image]
        out = images
        for step in range(choice.shape[1]):
            current = out.clone()
            for index in choice[:, step].unique().tolist():
                selected = (choice[:, step] == index).nonzero().squeeze(1)
                op = self.ops[index]
                subset = out[selected.to(out.device)]
                mag = self._magnitudes(op, len(selected), height, width)
                if mag is None:
                    result = op(subset)
                else:
                    result = op(subset, params=op.forward_parameters(subset.shape, mag=mag))
                current[selected.to(out.device)] = result.to(current.dtype)
            out = current
        return out.clamp(0.0, 1.0)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(ops={self.names}, ops_per_image={self.ops_per_image}, magnitude={self.magnitude})"
        )


class _Chain:
    """Apply kornia modules in order."""

    def __init__(self, *modules: Callable[[torch.Tensor], torch.Tensor]):
        self.modules = modules

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        for module in self.modules:
            images = module(images)
        return images

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(repr(m) for m in self.modules)})"


def _build_policy(name: str, channels: int, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "trivial":
        return _PerImageOpPolicy(_TRIVIAL_TABLE, 1, None, channels)
    if name == "rand":
        return _PerImageOpPolicy(_RAND_TABLE, _RAND_OPS_PER_IMAGE, _RAND_MAGNITUDE, channels)
    import kornia.augmentation as K

    if name == "crop_flip":
        padding = max(1, round(min(height, width) / 8))  # 4 px on 32x32 (the CIFAR recipe), 1 px on 8x8
        return _Chain(K.RandomCrop((height, width), padding=padding, p=1.0), K.RandomHorizontalFlip(p=0.5))
    if name == "affine":
        return _Chain(K.RandomAffine(degrees=10.0, translate=(0.125, 0.125), scale=(0.9, 1.1), p=1.0))
    raise ValueError(f"unknown image policy {name!r}; expected one of {IMAGE_POLICIES} or a callable")


def _image_tensor(value: Any, row: int, field: str) -> torch.Tensor:
    if torch.is_tensor(value):
        image = value
    elif isinstance(value, np.ndarray | list | tuple):
        try:
            image = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"image field {field!r} in row {row} is not numeric: {exc}") from exc
    else:
        raise ValueError(
            f"image field {field!r} in row {row} must be a tensor or numpy array ([C, H, W] or [H, W]), "
            f"got {type(value).__name__} (convert PIL images with a dataset transform first)"
        )
    if image.dtype == torch.bool or not (image.is_floating_point() or image.dtype in _INT_DTYPES):
        raise ValueError(f"image field {field!r} in row {row} has dtype {image.dtype}; expected a number type")
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() != 3:
        raise ValueError(
            f"image field {field!r} in row {row} has shape {tuple(image.shape)}; expected [C, H, W] or [H, W]"
        )
    return image.to(torch.float32)


_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


class ImageAugmentationCollator(AugmentationCollator):
    """Stack images and labels; make k augmented copies per sample on the CPU or, later, on the device.

    Args:
        policy: ``"trivial"`` (TrivialAugment), ``"rand"`` (RandAugment, 2 ops at magnitude 10/30),
            ``"crop_flip"`` (random crop with 1/8 padding, 4 px on 32x32, plus horizontal flip),
            ``"affine"`` (rotation ±10°, shift ±12.5 %, scale 0.9-1.1: the setting that helped on
            8x8 digits), or a callable mapping a float batch [N, C, H, W] to a batch of the same
            shape with per-sample randomness. The named policies run on kornia; trivial and rand
            draw their operations per image (see `_PerImageOpPolicy`) and drop kornia's saturation
            op unless images have 3 channels, so 1-channel 8x8 digits work with every policy
            (flipping digits is the user's call).
        copies, after_switch, original_first, seed: see `AugmentationCollator`.
        image_field: the image's key in features and batches ([C, H, W] or [H, W] -> [1, H, W],
            tensors or numpy arrays, cast to float32 without rescaling).
        label_field: the label's key in each feature; output key ``labels``.
        on_device: if True, ``__call__`` returns the clean batch and the trainer calls
            `augment_batch` after moving it to the device; if False, ``__call__`` augments (CPU,
            possibly in DataLoader workers).
        value_range: (lo, hi) of the pixel values. Named policies see ``(x - lo) / (hi - lo)`` (kornia's
            colour ops assume [0, 1]) and their output is mapped back; trivial and rand also clip to
            [0, 1] in that space. Use e.g. (0, 255) for raw uint8 pixels, or the normalised range
            for mean/std-normalised images. Callables get the raw values.

    With ``seed``, each augmentation runs inside ``torch.random.fork_rng`` with the CPU generator
    (kornia and this module draw their random parameters there) seeded from (seed, epoch, the
    batch's clean images), so the global RNG is left as it was and a resumed run draws the same
    copies (see `AugmentationCollator._seeds`).
    """

    def __init__(
        self,
        policy: str | Callable[[torch.Tensor], torch.Tensor] = "trivial",
        copies: int = 4,
        after_switch: str = "clean",
        original_first: bool = False,
        image_field: str = "pixel_values",
        label_field: str = "labels",
        on_device: bool = True,
        seed: int | None = None,
        value_range: tuple[float, float] = (0.0, 1.0),
    ):
        super().__init__(copies, after_switch=after_switch, original_first=original_first, seed=seed)
        if isinstance(policy, str):
            if policy not in IMAGE_POLICIES:
                raise ValueError(f"`policy` must be one of {IMAGE_POLICIES} or a callable, got {policy!r}")
            _require_kornia(policy)
        elif not callable(policy):
            raise ValueError(f"`policy` must be one of {IMAGE_POLICIES} or a callable, got {_short(policy)}")
        for name, value in (("image_field", image_field), ("label_field", label_field)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"`{name}` must be a field name, got {value!r}")
        if not isinstance(on_device, bool):
            raise ValueError(f"`on_device` must be a bool, got {on_device!r}")
        try:
            low, high = (float(v) for v in value_range)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"`value_range` must be a pair (lo, hi), got {value_range!r}") from exc
        if not (np.isfinite(low) and np.isfinite(high) and low < high):
            raise ValueError(f"`value_range` must be finite with lo < hi, got {value_range!r}")
        self.policy = policy
        self.image_field = image_field
        self.label_field = label_field
        self.on_device = on_device
        self.value_range = (low, high)
        self._policies: dict[tuple[int, int, int], Callable] = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_policies"] = {}  # built kornia modules are rebuilt on first use in the new process
        return state

    def __repr__(self) -> str:
        policy = self.policy if isinstance(self.policy, str) else _short(self.policy, 80)
        return (
            f"{type(self).__name__}(policy={policy!r}, {self._settings_repr()}, image_field={self.image_field!r}, "
            f"label_field={self.label_field!r}, on_device={self.on_device}, value_range={self.value_range})"
        )

    # -- collation ----------------------------------------------------------------------------

    def _stack(self, features: Sequence[Mapping]) -> torch.Tensor:
        images = [
            _image_tensor(_field(features, r, self.image_field, "image"), r, self.image_field)
            for r in range(len(features))
        ]
        shapes = [tuple(img.shape) for img in images]
        if len(set(shapes)) > 1:
            groups: dict[tuple, list[int]] = {}
            for row, shape in enumerate(shapes):
                groups.setdefault(shape, []).append(row)
            detail = "; ".join(
                f"shape {list(s)}: rows {rows[:8]}{'...' if len(rows) > 8 else ''}" for s, rows in groups.items()
            )
            raise ValueError(f"image field {self.image_field!r} has images of different shapes ({detail})")
        return torch.stack(images)

    def collate_clean(self, features: Sequence[Mapping]) -> dict[str, Any]:
        features = _check_features(features)
        batch = {self.image_field: self._stack(features)}
        labels = _optional_labels(features, self.label_field)
        if labels is not None:
            batch["labels"] = labels
        return batch

    def __call__(self, features: Sequence[Mapping]) -> dict[str, Any]:
        features = _check_features(features)
        images = self._stack(features)
        labels = _label_tensor(
            [_field(features, r, self.label_field, "label") for r in range(len(features))], self.label_field
        )
        batch = {self.image_field: images, "labels": labels}
        seed = self._batch_seed(images, _copy_indices_bytes(features))
        if seed is not None:
            batch[SEED_KEY] = seed  # taken here, on the CPU: the device never copies images back for it
        if self.on_device:
            batch[ROWS_PER_SAMPLE_KEY] = 1
            batch[AUGMENT_ON_DEVICE_KEY] = True
            return batch
        return self.augment_batch(batch)

    def _batch_seed(self, images: torch.Tensor, copies: bytes = b"") -> int | None:
        seeds = self._seeds(_tensor_bytes(images) + copies)
        return None if seeds is None else (seeds[0] << 32) | seeds[1]

    # -- augmentation ----------------------------------------------------------------------------

    def _policy_for(self, images: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        if not isinstance(self.policy, str):
            return self.policy
        key = tuple(images.shape[1:])
        if key not in self._policies:
            self._policies[key] = _build_policy(self.policy, *key)
        return self._policies[key]

    def augment_images(self, images: torch.Tensor) -> torch.Tensor:
        """One augmented version of each image of a float batch [N, C, H, W], on its device."""
        if images.shape[0] == 0:
            return images
        policy = self._policy_for(images)
        if not isinstance(self.policy, str):
            out = policy(images)
            if not torch.is_tensor(out) or out.shape != images.shape:
                got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
                raise ValueError(
                    f"policy {_short(self.policy, 80)} returned {got} for images of shape {tuple(images.shape)}; "
                    "it must return a tensor of the same shape"
                )
            return out
        low, high = self.value_range
        scaled = (images - low) / (high - low)
        try:
            out = policy(scaled)
        except Exception as exc:  # name the policy and shape; kornia's own message follows
            raise ValueError(
                f"image policy {self.policy!r} failed on images of shape {tuple(images.shape)}: {exc}"
            ) from exc
        return out.to(images.dtype) * (high - low) + low

    @contextlib.contextmanager
    def _torch_rng(self, device: torch.device, seed: int | None) -> Iterator[None]:
        if seed is None:
            yield
            return
        cuda = device.type == "cuda"
        index = device.index if device.index is not None else (torch.cuda.current_device() if cuda else None)
        with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda" if cuda else "cpu"):
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.default_generators[index].manual_seed(seed)
            yield

    def augment_batch(self, batch: Mapping[str, Any], copies: int | None = None) -> dict[str, Any]:
        """Turn a clean batch into its training layout, on the batch's device.

        ``copies`` (k) defaults to `rows_per_sample` (the trainer passes the rows per sample of the
        current step). k > 1: k rows per sample, sample-major, every copy augmented except copy 0
        with ``original_first``, plus ``hf_critical_single``. k == 1 once switched: the clean batch
        (``after_switch="clean"``) or one augmented copy; k == 1 before the switch: one augmented
        copy (``copies=1`` is plain augmentation). Per-sample tensors (first dimension B, e.g.
        ``labels``) are repeated; other values are passed through; reserved keys are dropped. The
        input is not modified.
        """
        if not isinstance(batch, Mapping) or self.image_field not in batch:
            raise ValueError(f"batch must be a dict holding {self.image_field!r}, got {_short(batch)}")
        images = batch[self.image_field]
        if not torch.is_tensor(images) or images.dim() != 4:
            got = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"batch[{self.image_field!r}] must be a tensor [B, C, H, W], got {got}")
        if copies is not None and (isinstance(copies, bool) or not isinstance(copies, int) or copies < 1):
            raise ValueError(f"`copies` must be None or an int >= 1, got {copies!r}")
        rows, augmented, single_copy = self._plan(copies)
        if not images.is_floating_point():
            images = images.to(torch.float32)
        seed = batch.get(SEED_KEY)
        if seed is None and self.seed is not None:
            seed = self._batch_seed(images)
        size = images.shape[0]
        per_sample = {
            key: value
            for key, value in batch.items()
            if key not in RESERVED_KEYS
            and key != self.image_field
            and torch.is_tensor(value)
            and value.dim() > 0
            and value.shape[0] == size
        }
        others = {
            key: value
            for key, value in batch.items()
            if key not in RESERVED_KEYS and key != self.image_field and key not in per_sample
        }
        expanded = images.repeat_interleave(rows, dim=0) if rows > 1 else images
        # built on the CPU: nonzero() on an accelerator would wait for the device
        augment_rows = torch.tensor(augmented)[torch.arange(size * rows) % rows].nonzero().squeeze(1)
        augment_rows = augment_rows.to(images.device)
        out_images = expanded
        if augment_rows.numel():
            with self._torch_rng(images.device, seed):
                if augment_rows.numel() == expanded.shape[0]:
                    out_images = self.augment_images(expanded)
                else:
                    out_images = expanded.clone()
                    out_images[augment_rows] = self.augment_images(expanded[augment_rows])
        result: dict[str, Any] = dict(others)
        result[self.image_field] = out_images
        for key, value in per_sample.items():
            result[key] = value.repeat_interleave(rows, dim=0) if rows > 1 else value
        result[ROWS_PER_SAMPLE_KEY] = rows
        if _needs_single_view(rows, augmented, self.after_switch):
            single: dict[str, Any] = dict(others)
            single[self.image_field] = images if single_copy is None else out_images[single_copy::rows]
            single.update(per_sample)
            result[SINGLE_KEY] = single
        return result
