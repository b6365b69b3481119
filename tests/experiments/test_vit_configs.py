"""The named small ViT configurations of run_vit.py's ``--config_name``."""

from __future__ import annotations

import pytest

from hf_critical.experiments.vit_configs import SMALL_VIT_CONFIGS, small_vit_config


@pytest.mark.parametrize("name", sorted(SMALL_VIT_CONFIGS))
def test_each_config_fits_its_images(name):
    size = 8 if name == "vit-digits" else 32
    config = small_vit_config(name, size, 3, num_labels=10)
    assert config.image_size == size and config.num_channels == 3 and config.num_labels == 10
    assert size % config.patch_size == 0 and config.hidden_size % config.num_attention_heads == 0


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown small ViT config 'vit-huge'; choose one of \['vit-cifar'"):
        small_vit_config("vit-huge", 32, 3)
