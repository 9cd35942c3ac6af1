"""Multi-process training with PyTorch's own DistributedDataParallel, launched by ``torchrun``.

``torchrun --nproc_per_node N`` starts N copies of a script and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each; these helpers read them and join
the process group (``nccl`` on CUDA, ``gloo`` on CPU). Without those variables every helper
answers for a plain single process (rank 0 of 1) and :func:`init_distributed` does nothing, so the
same code trains in a notebook, on one GPU and on eight. :class:`fusionkit.training.trainer.Trainer` calls
:func:`init_distributed` itself; how it uses DDP is explained there.
"""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.distributed as dist

__all__ = ["all_reduce_sums", "cleanup", "get_rank", "get_world_size", "init_distributed", "is_distributed",
           "is_main_process", "main_process_first"]

TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    """True once this process has joined a process group (a DDP run)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank: from the process group once joined, before that from torchrun's
    ``RANK`` (so work before :func:`init_distributed` can already be limited to rank 0); 0 otherwise."""
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", "0"))


def get_world_size() -> int:
    """Number of processes training together (torchrun's ``WORLD_SIZE``); 1 outside torchrun."""
    return dist.get_world_size() if is_distributed() else int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0: the process that writes checkpoints, histories and progress bars."""
    return get_rank() == 0


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device) -> torch.device:
    """Join torchrun's process group if this process was started by torchrun with more than one
    process (or a group was already joined) and return the device this process trains on.

    ``device`` is the configured one (:func:`fusionkit.training.trainer.resolve_device`); on CUDA each process
    gets its own GPU, ``cuda:LOCAL_RANK``, whatever index was asked for (N processes on one GPU
    would share its memory and gain nothing), and becomes the current CUDA device, so that code
    which says plain ``"cuda"`` (evaluation, ``device="auto"``) uses it too. Backend: ``nccl`` on
    CUDA, ``gloo`` on CPU. Idempotent: a second call returns the device without joining again.
    """
    if not is_distributed() and get_world_size() <= 1:
        return device
    if device.type == "cuda":
        local_rank = _local_rank()
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"process with LOCAL_RANK {local_rank} has no GPU of its own: this machine has "
                               f"{torch.cuda.device_count()}; start at most that many processes per node "
                               f"(torchrun --nproc_per_node)")
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    if not is_distributed():
        missing = [name for name in TORCHRUN_VARIABLES if name not in os.environ]
        if missing:
            raise RuntimeError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} says this is one of several processes, but "
                               f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; launch with "
                               f"torchrun, which sets all of {', '.join(TORCHRUN_VARIABLES)}")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return device


def cleanup() -> None:
    """Leave the process group (at the end of a torchrun run; nothing to do otherwise)."""
    if is_distributed():
        dist.destroy_process_group()


@contextlib.contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on rank 0 first, then on the other ranks: for work that writes shared files
    (rendering puzzles, extracting flow), which the others then find done instead of racing to
    write it too. A plain context outside a process group."""
    if not is_distributed():
        yield
        return
    if not is_main_process():
        dist.barrier()
    yield
    if is_main_process():
        dist.barrier()


def all_reduce_sums(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum each named number over all processes (every process must pass the same names), e.g.
    per-rank loss sums and sample counts into the epoch's totals. Unchanged outside a process group."""
    if not is_distributed():
        return values
    names = sorted(values)
    total = torch.tensor([float(values[name]) for name in names], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return dict(zip(names, total.tolist()))
