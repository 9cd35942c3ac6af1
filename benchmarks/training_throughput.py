"""Training throughput: clips/s per fusion method, and a step's time split between data loading and the model.

1. Methods. One training step as :meth:`fusionkit.training.trainer.Trainer.train_epoch` takes it (forward
   under the Trainer's autocast, the method's objective from ``fusionkit.training.schedules.SCHEDULES``, the
   finite-loss check, backward, optimizer step) on batches already in memory on the device, so only
   the model counts: late fusion, spatial conv fusion, conv_fusion (3D conv fusion), CMMP, CCS and CMA
   (the bench entries of :mod:`fusionkit.lab.bench`, their model options included). CMA steps train the
   RGB branch with the flow branch frozen, as its first iteration does. Always on CPU at puzzle
   size (tiny backbone, 64x64, T=3 segments, L=5, batch 8); where CUDA is used also at 224x224 with
   ResNet-50 towers (random weights), bf16 autocast and channels_last, as the Trainer runs on a GPU.
   clips/s = batch / median step time, the methods taking turns step by step; ``vs_late`` is each
   method's clips/s over late fusion's in the same run. ``--cpu-bf16``: every CPU step is also taken under
   ``torch.autocast("cpu", bfloat16)``, right after its fp32 twin (``bf16_vs_fp32``). The Trainer keeps
   fp32 on the CPU: bf16 is only faster on CPUs with bf16 units (AMX, AVX-512 BF16; ``cpu_bf16_hardware``
   records which), and it rounds differently, so every committed number would move.
2. Loader vs model. A rendered ``registration`` puzzle (as :func:`fusionkit.lab.experiments.puzzle_datasets`
   prepares it), the late-fusion model, the Trainer's own loader (:func:`fusionkit.training.runtime.make_loader`,
   a fresh one each epoch): seconds per batch spent waiting for the next batch vs in
   device copy + forward + backward + step, for ``in_memory`` False / True and ``num_workers`` 0 / 2,
   measured on an epoch that follows a loading-only one (:func:`loader_model_split`).

    python benchmarks/training_throughput.py [--quick] [--device cpu|cuda|auto] [--threads N] [--cpu-bf16]

Results go to ``benchmarks/results/training_throughput.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset

from fusionkit.lab.bench import BENCH_ENTRIES
from fusionkit.data.atomic import atomic_write_text
from fusionkit.data.dataset import build_dataset
from fusionkit.data.puzzles import get_puzzle, prepare_puzzle
from fusionkit.methods import build_model, get_method
from fusionkit.methods.recipe import split_options
from fusionkit.lab.machine import finish_conditions, machine_description, measurement_conditions
from fusionkit.training.schedules import SCHEDULES, make_optimizer
from fusionkit.training.trainer import TrainConfig
from fusionkit.training.runtime import autocast, to_device, make_loader

RESULTS = Path(__file__).parent / "results" / "training_throughput.json"
# bench entry -> what the row is (fusionkit.lab.bench registers each with its model options)
METHODS = {"late": "late fusion (two towers, scores averaged)",
           "spatial(fusion=conv)": "spatial conv fusion after the last stage (Feichtenhofer Eq. 3-4)",
           "conv_fusion": "spatiotemporal fusion: 3D conv + 3D pool over the segments (Feichtenhofer Sec. 3.3-3.4)",
           "cmmp": "CMMP: LSTM messages, adversarial objective (Wang et al.)",
           "ccs(embedding_dim=64)": "CCS: connection block, CE + triplet + embedding losses (Zhang et al.)",
           "cma(position_frequencies=3)": "CMA: cross-modality attention, RGB branch trained, flow branch frozen "
                                          "(Chi et al.)"}
NUM_CLASSES = 4


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_bf16_hardware() -> list[str]:
    """The CPU's bf16 instruction sets as /proc/cpuinfo names them (AMX tiles, AVX-512 BF16); empty where
    it has none or does not say: there bf16 autocast is emulated and slower than fp32."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return sorted(set(flags.split()) & {"amx_bf16", "avx512_bf16"})


