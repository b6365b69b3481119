"""Image data sets that load offline, and the transform that turns their images into model inputs.

* ``sklearn_digits``: scikit-learn's 1,797 8x8 digits (ships with scikit-learn), split with a seed.
* ``.npz`` files with ``x`` (N, H, W, C) or (N, H, W) images and ``y`` labels, optionally
  ``class_names`` (the CIFAR-10 files of this project's benchmark data have this layout).
* image folders, one sub-folder per class (``train/cat/1.png``), through datasets' ``imagefolder``
  builder, as transformers' ``run_image_classification.py`` reads ``--train_dir``; the ``image``
  column then holds PIL images.

Every loader returns `datasets.Dataset` objects with an ``image`` column (uint8 in [0, 255] or
float in [0, 1], H x W x C) and a ``label`` column (`datasets.ClassLabel`). `ImageTransform`
(for ``Dataset.set_transform``) resizes, adapts the channels and normalises them into
``pixel_values`` [C, H, W] for the model, in torch (no torchvision needed).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..extras import require

__all__ = [
    "SKLEARN_DIGITS",
    "UNREADABLE_IMAGES",
    "ImageTransform",
    "check_images",
    "load_image_folder",
    "load_npz_images",
    "load_sklearn_digits",
    "normalized_value_range",
    "select_classes",
    "split_train_validation",
]

SKLEARN_DIGITS = "sklearn_digits"
#: What `check_images` does with a file PIL cannot decode: stop with an error naming it, or leave it out.
UNREADABLE_IMAGES = ("error", "skip")


def _images_dataset(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str]):
    from datasets import Array3D, ClassLabel, Dataset, Features

    dtype = "uint8" if images.dtype == np.uint8 else "float32"
    images = images.astype(dtype, copy=False)
    features = Features({"image": Array3D(shape=images.shape[1:], dtype=dtype), "label": ClassLabel(names=list(class_names))})
    return Dataset.from_dict({"image": images, "label": labels.astype(np.int64)}, features=features)


def load_sklearn_digits():
    """scikit-learn's digits as one `datasets.Dataset`: 8x8x1 float images in [0, 1], labels 0-9."""
    digits = require("sklearn.datasets", "the scikit-learn digits").load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[..., None]
    return _images_dataset(images, digits.target, [str(i) for i in range(10)])


