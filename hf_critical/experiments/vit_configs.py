"""Small ViT configurations by name, for training from scratch on small images (``--config_name`` of run_vit.py).

The image size and channels come from the data; the name fixes the rest. Each is a setting this
project has measured on 2 CPU cores (``../shared/ENVIRONMENT.md``):

==============  =====  ======  ======  =====  ====  =======================================================
name            patch  hidden  layers  heads  MLP   measured on
==============  =====  ======  ======  =====  ====  =======================================================
``vit-digits``  2      64      4       4      128   scikit-learn digits, 8x8 (``make demo``)
``vit-cifar``   4      128     4       4      256   a CIFAR-10 subset, 32x32
``vit-tiny``    4      192     6       3      768   CIFAR-10, 32x32 (DeiT-Tiny's width, half its depth)
==============  =====  ======  ======  =====  ====  =======================================================

Small ResNets (HF `ResNetConfig`, BatchNorm after every convolution), for the same images:

================  ======  ===========  ==========  =========================================================
name              blocks  widths       depths      note
================  ======  ===========  ==========  =========================================================
``resnet-cifar``  basic   16/32/64     2/2/2       HF's stem (7x7 stride-2 conv + max-pool): 32 px -> 8 px
================  ======  ===========  ==========  =========================================================

`small_model_config` builds either kind by name (``--config_name`` of run_vit.py).
"""

from __future__ import annotations

from typing import Any

__all__ = ["SMALL_MODEL_CONFIGS", "SMALL_RESNET_CONFIGS", "SMALL_VIT_CONFIGS", "small_model_config", "small_vit_config"]

SMALL_VIT_CONFIGS: dict[str, dict[str, int]] = {
    "vit-digits": dict(patch_size=2, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128),
    "vit-cifar": dict(patch_size=4, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=256),
    "vit-tiny": dict(patch_size=4, hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768),
}


def small_vit_config(name: str, image_size: int, num_channels: int, **kwargs: Any):
    """The `ViTConfig` called ``name`` for ``image_size`` x ``image_size`` images; ``kwargs`` (labels...) are added."""
    if name not in SMALL_VIT_CONFIGS:
        raise ValueError(f"unknown small ViT config {name!r}; choose one of {sorted(SMALL_VIT_CONFIGS)}")
    from transformers import ViTConfig

    return ViTConfig(image_size=image_size, num_channels=num_channels, **SMALL_VIT_CONFIGS[name], **kwargs)


SMALL_RESNET_CONFIGS: dict[str, dict[str, Any]] = {
    "resnet-cifar": dict(layer_type="basic", embedding_size=16, hidden_sizes=[16, 32, 64], depths=[2, 2, 2]),
}

#: Every named small model: ViTs and ResNets.
SMALL_MODEL_CONFIGS: tuple[str, ...] = (*SMALL_VIT_CONFIGS, *SMALL_RESNET_CONFIGS)


def small_model_config(name: str, image_size: int, num_channels: int, **kwargs: Any):
    """The config called ``name`` (a small ViT or ResNet) for ``image_size`` x ``image_size`` images.

    A `ResNetConfig` has no image size of its own; it is kept as ``config.image_size`` for the
    recipe's image processor (the network itself takes any size).
    """
    if name in SMALL_VIT_CONFIGS:
        return small_vit_config(name, image_size, num_channels, **kwargs)
    if name not in SMALL_RESNET_CONFIGS:
        raise ValueError(f"unknown small model config {name!r}; choose one of {sorted(SMALL_MODEL_CONFIGS)}")
    from transformers import ResNetConfig

    return ResNetConfig(num_channels=num_channels, image_size=image_size, **SMALL_RESNET_CONFIGS[name], **kwargs)