def build_method(name: str, backbone: str, new_length: int, device: torch.device):
    """(model, objective, optimizer, method) of a bench entry, on ``device`` as the Trainer puts it
    there (channels_last on CUDA)."""
    entry = BENCH_ENTRIES.lookup(name)
    method = get_method(entry.method)
    model_options, training_options = split_options(entry.method, entry.options)
    config = TrainConfig(schedule=method.schedule, **method.train_defaults)
    if method.configure is not None:  # a training option (CMMP's hinge, svm) configures the objective, as run_method does
        config = method.configure(config, **training_options)
    torch.manual_seed(0)
    model = build_model(entry.method, NUM_CLASSES, backbone=backbone, new_length=new_length, pretrained=False,
                        **model_options)
    if method.schedule == "alternate":  # the objective trains one branch: freeze the other, as the Trainer does
        model.train_branch(config.first_branch)
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model, SCHEDULES[method.schedule](config), make_optimizer(model.parameters(), config), method


def train_step(model, objective, optimizer, batch: dict, device: torch.device, cpu_bf16: bool = False) -> None:
    """One step of Trainer.train_epoch, without its bookkeeping of losses and accuracies; ``cpu_bf16``: under
    ``torch.autocast("cpu", bfloat16)``, which the Trainer does not use (measured here, see ``--cpu-bf16``)."""
    batch = to_device(batch, device)
    with torch.autocast("cpu", dtype=torch.bfloat16) if cpu_bf16 else autocast(device):
        out = model(batch["rgb"], batch["flow"])
        losses = objective(out, batch["label"])
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} in the benchmark step")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    sync(device)


def method_throughput(names: list[str], backbone: str, size: int, segments: int, new_length: int, batch: int,
                      device: torch.device, warmup: int, steps: int, cpu_bf16: bool = False) -> dict:
    """clips/s of a training step of each method on a random in-memory batch (model time only).

    The methods take turns, one step each per round, so that a burst of load from other jobs on a
    shared machine slows every method alike instead of whichever was running (the ratios stay fair).
    ``cpu_bf16``: each method also takes a step under CPU bf16 autocast right after its fp32 one, on
    the same model (``bf16_clips_per_s``, ``bf16_vs_fp32``)."""
    g = torch.Generator().manual_seed(0)
    data = {"rgb": torch.rand(batch, segments, 3, size, size, generator=g),
            "flow": torch.randn(batch, segments, 2 * new_length, size, size, generator=g),
            "label": torch.arange(batch) % NUM_CLASSES}  # every class twice in a batch of 8: CCS has positives
    data = to_device(data, device)
    built = {name: build_method(name, backbone, new_length, device) for name in names}
    precisions = (False, True) if cpu_bf16 else (False,)
    times = {(name, bf16): [] for name in names for bf16 in precisions}
    for round_ in range(warmup + steps):
        for name, (model, objective, optimizer, _) in built.items():
            model.train()
            for bf16 in precisions:
                start = time.perf_counter()
                train_step(model, objective, optimizer, data, device, cpu_bf16=bf16)
                if round_ >= warmup:
                    times[name, bf16].append(time.perf_counter() - start)
    rows = {}
    for name, (model, _, _, method) in built.items():
        median = statistics.median(times[name, False])
        rows[name] = {"what": METHODS.get(name, name), "method": method.name, "options": BENCH_ENTRIES[name].options,
                      "schedule": method.schedule, "clips_per_s": batch / median, "step_ms_median": 1e3 * median,
                      "step_ms": [round(1e3 * t, 2) for t in times[name, False]],
                      "trainable_params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6}
        if cpu_bf16:
            bf16_median = statistics.median(times[name, True])
            rows[name].update(bf16_clips_per_s=batch / bf16_median, bf16_step_ms_median=1e3 * bf16_median,
                              bf16_vs_fp32=median / bf16_median)
    if "late" in rows:
        for row in rows.values():
            row["vs_late"] = row["clips_per_s"] / rows["late"]["clips_per_s"]
    for name, row in rows.items():
        print(f"  {name:27s} {row['clips_per_s']:9.1f} clips/s  ({row['step_ms_median']:.1f} ms/step, "
              f"{row.get('vs_late', float('nan')):.2f}x late)"
              + (f"; bf16 autocast {row['bf16_clips_per_s']:.1f} clips/s, {row['bf16_vs_fp32']:.2f}x fp32"
                 if cpu_bf16 else ""), flush=True)
    return rows


def cuda_peak_memory(names: list[str], backbone: str, size: int, segments: int, new_length: int, batch: int,
                     device: torch.device) -> dict[str, float]:
    """GiB of CUDA memory a training step of each method peaks at (its model alone on the GPU)."""
    g = torch.Generator().manual_seed(0)
    data = to_device({"rgb": torch.rand(batch, segments, 3, size, size, generator=g),
                       "flow": torch.randn(batch, segments, 2 * new_length, size, size, generator=g),
                       "label": torch.arange(batch) % NUM_CLASSES}, device)
    peaks = {}
    for name in names:
        model, objective, optimizer, _ = build_method(name, backbone, new_length, device)
        model.train()
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):  # the optimizer's state exists from the second step on
            train_step(model, objective, optimizer, data, device)
        peaks[name] = torch.cuda.max_memory_allocated(device) / 2 ** 30
        del model, objective, optimizer
        torch.cuda.empty_cache()
    return peaks


