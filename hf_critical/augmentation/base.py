"""The switch protocol every augmentation collator follows: k copies until `switch()`, one after, at an exact step.

`AugmentationCollator` holds the shared-memory switch flag and epoch, the seeding of a batch from
(seed, epoch, its clean content), and the reserved batch keys (`hf_critical.names`);
`CleanCollator` is its evaluation view. The text and image collators subclass it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..names import (
    AFTER_SWITCH_MODES,
    COPY_INDEX_KEY,
    DEFAULT_AFTER_SWITCH,
)


def _short(value: Any, limit: int = 200) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class AugmentationCollator:
    """Base of the k-copy collators: settings, the shared switch flag and per-call seeding.

    Args:
        copies: k >= 1, the rows each sample gives before the switch.
        after_switch: ``"augmented"`` (one augmented copy, the default) or ``"clean"`` (the original sample).
        original_first: copy 0 of each sample is the un-augmented original (needs ``copies >= 2``).
        seed: if given, a batch's augmentation is a pure function of (seed, epoch, the batch's clean
            content); see `_seeds`. None: drawn from the global RNGs.
    """

    def __init__(
        self, copies: int, after_switch: str = DEFAULT_AFTER_SWITCH, original_first: bool = False, seed: int | None = None
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


@contextlib.contextmanager
def seeded_python_numpy_rng(seeds: list[int] | None) -> Iterator[None]:
    """Seed python ``random`` and numpy's global RNG (what nlpaug draws from), then restore both (None: leave them).

    ``seeds`` is a pair, e.g. `AugmentationCollator`'s seeds of a batch.
    """
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
