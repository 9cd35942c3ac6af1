"""What a measurement ran on, for the benchmark scripts' result files: speeds mean little without
the CPU, the thread settings, the load at the time and, on a GPU, which one."""
from __future__ import annotations

import os
import platform
import warnings

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def numerics_machine() -> dict:
    """What decides a CPU run's rounding, and so its numbers under fixed seeds: the CPU model, the
    instruction set torch dispatches to, the torch version and its thread count (reductions split
    over other thread counts add in another order)."""
    return {"cpu_model": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def machine_description(device: torch.device) -> dict:
    """Platform, CPU, threads, torch/CUDA versions, the device (with the GPU's name and memory) and
    the load average when the measurement started (other jobs on a shared machine slow it down)."""
    numerics = numerics_machine()
    desc = {"platform": platform.platform(), **numerics, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else numerics["cpu_model"],
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        desc.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return desc


# ---- the machine's load: is it idle enough to measure? -------------------------------------------
# A benchmark on a shared machine measures the other jobs too: on 2 cores with a load average of 5-8,
# flow_tvl1.py reported tvl1-torch at 4.0-4.8x OpenCV's TV-L1, while on an idle machine with one
# process and one thread each it is 1.7x (112x112) and 2.2x (320x240) on an AMD EPYC, 2.5-3.0x on an
# Intel Xeon. So each benchmark records the load before and after, the processes and threads it used,
# and warns when the machine is busy.

BUSY_FRACTION = 0.5  # busy: other jobs above this fraction of the cores (load average, and cores busy now)


class MachineBusyWarning(UserWarning):
    """The machine was busy with other jobs while a benchmark measured: its speeds are too low."""


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (``os.getloadavg``), rounded to 0.01."""
    return [round(v, 2) for v in os.getloadavg()]


def busy_cores_now(interval: float = 0.5) -> float:
    """Cores busy right now: psutil's per-core CPU use over ``interval`` seconds, summed. The
    1-minute load average lags: a make run started right after ``make install`` saw 1.1 on 2 cores
    from pip alone, and called an idle machine busy."""
    import psutil

    return round(sum(psutil.cpu_percent(interval=interval, percpu=True)) / 100, 2)


def check_load(what: str = "the benchmark", *, own_load: float = 0.0, fraction: float = BUSY_FRACTION,
               warn: bool = True) -> dict:
    """The load now, and whether the machine is busy: other jobs' load (the 1-minute load average
    less ``own_load``, the runnable threads this measurement itself keeps busy) above ``fraction``
    of the cores and, when it is, the cores busy right now (:func:`busy_cores_now`, sampled while
    this measurement runs nothing: at its start or after its end; ``None`` when not needed) above it
    too, so that the load average's minute of lag does not count a finished job. Warns with
    :class:`MachineBusyWarning` (naming ``what``) when it is and ``warn``."""
    load, cores = load_average(), os.cpu_count() or 1
    others = max(0.0, load[0] - own_load)
    threshold = fraction * cores
    now = busy_cores_now() if others > threshold else None
    busy = now is not None and now > threshold
    if busy and warn:
        own = f", about {own_load:g} of it this measurement's own" if own_load else ""
        warnings.warn(MachineBusyWarning(
            f"{what}: the machine is busy (1-minute load average {load[0]:.2f}{own}, above {fraction:g} x "
            f"{cores} cores = {threshold:g}) with {now:.2f} cores busy now: other jobs share the cores, so its "
            f"speeds are too low; rerun it on an idle machine to quote them"), stacklevel=2)
    return {"load_average": load, "others_load": round(others, 2), "busy_cores_now": now, "cpu_count": cores,
            "busy_threshold": threshold, "busy": busy}


def measurement_conditions(what: str, processes: int = 1, threads_per_process: int | None = None,
                           warn: bool = True) -> dict:
    """What a benchmark ran under, at its start: the processes and threads per process it measures
    with (default: torch's thread count) and :func:`check_load` (warning if the machine is busy).
    Pass the result to :func:`finish_conditions` when the measurement ends."""
    threads = threads_per_process if threads_per_process is not None else torch.get_num_threads()
    return {"what": what, "processes": processes, "threads_per_process": threads,
            "busy_fraction_of_cores": BUSY_FRACTION, "start": check_load(what, warn=warn)}


def finish_conditions(conditions: dict, warn: bool = True) -> dict:
    """``conditions`` with the load at the end added (``end``; the benchmark's own processes x threads
    taken off as its own load, an estimate: the load average lags by about a minute) and ``busy``:
    whether the machine was busy at either end."""
    own = conditions["processes"] * conditions["threads_per_process"]
    end = check_load(conditions["what"], own_load=own, warn=warn)
    conditions = dict(conditions, end=end)
    conditions["busy"] = conditions["start"]["busy"] or end["busy"]
    return conditions
