"""Every benchmark script states its conditions: the load average before and after, the processes and
threads it measured with, and whether the machine was busy (fusionkit.lab.machine). Each script
runs here at toy size; no timing checks."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import load_benchmark_script

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def check_conditions(conditions: dict, processes: int) -> None:
    assert conditions["processes"] == processes and conditions["threads_per_process"] >= 1
    for end in ("start", "end"):
        assert len(conditions[end]["load_average"]) == 3 and conditions[end]["cpu_count"] >= 1
        assert isinstance(conditions[end]["busy"], bool) and conditions[end]["busy_threshold"] > 0
    assert conditions["busy"] == (conditions["start"]["busy"] or conditions["end"]["busy"])


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.stem)
def test_every_benchmark_records_its_conditions(path):
    source = path.read_text()
    assert "measurement_conditions(" in source and "finish_conditions(" in source, (
        f"{path.name} must record the load and its processes/threads (fusionkit.lab.machine)")


@pytest.mark.filterwarnings("ignore::fusionkit.lab.machine.MachineBusyWarning")
def test_cma_attention_records_conditions(tmp_path):
    out = tmp_path / "cma.json"
    load_benchmark_script("cma_attention").main(["--device", "cpu", "--configs", "res3_2d", "--batch", "1",
                                                 "--repeats", "1", "--warmup", "0", "--no-backward", "--no-memory",
                                                 "--output", str(out)])
    check_conditions(json.loads(out.read_text())["conditions"], processes=1)


@pytest.mark.filterwarnings("ignore::fusionkit.lab.machine.MachineBusyWarning")
def test_data_pipeline_records_conditions(tmp_path):
    out = tmp_path / "data.json"
    report = load_benchmark_script("data_pipeline").main(["--sizes", "32", "--frames", "4", "--repeats", "1",
                                                          "--real-video", str(tmp_path / "none.avi"),
                                                          "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    check_conditions(report["conditions"], processes=1)
    assert report["conditions"]["opencv_threads"] == 1 and "cpu_model" in report["machine"]
    assert "pairs_per_s" in report["cases"]["puzzle_32x32"]["flow"]["dis"]


@pytest.mark.filterwarnings("ignore::fusionkit.lab.machine.MachineBusyWarning")
def test_training_throughput_records_conditions(tmp_path):
    out = tmp_path / "train.json"
    report = load_benchmark_script("training_throughput").main(
        ["--device", "cpu", "--threads", "1", "--methods", "late", "--size", "16", "--segments", "1",
         "--new-length", "1", "--batch", "2", "--steps", "1", "--warmup", "0", "--no-split", "--output", str(out)])
    check_conditions(report["conditions"], processes=1)
    assert report["conditions"]["threads_per_process"] == 1 and report["conditions"]["loader_workers"] == []
