"""Small in-memory data for model and trainer tests (no video files needed)."""
from types import SimpleNamespace

import torch
from torch.utils.data import Dataset


class SyntheticTwoStream(Dataset):
    """Items shaped like TwoStreamDataset's: the class shows as a brighter quadrant in RGB (and a
    matching motion blob in flow), plus noise; deterministic per index."""

    def __init__(self, n: int = 32, num_classes: int = 4, segments: int = 2, new_length: int = 2, size: int = 16,
                 nan_at: int | None = None):
        self.n, self.k, self.t, self.l, self.size, self.nan_at = n, num_classes, segments, new_length, size, nan_at
        self.new_length = new_length  # as TwoStreamDataset names it
        self.records = [SimpleNamespace(label=i % num_classes) for i in range(n)]  # labels, as TwoStreamDataset keeps them

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        label = i % self.k
        h = self.size // 2
        top, left = (label // 2) * h, (label % 2) * h
        rgb = torch.randn(self.t, 3, self.size, self.size, generator=g) * 0.3
        flow = torch.randn(self.t, 2 * self.l, self.size, self.size, generator=g) * 0.3
        rgb[:, :, top:top + h, left:left + h] += 1.0
        flow[:, 0::2, top:top + h, left:left + h] += 1.0
        if self.nan_at is not None and i == self.nan_at:
            rgb[:] = float("nan")
        return {"rgb": rgb, "flow": flow, "label": label, "video_id": f"video{i}"}


def load_benchmark_script(name: str):
    """Import ``benchmarks/<name>.py`` (a script, not a package module) to test its functions."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