def loader_model_split(make_set: Callable[[bool], Dataset], workers: list[int], batch: int, device: torch.device,
                       max_batches: int | None = None) -> dict:
    """Seconds per batch waiting on the DataLoader vs in the step, per (in_memory, num_workers).

    Each setting gets a fresh dataset (``make_set(in_memory)``) and, as in the Trainer, a fresh
    loader each epoch. A first epoch only loads (no model): what it leaves behind is what a training
    epoch leaves to the next, i.e. the in-memory cache of the main process with ``num_workers=0``;
    worker processes start from the main process's dataset each epoch, so their caches do not last.
    Then one untimed model step, then the measured epoch (at most ``max_batches`` batches)."""
    rows = {}
    for in_memory in (False, True):
        for num_workers in workers:
            train_set = make_set(in_memory)
            model, objective, optimizer, _ = build_method("late", "tiny", train_set.new_length, device)
            model.train()
            for data in make_loader(train_set, batch, True, 0, num_workers, device):
                pass
            train_step(model, objective, optimizer, data, device)
            waits, steps, clips = [], [], 0
            start = time.perf_counter()
            for data in make_loader(train_set, batch, True, 1, num_workers, device):
                ready = time.perf_counter()
                train_step(model, objective, optimizer, data, device)
                done = time.perf_counter()
                waits.append(ready - start)
                steps.append(done - ready)
                clips += len(data["label"])
                start = done
                if len(steps) == max_batches:
                    break
            wait, step = statistics.fmean(waits), statistics.fmean(steps)
            key = f"in_memory={in_memory},num_workers={num_workers}"
            rows[key] = {"in_memory": in_memory, "num_workers": num_workers, "batches": len(steps),
                         "wait_s_per_batch": wait, "model_s_per_batch": step, "wait_fraction": wait / (wait + step),
                         "first_wait_s": waits[0],  # with workers: their start-up, paid every epoch
                         "later_wait_s_per_batch": statistics.fmean(waits[1:]) if len(waits) > 1 else None,
                         "clips_per_s": clips / (sum(waits) + sum(steps)),
                         "bound_by": "loader" if wait > step else "model"}
            print(f"  {key:32s} wait {wait * 1e3:7.1f} ms  model {step * 1e3:7.1f} ms per batch "
                  f"({100 * rows[key]['wait_fraction']:.0f}% waiting)", flush=True)
    return rows


