"""Offline image data: digits, npz and image-folder loaders, the seeded split, and the pixel transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_critical.experiments.image_data import (
    ImageTransform,
    load_image_folder,
    load_npz_images,
    load_sklearn_digits,
    normalized_value_range,
    split_train_validation,
)


def test_digits_and_a_seeded_split():
    digits = load_sklearn_digits()
    assert len(digits) == 1797 and digits.features["label"].names == [str(i) for i in range(10)]
    image = np.asarray(digits[0]["image"])
    assert image.shape == (8, 8, 1) and 0.0 <= image.min() and image.max() <= 1.0
    train, held_out = split_train_validation(digits, 297, seed=0)
    assert (len(train), len(held_out)) == (1500, 297)
    again, _ = split_train_validation(digits, 297, seed=0)
    assert train["label"][:50] == again["label"][:50]
    assert len(split_train_validation(digits, 0.1, seed=0)[1]) == 180
    with pytest.raises(ValueError, match="leaves no training data"):
        split_train_validation(digits, 1797, seed=0)


def test_npz_images(tmp_path):
    path = tmp_path / "images.npz"
    np.savez(path, x=np.zeros((4, 6, 6, 3), dtype=np.uint8), y=np.array([0, 2, 1, 2]), class_names=np.array(["a", "b", "c"]))
    data = load_npz_images(path)
    assert data.features["label"].names == ["a", "b", "c"] and data["label"] == [0, 2, 1, 2]
    np.savez(tmp_path / "labels.npz", x=np.zeros((2, 4, 4), dtype=np.uint8), y=np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match=r"labels\.npz: 'y' must hold one integer label per image"):
        load_npz_images(tmp_path / "labels.npz")
    np.savez(tmp_path / "names.npz", x=np.zeros((2, 4, 4), dtype=np.uint8), y=np.array([0, 3]), class_names=np.array(["a"]))
    with pytest.raises(ValueError, match=r"label 3 has no entry in 'class_names'"):
        load_npz_images(tmp_path / "names.npz")
    np.savez(tmp_path / "range.npz", x=np.full((1, 4, 4), 3.0), y=np.array([0]))
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\]"):
        load_npz_images(tmp_path / "range.npz")


def test_transform_scales_resizes_and_normalises():
    grey = np.full((4, 4), 255, dtype=np.uint8)
    transform = ImageTransform((8, 8), mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], num_channels=3)
    out = transform({"image": [grey], "label": [1]})
    assert out["labels"] == [1]
    pixels = out["pixel_values"][0]
    assert pixels.shape == (3, 8, 8) and torch.allclose(pixels, torch.full((3, 8, 8), 2.0))
    rgb = np.zeros((2, 2, 3), dtype=np.float32)
    rgb[..., 0] = 1.0  # pure red -> luma 0.299
    to_grey = ImageTransform((2, 2), mean=None, std=None, num_channels=1)({"image": [rgb]})
    assert torch.allclose(to_grey["pixel_values"][0], torch.full((1, 2, 2), 0.299))
    with pytest.raises(ValueError, match="`mean` and `std` need 1 values each"):
        ImageTransform((2, 2), mean=[0.5, 0.5, 0.5], std=[0.5] * 3, num_channels=1)


def test_uint8_npz_images_reach_the_model_in_zero_one(tmp_path):
    # datasets hands a transform python lists, so the uint8 pixels arrive as int64: they must still be scaled.
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)
    pixels[0, 0, 0, 0] = 255
    np.savez(tmp_path / "rgb.npz", x=pixels, y=np.array([0, 1, 0]))
    data = load_npz_images(tmp_path / "rgb.npz")
    data.set_transform(ImageTransform((4, 4), mean=None, std=None, num_channels=3))
    first = data[0]["pixel_values"]
    assert first.max() == 1.0 and first.min() >= 0.0
    assert torch.allclose(first, torch.from_numpy(pixels[0].astype(np.float32) / 255).permute(2, 0, 1))
    with pytest.raises(ValueError, match=r"integer pixels must be 8-bit values in \[0, 255\], found \[0, 1000\]"):
        ImageTransform((2, 2), mean=None, std=None, num_channels=1)({"image": [[[0, 1000], [3, 4]]]})


def test_normalized_value_range():
    assert normalized_value_range([0.5], [0.5]) == (-1.0, 1.0)
    low, high = normalized_value_range([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert low == pytest.approx(-0.485 / 0.229) and high == pytest.approx((1 - 0.406) / 0.225)


def write_pngs(folder, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(np.full((4, 4, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")


def test_image_folder_classes_and_bad_layouts(tmp_path):
    for name in ("cat", "dog"):
        write_pngs(tmp_path / "train" / name, 3)
    write_pngs(tmp_path / "val" / "dog", 2)
    train, validation = load_image_folder(tmp_path / "train", tmp_path / "val")
    assert train.features["label"].names == ["cat", "dog"] and sorted(train["label"]) == [0, 0, 0, 1, 1, 1]
    assert validation["label"] == [1, 1] and validation[0]["image"].size == (4, 4)
    assert load_image_folder(tmp_path / "train")[1] is None

    with pytest.raises(ValueError, match=r"nope: no such folder \(the train images"):
        load_image_folder(tmp_path / "nope")
    write_pngs(tmp_path / "one" / "cat", 2)
    with pytest.raises(ValueError, match="one sub-folder per class, at least two classes"):
        load_image_folder(tmp_path / "one")
    write_pngs(tmp_path / "loose", 2)  # images beside the class folders
    write_pngs(tmp_path / "loose" / "cat", 1)
    write_pngs(tmp_path / "loose" / "dog", 1)
    with pytest.raises(ValueError, match="no images beside the class folders"):
        load_image_folder(tmp_path / "loose")
