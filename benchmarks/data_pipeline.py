"""Data pipeline throughput: decode frames/s (decord vs PyAV) and optical-flow pairs/s with EPE per backend.

Measured on rendered puzzles at 64x64 and 240x240 (they have exact ground-truth flow, so EPE is
reported) and on real footage at 320x240 (Debian's opencv-doc vtest.avi,
re-encoded to 320x240; no ground truth there, so speed only). Ratios are against PyAV / OpenCV's
Farneback in the same run. Results go to ``benchmarks/results/data_pipeline.json``.

    python benchmarks/data_pipeline.py [--repeats 3] [--real-video PATH] [--output PATH]

One process; OpenCV with one thread, torch (``tvl1-torch``) with its default threads. The machine,
the load before and after and the threads are recorded (``machine``, ``conditions``), with a
warning when other jobs keep the machine busy (:func:`fusionkit.lab.machine.check_load`).
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from fusionkit.data.atomic import atomic_write_text
from fusionkit.data.flow import FLOW_BACKENDS, compute_flow, dequantize_flow, endpoint_error, quantize_flow
from fusionkit.data.puzzles import get_puzzle
from fusionkit.data.video import decord_available, read_video, write_video
from fusionkit.lab.machine import finish_conditions, machine_description, measurement_conditions

REAL_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
RESULTS = Path(__file__).parent / "results" / "data_pipeline.json"


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def puzzle_video(size: int, frames: int) -> tuple[np.ndarray, np.ndarray]:
    video = get_puzzle("registration").render(0, np.random.default_rng(0), frames=frames, size=size)
    return video.frames, video.flow


def bench_decode(path: Path, repeats: int) -> dict:
    n = len(read_video(path, backend="pyav"))
    out = {"frames": n}
    for backend in ("decord", "pyav"):
        if backend == "decord" and not decord_available():
            continue
        out[f"{backend}_fps"] = n / best_time(lambda: read_video(path, backend=backend), repeats)
    if "decord_fps" in out:
        out["decord_over_pyav"] = out["decord_fps"] / out["pyav_fps"]
    return out


def bench_flow(frames: np.ndarray, truth: np.ndarray | None, repeats: int) -> dict:
    out = {}
    for backend in sorted(FLOW_BACKENDS):
        try:
            compute_flow(frames[:2], backend)
        except RuntimeError as e:  # tvl1 without opencv-contrib
            out[backend] = {"unavailable": str(e).split(". ")[0]}
            continue
        flow = compute_flow(frames, backend)
        row = {"pairs_per_s": (len(frames) - 1) / best_time(lambda: compute_flow(frames, backend), repeats)}
        if truth is not None:
            moving = np.linalg.norm(truth, axis=-1) > 0
            stored = dequantize_flow(quantize_flow(flow))
            row.update(epe=endpoint_error(flow, truth), epe_moving=endpoint_error(flow, truth, moving),
                       epe_after_quantisation=endpoint_error(stored, truth))
        out[backend] = row
    if "pairs_per_s" in out.get("farneback", {}):
        for row in out.values():
            if "pairs_per_s" in row:
                row["speed_vs_farneback"] = row["pairs_per_s"] / out["farneback"]["pairs_per_s"]
    return out


def main(argv=None) -> dict:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--real-video", type=Path, default=REAL_VIDEO)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 240], help="puzzle frame sizes (square)")
    parser.add_argument("--frames", type=int, default=64, help="frames per video")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)  # per-process numbers; extract-flow parallelises over processes
    conditions = measurement_conditions("data_pipeline", processes=1, threads_per_process=torch.get_num_threads())
    conditions["opencv_threads"] = 1
    results = {"machine": dict(machine_description(torch.device("cpu")), opencv=cv2.__version__), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cases = {}
        for size in args.sizes:  # puzzles are square; 240 matches the real video's height
            cases[f"puzzle_{size}x{size}"] = puzzle_video(size, args.frames)
        if args.real_video.is_file():
            real = read_video(args.real_video, indices=range(args.frames))
            cases["real_320x240"] = (np.stack([cv2.resize(f, (320, 240), interpolation=cv2.INTER_AREA) for f in real]), None)
        else:
            print(f"(no real video at {args.real_video}: apt-get install opencv-doc, or pass --real-video)")
        for name, (frames, truth) in cases.items():
            path = Path(tmp) / f"{name}.avi"
            write_video(path, np.ascontiguousarray(frames))
            decoded = read_video(path)
            results["cases"][name] = {"decode": bench_decode(path, args.repeats),
                                      "flow": bench_flow(decoded, truth, args.repeats)}
    results["conditions"] = finish_conditions(conditions)
    atomic_write_text(args.output, json.dumps(results, indent=2))
    for name, case in results["cases"].items():
        d = case["decode"]
        print(f"\n{name}: decode {d.get('decord_fps', float('nan')):8.0f} frames/s decord, "
              f"{d['pyav_fps']:8.0f} frames/s PyAV (decord/PyAV {d.get('decord_over_pyav', float('nan')):.2f}x)")
        for backend, row in case["flow"].items():
            if "unavailable" in row:
                print(f"  flow {backend:10s} unavailable ({row['unavailable']})")
                continue
            epe = (f"  EPE {row['epe']:.3f} px (moving pixels {row['epe_moving']:.3f}, stored 8-bit "
                   f"{row['epe_after_quantisation']:.3f})") if "epe" in row else ""
            print(f"  flow {backend:10s} {row['pairs_per_s']:8.1f} pairs/s ({row['speed_vs_farneback']:.2f}x farneback){epe}")
    if results["conditions"]["busy"]:
        print("the machine was busy with other jobs during the run (see the warning and 'conditions' in the JSON)")
    print(f"\nwrote {args.output}")
    return results


if __name__ == "__main__":
    main()
