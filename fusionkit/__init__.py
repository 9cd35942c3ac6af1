"""fusionkit: two-stream (RGB + optical flow) video action recognition and the ways of fusing the streams.

The public API, importable from the top level::

    import fusionkit as fk
    model = fk.build_model("cma", num_classes=4)
    fk.list_methods()            # ['ccs', 'cma', 'cmmp', 'conv_fusion', 'late', 'nonlocal', 'spatial']
    fk.method_options("spatial") # its options, with types and defaults

The layers (docs/architecture.md) depend one way: ``lab`` (course harness) and ``viz`` on
``methods`` (one module per paper), on ``training``, on ``models``, ``fusion`` and ``data``.
Names are imported on first use (PEP 562), so ``import fusionkit`` and ``fusionkit --help`` stay fast.
"""
from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fusionkit")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

_EXPORTS = {
    "build_model": "fusionkit.methods", "list_methods": "fusionkit.methods", "get_method": "fusionkit.methods",
    "method_options": "fusionkit.methods", "run_method": "fusionkit.methods", "load_run": "fusionkit.methods",
    "TrainConfig": "fusionkit.training.trainer", "Trainer": "fusionkit.training.trainer",
    "evaluate": "fusionkit.training.evaluate", "predict": "fusionkit.training.evaluate",
    "build_dataset": "fusionkit.data.dataset", "prepare_puzzle": "fusionkit.data.puzzles",
    "extract_flow": "fusionkit.data.flow", "list_backbones": "fusionkit.models.backbones",
    "puzzle_experiment": "fusionkit.lab.experiments",
    "FusionBlock": "fusionkit.fusion", "register_fusion": "fusionkit.fusion", "build_fusion": "fusionkit.fusion",
}
__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'fusionkit' has no attribute {name!r}; the public API is {__all__}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
