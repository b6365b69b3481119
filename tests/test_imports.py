"""The package's imports: light where they should be, and free of cycles."""

import json
import subprocess
import sys

from helpers import REPO_ROOT

PROBE = """
import json, sys
import hf_critical.detectors
after_detectors = sorted(m for m in ("torch", "torch.distributed", "transformers", "scipy.stats") if m in sys.modules)
import hf_critical
after_package = sorted(m for m in ("hf_critical.trainer", "hf_critical.callbacks", "hf_critical.experiments") if m in sys.modules)
print(json.dumps({"detectors": after_detectors, "package": after_package}))
"""


def test_the_detectors_and_the_package_import_without_torch_or_the_trainer():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == {"detectors": [], "package": []}


def test_every_core_module_imports_on_its_own():
    """A fresh interpreter per module: an import cycle would fail whichever module of it comes first."""
    modules = [
        "hf_critical.names", "hf_critical.arguments", "hf_critical.state", "hf_critical.metrics",
        "hf_critical.detectors.registry", "hf_critical.detectors.replay", "hf_critical.augmentation.base",
        "hf_critical.callbacks.switch", "hf_critical.callbacks.dynamics", "hf_critical.trainer.batches",
        "hf_critical.trainer.repeat", "hf_critical.io.dynamics_log", "hf_critical.plotting",
    ]
    code = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    for module in modules:
        subprocess.run([sys.executable, "-c", code, module], cwd=REPO_ROOT, check=True, capture_output=True)


TREND_PROBE = """
import json, sys
from hf_critical.detectors import build_detector
detector = build_detector("rate")
built = "scipy.stats" in sys.modules
loaded = []
sys.meta_path.insert(0, type("Spy", (), {"find_spec": staticmethod(lambda name, *a: loaded.append(name))})())
detector.configure(steps_per_epoch=10, num_epochs=20)
for step in range(1, 201):
    detector.update(step, step / 10, {"layer_rotation": 1e-3 * step}, learning_rate=1e-3)
print(json.dumps({"built": built, "decided": len(detector.decisions) > 0, "imported_while_deciding": loaded}))
"""


def test_a_trend_detector_imports_scipy_when_built_not_at_its_first_decision():
    """scipy.stats takes about a second to import; inside a training step it would stall that step."""
    out = subprocess.run([sys.executable, "-c", TREND_PROBE], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {
        "built": True,
        "decided": True,
        "imported_while_deciding": [],
    }
