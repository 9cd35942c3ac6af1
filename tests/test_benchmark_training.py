"""benchmarks/training_throughput.py at toy size: it runs end to end (a tiny rendered puzzle, two
methods, both in_memory settings) and writes the JSON the results file is read by. No timing checks."""
from __future__ import annotations

import json

from tests.helpers import load_benchmark_script


def test_training_throughput_report_structure(tmp_path):
    bench = load_benchmark_script("training_throughput")
    out = tmp_path / "training_throughput.json"
    bench.main(["--device", "cpu", "--threads", "1", "--methods", "late", "cma(position_frequencies=3)", "cmmp", "--size", "32", "--segments", "2",
                "--new-length", "2", "--batch", "4", "--steps", "1", "--warmup", "0", "--workers", "0",
                "--max-batches", "2", "--videos-per-class", "8", "--frames", "8", "--data", str(tmp_path / "data"),
                "--note", "toy run", "--cpu-bf16", "--output", str(out)])
    report = json.loads(out.read_text())
    from fusionkit.lab.bench import BENCH_ENTRIES, DEFAULT_ENTRIES

    assert set(bench.METHODS) <= set(BENCH_ENTRIES) and set(bench.METHODS) <= set(DEFAULT_ENTRIES)
    assert report["notes"] == ["toy run"]
    assert {"cpu_model", "cpu_count", "torch", "device", "device_name"} <= set(report["machine"])
    cpu = report["throughput"]["cpu_tiny"]
    assert (cpu["backbone"], cpu["size"], cpu["batch"]) == ("tiny", 32, 4)
    assert set(cpu["methods"]) == {"late", "cma(position_frequencies=3)", "cmmp"}  # the bench entries' names
    for row in cpu["methods"].values():
        assert row["clips_per_s"] > 0 and row["step_ms_median"] > 0 and len(row["step_ms"]) == 1
        assert row["bf16_clips_per_s"] > 0  # --cpu-bf16: the same step under CPU bf16 autocast, beside it
        assert row["bf16_vs_fp32"] == row["step_ms_median"] / row["bf16_step_ms_median"]
    assert cpu["bf16_autocast_compared"] is True
    assert set(cpu["cpu_bf16_hardware"]) <= {"amx_bf16", "avx512_bf16"}
    cma = cpu["methods"]["cma(position_frequencies=3)"]
    assert cpu["methods"]["late"]["vs_late"] == 1.0 and (cma["method"], cma["schedule"]) == ("cma", "alternate")
    assert cma["options"] == {"fusion_options": {"position_frequencies": 3}}
    assert "cuda_resnet50_224" not in report["throughput"]  # CPU run
    split = report["loader_vs_model"]
    assert split["puzzle"] == "registration" and split["train_videos"] > 0
    assert set(split["configs"]) == {"in_memory=False,num_workers=0", "in_memory=True,num_workers=0"}
    for row in split["configs"].values():
        assert row["batches"] == 2 and 0 <= row["wait_fraction"] <= 1
        assert row["wait_s_per_batch"] >= 0 and row["model_s_per_batch"] > 0
        assert row["bound_by"] in ("loader", "model")
