"""The notebooks' result files: ``figures/results/<notebook>.json``, one schema for all (DESIGN.md).

    {"notebook": "02_two_stream_late_fusion",
     "params": {...},
     "accuracy": {"<puzzle or dataset>": {"<model output>": {"mean": .93, "std": .01, "seeds": [.92, .94]}}},
     "extra": {...}}
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from fusionkit.data.atomic import atomic_write_text


def seed_summary(values) -> dict:
    """``{"mean", "std", "seeds"}`` of one number measured over seeds (population std)."""
    v = [float(x) for x in values]
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "seeds": v}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def save_results(notebook: str, params: dict, accuracy: dict, extra: dict | None = None,
                 results_dir: str | os.PathLike = "figures/results") -> Path:
    """Write the schema above to ``<results_dir>/<notebook>.json`` (atomically) and return its path."""
    for where, outputs in accuracy.items():
        for output, summary in outputs.items():
            if set(summary) != {"mean", "std", "seeds"}:
                raise ValueError(f"accuracy[{where!r}][{output!r}] must be seed_summary(...) "
                                 f"({{'mean', 'std', 'seeds'}}), got keys {sorted(summary)}")
    path = Path(results_dir) / f"{notebook}.json"
    atomic_write_text(path, json.dumps(_jsonable({"notebook": notebook, "params": params, "accuracy": accuracy,
                                                  "extra": extra or {}}), indent=1))
    return path


def load_results(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
