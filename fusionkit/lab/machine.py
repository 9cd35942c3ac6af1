"""What a measurement ran on, for the benchmark scripts' result files: speeds mean little without
the CPU, the thread settings, the load at the time and, on a GPU, which one."""
from __future__ import annotations

import os
import platform

import torch


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                        platform.processor())
    except OSError:
        return platform.processor()


def machine_description(device: torch.device) -> dict:
    """Platform, CPU, threads, torch/CUDA versions, the device (with the GPU's name and memory) and
    the load average when the measurement started (other jobs on a shared machine slow it down)."""
    cpu = cpu_model()
    desc = {"platform": platform.platform(), "cpu_model": cpu, "cpu_count": os.cpu_count(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()]}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        desc.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return desc
