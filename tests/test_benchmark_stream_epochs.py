"""benchmarks/bench_stream_epochs.py on the benchmark's --quick data: it trains the entries asked for at
each epochs x lr and writes one row per setting with every entry's accuracy over the runs. No timing checks."""
from __future__ import annotations

import json

import pytest

from tests.helpers import load_benchmark_script


def test_stream_epochs_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONKIT_RUN_CACHE", "off")
    script = load_benchmark_script("bench_stream_epochs")
    out = tmp_path / "rows.json"
    script.main(["--quick", "--puzzle", "conjunction", "--size", "32", "--epochs", "1", "2", "--lr", "3e-3",
                 "--finetune-epochs", "1", "--seeds", "0", "--data-seeds", "0", "1", "--workers", "1",
                 "--entries", "spatial(fusion=sum)", "--data", str(tmp_path / "data"), "--out", str(out)])
    report = json.loads(out.read_text())
    assert (report["puzzle"], report["size"], report["data_seeds"]) == ("conjunction", 32, [0, 1])
    assert report["settings"]["videos_per_class"] == 4 and report["settings"]["size"] == 32  # the --quick data
    assert "epochs" not in report["settings"] and "lr" not in report["settings"]  # swept: in the rows
    assert [(r["epochs"], r["finetune_epochs"], r["lr"]) for r in report["rows"]] == [(1, 1, 3e-3), (2, 1, 3e-3)]
    for row in report["rows"]:
        assert set(row["accuracy"]) == {"late", "spatial(fusion=sum)"} and row["runs"] == 2
        assert row["cached_runs"] == 0
        for summary in row["accuracy"].values():
            assert len(summary["seeds"]) == 2 and all(0 <= a <= 1 for a in summary["seeds"])
            assert summary["mean"] == pytest.approx(sum(summary["seeds"]) / 2)
        assert set(row["seconds"]) == {"late", "spatial(fusion=sum)"} and min(row["seconds"].values()) > 0
    assert {"cpu_model", "cpu_count"} <= set(report["machine"]) and "end" in report["conditions"]
