"""Prose that a notebook renders from its results, so the numbers its text states are the numbers it measured.

DESIGN.md's notebook conventions: a conclusion is "drawn from the measured numbers (read from the
results, never typed by hand)". A notebook therefore saves its numbers to
``figures/results/<notebook>.json`` and a code cell after that builds its summary with these
helpers and shows it with ``IPython.display.Markdown``; ``tests/test_notebook_teaching.py`` fails on
a markdown cell that types a measurement instead.

The functions only format: they take a results summary (``{"mean", "std", "seeds"}``, the schema of
:mod:`fusionkit.lab.results`) or a results file and return Markdown text.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["mean_std", "per_seed", "accuracy_table", "run_time", "training_seconds", "assignment_summary"]

GPU_NOT_MEASURED = "not measured yet (no run on a GPU has been recorded)"


def mean_std(summary: dict, digits: int = 2) -> str:
    """``0.67 ± 0.04``: a summary's mean and its standard deviation over seeds (just the mean for one seed)."""
    if not isinstance(summary, dict) or "mean" not in summary:
        raise TypeError(f"expected a results summary {{'mean', 'std', 'seeds'}}, got {summary!r}")
    if len(summary.get("seeds", ())) > 1:
        return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"
    return f"{summary['mean']:.{digits}f}"


def per_seed(summary: dict, digits: int = 2) -> str:
    """``0.50 / 0.58 / 1.00``: each seed's value, in seed order."""
    return " / ".join(f"{v:.{digits}f}" for v in summary["seeds"])


def accuracy_table(rows: dict[str, dict[str, dict]], columns: list[str] | None = None, digits: int = 2) -> str:
    """A Markdown table, one row per key of ``rows`` and one column per output, each cell :func:`mean_std`
    (``–`` where a row lacks the column). ``columns`` defaults to the first row's outputs."""
    if not rows:
        raise ValueError("accuracy_table needs at least one row")
    columns = list(columns or next(iter(rows.values())))
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, cells in rows.items():
        lines.append(f"| {name} | " + " | ".join(mean_std(cells[c], digits) if c in cells else "–"
                                              for c in columns) + " |")
    return "\n".join(lines)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def training_seconds(results: dict | None) -> float | None:
    """The time a results file records for its training (``extra.wall_seconds``, else the sum of
    ``extra.seconds`` / ``extra.train_seconds``), or None when it records none."""
    extra = (results or {}).get("extra") or {}
    if isinstance(extra.get("wall_seconds"), (int, float)):
        return float(extra["wall_seconds"])
    for key in ("seconds", "train_seconds"):
        value = extra.get(key)
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
            return float(sum(value.values()))
    return None


def run_time(notebook: str, figures_dir: str | os.PathLike) -> str:
    """The header's run-time line of ``notebook``: its wall time in the last ``make run``
    (``<figures_dir>/results/make_run.json``, with the machine and its load), the training time its
    own results record, and the GPU time (not measured yet: no GPU run is recorded)."""
    results = Path(figures_dir) / "results"
    record = _read(results / "make_run.json")
    row = ((record or {}).get("extra") or {}).get("notebooks", {}).get(notebook)
    if row:
        extra = record["extra"]
        machine, load = extra["machine"], extra["load"]["start"]["load_average"][0]
        cpu = (f"{row['seconds'] / 60:.1f} min in the `make run` of {extra['started'][:10]} "
               f"({machine['cpu_count']} cores, {machine['cpu_model']}; load average {load:.2f} at its start)")
    else:
        cpu = "not measured yet by `make run` (it records each notebook's time in `figures/results/make_run.json`)"
    seconds = training_seconds(_read(results / f"{notebook}.json"))
    if seconds is not None:
        cpu += (f"; its experiments took {seconds / 60:.1f} min when `figures/results/{notebook}.json` was made "
                "(the results file does not record the machine's load)")
    return f"**Run time.** On 2 CPU cores: {cpu}. On a GPU: {GPU_NOT_MEASURED}."


def assignment_summary(results: dict) -> str:
    """The Summary of a course assignment (a1, a2) from its results: each stream alone and late fusion on
    ``registration``, each fusion block's test top-1 and, where recorded (``extra.speed``), its learning-curve
    measures (mean top-1 over the fine-tuning epochs, epochs to 0.9 per seed), and ``check_block``'s score."""
    baseline = results["accuracy"]["registration"]
    speed = results["extra"].get("speed", {})
    lines = [f"- **`registration`** (seeds {results['params']['SEEDS']}): RGB alone {mean_std(baseline['rgb'])}, "
             f"flow alone {mean_std(baseline['flow'])}, late fusion {mean_std(baseline['late'])}."]
    for key, per_puzzle in results.get("variants", {}).items():
        summary = per_puzzle.get("registration", {}).get("spatial-S")
        if summary is None:
            continue
        name = key.split("=", 1)[1]
        line = f"- **`{name}`** (fine-tuned from the late model): test {mean_std(summary)}"
        if name in speed:
            line += f"; mean top-1 over the fine-tuning epochs {mean_std(speed[name]['curve_mean'])}"
            reached = " / ".join("–" if e is None else str(e) for e in speed[name].get("epochs_to_0.9", []))
            if reached:
                line += f", epochs to 0.9 per seed {reached} (–: not reached)"
        lines.append(line + ".")
    check = results["extra"].get("check", {})
    if "score" in check:
        skipped = "; the training check is skipped in smoke mode" if results["params"].get("SMOKE") else ""
        lines.append(f"- **`check_block`**: {check['score']:g} of {check['max_score']:g} points on the checks run here "
                     f"({len(check.get('checks', []))} checks{skipped}).")
    return "\n".join(lines)


def headline_robustness(holds: dict) -> str:
    """The sentence saying how often a notebook's headline held over more seeds and renders, from the
    ``extra.holds`` of a ``<notebook>_robustness.json`` (``benchmarks/headline_robustness.py``):
    per row, the runs at or above the threshold, their mean and the lowest run."""
    runs = holds["runs"]
    rows = "; ".join(f"{row} in {n} of {runs} (mean {mean:.2f}, lowest {low:.2f})"
                     for row, (n, mean, low) in holds["rows"].items())
    return (f"Over {runs} runs ({len(holds['seeds'])} training seeds × {len(holds['data_seeds'])} renders, "
            f"`benchmarks/headline_robustness.py`), `{holds['puzzle']}` fused top-1 ≥ {holds['threshold']}: {rows}.")
