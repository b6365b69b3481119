"""Image augmentation policies as batched kornia operations: trivial, rand, crop_flip and affine.

kornia is imported only when a policy is built (``pip install hf-critical[images]``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..extras import install_hint, is_available

#: Built-in policies by name (a callable on a float image batch is accepted too).
IMAGE_POLICIES = ("trivial", "rand", "crop_flip", "affine")

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
    if not is_available("kornia"):
        raise ImportError(f"image policy {policy!r} needs kornia, which is not installed; {install_hint('kornia')}")


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
