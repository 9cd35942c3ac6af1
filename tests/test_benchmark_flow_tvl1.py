"""benchmarks/flow_tvl1.py states its conditions: ``--processes 1`` measures one process x one thread
per backend (the per-core ratio, tvl1-torch not run twice), every row records its processes and
threads, and the JSON holds the load at both ends. OpenCV's TV-L1 (opencv-contrib, a side venv) is
replaced by DIS and the worker pools run in this process: no timing or contrib checks here."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers import load_benchmark_script


@pytest.fixture
def bench(monkeypatch, tmp_path):
    bench = load_benchmark_script("flow_tvl1")
    pools = []

    def time_pool(init, initargs, fn, pairs, processes, repeats):  # the pool's work, in this process
        pools.append((fn.__name__, processes))
        init(*initargs)
        return np.concatenate([fn(share) for share in np.array_split(pairs, processes)]), [1.0] * repeats

    def run_opencv_tvl1(python, pairs, processes, repeats, tmp):
        from fusionkit.data.flow import get_flow_backend

        dis = get_flow_backend("dis")
        return np.stack([dis(a, b) for a, b in pairs]), [2.0] * repeats, "fake"

    monkeypatch.setattr(bench, "time_pool", time_pool)
    monkeypatch.setattr(bench, "run_opencv_tvl1", run_opencv_tvl1)
    monkeypatch.setattr(bench, "contrib_python", lambda path: path)
    bench.pools = pools
    return bench


@pytest.fixture
def real_video(tmp_path):
    from fusionkit.data.puzzles import get_puzzle
    from fusionkit.data.video import write_video

    path = tmp_path / "real.avi"
    write_video(path, get_puzzle("motion").render(0, np.random.default_rng(0), frames=4, size=48).frames)
    return path


def run(bench, tmp_path, real_video, processes):
    out = tmp_path / f"flow_{processes}.json"
    bench.main(["--processes", str(processes), "--pairs", "2", "--repeats", "1", "--sizes", "32x24",
                "--no-chunk-sweep", "--real-video", str(real_video), "--contrib-python", "unused",
                "--output", str(out)])
    return json.loads(out.read_text())


def test_one_process_one_thread_mode(bench, tmp_path, real_video):
    report = run(bench, tmp_path, real_video, 1)
    assert report["settings"]["processes"] == 1 and report["settings"]["per_core"] is True
    for source in ("puzzle", "real"):
        rows = report["cases"]["32x24"][source]["backends"]
        names = [n for n in rows if n != "tvl1-torch cuda"]
        assert names == ["tvl1-torch cpu, 1 process x 1 thread", "opencv tvl1, 1 process x 1 thread",
                         "farneback, 1 process x 1 thread", "dis, 1 process x 1 thread"]
        for name in names:
            assert (rows[name]["processes"], rows[name]["threads_per_process"]) == (1, 1)
        assert rows["opencv tvl1, 1 process x 1 thread"]["speed_vs_opencv_tvl1"] == 1.0
    # tvl1-torch ran in this process only, never through a pool of one
    assert ("_torch_flows", 1) not in bench.pools
    conditions = report["conditions"]
    assert (conditions["processes"], conditions["threads_per_process"]) == (1, 1)
    assert {"load_average", "busy", "busy_threshold"} <= set(conditions["start"]) and "load_average" in conditions["end"]
    assert report["machine"]["load_average_at_end"] == conditions["end"]["load_average"]
    assert set(report["summary"]["32x24"]["tvl1_torch_cpu"]) == {"tvl1-torch cpu, 1 process x 1 thread"}


def test_several_processes_measure_both_layouts(bench, tmp_path, real_video):
    report = run(bench, tmp_path, real_video, 2)
    rows = report["cases"]["32x24"]["puzzle"]["backends"]
    assert (rows["tvl1-torch cpu, 1 process x 2 threads"]["processes"],
            rows["tvl1-torch cpu, 1 process x 2 threads"]["threads_per_process"]) == (1, 2)
    assert (rows["tvl1-torch cpu, 2 processes x 1 thread"]["processes"],
            rows["tvl1-torch cpu, 2 processes x 1 thread"]["threads_per_process"]) == (2, 1)
    assert "opencv tvl1, 2 processes x 1 thread" in rows and report["settings"]["per_core"] is False
