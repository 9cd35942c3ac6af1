"""The notebooks' result files: ``figures/results/<notebook>.json``, one schema for all.

    {"notebook": "02_two_stream_late_fusion",
     "params": {...},
     "accuracy": {"<dataset>": {"<output>": {"mean": .93, "std": .01, "seeds": [.92, .94],
                                             "runs": [[0, 0], [0, 1]], "ci95": [.80, 1.06]}}},
     "variants": {"<variant>": {"<dataset>": {"<output>": {...}}}},
     "extra": {...}}

``<dataset>`` is a puzzle's name, ``ucf101`` or ``hmdb51``; ``<output>`` is a model output as the
library names it (:func:`fusionkit.models.two_stream.output_names`): ``rgb``, ``flow``, a method's
name, or ``<method>-R`` / ``-F`` / ``-S``. An experiment's variants of a method (which block, which
stage, an ablation row) go under ``variants``, keyed by a label of their own (``fusion=sum``,
``position=stage1``, ``SUM+AL``), each holding the same ``accuracy`` shape. :func:`validate_results`
checks a file against this; a test runs it on every committed file.

A summary's ``mean``, ``std`` (population) and ``seeds`` (every run's value) are always there;
``runs`` (the ``[data seed, training seed]`` of each value: a data seed renders the puzzle's videos
again, a training seed changes initialisation and sampling) and ``ci95`` (:func:`t_interval`) are
there in results written since runs could vary the render (:func:`run_summary`), absent in older ones.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from fusionkit.data.atomic import atomic_write_text

REAL_DATASETS = ("ucf101", "hmdb51")
SUMMARY_KEYS = {"mean", "std", "seeds"}
RUN_SUMMARY_KEYS = {"runs", "ci95"}  # optional: run_summary's


def seed_summary(values) -> dict:
    """``{"mean", "std", "seeds"}`` of one number measured over seeds (population std)."""
    v = [float(x) for x in values]
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "seeds": v}


def t_interval(values, confidence: float = 0.95) -> list[float] | None:
    """Student-t interval for the mean of ``values``: mean +- t_{(1+c)/2, n-1} s / sqrt(n), with
    ``s`` the sample std (n-1); None for fewer than two values.

    It treats every run as an independent draw. Runs over renders x training seeds are two-level
    (runs on one render share its videos), so when the renders differ more than the seeds, an
    interval over few renders is too narrow: read it with the number of data seeds in ``runs``."""
    from scipy import stats

    v = np.asarray([float(x) for x in values])
    if len(v) < 2:
        return None
    half = stats.t.ppf((1 + confidence) / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return [float(v.mean() - half), float(v.mean() + half)]


def run_summary(values, runs) -> dict:
    """:func:`seed_summary` of one number over runs, with each run's ``[data seed, training seed]``
    and the 95% :func:`t_interval` of the mean (None for one run)."""
    runs = [[int(d), int(s)] for d, s in runs]
    if len(runs) != len(values):
        raise ValueError(f"{len(values)} values but {len(runs)} runs: give one (data seed, seed) per value")
    return {**seed_summary(values), "runs": runs, "ci95": t_interval(values)}


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


def _output_pattern() -> re.Pattern:
    from fusionkit.methods import list_methods

    methods = "|".join(re.escape(m) for m in list_methods())
    return re.compile(rf"^(rgb|flow|(?:{methods})(?:-[RFS])?)$")


def _accuracy_problems(where: str, accuracy, datasets: set[str], outputs: re.Pattern) -> list[str]:
    if not isinstance(accuracy, dict):
        return [f"{where} must be a dict {{dataset: {{output: summary}}}}, got {type(accuracy).__name__}"]
    problems = []
    for dataset, by_output in accuracy.items():
        if dataset not in datasets:
            problems.append(f"{where}: {dataset!r} is not a dataset (a puzzle {sorted(datasets - set(REAL_DATASETS))}"
                            f" or one of {list(REAL_DATASETS)}); put a variant under 'variants'")
            continue
        for output, summary in by_output.items():
            if not outputs.match(output):
                problems.append(f"{where}[{dataset!r}]: {output!r} is not a model output (rgb, flow, <method> or "
                                f"<method>-R/-F/-S); put a variant under 'variants'")
            if not isinstance(summary, dict) or not SUMMARY_KEYS <= set(summary) <= SUMMARY_KEYS | RUN_SUMMARY_KEYS:
                problems.append(f"{where}[{dataset!r}][{output!r}] must be seed_summary(...) ({sorted(SUMMARY_KEYS)}) "
                                f"or run_summary(...) (also {sorted(RUN_SUMMARY_KEYS)})")
            else:
                problems += _run_summary_problems(f"{where}[{dataset!r}][{output!r}]", summary)
    return problems


def _run_summary_problems(where: str, summary: dict) -> list[str]:
    problems = []
    runs, ci = summary.get("runs"), summary.get("ci95", None)
    if "runs" in summary and (not isinstance(runs, list) or len(runs) != len(summary["seeds"])
                              or not all(isinstance(r, list) and len(r) == 2 for r in runs)):
        problems.append(f"{where}['runs'] must hold one [data seed, training seed] per value of 'seeds'")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and ci[0] <= summary["mean"] + 1e-9
                               and summary["mean"] <= ci[1] + 1e-9):
        problems.append(f"{where}['ci95'] must be [low, high] around the mean, or null (one run)")
    return problems


def validate_results(results: dict) -> list[str]:
    """Every way ``results`` departs from the schema above (an empty list when it follows it)."""
    from fusionkit.data.puzzles import PUZZLES

    datasets, outputs = set(PUZZLES) | set(REAL_DATASETS), _output_pattern()
    problems = [f"missing key {k!r}" for k in ("notebook", "params", "accuracy", "extra") if k not in results]
    extra_keys = set(results) - {"notebook", "params", "accuracy", "variants", "extra"}
    problems += [f"unknown top-level key {k!r}" for k in sorted(extra_keys)]
    problems += _accuracy_problems("accuracy", results.get("accuracy", {}), datasets, outputs)
    for label, accuracy in (results.get("variants") or {}).items():
        problems += _accuracy_problems(f"variants[{label!r}]", accuracy, datasets, outputs)
    return problems


def save_results(notebook: str, params: dict, accuracy: dict, extra: dict | None = None,
                 results_dir: str | os.PathLike = "figures/results", variants: dict | None = None) -> Path:
    """Write the schema above to ``<results_dir>/<notebook>.json`` (atomically) and return its path;
    ValueError listing every departure from the schema, before anything is written.

    ``extra["machine"]`` records what the numbers were computed on (unless the caller gave one): the
    CPU model and instruction set, torch and its thread count. Same seeds give the same numbers on
    the same kind of machine, but not across CPUs: an AMD EPYC and an Intel Xeon (both AVX-512) run
    other convolution kernels, whose rounding differs and grows over training (docs/performance.md)."""
    from fusionkit.lab.machine import numerics_machine

    results = _jsonable({"notebook": notebook, "params": params, "accuracy": accuracy, "variants": variants or {},
                         "extra": {"machine": numerics_machine(), **(extra or {})}})
    problems = validate_results(results)
    if problems:
        raise ValueError(f"{notebook}: the results do not follow the schema:\n  " + "\n  ".join(problems))
    path = Path(results_dir) / f"{notebook}.json"
    atomic_write_text(path, json.dumps(results, indent=1))
    return path


def load_results(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())