def puzzle_train_sets(data_dir: Path, videos_per_class: int, frames: int, size: int, segments: int,
                      new_length: int) -> tuple[Callable[[bool], Dataset], dict]:
    """A maker of the registration puzzle's training set, decoded from the JPEG cache at every read
    (``in_memory=False``) or kept in memory after the first (True), the puzzle rendered and its flow
    extracted first if need be (what :func:`fusionkit.lab.experiments.puzzle_datasets` does)."""
    root, cache = prepare_puzzle("registration", data_dir, videos_per_class=videos_per_class, frames=frames,
                                 size=size, progress=False)

    def make_set(in_memory: bool) -> Dataset:
        return build_dataset("puzzles:registration", root, cache, "train", num_segments=segments,
                             new_length=new_length, in_memory=in_memory)

    info = {"puzzle": "registration", "classes": len(get_puzzle("registration").classes),
            "train_videos": len(make_set(False)), "videos_per_class": videos_per_class, "frames": frames,
            "size": size}
    return make_set, info


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda adds the ResNet-50 224x224 rows and runs the loader split on the GPU")
    parser.add_argument("--quick", action="store_true", help="fewer steps, at most 4 batches an epoch in the split")
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--size", type=int, default=64, help="CPU rows and the puzzle: frame size")
    parser.add_argument("--segments", type=int, default=3)
    parser.add_argument("--new-length", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="CPU rows and the split")
    parser.add_argument("--cuda-batch", type=int, default=32, help="ResNet-50 224x224 rows")
    parser.add_argument("--steps", type=int, help="timed steps per method (default 10; --quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 2; --quick 1)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="num_workers values of the split")
    parser.add_argument("--max-batches", type=int, help="batches per epoch in the split (default: all; --quick 4)")
    parser.add_argument("--videos-per-class", type=int, default=30, help="the rendered puzzle (the notebooks' 30)")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--data", type=Path, default=Path("data"), help="folder of rendered puzzles and flow")
    parser.add_argument("--no-split", dest="split", action="store_false", help="skip the loader vs model split")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="also time every CPU step under bf16 autocast (fast only on CPUs with bf16 units)")
    parser.add_argument("--note", action="append", default=[], help="a line for the JSON's notes (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: CUDA is not available here")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    steps = args.steps or (3 if args.quick else 10)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    max_batches = args.max_batches or (4 if args.quick else None)
    cpu = torch.device("cpu")
    # one process measures; the loader split also starts DataLoader worker processes (recorded beside)
    conditions = measurement_conditions("training_throughput", processes=1, threads_per_process=torch.get_num_threads())
    conditions["loader_workers"] = list(args.workers) if args.split else []
    report = {"description": __doc__.splitlines()[0], "machine": machine_description(device),
              "settings": {"quick": args.quick, "steps": steps, "warmup": warmup, "statistic": "median step time",
                           "optimizer": "sgd (momentum 0.9), the TrainConfig default"},
              "notes": list(args.note), "throughput": {}}
    print(f"methods, CPU, tiny backbone {args.size}x{args.size}, T={args.segments}, L={args.new_length}, "
          f"batch {args.batch}:", flush=True)
    report["throughput"]["cpu_tiny"] = {
        "device": "cpu", "backbone": "tiny", "size": args.size, "segments": args.segments,
        "new_length": args.new_length, "batch": args.batch, "autocast": None, "channels_last": False,
        "bf16_autocast_compared": args.cpu_bf16, "cpu_bf16_hardware": cpu_bf16_hardware(),
        "methods": method_throughput(args.methods, "tiny", args.size, args.segments, args.new_length, args.batch,
                                     cpu, warmup, steps, cpu_bf16=args.cpu_bf16)}
    if device.type == "cuda":
        print(f"methods, CUDA, ResNet-50 224x224, batch {args.cuda_batch}, bf16 autocast, channels_last:", flush=True)
        report["throughput"]["cuda_resnet50_224"] = {
            "device": str(device), "backbone": "resnet50", "pretrained": False, "size": 224,
            "segments": args.segments, "new_length": args.new_length, "batch": args.cuda_batch,
            "autocast": "bfloat16", "channels_last": True,
            "methods": method_throughput(args.methods, "resnet50", 224, args.segments, args.new_length,
                                         args.cuda_batch, device, warmup, steps)}
        peaks = cuda_peak_memory(args.methods, "resnet50", 224, args.segments, args.new_length, args.cuda_batch, device)
        for name, peak in peaks.items():
            report["throughput"]["cuda_resnet50_224"]["methods"][name]["peak_memory_gib"] = peak
    if args.split:
        make_set, info = puzzle_train_sets(args.data, args.videos_per_class, args.frames, args.size, args.segments,
                                             args.new_length)
        print(f"loader vs model, {info['train_videos']} training videos of the registration puzzle, late fusion "
              f"on {device}, batch {args.batch}:", flush=True)
        report["loader_vs_model"] = {
            **info, "device": str(device), "model": "late, tiny backbone", "batch": args.batch,
            "segments": args.segments, "new_length": args.new_length, "max_batches": max_batches,
            "measured": "an epoch after a loading-only epoch (see loader_model_split); wait = time in next(loader), "
                        "model = device copy + forward + backward + step",
            "configs": loader_model_split(make_set, args.workers, args.batch, device, max_batches)}
    report["conditions"] = finish_conditions(conditions)
    return report


def main(argv=None) -> dict:
    args = parse_args(argv)
    report = run(args)
    atomic_write_text(args.output, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")
    return report


if __name__ == "__main__":
    main()
