"""benchmarks/headline_robustness.py: notebook 04 rerun over seeds x renders (smoke sizes), the runs at
or above the headline's threshold counted per row, the file in the results schema, and 04's Summary
stating the rate from it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusionkit.lab.results import seed_summary, validate_results
from tests.helpers import load_benchmark_script

REPO = Path(__file__).resolve().parents[1]


def test_holds_counts_the_runs_at_or_above_the_threshold():
    robustness = load_benchmark_script("headline_robustness")
    headline = robustness.HEADLINES["04_cmmp"]
    runs = [[0, 0], [0, 1], [1, 0], [1, 1]]
    results = {"variants": {"CMMP": {"order": {"cmmp-S": {**seed_summary([1.0, 0.64, 0.9, 0.95]), "runs": runs}}},
                            "CMMP+noAL": {"order": {"cmmp-S": {**seed_summary([0.5, 0.89, 1.0, 1.0]), "runs": runs}}}}}
    held = robustness.holds(results, headline)
    assert held["runs"] == 4 and held["seeds"] == [0, 1] and held["data_seeds"] == [0, 1]
    assert held["rows"]["CMMP"] == (3, 0.8725, 0.64)  # 0.9 counts: "at or above"
    assert held["rows"]["CMMP+noAL"] == (2, 0.8475, 0.5)


def test_notebook_04_states_the_rate_it_read():
    """04's Summary sentence is rendered from the rate (the helper the notebook calls), and the
    committed file renders without error."""
    from fusionkit.viz.text import headline_robustness
    held = {"puzzle": "order", "output": "cmmp-S", "threshold": 0.9, "runs": 4, "seeds": [0, 1], "data_seeds": [0, 1],
            "rows": {"CMMP": (3, 0.8725, 0.64), "CMMP+noAL": (2, 0.8475, 0.5)}}
    assert headline_robustness(held) == (
        "Over 4 runs (2 training seeds × 2 renders, `benchmarks/headline_robustness.py`), `order` fused top-1 ≥ 0.9: "
        "CMMP in 3 of 4 (mean 0.87, lowest 0.64); CMMP+noAL in 2 of 4 (mean 0.85, lowest 0.50).")
    notebook = json.loads((REPO / "notebooks" / "04_cmmp.ipynb").read_text())
    assert any("headline_robustness(load_results(robustness)" in "".join(c["source"]) for c in notebook["cells"])
    committed = json.loads((REPO / "figures" / "results" / "04_cmmp_robustness.json").read_text())["extra"]["holds"]
    n, mean, _ = committed["rows"]["CMMP"]
    assert f"CMMP in {n} of {committed['runs']} (mean {mean:.2f}" in headline_robustness(committed)


@pytest.mark.filterwarnings("ignore::fusionkit.lab.machine.MachineBusyWarning")
def test_smoke_run_of_notebook_04_writes_the_rate(tmp_path):
    robustness = load_benchmark_script("headline_robustness")
    out = tmp_path / "04_cmmp_robustness.json"
    assert robustness.main(["--smoke", "--data-seeds", "0", "1", "--data", str(tmp_path / "data"),
                            "--output", str(out)]) == 0
    record = json.loads(out.read_text())
    assert validate_results(record) == []
    held = record["extra"]["holds"]
    assert held["runs"] == 2 and held["data_seeds"] == [0, 1] and held["seeds"] == [0]  # SMOKE: one seed
    assert set(held["rows"]) == {"CMMP", "CMMP+noAL"} and set(record["variants"]) == {"CMMP", "CMMP+noAL"}
    for row, (n, mean, low) in held["rows"].items():
        values = record["variants"][row]["order"]["cmmp-S"]["seeds"]
        assert n == sum(v >= 0.9 for v in values) and low == min(values)
    assert record["params"]["DATA_SEEDS"] == [0, 1] and record["params"]["PUZZLES"] == ["order"]
    assert record["params"]["TABLE_ROWS"] == ["CMMP+noAL", "CMMP"]