def load_npz_images(path: str | os.PathLike):
    """An ``.npz`` file with ``x`` (N, H, W[, C]) images and ``y`` integer labels as a `datasets.Dataset`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file")
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable .npz file ({err})") from None
    missing = [key for key in ("x", "y") if key not in data.files]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; found {data.files}, expected 'x' (images) and 'y' (labels)")
    images, labels = data["x"], data["y"]
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{path}: 'x' has shape {data['x'].shape}; expected (N, H, W) or (N, H, W, C) with C 1 or 3")
    if len(images) == 0:
        raise ValueError(f"{path}: the file holds no images")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'y' must hold one integer label per image, got dtype {labels.dtype} shape {labels.shape}")
    if labels.min() < 0:
        raise ValueError(f"{path}: 'y' holds the negative label {int(labels.min())}")
    if images.dtype != np.uint8:
        images = images.astype(np.float32)
        if images.min() < 0.0 or images.max() > 1.0:
            raise ValueError(f"{path}: float images must lie in [0, 1], found [{images.min():.3g}, {images.max():.3g}]")
    if "class_names" in data.files:
        class_names = [str(name) for name in data["class_names"]]
        if int(labels.max()) >= len(class_names):
            raise ValueError(f"{path}: label {int(labels.max())} has no entry in 'class_names' ({len(class_names)} names)")
    else:
        class_names = [str(i) for i in range(int(labels.max()) + 1)]
    return _images_dataset(images, labels, class_names)


def load_image_folder(train_dir: str | os.PathLike, validation_dir: str | os.PathLike | None = None, cache_dir=None):
    """(train, validation or None) from folders laid out as ``<dir>/<class name>/<image file>``.

    Class names are the sub-folder names (sorted, the same `datasets.ClassLabel` in both splits).
    Raises a `ValueError` for a missing or empty folder, images outside class sub-folders, fewer than
    two classes, or validation classes that have no training images.
    """
    from datasets import load_dataset

    folders = {"train": os.fspath(train_dir)}
    if validation_dir is not None:
        folders["validation"] = os.fspath(validation_dir)
    for split, folder in folders.items():
        if not os.path.isdir(folder):
            raise ValueError(f"{folder}: no such folder (the {split} images, one sub-folder per class)")
    data_files = {split: os.path.join(folder, "**") for split, folder in folders.items()}
    try:
        splits = load_dataset("imagefolder", data_files=data_files, cache_dir=cache_dir)
    except ValueError as err:
        if "corresponds to no data" not in str(err) and "is empty" not in str(err):
            raise
        raise ValueError(
            f"no images found in {' or '.join(folders.values())}: expected <folder>/<class name>/<image file> "
            f"({err})"
        ) from None
    for split, folder in folders.items():
        if split not in splits or len(splits[split]) == 0:
            raise ValueError(f"{folder}: no images found (expected {folder}/<class name>/<image file>)")
    train = splits["train"]
    if "label" not in train.column_names or len(train.features["label"].names) < 2:
        raise ValueError(
            f"{' and '.join(folders.values())}: the images must lie in one sub-folder per class, at least two classes and no "
            f"images beside the class folders (<folder>/<class name>/<image file>); datasets' imagefolder found "
            f"no labels in it"
        )
    if "validation" not in splits:
        return train, None
    validation = splits["validation"]
    names = train.features["label"].names
    untrained = sorted(set(validation["label"]) - set(train["label"]))
    if untrained:
        raise ValueError(
            f"{folders['validation']}: class folder(s) {[names[i] for i in untrained]} have no training images in "
            f"{folders['train']} (training classes: {[names[i] for i in sorted(set(train['label']))]})"
        )
    return train, validation


def check_images(dataset, folder: str, unreadable: str = "error", column: str = "image"):
    """Decode every image of an image-folder data set once, before training; returns (dataset, skipped files).

    datasets decodes an image only when a row is read, so a corrupt file would otherwise surface
    mid-training as a PIL traceback from inside ``trainer.train()``. ``unreadable="error"`` raises a
    `ValueError` naming the unreadable files (the first ten) and PIL's reason; ``"skip"`` leaves those
    rows out and returns their paths (the caller counts them).
    """
    if unreadable not in UNREADABLE_IMAGES:
        raise ValueError(f"`unreadable_images` must be one of {list(UNREADABLE_IMAGES)}, got {unreadable!r}")
    from datasets import Image as ImageFeature
    from PIL import Image

    raw = dataset.cast_column(column, ImageFeature(decode=False))
    bad: list[tuple[int, str, str]] = []
    for index, entry in enumerate(raw[column]):
        path = entry.get("path") or f"row {index}"
        try:
            source = entry["bytes"] if entry.get("bytes") is not None else entry["path"]
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                image.load()  # decodes the pixels (verify() alone misses truncated files)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
            bad.append((index, path, f"{type(err).__name__}: {err}"))
    if not bad:
        return dataset, []
    if unreadable == "error":
        listed = "; ".join(f"{path} ({reason})" for _, path, reason in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise ValueError(
            f"{folder}: {len(bad)} of {len(dataset)} image file(s) cannot be read: {listed}{more}. Fix or remove them, "
            "or pass --unreadable_images skip to train without them"
        )
    skipped = {index for index, _, _ in bad}
    kept = dataset.select([i for i in range(len(dataset)) if i not in skipped])
    return kept, [path for _, path, _ in bad]


def select_classes(dataset, classes: Sequence[int]):
    """Keep the rows whose label is in ``classes``, relabelled 0..n-1 in the order given (names kept).

    For transfer settings: pretrain on some classes of a data set, fine-tune on the others.
    """
    from datasets import ClassLabel

    classes = [int(c) for c in classes]
    names = dataset.features["label"].names
    if not classes or len(set(classes)) != len(classes) or not all(0 <= c < len(names) for c in classes):
        raise ValueError(f"`classes` must be distinct labels in 0..{len(names) - 1}, got {classes}")
    index = {old: new for new, old in enumerate(classes)}
    kept = dataset.filter(lambda label: label in index, input_columns="label")
    features = kept.features.copy()
    features["label"] = ClassLabel(names=[names[c] for c in classes])
    return kept.map(lambda label: {"label": index[label]}, input_columns="label", features=features)


def split_train_validation(dataset, validation_size: float, seed: int):
    """Shuffle with ``seed`` and hold out ``validation_size`` (a fraction in (0, 1), or a count >= 1)."""
    if isinstance(validation_size, bool) or not isinstance(validation_size, int | float) or validation_size <= 0:
        raise ValueError(f"`train_val_split` must be a fraction in (0, 1) or a count >= 1, got {validation_size!r}")
    if validation_size >= 1:
        if float(validation_size) != int(validation_size):
            raise ValueError(f"`train_val_split` >= 1 is a number of examples and must be whole, got {validation_size!r}")
        validation_size = int(validation_size)
        if validation_size >= len(dataset):
            raise ValueError(f"`train_val_split` {validation_size} leaves no training data out of {len(dataset)} examples")
    splits = dataset.train_test_split(test_size=validation_size, seed=seed, shuffle=True)
    return splits["train"], splits["test"]


def normalized_value_range(mean: Sequence[float], std: Sequence[float]) -> tuple[float, float]:
    """The smallest (lo, hi) holding every channel of [0, 1] after ``(x - mean) / std``.

    Exact when all channels share mean and std (ViT's 0.5 / 0.5); otherwise the augmentation
    policies see a slightly compressed range (their colour operations assume [0, 1]).
    """
    lows = [(0.0 - m) / s for m, s in zip(mean, std)]
    highs = [(1.0 - m) / s for m, s in zip(mean, std)]
    return min(lows), max(highs)


class ImageTransform:
    """``Dataset.set_transform`` function: images -> normalised ``pixel_values`` [C, H, W] float tensors.

    Args:
        size: (height, width) the model takes (bilinear resize with antialiasing when it differs).
        mean, std: per-channel normalisation, one value per model channel (None: no normalisation).
        num_channels: channels the model takes; grey images are repeated to 3 channels, RGB images
            averaged with the ITU-R 601 weights to 1.
        image_column, label_column: input column names; the label is returned as ``labels``.
    """

    def __init__(
        self,
        size: tuple[int, int],
        mean: Sequence[float] | None,
        std: Sequence[float] | None,
        num_channels: int,
        image_column: str = "image",
        label_column: str = "label",
    ):
        if num_channels not in (1, 3):
            raise ValueError(f"`num_channels` must be 1 or 3, got {num_channels!r}")
        if mean is not None and (len(mean) != num_channels or std is None or len(std) != num_channels):
            raise ValueError(f"`mean` and `std` need {num_channels} values each, got {mean!r} and {std!r}")
        self.size = (int(size[0]), int(size[1]))
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.num_channels = num_channels
        self.image_column = image_column
        self.label_column = label_column

    def __repr__(self) -> str:
        mean = None if self.mean is None else self.mean.flatten().tolist()
        std = None if self.std is None else self.std.flatten().tolist()
        return f"{type(self).__name__}(size={self.size}, mean={mean}, std={std}, num_channels={self.num_channels})"

    def _tensor(self, image: Any) -> torch.Tensor:
        if hasattr(image, "convert"):  # PIL
            image = image.convert("L" if self.num_channels == 1 else "RGB")
        array = np.asarray(image)
        # A datasets transform gets python lists, so uint8 arrays arrive as int64: any integer is 8-bit.
        scale = 1.0
        if np.issubdtype(array.dtype, np.integer):
            if array.size and (array.min() < 0 or array.max() > 255):
                raise ValueError(
                    f"integer pixels must be 8-bit values in [0, 255], found [{array.min()}, {array.max()}] "
                    "(give floats in [0, 1] otherwise)"
                )
            scale = 255.0
        pixels = torch.from_numpy(np.array(array, dtype=np.float32)) / scale
        if pixels.dim() == 2:
            pixels = pixels.unsqueeze(-1)
        pixels = pixels.permute(2, 0, 1)  # HWC -> CHW
        if pixels.shape[0] == 1 and self.num_channels == 3:
            pixels = pixels.expand(3, -1, -1)
        elif pixels.shape[0] == 3 and self.num_channels == 1:
            pixels = (pixels * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        elif pixels.shape[0] != self.num_channels:
            raise ValueError(f"an image has {pixels.shape[0]} channels; the model takes {self.num_channels}")
        if tuple(pixels.shape[1:]) != self.size:
            pixels = F.interpolate(pixels[None], size=self.size, mode="bilinear", antialias=True, align_corners=False)[0]
        if self.mean is not None:
            pixels = (pixels - self.mean) / self.std
        return pixels.contiguous()

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        if self.image_column not in batch:
            raise ValueError(f"image column {self.image_column!r} not in the data set (columns: {sorted(batch)})")
        out = {"pixel_values": [self._tensor(image) for image in batch[self.image_column]]}
        if self.label_column in batch:
            out["labels"] = batch[self.label_column]
        return out
