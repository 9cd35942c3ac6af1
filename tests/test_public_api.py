"""The top-level public API: ``fusionkit.__all__`` is exactly the documented names, each resolves
(lazily, PEP 562), and ``import fusionkit as fk; fk.build_model(...)`` works in a fresh interpreter."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fusionkit

REPO = Path(__file__).resolve().parents[1]

# The list in fusionkit/__init__.py (its _EXPORTS and __version__), pinned: adding or removing a public
# name is an API change, made here on purpose.
PUBLIC_API = ["FusionBlock", "TrainConfig", "Trainer", "__version__", "build_dataset", "build_fusion", "build_model",
              "evaluate", "extract_flow", "get_method", "list_backbones", "list_methods", "load_run",
              "method_options", "predict", "prepare_puzzle", "puzzle_experiment", "register_fusion", "run_method"]

HOMES = {"build_model": "fusionkit.methods.recipe", "list_methods": "fusionkit.methods.recipe",
         "get_method": "fusionkit.methods.recipe", "method_options": "fusionkit.methods.recipe",
         "run_method": "fusionkit.methods.recipe", "load_run": "fusionkit.methods.recipe",
         "TrainConfig": "fusionkit.training.trainer", "Trainer": "fusionkit.training.trainer",
         "evaluate": "fusionkit.training.evaluate", "predict": "fusionkit.training.evaluate",
         "build_dataset": "fusionkit.data.dataset", "prepare_puzzle": "fusionkit.data.puzzles",
         "extract_flow": "fusionkit.data.flow", "list_backbones": "fusionkit.models.backbones",
         "puzzle_experiment": "fusionkit.lab.experiments", "FusionBlock": "fusionkit.fusion",
         "register_fusion": "fusionkit.fusion", "build_fusion": "fusionkit.fusion"}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_all_is_exactly_the_public_api():
    assert fusionkit.__all__ == PUBLIC_API
    assert sorted(dir(fusionkit)) == PUBLIC_API
    assert set(HOMES) == set(PUBLIC_API) - {"__version__"}


@pytest.mark.parametrize("name", sorted(HOMES))
def test_every_public_name_is_the_object_of_its_module(name):
    import importlib

    value = getattr(fusionkit, name)
    assert value is getattr(importlib.import_module(HOMES[name]), name)
    assert getattr(value, "__module__", None) == HOMES[name]  # defined there, not re-exported from elsewhere


def test_version_is_a_string_and_unknown_names_list_the_api():
    assert isinstance(fusionkit.__version__, str) and fusionkit.__version__
    with pytest.raises(AttributeError, match=r"no attribute 'build_network'; the public API is \['FusionBlock'"):
        fusionkit.build_network  # noqa: B018


def test_build_model_through_the_top_level_in_a_fresh_interpreter():
    result = run_python("import fusionkit as fk; print(fk.build_model('cma', num_classes=4))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("TwoStreamNet(") and "CMABlock" in result.stdout
    result = run_python("import fusionkit as fk; m = fk.build_model('cma', num_classes=4); "
                        "print(sorted(m.output_roles().items()), fk.list_methods())")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ("[('flow', 'cma-F'), ('fused', 'cma-S'), ('rgb', 'cma-R')] "
                                     "['ccs', 'cma', 'cmmp', 'conv_fusion', 'late', 'nonlocal', 'spatial']")


def test_import_fusionkit_is_lazy():
    """``import fusionkit`` loads no torch and no submodule until a name is used (fusionkit --help stays fast)."""
    result = run_python("import sys, fusionkit; "
                        "print(sorted(m for m in sys.modules if m.startswith('fusionkit.')), 'torch' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] False"
