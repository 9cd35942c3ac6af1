"""The two-stream dataset: TSN segment sampling over the extracted frame/flow cache.

A video of N flow fields is split into T equal segments (Wang et al. 2016, TSN Sec. 3.1). Each
segment contributes one *snippet*: RGB frame t and the L flow fields t, ..., t+L-1 starting at it,
so that the appearance and the motion of a snippet are registered in time. Training draws t at
random inside each segment; testing takes the segments' centres, evenly spaced.

Each item is a dict: ``rgb [T, 3, H, W]``, ``flow [T, 2L, H, W]`` (float, after the paired
transform), ``label`` (int) and ``video_id`` (``<Class>/<video>``).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fusionkit.data.flow import FLOW_BOUND, load_cached_flow, load_cached_frames, read_cache_meta
from fusionkit.data.splits import VideoRecord, load_split
from fusionkit.data.transforms import PairedTransform, eval_transform, train_transform


def segment_starts(num_starts: int, num_segments: int, train: bool, generator: torch.Generator | None = None) -> list[int]:
    """First frame of each segment's snippet, given ``num_starts`` valid start frames.

    Training (TSN): the valid starts are cut into ``num_segments`` equal parts and one start is
    drawn uniformly from each; with fewer starts than segments, starts are spread evenly and may
    repeat. Testing: the centre of each part, evenly spaced.
    """
    if num_starts < 1:
        raise ValueError("no valid snippet start: the video has fewer flow fields than the snippet length")
    tick = num_starts / num_segments
    if train and num_starts >= num_segments:
        low = (np.arange(num_segments) * tick).astype(int)
        high = (np.arange(1, num_segments + 1) * tick).astype(int)  # exclusive, > low since tick >= 1
        draws = torch.rand(num_segments, generator=generator).numpy()
        return [int(lo + int(d * (hi - lo))) for lo, hi, d in zip(low, high, draws)]
    return [min(int(tick / 2 + tick * k), num_starts - 1) for k in range(num_segments)]


class TwoStreamDataset(Dataset):
    """Paired RGB / flow snippets of videos whose frames and flow are in a cache written by
    ``fusionkit extract-flow`` (``<cache>/<video_id>/img_*.jpg, flow_x_*.jpg, flow_y_*.jpg``).

    Args:
        records: the videos (``VideoRecord(path, label)``), e.g. ``load_split(...).train``.
        cache_root: the extract-flow output folder.
        num_segments: T, snippets per video (TSN uses 3 in training, 25 in testing).
        new_length: L, flow fields per snippet; the flow tower takes 2L channels.
        train: random snippet per segment (True) or evenly spaced centres (False).
        transform: a paired transform; default :func:`train_transform` / :func:`eval_transform`
            at the cached frame size (no flips: pass one with ``flip=True`` where labels allow).
        in_memory: keep each video's decoded frames and flow after its first read. Training reads
            every video once per epoch, and decoding its JPEGs again each time is a visible share of a
            small tower's step (benchmarks/training_throughput.py, 64x64 puzzle, batch 8: 63 ms waiting
            on the loader per batch from disk, 22 ms in memory, against ~270 ms of model); UCF-101 does not
            fit in memory (leave it False there).
    """

    def __init__(self, records: Sequence[VideoRecord], cache_root: str | os.PathLike, num_segments: int = 3,
                 new_length: int = 5, train: bool = True, transform: PairedTransform | None = None,
                 flow_bound: float = FLOW_BOUND, in_memory: bool = False):
        if num_segments < 1 or new_length < 1:
            raise ValueError(f"num_segments and new_length must be >= 1, got {num_segments}, {new_length}")
        self.records = list(records)
        self.cache_root = Path(cache_root)
        self.num_segments, self.new_length, self.train = num_segments, new_length, train
        self.flow_bound = flow_bound
        self.in_memory = in_memory
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # index -> (all frames, all flow)
        missing = [r.video_id for r in self.records if not (self.cache_root / r.video_id / "meta.json").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(self.records)} videos have no extracted frames/flow under {self.cache_root} "
                f"(first: {missing[:3]}). Run `fusionkit extract-flow --root <videos> --out {self.cache_root}`.")
        self.meta = [read_cache_meta(self.cache_root / r.video_id) for r in self.records]
        short = [r.video_id for r, m in zip(self.records, self.meta) if m["flows"] < new_length]
        if short:
            raise ValueError(f"{len(short)} videos have fewer than new_length={new_length} flow fields "
                             f"(first: {short[:3]}); use a smaller new_length")
        if transform is None:
            size = min(self.meta[0]["height"], self.meta[0]["width"]) if self.meta else 224
            transform = train_transform(size, flip=False) if train else eval_transform(size)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def snippet_starts(self, index: int) -> list[int]:
        num_starts = self.meta[index]["flows"] - self.new_length + 1
        return segment_starts(num_starts, self.num_segments, self.train)

    def __getitem__(self, index: int) -> dict:
        record, entry = self.records[index], self.cache_root / self.records[index].video_id
        starts = self.snippet_starts(index)
        flow_idx = [t + k for t in starts for k in range(self.new_length)]
        if self.in_memory:
            if index not in self._decoded:
                meta = self.meta[index]
                self._decoded[index] = (load_cached_frames(entry, range(meta["frames"])),
                                        load_cached_flow(entry, range(meta["flows"]), self.flow_bound))
            all_frames, all_flow = self._decoded[index]
            frames, flow = all_frames[starts], all_flow[flow_idx]
        else:
            frames = load_cached_frames(entry, starts)  # [T, H, W, 3] uint8
            flow = load_cached_flow(entry, flow_idx, self.flow_bound)  # [T*L, H, W, 2] px
        t, h, w = len(starts), flow.shape[1], flow.shape[2]
        # [T*L, H, W, 2] -> [T, L, 2, H, W] -> [T, 2L, H, W]: channels x1, y1, x2, y2, ...
        flow_t = torch.from_numpy(flow).view(t, self.new_length, h, w, 2).permute(0, 1, 4, 2, 3).reshape(t, -1, h, w)
        rgb_t = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        rgb_t, flow_t = self.transform(rgb_t, flow_t)
        return {"rgb": rgb_t.contiguous(), "flow": flow_t.contiguous(), "label": record.label, "video_id": record.video_id}


def build_dataset(dataset: str, root: str | os.PathLike, cache_root: str | os.PathLike, subset: str = "train",
                  split: int = 1, input_size: int | None = None, ten_crop: bool = False, **kwargs) -> TwoStreamDataset:
    """The train or test subset of ``ucf101``, ``hmdb51`` or ``puzzles:<name>`` as a TwoStreamDataset,
    with the augmentation each calls for.

    UCF-101 / HMDB-51: TSN's scale-jittered corner crops at ``input_size`` (224) with flips for
    training; short side resized to 256/224 of the crop and a centre crop (or ten crops) for testing.
    Puzzles: crops of 100% or 87.5% of the frame resized back to its size (stronger jitter would
    cut sprites out of the frame), flipped only where the puzzle's labels survive a mirror.
    """
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', not {subset!r}")
    s = load_split(dataset, root, split)
    train = subset == "train"
    if "transform" not in kwargs:
        if dataset.startswith("puzzles"):
            info = json.loads((Path(root) / "puzzle.json").read_text())
            limit = info.get("max_new_length")
            if limit is not None and kwargs.get("new_length", 5) > limit:
                warnings.warn(f"puzzle {info['puzzle']!r} at {info['frames']} frames is designed for snippets of at "
                              f"most {limit} flow fields; with new_length={kwargs.get('new_length', 5)} one snippet can "
                              f"give the answer away (render more frames, or lower new_length)", stacklevel=2)
            size = input_size or info["size"]
            kwargs["transform"] = (train_transform(size, flip=info["hflip_preserves_label"], scales=(1.0, 0.875))
                                   if train else eval_transform(size, ten_crop=ten_crop))
        else:
            size = input_size or 224
            kwargs["transform"] = (train_transform(size, flip=True) if train
                                   else eval_transform(size, short_side=size * 256 // 224, ten_crop=ten_crop))
    return TwoStreamDataset(getattr(s, subset), cache_root, train=train, **kwargs)
