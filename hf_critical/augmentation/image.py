"""`ImageAugmentationCollator`: stacks images and labels, k augmented copies per sample on the CPU or the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..names import (
    AUGMENT_ON_DEVICE_KEY,
    DEFAULT_AFTER_SWITCH,
    RESERVED_KEYS,
    ROWS_PER_SAMPLE_KEY,
    SEED_KEY,
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
)
from .image_policies import IMAGE_POLICIES, _build_policy, _require_kornia, _tensor_bytes


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
        after_switch: str = DEFAULT_AFTER_SWITCH,
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
        with ``original_first``, plus ``hf_critical_single``. k == 1 once switched: one augmented copy
        (``after_switch="augmented"``) or the clean batch (``"clean"``); k == 1 before the switch: one augmented
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
