"""Run in a venv holding only the core requirements (`make core-check`): hf_critical imports lazily and trains.

Checks that the optional packages are absent, times the imports, trains a tiny ViT with a k-copy
switch, and that each optional feature fails only when used, naming the extra to install.
"""

import importlib.util
import sys
import tempfile
import time

OPTIONAL = ["nlpaug", "kornia", "codecarbon", "evaluate", "matplotlib", "sklearn"]
present = [m for m in OPTIONAL if importlib.util.find_spec(m) is not None]
assert not present, f"not a core-only environment: {present} installed"

start = time.perf_counter()
import hf_critical.detectors  # noqa: E402

print(f"import hf_critical.detectors: {time.perf_counter() - start:.2f} s; torch imported: {'torch' in sys.modules}")
assert "torch" not in sys.modules and "transformers" not in sys.modules
start = time.perf_counter()
import hf_critical  # noqa: E402

assert "hf_critical.trainer" not in sys.modules
print(f"import hf_critical: {time.perf_counter() - start:.2f} s (lazy)")
start = time.perf_counter()
from hf_critical import CriticalPeriodArguments, CriticalPeriodTrainer, ImageAugmentationCollator  # noqa: E402

print(f"from hf_critical import CriticalPeriodTrainer: {time.perf_counter() - start:.2f} s")

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import ViTConfig, ViTForImageClassification  # noqa: E402

torch.manual_seed(0)
config = ViTConfig(
    image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
    intermediate_size=16, num_labels=2,
)
data = Dataset.from_dict({"pixel_values": torch.rand(16, 1, 8, 8).tolist(), "labels": [i % 2 for i in range(16)]})
args = CriticalPeriodArguments(
    output_dir=tempfile.mkdtemp(), max_steps=4, per_device_train_batch_size=8, report_to=[], save_strategy="no",
    dynamics_every_n_steps=2, detector="fixed", detector_switch_step=2, use_cpu=True, disable_tqdm=True,
)
collator = ImageAugmentationCollator(policy=lambda x: x.flip(-1), copies=2)
trainer = CriticalPeriodTrainer(
    model=ViTForImageClassification(config), args=args, train_dataset=data.with_format("torch"), data_collator=collator
)
trainer.train()
assert trainer.critical_period["switch_step"] == 2 and [h["step"] for h in trainer.dynamics.history] == [2, 4]
print("trained 4 steps, switched at step 2, measured at steps 2 and 4")


def fails_naming(extra, call):
    try:
        call()
    except ImportError as err:
        assert f"hf-critical[{extra}]" in str(err), err
        print(f"ImportError (as expected): {err}")
        return
    raise AssertionError(f"{call} did not fail without its optional package")


fails_naming("images", lambda: ImageAugmentationCollator(policy="crop_flip", copies=2)(list(data.with_format("torch"))[:2]))
fails_naming("text", lambda: hf_critical.default_text_augmenter())
fails_naming("experiments", lambda: importlib.import_module("hf_critical.experiments.energy").require_codecarbon())
print("core-only check passed")
