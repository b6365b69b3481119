"""The layout of issue 11: the core never imports the experiments, and neither needs an optional package to load.

The old module paths are aliases of the moved modules for one release; without codecarbon, evaluate,
matplotlib, scikit-learn, nlpaug and kornia everything still imports, and only the function that
needs one of them fails, naming the pip command and the hf-critical extra.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

import pytest
from helpers import REPO_ROOT

#: Modules that moved into hf_critical.experiments unchanged; the old path is an alias of the new module.
MOVED = ("glue", "image_data", "vit_configs", "evaluation", "energy", "savings", "robustness", "detector_bench")


def test_every_old_path_is_the_moved_module_and_warns(monkeypatch):
    import hf_critical

    for name in MOVED:
        new = importlib.import_module(f"hf_critical.experiments.{name}")
        monkeypatch.delitem(sys.modules, f"hf_critical.{name}", raising=False)  # import the alias afresh
        with pytest.warns(DeprecationWarning, match=rf"hf_critical\.{name} moved to hf_critical\.experiments\.{name}"):
            old = importlib.import_module(f"hf_critical.{name}")
        assert old is new, name
        assert getattr(hf_critical, name) is new, name  # `import hf_critical.<name> as m` binds the same object


def test_the_old_reporting_module_holds_the_same_objects_as_the_split_modules(monkeypatch):
    import hf_critical.experiments as experiments

    monkeypatch.delitem(sys.modules, "hf_critical.reporting", raising=False)
    with pytest.warns(DeprecationWarning, match=r"hf_critical\.reporting was split"):
        reporting = importlib.import_module("hf_critical.reporting")
    assert reporting.__all__ and all(getattr(reporting, name) is getattr(experiments, name) for name in reporting.__all__)


def test_experiments_exports_each_submodules_public_names():
    import hf_critical.experiments as experiments

    for name in experiments.__all__:
        value = getattr(experiments, name)
        module = importlib.import_module(f"hf_critical.experiments.{experiments._EXPORTS[name]}")
        assert name in module.__all__ and getattr(module, name) is value, name


# The subprocess hides the optional packages from every finder, as if they were not installed:
# importlib.util.find_spec gives None (transformers probes packages that way) and an import fails.
WITHOUT_OPTIONAL_PACKAGES = r"""
import importlib, json, os, pkgutil, sys, tempfile, warnings

BLOCKED = {"codecarbon", "evaluate", "kornia", "matplotlib", "nlpaug", "sklearn"}


class Hidden:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            return None
        find = getattr(self.finder, "find_spec", None)
        return None if find is None else find(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [Hidden(finder) for finder in sys.meta_path]
warnings.simplefilter("ignore", DeprecationWarning)
MOVED = set(json.loads(sys.argv[1]))

import hf_critical

core = [
    info.name for info in pkgutil.iter_modules(hf_critical.__path__)
    if info.name not in MOVED | {"reporting", "study", "experiments"}
]
for name in core:
    importlib.import_module(f"hf_critical.{name}")
loaded = sorted(m for m in sys.modules if m.startswith("hf_critical.experiments"))
assert not loaded, f"the core imports {loaded}"
import hf_critical.experiments

assert not [m for m in sys.modules if m.startswith("hf_critical.experiments.")], "hf_critical.experiments is not lazy"

for name in hf_critical.__all__:
    getattr(hf_critical, name)
for name in hf_critical.experiments.__all__:
    getattr(hf_critical.experiments, name)
for info in pkgutil.iter_modules(hf_critical.experiments.__path__):
    if info.name != "evaluate_modules":  # loaded by path through evaluate, never imported
        importlib.import_module(f"hf_critical.experiments.{info.name}")
import hf_critical.study
for name in MOVED | {"reporting"}:
    importlib.import_module(f"hf_critical.{name}")
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
assert not loaded, loaded

from hf_critical.experiments import load_metric, load_sklearn_digits, perturb_texts, require_codecarbon, track_energy
from hf_critical.plotting import plot_dynamics


def message(call):
    try:
        call()
    except ImportError as err:
        return str(err)
    raise AssertionError(f"{call} ran without its optional package")


def plot():
    folder = tempfile.mkdtemp()
    with open(os.path.join(folder, "dynamics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 1, "gradient_confusion": {"value": 0.1}}) + "\n")
    plot_dynamics(os.path.join(folder, "dynamics.jsonl"), os.path.join(folder, "dynamics.png"))


def energy():
    with track_energy("train", is_main_process=True):
        pass


with track_energy("train", enabled=False) as measurement:  # off: codecarbon is not needed
    pass
assert measurement.report is None
print(json.dumps({
    "codecarbon": [message(require_codecarbon), message(energy)],
    "evaluate": [message(lambda: load_metric("accuracy", prefer_hub=False))],
    "scikit-learn": [message(load_sklearn_digits)],
    "nlpaug": [message(lambda: perturb_texts(["the film was good"], "word"))],
    "matplotlib": [message(plot)],
}))
"""


def test_everything_imports_without_the_optional_packages_and_only_their_users_fail():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OPTIONAL_PACKAGES, json.dumps(MOVED)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    messages = json.loads(done.stdout.strip().splitlines()[-1])
    extras = {"codecarbon": "experiments", "evaluate": "experiments", "scikit-learn": "experiments",
              "nlpaug": "text", "matplotlib": "experiments"}  # fmt: skip
    for package, texts in messages.items():
        for text in texts:
            assert f"pip install {package}" in text and f"hf-critical[{extras[package]}]" in text, text
