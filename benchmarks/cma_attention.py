"""CMA attention: PyTorch's scaled_dot_product_attention (SDPA) against an explicit QK^T softmax, in time and peak memory.

What it measures. :meth:`fusionkit.methods.cma.CrossModalityAttention.attend` (Eq. 1 of Chi et al.,
"Two-Stream Video Classification with Cross-Modality Attention", ICCV-W 2019) is the attention
step of a CMA unit: q = theta(x), k = phi(pool(y)), v = g(pool(y)) (1x1 convs, keys/values
max-pooled 2x2 with stride 2, 1x2x2 on 3D maps), then
:func:`torch.nn.functional.scaled_dot_product_attention` on ``[N, 1, L, d_k]`` tensors.
:func:`naive_attend` is the same step with the *same* unit's convs and weights, but the textbook
``softmax(q @ k^T * scale) @ v``, which materialises the ``N x L_q x L_k`` attention matrix. Both
are timed (median of ``--repeats`` runs after ``--warmup`` runs, the two interleaved so that
background load hits both alike) in forward (under ``torch.no_grad``) and, unless
``--no-backward``, forward+backward (gradients w.r.t. the input map and the unit's weights), and
their peak memory above a baseline is measured for the same two modes. Before timing, each
configuration checks once that the implementations agree (outputs and input gradients,
:func:`torch.testing.assert_close`), so the benchmark also verifies correctness.

The module makes q, k, v contiguous before SDPA because the fused SDPA kernels (flash,
memory-efficient, cuDNN, and the CPU flash kernel) require a stride-1 last dimension, which this
benchmark found when the module's transposed views silently sent every call to PyTorch's unfused
``math`` kernel (which builds the L_q x L_k matrix like the naive code). The JSON records the
kernel the module's SDPA call actually used (``sdpa_backend``), so a regression to the ``math``
fallback shows up there.

Why. The CMA block was asked to use SDPA so that PyTorch can pick a fused, memory-efficient
kernel instead of building the L_q x L_k matrix, with a benchmark comparing it to an explicit
QK^T softmax in time and peak memory at a ResNet-50 res3-sized map and at a 3D map.

Configurations (queries attend over the *same* map here, target = source, as in a non-local
block; for CMA proper the source is the other stream's map of the same size, so the cost is the same;
the unit is the paper's content-only one, ``position_frequencies=0``):

- ``res3_2d``: a ResNet-50 res3-sized map (stride 8 at 224x224 input), ``[N, 512, 28, 28]``:
  L_q = 784 queries, L_k = 14*14 = 196 keys, d_k = 256.
- ``res3_3d``: a spacetime map for the paper's 3D-CMA (§5.6), the same res3 map over T = 8 time
  steps, ``[N, 512, 8, 28, 28]``: T*H*W = 6272 queries over 8*14*14 = 1568 keys, d_k = 256.

Peak memory.

- CUDA: ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``, minus the
  memory allocated before the step (inputs, module, output-gradient seed), in this process.
- CPU: the resident set size (RSS) of a *fresh subprocess* per (configuration, implementation,
  mode). The worker builds the unit and inputs, runs the step once (warm-up: thread pools, oneDNN
  kernels, parameter gradients), frees its results, reads VmRSS as the baseline, resets the
  kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``), runs the step again and reports
  VmHWM - baseline. It runs with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 128 KiB, so every
  large tensor is its own mmap and is returned to the system when freed (glibc's default threshold
  adapts upwards, and freed blocks then stay resident and get reused, hiding the peak). Where
  clear_refs cannot be written, it falls back to ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` after a
  single cold step minus the RSS before it (recorded as ``memory_method``). RSS was preferred to
  ``torch.profiler(profile_memory=True)``: it also counts memory allocated outside PyTorch's
  allocator (oneDNN / BLAS scratch), it needs no reconstruction of a peak from allocation
  events, and it is the number an out-of-memory kill is about. It has page granularity (4 KiB),
  far below the sizes measured.

The SDPA backend is read off a ``torch.profiler`` trace of one call (the ``aten::_scaled_dot_product_*``
op that ran: ``flash_attention_for_cpu``, ``flash_attention``, ``efficient_attention``,
``cudnn_attention`` or the ``math`` fallback).

Results are printed as a table and written to ``benchmarks/results/cma_attention.json``
(times in ms, memory in MiB, naive/SDPA ratios, shapes, the machine, torch version, device).

    OMP_NUM_THREADS=1 python benchmarks/cma_attention.py [--quick] [--device auto|cpu|cuda]
        [--dtype float32|bfloat16|float16] [--batch N] [--batch-3d N] [--frames T]
        [--repeats R] [--warmup W] [--no-backward] [--configs res3_2d res3_3d] [--output PATH]

``--quick`` uses smaller batches, 4 frames on the 3D map and fewer repeats (a smoke run).
bfloat16 / float16 are meant for CUDA (bfloat16 also runs on CPU; float16 is refused there).
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from fusionkit.data.atomic import atomic_write_text
from fusionkit.fusion import conv1x1
from fusionkit.methods.cma import CrossModalityAttention, _pool_space
from fusionkit.lab.machine import finish_conditions, machine_description, measurement_conditions

RESULTS = Path(__file__).parent / "results" / "cma_attention.json"
IMPLEMENTATIONS = ("sdpa", "naive")
MODES = ("forward", "forward_backward")
CHANNELS = 512  # ResNet-50 res3
SIZE = 28       # res3 at 224x224 input (stride 8)
DEFAULT_FRAMES = 8
DEFAULT_BATCH = {"cpu": {"res3_2d": 8, "res3_3d": 2}, "cuda": {"res3_2d": 64, "res3_3d": 8}}
QUICK_BATCH = {"cpu": {"res3_2d": 2, "res3_3d": 1}, "cuda": {"res3_2d": 16, "res3_3d": 2}}
QUICK_FRAMES = 4
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# assert_close tolerances of the naive path vs the module's SDPA (all in the working dtype): rtol, and
# atol as a fraction of the reference's largest magnitude (near-zero entries of a tensor whose
# entries reach ~20 differ by a few ulps *of 20* in bf16). float32 sums over a few thousand keys
# differ in the last bits; bf16/fp16 round the attention matrix and the gradients themselves.
TOLERANCES = {torch.float64: (1e-10, 1e-12), torch.float32: (1e-4, 1e-5),
              torch.bfloat16: (2 ** -5, 2 ** -5), torch.float16: (2 ** -8, 2 ** -8)}  # (rtol, atol / max|ref|)
MMAP_THRESHOLD = 128 * 1024
MIB = 2 ** 20


# ---- the two implementations ----------------------------------------------------------------------

def unit_qkv(unit: CrossModalityAttention, target: torch.Tensor, source: torch.Tensor):
    """q, k, v ``[N, d_k, *positions]`` exactly as ``unit.attend`` computes them: the unit's own
    conv_q / conv_k / conv_v, spatial pooling and (if the unit has them) positional terms."""
    q = conv1x1(target, unit.theta)
    pooled = _pool_space(source) if unit.pool else source
    k = conv1x1(pooled, unit.phi)
    v = conv1x1(pooled, unit.g)
    if getattr(unit, "position_frequencies", 0):
        q = q + unit._position_term(q, unit.theta_position)
        k = k + unit._position_term(k, unit.phi_position)
    return q, k, v


def naive_attend(unit: CrossModalityAttention, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``unit.attend(target, source)`` with an explicit attention matrix: the same q, k, v
    (:func:`unit_qkv`), then ``softmax(q @ k^T * scale) @ v`` with the ``[N, L_q, L_k]`` matrix
    materialised. Returns ``[N, d_k, *target positions]`` like ``attend``."""
    n = target.shape[0]
    q, k, v = unit_qkv(unit, target, source)
    q = q.flatten(2).transpose(1, 2)                      # [N, L_q, d]
    k = k.flatten(2).transpose(1, 2)                      # [N, L_k, d]
    v = v.flatten(2).transpose(1, 2)                      # [N, L_k, d]
    attention = torch.softmax(q @ k.transpose(1, 2) * unit.effective_scale, dim=-1)   # [N, L_q, L_k]
    out = attention @ v                                   # [N, L_q, d]
    return out.transpose(1, 2).reshape(n, unit.inner_channels, *target.shape[2:])


