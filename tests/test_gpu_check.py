"""benchmarks/gpu_check.py on a machine without a GPU (CUDA hidden, whatever the machine has): it says
so, runs every section's CPU fallback at tiny sizes (``--smoke``, notebooks skipped) and writes the
JSON with each section's figures, the device name and the load. A failing section is recorded and
the others still run. No timing checks."""
from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import load_benchmark_script

pytestmark = pytest.mark.filterwarnings("ignore::fusionkit.lab.machine.MachineBusyWarning")


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return load_benchmark_script("gpu_check")


def test_cpu_smoke_run_says_no_gpu_and_records_every_section(gpu_check, tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    report = gpu_check.main(["--smoke", "--no-notebooks", "--output", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    printed = capsys.readouterr().out
    assert printed.startswith("no CUDA GPU found") and printed.count("the CUDA paths were NOT exercised") == 2

    assert report["gpu_found"] is False and report["device"] == "cpu" and report["statement"] == gpu_check.NO_GPU
    assert report["device_name"] == report["machine"]["cpu_model"] and report["smoke"] is True
    assert report["skipped"] == ["notebooks"] and report["all_ok"] is True
    assert list(report["sections"]) == ["train_resnet50", "tvl1_cuda", "cma_attention", "ddp"]
    assert all(row["status"] == "ok" and row["seconds"] > 0 for row in report["sections"].values())
    assert report["total_s"] > 0 and report["budget_s"] == 300 and isinstance(report["within_budget"], bool)
    conditions = report["conditions"]
    assert conditions["processes"] == 1 and len(conditions["start"]["load_average"]) == 3 and "end" in conditions

    train = report["sections"]["train_resnet50"]
    assert train["clips_per_s"] > 0 and train["peak_rss_mib_process"] > 0 and train["method"] == "late"
    assert (train["autocast"], train["channels_last"]) == (None, False)  # the Trainer's CPU settings
    tvl1 = report["sections"]["tvl1_cuda"]
    assert tvl1["cpu_pairs_per_s"] > 0 and 0 <= tvl1["cpu_epe_vs_truth"] < 1 and "cuda_pairs_per_s" not in tvl1
    cma = report["sections"]["cma_attention"]
    assert cma["config"] == "res3_3d" and cma["dtype"] == "bfloat16" and len(cma["target_shape"]) == 5
    assert set(cma["time_ms"]) == {"forward", "forward_backward"} and cma["time_ms"]["forward"]["sdpa_ms"] > 0
    assert "naive_max_abs_diff_output" in cma["check"] and "peak_memory" not in cma  # smoke: no memory runs
    ddp = report["sections"]["ddp"]
    assert (ddp["backend"], ddp["world_size"]) == ("gloo", 1) and ddp["all_reduce_sum_of_ones"] == [1.0] * 4
    assert ddp["grads_match"] is True and ddp["grads_compared"] > 0


def test_a_failing_section_is_recorded_and_the_others_run(gpu_check, tmp_path, monkeypatch):
    import os

    def broken(device, sizes):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(gpu_check, "check_tvl1", broken)
    report = gpu_check.main(["--smoke", "--sections", "tvl1_cuda", "ddp", "--output", str(tmp_path / "g.json")])
    assert report["all_ok"] is False and report["skipped"] == ["train_resnet50", "cma_attention", "notebooks"]
    failed = report["sections"]["tvl1_cuda"]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: broken on purpose" and failed["traceback"]
    assert report["sections"]["ddp"]["status"] == "ok"
    assert "WORLD_SIZE" not in os.environ and "MASTER_PORT" not in os.environ  # the DDP section restored them
