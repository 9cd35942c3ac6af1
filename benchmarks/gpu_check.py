"""GPU check: every CUDA path of the kit run once, with figures and the device's name (under 5 min on one GPU).

Sections (each runs on its own; one failing is recorded with its traceback and the others still run):

1. ``train_resnet50``: two-stream ResNet-50 (``fusionkit.build_model("late", ..., backbone="resnet50")``,
   random weights) training steps at 224x224 as the Trainer takes them on a GPU (bf16 autocast,
   channels_last, SGD; ``benchmarks/training_throughput.py``'s step): clips/s and peak memory.
2. ``tvl1_cuda``: ``tvl1-torch`` (:mod:`fusionkit.data.tvl1_torch`) on CUDA at 320x240 on rendered
   puzzle pairs: pairs/s, and the end-point distance (EPE) of its flow from the CPU's on the same
   pairs, and of both from the puzzles' exact flow.
3. ``cma_attention``: the CMA unit's SDPA attention against the explicit softmax on a 3D map
   (``res3_3d`` of ``benchmarks/cma_attention.py``, reused) in bf16: agreement, the SDPA kernel
   used, median time forward and forward+backward, peak memory.
4. ``ddp``: one DistributedDataParallel training step in one process (world size 1; NCCL on CUDA,
   gloo on CPU; TCP rendezvous on localhost), its gradients against the same step without DDP.
5. ``notebooks``: ``00_quickstart`` and ``06_cma`` in smoke mode with ``DEVICE="cuda"``
   (:func:`fusionkit.lab.run_notebooks.execute_notebook`), data and figures in a temporary folder.

Without a GPU it says so (printed first and last, ``gpu_found: false`` and ``statement`` in the
JSON) and runs each section's CPU fallback at small sizes instead, so the code paths stay tested
(``tests/test_gpu_check.py`` runs ``--smoke --no-notebooks``). Results go to
``benchmarks/results/gpu_check.json`` with the machine (GPU name and memory) and the load.

    python benchmarks/gpu_check.py [--smoke] [--no-notebooks] [--sections NAME ...] [--output PATH]

The exit status is 1 if a section failed.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from fusionkit.data.atomic import atomic_write_text
from fusionkit.lab.machine import finish_conditions, machine_description, measurement_conditions

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "gpu_check.json"
SECTIONS = ("train_resnet50", "tvl1_cuda", "cma_attention", "ddp", "notebooks")
NOTEBOOKS = ("00_quickstart", "06_cma")
BUDGET_S = 300  # the whole check on one GPU
NO_GPU = ("no CUDA GPU found (torch.cuda.is_available() is False): the CUDA paths were NOT exercised; "
          "ran each section's CPU fallback at small sizes instead")
MIB, GIB = 2 ** 20, 2 ** 30


def sibling(name: str):
    """Import ``benchmarks/<name>.py`` (a script beside this one, not a package module), once."""
    key = f"_gpu_check_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---- sizes: (GPU, CPU fallback, CPU smoke) ------------------------------------------------------

def sizes(device: torch.device, smoke: bool) -> dict:
    if device.type == "cuda":
        return {"train": dict(backbone="resnet50", size=224, segments=3, new_length=5, batch=16, warmup=3, steps=10),
                "tvl1": dict(width=320, height=240, pairs=16, repeats=3),
                "cma": dict(batch=8, frames=8, repeats=5, warmup=2, dtype="bfloat16"),
                "ddp": dict(size=112, batch=8)}
    if smoke:
        return {"train": dict(backbone="tiny", size=32, segments=1, new_length=1, batch=2, warmup=0, steps=1),
                "tvl1": dict(width=32, height=24, pairs=2, repeats=1),
                "cma": dict(batch=1, frames=2, repeats=1, warmup=0, dtype="bfloat16"),
                "ddp": dict(size=16, batch=2)}
    return {"train": dict(backbone="tiny", size=64, segments=3, new_length=5, batch=8, warmup=1, steps=3),
            "tvl1": dict(width=320, height=240, pairs=3, repeats=1),
            "cma": dict(batch=1, frames=4, repeats=3, warmup=1, dtype="bfloat16"),
            "ddp": dict(size=32, batch=4)}


# ---- 1. two-stream training ---------------------------------------------------------------------

def check_train(device: torch.device, s: dict) -> dict:
    """Training steps of the late-fusion two-stream network on a random in-memory batch."""
    tt = sibling("training_throughput")
    g = torch.Generator().manual_seed(0)
    data = {"rgb": torch.rand(s["batch"], s["segments"], 3, s["size"], s["size"], generator=g),
            "flow": torch.randn(s["batch"], s["segments"], 2 * s["new_length"], s["size"], s["size"], generator=g),
            "label": torch.arange(s["batch"]) % tt.NUM_CLASSES}
    data = tt.to_device(data, device)
    model, objective, optimizer, _ = tt.build_method("late", s["backbone"], s["new_length"], device)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(s["warmup"] + s["steps"]):
        start = time.perf_counter()
        tt.train_step(model, objective, optimizer, data, device)  # synchronises on CUDA
        if step >= s["warmup"]:
            times.append(time.perf_counter() - start)
    median = float(np.median(times))
    out = dict(s, method="late", pretrained=False, autocast="bfloat16" if device.type == "cuda" else None,
               channels_last=device.type == "cuda", optimizer="sgd (TrainConfig default)",
               clips_per_s=s["batch"] / median, step_ms_median=1e3 * median, step_ms=[round(1e3 * t, 2) for t in times],
               params_m=sum(p.numel() for p in model.parameters()) / 1e6)
    if device.type == "cuda":
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / GIB
    else:
        out["peak_rss_mib_process"] = cpu_peak_rss_mib()  # the whole process's high-water mark
    return out


# ---- 2. tvl1-torch ------------------------------------------------------------------------------

def check_tvl1(device: torch.device, s: dict) -> dict:
    from fusionkit.data.flow import endpoint_error
    from fusionkit.data.tvl1_torch import tvl1_flow

    pairs, truth = sibling("flow_tvl1").puzzle_pairs(s["width"], s["height"], s["pairs"])
    moving = np.linalg.norm(truth, axis=-1) > 0

    def timed(dev: str, repeats: int) -> tuple[np.ndarray, float]:
        tvl1_flow(pairs[:1, 0], pairs[:1, 1], device=dev)  # warm-up (kernels, allocator)
        best, flow = float("inf"), None
        for _ in range(repeats):
            sync(torch.device(dev))
            start = time.perf_counter()
            flow = tvl1_flow(pairs[:, 0], pairs[:, 1], device=dev)
            sync(torch.device(dev))
            best = min(best, time.perf_counter() - start)
        return flow, best

    cpu_flow, cpu_s = timed("cpu", 1 if device.type == "cuda" else s["repeats"])  # on a GPU: the reference
    out = dict(s, cpu_threads=torch.get_num_threads(), cpu_pairs_per_s=len(pairs) / cpu_s,
               cpu_epe_vs_truth=endpoint_error(cpu_flow, truth), cpu_epe_moving=endpoint_error(cpu_flow, truth, moving))
    if device.type == "cuda":
        cuda_flow, cuda_s = timed("cuda", s["repeats"])
        distance = np.linalg.norm(cuda_flow - cpu_flow, axis=-1)
        out.update(cuda_pairs_per_s=len(pairs) / cuda_s, cuda_over_cpu=cpu_s / cuda_s,
                   epe_cuda_vs_cpu=float(distance.mean()), max_distance_cuda_vs_cpu=float(distance.max()),
                   cuda_epe_vs_truth=endpoint_error(cuda_flow, truth),
                   cuda_epe_moving=endpoint_error(cuda_flow, truth, moving))
    return out


# ---- 3. CMA attention ---------------------------------------------------------------------------

def check_cma(device: torch.device, s: dict, memory: bool) -> dict:
    cma = sibling("cma_attention")
    dtype = cma.DTYPES[s["dtype"]]
    spec = cma.config_shapes("res3_3d", s["batch"], s["frames"])
    unit, x, seed = cma.build(spec, device, dtype, grad=True)
    out = dict(s, config="res3_3d", **spec, attention_matrix_mib=spec["target_shape"][0] * spec["query_positions"]
               * spec["key_positions"] * torch.empty((), dtype=dtype).element_size() / MIB)
    out["check"] = cma.check_agreement(unit, x, seed, dtype, backward=True)
    out["sdpa_backend"] = cma.sdpa_backend(cma.sdpa_attend, unit, x, backward=True)
    timing = cma.time_modes(unit, x, seed, device, cma.MODES, s["repeats"], s["warmup"])
    out["time_ms"] = {mode: {k: v for k, v in row.items() if not k.endswith("_all_ms")} for mode, row in timing.items()}
    del unit, x, seed
    if memory:
        peaks = {}
        for mode in cma.MODES:
            row = {}
            for impl in cma.IMPLEMENTATIONS:
                r = (cma.cuda_peak_memory(spec, impl, mode, device, dtype) if device.type == "cuda" else
                     cma.cpu_peak_memory({"spec": spec, "impl": impl, "mode": mode, "dtype": s["dtype"]}))
                row[f"{impl}_mib"], row["method"] = r["peak_mib"], r["method"]
            row["naive_over_sdpa"] = row["naive_mib"] / row["sdpa_mib"] if row["sdpa_mib"] > 0 else None
            peaks[mode] = row
        out["peak_memory"] = peaks
    return out


# ---- 4. one-process DDP -------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def process_group(backend: str, device: torch.device):
    """A one-process group (rank 0 of 1) through a TCP rendezvous on localhost; torchrun's variables
    are set meanwhile (as the Trainer's DDP code reads them) and restored after, so that nothing
    started later (the notebooks' kernels) inherits them."""
    import torch.distributed as dist

    port = free_port()
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    try:
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1, **kwargs)
        yield dist
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_ddp(device: torch.device, s: dict) -> dict:
    import copy

    from torch.nn.parallel import DistributedDataParallel

    from fusionkit import build_model
    from fusionkit.training.runtime import autocast

    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.manual_seed(0)
    model = build_model("late", 4, backbone="tiny", new_length=2, pretrained=False).to(device)
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    batch = {"rgb": torch.rand(s["batch"], 2, 3, s["size"], s["size"], generator=g).to(device),
             "flow": torch.randn(s["batch"], 2, 4, s["size"], s["size"], generator=g).to(device),
             "label": (torch.arange(s["batch"]) % 4).to(device)}

    def step(net) -> float:
        torch.manual_seed(2)  # the same dropout masks in both steps
        net.zero_grad(set_to_none=True)
        with autocast(device):
            out = net(batch["rgb"], batch["flow"])
        loss = sum(torch.nn.functional.cross_entropy(out[k].float(), batch["label"]) for k in ("rgb", "flow"))
        loss.backward()
        return loss.item()

    with process_group(backend, device) as dist:
        ddp = DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
        sync(device)
        start = time.perf_counter()
        loss = step(ddp)
        sync(device)
        seconds = time.perf_counter() - start
        ones = torch.ones(4, device=device)
        dist.all_reduce(ones)
        out = {"backend": dist.get_backend(), "world_size": dist.get_world_size(), "init_method": "tcp://127.0.0.1",
               "step_s": seconds, "loss": loss, "all_reduce_sum_of_ones": ones.tolist()}
    reference_loss = step(reference)
    diffs = [(p.grad - q.grad).abs().max().item() for p, q in zip(model.parameters(), reference.parameters())
             if p.grad is not None and q.grad is not None]
    out.update(reference_loss=reference_loss, max_grad_diff_vs_plain=max(diffs), grads_compared=len(diffs),
               grads_match=max(diffs) <= 1e-3 * max(1.0, max(q.grad.abs().max().item() for q in reference.parameters()
                                                              if q.grad is not None)))
    if device.type == "cuda":
        out["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
    return out


# ---- 5. notebooks -------------------------------------------------------------------------------

def check_notebooks(device: torch.device) -> dict:
    from fusionkit.lab.results import load_results
    from fusionkit.lab.run_notebooks import execute_notebook, notebook_headline

    out = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        data, figures = Path(tmp) / "data", Path(tmp) / "figures"
        for name in NOTEBOOKS:
            start = time.perf_counter()
            execute_notebook(ROOT / "notebooks" / f"{name}.ipynb", Path(tmp) / f"{name}.ipynb",
                             {"SMOKE": True, "DEVICE": device.type, "DATA_DIR": str(data), "FIGURES_DIR": str(figures)},
                             timeout=600)
            results = load_results(figures / "results" / f"{name}.json")
            out[name] = {"seconds": time.perf_counter() - start, "device": device.type, "smoke": True,
                         "headline": notebook_headline(results)}
    return out


# ---- main ---------------------------------------------------------------------------------------

def run_section(name: str, fn) -> dict:
    print(f"[{name}] ...", flush=True)
    start = time.perf_counter()
    try:
        row = {"status": "ok", **fn()}
    except Exception as e:  # recorded; the other sections still run
        row = {"status": "failed", "error": f"{type(e).__name__}: {e}",
               "traceback": traceback.format_exc().splitlines()[-12:]}
    row["seconds"] = time.perf_counter() - start
    print(f"[{name}] {row['status']} in {row['seconds']:.1f} s" + (f": {row['error']}" if "error" in row else ""),
          flush=True)
    return row


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (the CPU test); on a GPU it changes nothing")
    parser.add_argument("--no-notebooks", dest="notebooks", action="store_false", help="skip the notebooks section")
    parser.add_argument("--no-memory", dest="memory", action="store_false",
                        help="skip CMA's peak-memory runs (on CPU: subprocesses)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    gpu = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if gpu else torch.device("cpu")
    name = torch.cuda.get_device_name(device) if gpu else None
    statement = f"ran on {name}" if gpu else NO_GPU
    print(statement, flush=True)
    s = sizes(device, args.smoke)
    sections = [n for n in args.sections if n != "notebooks" or args.notebooks]
    conditions = measurement_conditions("gpu_check", processes=1, threads_per_process=torch.get_num_threads())
    report = {"description": __doc__.splitlines()[0], "gpu_found": gpu, "device": str(device),
              "device_name": name or machine_description(device)["device_name"], "statement": statement,
              "smoke": args.smoke, "budget_s": BUDGET_S, "machine": machine_description(device),
              "skipped": [n for n in SECTIONS if n not in sections], "sections": {}}
    checks = {"train_resnet50": lambda: check_train(device, s["train"]),
              "tvl1_cuda": lambda: check_tvl1(device, s["tvl1"]),
              "cma_attention": lambda: check_cma(device, s["cma"], args.memory and not (args.smoke and not gpu)),
              "ddp": lambda: check_ddp(device, s["ddp"]),
              "notebooks": lambda: check_notebooks(device)}
    start = time.perf_counter()
    for section in sections:
        report["sections"][section] = run_section(section, checks[section])
    report["total_s"] = time.perf_counter() - start
    report["within_budget"] = report["total_s"] <= BUDGET_S
    report["all_ok"] = all(r["status"] == "ok" for r in report["sections"].values())
    report["conditions"] = finish_conditions(conditions)
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(f"\n{statement}")
    for section, row in report["sections"].items():
        print(f"  {section:15s} {row['status']:6s} {row['seconds']:6.1f} s")
    print(f"total {report['total_s']:.0f} s (budget {BUDGET_S} s on one GPU); wrote {args.output}")
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["all_ok"] else 1)