def sdpa_attend(unit: CrossModalityAttention, target: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """The module's own path (``F.scaled_dot_product_attention``)."""
    return unit.attend(target, source)


FUNCTIONS = {"sdpa": sdpa_attend, "naive": naive_attend}


# ---- set-up -------------------------------------------------------------------------------------

def config_shapes(name: str, batch: int, frames: int) -> dict:
    space = (SIZE, SIZE) if name == "res3_2d" else (frames, SIZE, SIZE)
    shape = [batch, CHANNELS, *space]
    pooled = [*space[:-2], space[-2] // 2, space[-1] // 2]
    return {"target_shape": shape, "source_shape": shape, "inner_channels": CHANNELS // 2,
            "query_positions": math.prod(space), "key_positions": math.prod(pooled)}


def build(spec: dict, device: torch.device, dtype: torch.dtype, grad: bool):
    """The unit (seeded, He-initialised, train mode), the target/source maps (the same tensor: a
    self-attending unit) and a fixed output-gradient seed."""
    torch.manual_seed(0)
    unit = CrossModalityAttention(CHANNELS).to(device=device, dtype=dtype)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randn(spec["target_shape"], generator=g).to(device=device, dtype=dtype).requires_grad_(grad)
    out_shape = [spec["target_shape"][0], spec["inner_channels"], *spec["target_shape"][2:]]
    seed = torch.randn(out_shape, generator=g).to(device=device, dtype=dtype) if grad else None
    return unit, x, seed


def run_step(fn, unit, x, seed, mode: str) -> None:
    if mode == "forward":
        with torch.no_grad():
            fn(unit, x, x)
    else:
        fn(unit, x, x).backward(seed)
        x.grad = None
        unit.zero_grad(set_to_none=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- correctness, backend, timing ---------------------------------------------------------------

def check_agreement(unit, x, seed, dtype: torch.dtype, backward: bool) -> dict:
    """assert_close of naive vs SDPA: outputs and, with ``backward``, the gradient w.r.t. the input."""
    results = {}
    for impl, fn in FUNCTIONS.items():
        x.grad = None
        with torch.set_grad_enabled(backward):
            out = fn(unit, x, x)
            if backward:
                out.backward(seed)
        results[impl] = (out.detach(), None if x.grad is None else x.grad.clone())
    x.grad = None
    unit.zero_grad(set_to_none=True)
    out_s, grad_s = results["sdpa"]
    rtol, atol_fraction = TOLERANCES[dtype]
    report = {"reference": "sdpa (the module's attend)", "rtol": rtol, "atol_over_reference_abs_max": atol_fraction,
              "output_abs_max": out_s.float().abs().max().item()}
    if backward:
        report["input_grad_abs_max"] = grad_s.float().abs().max().item()
    tol_out = dict(rtol=rtol, atol=atol_fraction * report["output_abs_max"])
    tol_grad = dict(rtol=rtol, atol=atol_fraction * report.get("input_grad_abs_max", 0.0))
    for impl in IMPLEMENTATIONS[1:]:
        out, grad = results[impl]
        torch.testing.assert_close(out, out_s, **tol_out, msg=lambda m: f"{impl} vs sdpa outputs differ: {m}")
        report[f"{impl}_max_abs_diff_output"] = (out.float() - out_s.float()).abs().max().item()
        if backward:
            torch.testing.assert_close(grad, grad_s, **tol_grad,
                                       msg=lambda m: f"{impl} vs sdpa input gradients differ: {m}")
            report[f"{impl}_max_abs_diff_input_grad"] = (grad.float() - grad_s.float()).abs().max().item()
    return report


def sdpa_backend(fn, unit, x, backward: bool) -> str:
    """The SDPA kernel PyTorch dispatched to, from the profiler's op names."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.is_cuda else [])
    with torch.set_grad_enabled(backward), profile(activities=activities) as prof:
        fn(unit, x, x)
    names = {e.name for e in prof.events()}
    for op, label in (("_scaled_dot_product_flash_attention_for_cpu", "flash attention (CPU kernel)"),
                      ("_scaled_dot_product_cudnn_attention", "cuDNN attention"),
                      ("_scaled_dot_product_flash_attention", "flash attention"),
                      ("_scaled_dot_product_efficient_attention", "memory-efficient attention"),
                      ("_scaled_dot_product_fused_attention_overrideable", "fused (backend override)"),
                      ("_scaled_dot_product_attention_math", "math (unfused fallback)")):
        if f"aten::{op}" in names:
            return f"{label} [aten::{op}]"
    return "unknown (" + ", ".join(sorted(n for n in names if "attention" in n)) + ")"


def time_modes(unit, x, seed, device, modes, repeats: int, warmup: int) -> dict:
    """Median wall time (ms) of each implementation in each mode, implementations interleaved."""
    out = {}
    for mode in modes:
        times = {impl: [] for impl in IMPLEMENTATIONS}
        for i in range(warmup + repeats):
            for impl in IMPLEMENTATIONS:
                sync(device)
                start = time.perf_counter()
                run_step(FUNCTIONS[impl], unit, x, seed, mode)
                sync(device)
                if i >= warmup:
                    times[impl].append(1e3 * (time.perf_counter() - start))
        row = {f"{impl}_ms": statistics.median(times[impl]) for impl in IMPLEMENTATIONS}
        row["naive_over_sdpa"] = row["naive_ms"] / row["sdpa_ms"]
        row.update({f"{impl}_all_ms": [round(t, 3) for t in times[impl]] for impl in IMPLEMENTATIONS})
        out[mode] = row
    return out


# ---- peak memory --------------------------------------------------------------------------------

def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_worker(job: dict) -> dict:
    """Runs in a fresh process: peak RSS above the baseline (MiB) of one (configuration, implementation, mode)."""
    device, dtype = torch.device("cpu"), DTYPES[job["dtype"]]
    grad = job["mode"] == "forward_backward"
    unit, x, seed = build(job["spec"], device, dtype, grad)
    fn = FUNCTIONS[job["impl"]]
    can_reset = os.path.exists("/proc/self/clear_refs") and _reset_hwm()
    if can_reset:
        run_step(fn, unit, x, seed, job["mode"])       # warm-up: lazy initialisation, then freed
        gc.collect()
        baseline = _proc_status_kib("VmRSS")
        _reset_hwm()
        run_step(fn, unit, x, seed, job["mode"])
        peak = _proc_status_kib("VmHWM")
        method = "VmHWM after clear_refs reset, minus VmRSS (warm)"
    else:
        gc.collect()
        baseline = _proc_status_kib("VmRSS")
        run_step(fn, unit, x, seed, job["mode"])
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        method = "ru_maxrss minus VmRSS (cold, first step)"
    return {"peak_mib": (peak - baseline) / 1024, "baseline_mib": baseline / 1024, "method": method}


def cpu_peak_memory(job: dict) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MMAP_THRESHOLD))
    proc = subprocess.run([sys.executable, __file__, "--memory-worker", json.dumps(job)], env=env,
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory worker failed for {job}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cuda_peak_memory(spec: dict, impl: str, mode: str, device: torch.device, dtype: torch.dtype) -> dict:
    unit, x, seed = build(spec, device, dtype, mode == "forward_backward")
    fn = FUNCTIONS[impl]
    run_step(fn, unit, x, seed, mode)  # warm-up (workspaces, cuBLAS handles)
    sync(device)
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_step(fn, unit, x, seed, mode)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device)
    del unit, x, seed
    gc.collect()
    torch.cuda.empty_cache()
    return {"peak_mib": (peak - baseline) / MIB, "baseline_mib": baseline / MIB,
            "method": "torch.cuda.max_memory_allocated minus memory_allocated (warm)"}


# ---- machine, main ------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="float32")
    parser.add_argument("--configs", nargs="+", choices=("res3_2d", "res3_3d"), default=["res3_2d", "res3_3d"])
    parser.add_argument("--batch", type=int, help="batch of the 2D res3 map (default: 8 on CPU, 64 on CUDA)")
    parser.add_argument("--batch-3d", type=int, help="batch of the 3D map (default: 2 on CPU, 8 on CUDA)")
    parser.add_argument("--frames", type=int, help=f"T of the 3D map (default {DEFAULT_FRAMES}; {QUICK_FRAMES} with --quick)")
    parser.add_argument("--repeats", type=int, help="timed runs per implementation and mode (default 5; 3 with --quick)")
    parser.add_argument("--warmup", type=int, help="untimed runs first (default 2; 1 with --quick)")
    parser.add_argument("--no-backward", dest="backward", action="store_false", help="time and measure forward only")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory measurements")
    parser.add_argument("--quick", action="store_true", help="smaller batches / 3D map and fewer repeats")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.memory_worker:
        print(json.dumps(memory_worker(json.loads(args.memory_worker))))
        return
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available")
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if device.type == "cpu" and dtype == torch.float16:
        sys.exit("--dtype float16 is for CUDA; use float32 or bfloat16 on CPU")
    batches = (QUICK_BATCH if args.quick else DEFAULT_BATCH)[device.type]
    batches = {"res3_2d": args.batch or batches["res3_2d"], "res3_3d": args.batch_3d or batches["res3_3d"]}
    frames = args.frames or (QUICK_FRAMES if args.quick else DEFAULT_FRAMES)
    repeats = args.repeats or (3 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    modes = MODES if args.backward else MODES[:1]
    elem = torch.empty((), dtype=dtype).element_size()

    conditions = measurement_conditions("cma_attention", processes=1, threads_per_process=torch.get_num_threads())
    results = {"description": __doc__.splitlines()[0], "machine": machine_description(device),
               "settings": {"device": str(device), "dtype": args.dtype, "repeats": repeats, "warmup": warmup,
                            "quick": args.quick, "modes": list(modes), "statistic": "median wall time",
                            "forward_under_no_grad": True},
               "configs": {}}
    for name in args.configs:
        spec = config_shapes(name, batches[name], frames)
        n, lq, lk = spec["target_shape"][0], spec["query_positions"], spec["key_positions"]
        row = dict(spec, attention_matrix_mib=n * lq * lk * elem / MIB)
        print(f"{name}: map {spec['target_shape']}, {lq} queries x {lk} keys, d_k {spec['inner_channels']} ...", flush=True)
        unit, x, seed = build(spec, device, dtype, grad=True)
        row["check"] = check_agreement(unit, x, seed, dtype, args.backward)
        row["sdpa_backend"] = sdpa_backend(sdpa_attend, unit, x, args.backward)
        row.update(time_modes(unit, x, seed, device, modes, repeats, warmup))
        del unit, x, seed
        gc.collect()
        if args.memory:
            memory = {}
            for mode in modes:
                m = {}
                for impl in IMPLEMENTATIONS:
                    if device.type == "cuda":
                        r = cuda_peak_memory(spec, impl, mode, device, dtype)
                    else:
                        r = cpu_peak_memory({"spec": spec, "impl": impl, "mode": mode, "dtype": args.dtype})
                    m[f"{impl}_mib"] = r["peak_mib"]
                    m["method"] = r["method"]
                m["naive_over_sdpa"] = m["naive_mib"] / m["sdpa_mib"] if m["sdpa_mib"] > 0 else float("nan")
                memory[mode] = m
            row["peak_memory"] = memory
        results["configs"][name] = row
    if args.memory:
        results["settings"]["memory_method"] = (
            "CUDA: torch.cuda.max_memory_allocated above memory_allocated before the step, warm"
            if device.type == "cuda" else
            f"CPU: peak RSS above the baseline in a fresh subprocess per (config, implementation, mode), "
            f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}; "
            + "; ".join(sorted({m["method"] for c in results["configs"].values() for m in c["peak_memory"].values()})))
    # the memory workers run one at a time after the timings: one process measures at any moment
    results["conditions"] = finish_conditions(conditions)
    atomic_write_text(args.output, json.dumps(results, indent=2) + "\n")

    short = {"sdpa": "SDPA", "naive": "naive"}
    header = f"{'config':8s} {'mode':16s} {'':4s}" + "".join(f"{short[i]:>12s}" for i in IMPLEMENTATIONS)
    print("\n" + header + f"{'naive/SDPA':>12s}")
    for name, row in results["configs"].items():
        for mode in modes:
            tables = [("ms", row[mode])] + ([("MiB", row["peak_memory"][mode])] if args.memory else [])
            for unit_name, t in tables:
                suffix = "ms" if unit_name == "ms" else "mib"
                print(f"{name:8s} {mode:16s} {unit_name:4s}" + "".join(f"{t[f'{i}_{suffix}']:12.1f}" for i in IMPLEMENTATIONS)
                      + f"{t['naive_over_sdpa']:11.2f}x")
        check = row["check"]
        print(f"{'':8s} L_q x L_k matrix {row['attention_matrix_mib']:.1f} MiB; max |naive - SDPA| "
              f"{check['naive_max_abs_diff_output']:.1e}")
        print(f"{'':8s} SDPA backend: {row['sdpa_backend']}")
    print(f"\n{results['machine']['cpu_model']}, {results['machine']['cpu_count']} cores, torch "
          f"{torch.__version__} ({results['machine']['torch_threads']} threads), device {device}, {args.dtype}")
    if results["conditions"]["busy"]:
        print("the machine was busy with other jobs during the run (see the warning and 'conditions' in the JSON)")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
