"""What training and evaluation share: the device, seeding, batches on the device, autocast, loaders.

Its own module so that :mod:`~fusionkit.training.evaluate` and :mod:`~fusionkit.training.trainer`
both use it without importing each other.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for, but CUDA is not available here; use device='auto' or 'cpu'")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
                device: torch.device | None = None) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=g, num_workers=num_workers,
                      pin_memory=device is not None and device.type == "cuda", drop_last=False,
                      persistent_workers=False)
