"""A puzzle rendered in memory as ready-made two-stream snippets, for checks that must train in seconds.

The block checker's ``trains`` check (:mod:`fusionkit.lab.assignments.check`) trains a student's block
many times (once per submission), so it skips what makes the real pipeline slow and stateful:
no video files, no decoding, no optical-flow estimation, no cache on disk. Each video is rendered
by the puzzle's own renderer (:meth:`fusionkit.data.puzzles.Puzzle.render`, so the labels and the
reason each stream is blind are exactly the puzzle's) and its snippet is cut from the frames and
the renderer's *exact* flow, normalised as :class:`fusionkit.data.transforms.Normalize` does for
the real dataset. Items have :class:`~fusionkit.data.dataset.TwoStreamDataset`'s layout, so the
trainer and the evaluation read them unchanged.

Exact flow makes the motion stream's job easier than DIS flow does, but it does not change what
the ``registration`` puzzle asks: RGB still knows nothing, flow still knows only the direction,
and late fusion still stays near 50% (measured with the checker's settings, 10 epochs: 0.50 and
0.44 for two seeds, never above 0.54; conv fusion after stage1 reaches 1.00).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch.utils.data import Dataset

from fusionkit.data.flow import FLOW_BOUND
from fusionkit.data.puzzles import get_puzzle
from fusionkit.data.transforms import Normalize


class PuzzleSnippets(Dataset):
    """``videos_per_class`` videos of each class of ``puzzle``, one snippet each, held in memory.

    Args:
        puzzle: a registered puzzle name (``registration``, ...).
        videos_per_class / frames / size: as for :func:`fusionkit.data.puzzles.make_puzzles`.
        new_length: L, flow fields per snippet (the motion tower takes 2L channels).
        seed: videos are deterministic given ``(seed, label, index)``; use different seeds for
            training and held-out sets.
    The snippet is taken at the middle of each video (RGB frame t with flow fields t..t+L-1), so an
    item is ``rgb [1, 3, H, W]``, ``flow [1, 2L, H, W]``, ``label``, ``video_id`` (one segment).
    """

    def __init__(self, puzzle: str, videos_per_class: int, frames: int, size: int, new_length: int, seed: int = 0):
        if new_length > frames - 1:
            raise ValueError(f"new_length={new_length} needs at least {new_length + 1} frames, got frames={frames}")
        p = get_puzzle(puzzle)
        self.new_length = new_length
        self.items: list[dict] = []
        start = (frames - 1 - new_length) // 2
        normalize = Normalize(flow_bound=FLOW_BOUND)
        for label in range(len(p.classes)):
            for index in range(videos_per_class):
                video = p.render(label, np.random.default_rng([seed, label, index]), frames, size)
                rgb = torch.from_numpy(video.frames[start:start + 1]).permute(0, 3, 1, 2).float() / 255.0
                # [L, H, W, 2] -> [1, 2L, H, W], channels x1, y1, x2, y2, ... as TwoStreamDataset stacks them
                flow = torch.from_numpy(video.flow[start:start + new_length]).clamp(-FLOW_BOUND, FLOW_BOUND)
                flow = flow.permute(0, 3, 1, 2).reshape(1, 2 * new_length, size, size)
                rgb, flow = normalize(rgb, flow)
                self.items.append({"rgb": rgb, "flow": flow, "label": label,
                                   "video_id": f"{video.class_name}/{index}"})
        self.records = [SimpleNamespace(label=item["label"]) for item in self.items]  # as TwoStreamDataset keeps them

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]
