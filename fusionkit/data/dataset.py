"""The two-stream dataset: TSN segment sampling over the extracted frame/flow cache.

A video of N flow fields is split into T equal segments (Wang et al. 2016, TSN Sec. 3.1). Each
segment contributes one *snippet*: RGB frame t and the L flow fields t, ..., t+L-1 starting at it,
so that the appearance and the motion of a snippet are registered in time. Training draws t at
random inside each segment; testing takes the segments' centres, evenly spaced.
``sampling="chunks"`` samples instead as Feichtenhofer et al.'s spatiotemporal network (§3.4-3.5):
T neighbouring snippets tau frames apart, t, t + tau, ..., t + (T-1) tau (:func:`chunk_starts`).

Each item is a dict: ``rgb [T, 3, H, W]``, ``flow [T, 2L, H, W]`` (float, after the paired
transform), ``label`` (int) and ``video_id`` (``<Class>/<video>``).

The frames and flow come from a :class:`~fusionkit.data.stores.FrameStore`: extract-flow's cache
(a folder, as before), or MMAction2 rawframes / twostreamfusion's u/v trees. Every video is checked
before training starts (:func:`check_records`, :func:`check_dataset`), and all problems are reported
at once, grouped by kind, each with its fix; ``skip_bad=True`` builds the dataset from the rest.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fusionkit.data.flow import FLOW_BOUND, CacheEntryError, find_videos
from fusionkit.data.splits import VideoRecord, load_split
from fusionkit.data.stores import PROBLEM_KINDS, FrameStore, FusionkitCache
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


SAMPLINGS = ("tsn", "chunks")  # TwoStreamDataset's snippet sampling: segment_starts, chunk_starts


def _stride_range(stride: int | Sequence[int]) -> tuple[int, int]:
    low, high = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if not 1 <= low <= high:
        raise ValueError(f"stride must be an int >= 1 or a range (low, high) with 1 <= low <= high, got {stride!r}")
    return int(low), int(high)


def chunk_starts(num_starts: int, num_chunks: int, train: bool, stride: int | Sequence[int] = (1, 10),
                 test_stride: int | None = None, generator: torch.Generator | None = None) -> list[int]:
    """First frame of each of ``num_chunks`` neighbouring snippets ``tau`` frames apart: ``t, t + tau,
    ..., t + (T-1) tau`` (Feichtenhofer et al. §3.4: "T temporal chunks that are tau frames apart").

    Training (§3.5, "randomly sampling the starting frame, and then randomly sampling the temporal
    stride (tau) in [1, 10]"): tau uniform over the integers of ``stride`` (a ``(low, high)`` range,
    inclusive, or one int), then t uniform over the starts that keep all T chunks in the video.
    Testing: tau fixed, ``test_stride`` or else the middle of the range rounded down (5 for [1, 10];
    the paper gives no test stride), the chunks centred in the video. A video too short for tau
    takes the largest tau that fits (at least 1); one with fewer starts than chunks takes
    consecutive starts, its last one repeated.
    """
    if num_starts < 1:
        raise ValueError("no valid snippet start: the video has fewer flow fields than the snippet length")
    low, high = _stride_range(stride)
    fits = (num_starts - 1) // (num_chunks - 1) if num_chunks > 1 else high  # the largest tau that fits
    if fits < 1:
        return [min(k, num_starts - 1) for k in range(num_chunks)]
    if train:
        high = min(high, fits)
        low = min(low, high)
        tau = low + int(torch.randint(high - low + 1, (1,), generator=generator))
        first = int(torch.randint(num_starts - (num_chunks - 1) * tau, (1,), generator=generator))
    else:
        tau = min(test_stride if test_stride is not None else (low + high) // 2, fits)
        if tau < 1:
            raise ValueError(f"test_stride must be >= 1, got {test_stride}")
        first = (num_starts - 1 - (num_chunks - 1) * tau) // 2
    return [first + k * tau for k in range(num_chunks)]


PROBLEM_TITLES = {
    "missing_video": "listed in the split file but absent from the video root",
    "failed": "extraction failed",
    "not_extracted": "no extracted frames/flow",
    "broken": "frames or flow damaged",
    "too_short": "fewer flow fields than the snippet length",
}
LISTED_PER_KIND = 50  # videos named per kind in a message; DatasetError.problems holds them all


class DatasetError(FileNotFoundError, ValueError):
    """Videos of a dataset cannot be used; the message groups them by kind, each with its fix.

    Both a FileNotFoundError (most problems are missing files, and callers caught that before) and
    a ValueError (as a too-short video was). ``problems``: kind -> {video: what is wrong}.
    """

    def __init__(self, message: str, problems: dict[str, dict[str, str]] | None = None):
        super().__init__(message)  # (message,) as args, so that it pickles (raised in a worker process)
        self.problems = problems or {}


@dataclass
class DatasetReport:
    """What :func:`check_records` found: the usable videos' counts (``info``), the problems by
    kind, and the videos that decoded to fewer frames than their container promises."""

    store: FrameStore
    records: list[VideoRecord]
    info: dict[str, dict] = field(default_factory=dict)  # video path -> {"frames", "flows", ...}
    problems: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> {video path: detail}
    fixes: dict[str, str] = field(default_factory=dict)  # kind -> how to fix it
    truncated: dict[str, str] = field(default_factory=dict)  # video path -> warning
    inspected: dict[str, tuple] = field(default_factory=dict, repr=False)  # video path -> store.inspect's answer

    @property
    def usable(self) -> list[VideoRecord]:
        return [r for r in self.records if r.path in self.info]

    @property
    def left_out(self) -> dict[str, str]:
        """video path -> why it cannot be used."""
        return {video: f"{PROBLEM_TITLES[kind]}: {detail}" for kind, group in self.problems.items()
                for video, detail in group.items()}

    def __str__(self) -> str:
        bad = len(self.records) - len(self.info)
        if not bad:
            s = f"all {len(self.records)} videos usable ({self.store.describe()})"
        else:
            s = f"{bad} of {len(self.records)} videos cannot be used ({self.store.describe()}):"
        for kind in PROBLEM_KINDS:
            group = self.problems.get(kind)
            if not group:
                continue
            s += f"\n- {PROBLEM_TITLES[kind]} ({len(group)}): {self.fixes.get(kind, '')}"
            for video, detail in list(group.items())[:LISTED_PER_KIND]:
                s += f"\n    {video}: {detail}"
            if len(group) > LISTED_PER_KIND:
                s += f"\n    ... and {len(group) - LISTED_PER_KIND} more (all in the error's .problems)"
        if self.truncated:
            s += f"\n{len(self.truncated)} video(s) decoded to fewer frames than their container promises (truncated " \
                 f"files?), used as far as they decode:"
            for video, why in list(self.truncated.items())[:LISTED_PER_KIND]:
                s += f"\n    {video}: {why}"
        return s

    def raise_for_problems(self) -> "DatasetReport":
        if self.problems:
            raise DatasetError(str(self), self.problems)
        return self


def check_records(records: Sequence[VideoRecord], store: FrameStore, new_length: int = 1,
                  check: str = "names", known: DatasetReport | None = None) -> DatasetReport:
    """Check every video of ``records`` in ``store``; returns the report, raising nothing.

    ``check``: ``names`` (every frame and flow file is there: one listing per video), ``sizes``
    (and has the size recorded when it was written), ``decode`` (and decodes: reads everything).
    A video with fewer than ``new_length`` flow fields is a problem too (``too_short``).
    ``known``: a report of an earlier check of the same store (e.g. :func:`check_dataset` over
    train and test): its videos are taken from it, not inspected again.
    """
    report = DatasetReport(store, list(records))
    short = []
    for record in report.records:
        if known is not None and record.path in known.inspected:
            status, detail = known.inspected[record.path]
        else:
            status, detail = store.inspect(record, check)
        report.inspected[record.path] = (status, detail)
        if status == "ok" and detail["flows"] < new_length:
            short.append(detail["flows"])
            status, detail = "too_short", f"{detail['flows']} flow fields < new_length={new_length}"
        if status == "ok":
            report.info[record.path] = detail
            if detail.get("truncated"):
                t = detail["truncated"]
                report.truncated[record.path] = f"decoded {t['decoded']} of the {t['container']} frames its " \
                                                f"container promises"
        else:
            report.problems.setdefault(status, {})[record.path] = detail
    report.fixes = {kind: store.fix(kind) for kind in report.problems}
    if short:
        report.fixes["too_short"] = f"use a smaller new_length (the shortest of these has {min(short)} flow fields)"
    if len(report.problems.get("missing_video", ())) == len(report.records) and isinstance(store, FusionkitCache):
        report.fixes["missing_video"] += f". None of the videos is there: {_layout_hint(store.videos_root)}"
    return report


def _layout_hint(root) -> str:
    try:
        found = find_videos(root)
    except FileNotFoundError as e:  # VideoLayoutError says what the root holds instead
        return str(e)
    return f"{root} holds {len(found)} videos in <Class>/<video> folders (e.g. {found[0]}), named unlike the split file"


def check_dataset(dataset: str, root: str | os.PathLike, cache_root: str | os.PathLike | FrameStore, split: int = 1,
                  subsets: Sequence[str] = ("train", "test"), new_length: int = 1, check: str = "sizes",
                  annotations=None, raise_problems: bool = True) -> DatasetReport:
    """Check a whole dataset before training on it: its split file(s), videos and frame/flow cache.

    Raises one :class:`DatasetError` listing every problem, grouped by kind (listed in the split
    file but absent from ``root``; extraction FAILED, and why; not extracted; damaged cache folder;
    shorter than ``new_length``), each video named and each kind with its fix. Returns the report
    (with any truncated videos) when everything is usable. ``check`` as in :func:`check_records`;
    the default ``sizes`` stats every file, ``decode`` reads them all. ``raise_problems=False``
    returns the report with its problems instead (to build the datasets from the rest: pass it to
    :func:`build_dataset` as ``checked`` with ``skip_bad=True``).
    """
    s = load_split(dataset, root, split, annotations)
    records = [r for subset in subsets for r in getattr(s, subset)]
    store = cache_root if isinstance(cache_root, FrameStore) else FusionkitCache(cache_root, root)
    report = check_records(records, store, new_length, check)
    return report.raise_for_problems() if raise_problems else report


class TwoStreamDataset(Dataset):
    """Paired RGB / flow snippets of videos whose frames and flow are in a cache written by
    ``fusionkit extract-flow`` (``<cache>/<video_id>/img_*.jpg, flow_x_*.jpg, flow_y_*.jpg``), or in
    another :class:`~fusionkit.data.stores.FrameStore` (MMAction2 rawframes, twostreamfusion's u/v).

    Args:
        records: the videos (``VideoRecord(path, label)``), e.g. ``load_split(...).train``.
        cache_root: the extract-flow output folder, or a FrameStore.
        num_segments: T, snippets per video (TSN uses 3 in training, 25 in testing).
        new_length: L, flow fields per snippet; the flow tower takes 2L channels.
        train: random snippet per segment (True) or evenly spaced centres (False).
        sampling: ``"tsn"`` (T segments over the whole video, :func:`segment_starts`) or ``"chunks"``
            (T neighbouring snippets ``stride`` frames apart, Feichtenhofer et al. §3.4-3.5,
            :func:`chunk_starts`: T = 5, tau random in [1, 10] in training, fixed in testing).
        stride, test_stride: ``"chunks"`` only: tau's range in training (or one int) and tau in testing
            (default: the middle of the range).
        transform: a paired transform; default :func:`train_transform` / :func:`eval_transform`
            at the cached frame size (no flips: pass one with ``flip=True`` where labels allow).
        flow_bound: the quantisation bound of an extract-flow cache (a FrameStore has its own).
        in_memory: keep each video's decoded frames and flow after its first read. Training reads
            every video once per epoch, and decoding its JPEGs again each time is a visible share of a
            small tower's step (benchmarks/training_throughput.py, 64x64 puzzle, batch 8: 63 ms waiting
            on the loader per batch from disk, 22 ms in memory, against ~270 ms of model); UCF-101 does not
            fit in memory (leave it False there).
        root: the video root, for messages that tell a video missing from it from one not extracted,
            and name the command that fixes them (default: the root extract-flow recorded).
        skip_bad: leave out the videos that cannot be used (warning with a summary; ``left_out``
            says why each) instead of raising :class:`DatasetError` listing them.
        check: how closely the videos are checked first: ``names`` (default: every file is there),
            ``sizes`` or ``decode`` (see :func:`check_records`). A file damaged later raises an error
            naming the video and the command that repairs it when it is read.
        checked: a report of an earlier check (:func:`check_dataset`): the videos it covers are not
            inspected again.
        warn: warn about left-out and truncated videos (a caller that prints :meth:`summary` or the
            report itself turns it off).
    """

    def __init__(self, records: Sequence[VideoRecord], cache_root: str | os.PathLike | FrameStore,
                 num_segments: int = 3, new_length: int = 5, train: bool = True, sampling: str = "tsn",
                 stride: int | Sequence[int] = (1, 10), test_stride: int | None = None,
                 transform: PairedTransform | None = None, flow_bound: float = FLOW_BOUND, in_memory: bool = False,
                 root: str | os.PathLike | None = None, skip_bad: bool = False, check: str = "names",
                 checked: DatasetReport | None = None, warn: bool = True):
        if num_segments < 1 or new_length < 1:
            raise ValueError(f"num_segments and new_length must be >= 1, got {num_segments}, {new_length}")
        if sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
        if test_stride is not None and test_stride < 1:
            raise ValueError(f"test_stride must be >= 1, got {test_stride}")
        self.sampling, self.stride, self.test_stride = sampling, _stride_range(stride), test_stride
        self.store = cache_root if isinstance(cache_root, FrameStore) else FusionkitCache(cache_root, root, flow_bound)
        self.cache_root = self.store.root
        self.num_segments, self.new_length, self.train = num_segments, new_length, train
        self.flow_bound = self.store.bound
        self.in_memory = in_memory
        self._decoded: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # index -> (all frames, all flow)
        self.report = check_records(records, self.store, new_length, check, known=checked)
        if not (skip_bad and self.report.info):
            self.report.raise_for_problems()
        self.left_out = self.report.left_out  # video path -> why it was left out (skip_bad)
        if self.left_out and warn:
            warnings.warn(f"left out {len(self.left_out)} of {len(self.report.records)} videos that cannot be used "
                          f"(skip_bad=True; see .left_out):\n{self.report}", RuntimeWarning, stacklevel=2)
        elif self.report.truncated and warn:
            warnings.warn(str(self.report), RuntimeWarning, stacklevel=2)
        self.records = self.report.usable
        self.meta = [self.report.info[r.path] for r in self.records]
        if transform is None:
            size = min(self._frame_size()) if self.meta else 224
            transform = train_transform(size, flip=False) if train else eval_transform(size)
        self.transform = transform

    def _frame_size(self) -> tuple[int, int]:
        meta = self.meta[0]
        if "height" in meta and "width" in meta:
            return meta["height"], meta["width"]
        return self.store.load_frames(self.records[0].video_id, [0]).shape[1:3]  # stores without a meta file

    def summary(self) -> str:
        """The videos used, those left out and why, and any truncated ones."""
        return f"{len(self.records)} videos; {self.report}"

    def __len__(self) -> int:
        return len(self.records)

    def snippet_starts(self, index: int) -> list[int]:
        num_starts = self.meta[index]["flows"] - self.new_length + 1
        if self.sampling == "chunks":
            return chunk_starts(num_starts, self.num_segments, self.train, self.stride, self.test_stride)
        return segment_starts(num_starts, self.num_segments, self.train)

    def _load(self, index: int, frame_idx, flow_idx) -> tuple[np.ndarray, np.ndarray]:
        video = self.records[index].video_id
        try:
            return self.store.load_frames(video, frame_idx), self.store.load_flow(video, flow_idx)
        except CacheEntryError as e:  # damaged since the check: name the video and the repair
            raise CacheEntryError(f"video {self.records[index].path}: {e}. To repair: "
                                  f"{self.store.fix('broken')}") from e

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        starts = self.snippet_starts(index)
        flow_idx = [t + k for t in starts for k in range(self.new_length)]
        if self.in_memory:
            if index not in self._decoded:
                meta = self.meta[index]
                self._decoded[index] = self._load(index, range(meta["frames"]), range(meta["flows"]))
            all_frames, all_flow = self._decoded[index]
            frames, flow = all_frames[starts], all_flow[flow_idx]
        else:
            frames, flow = self._load(index, starts, flow_idx)  # [T, H, W, 3] uint8, [T*L, H, W, 2] px
        t, h, w = len(starts), flow.shape[1], flow.shape[2]
        # [T*L, H, W, 2] -> [T, L, 2, H, W] -> [T, 2L, H, W]: channels x1, y1, x2, y2, ...
        flow_t = torch.from_numpy(flow).view(t, self.new_length, h, w, 2).permute(0, 1, 4, 2, 3).reshape(t, -1, h, w)
        rgb_t = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        rgb_t, flow_t = self.transform(rgb_t, flow_t)
        return {"rgb": rgb_t.contiguous(), "flow": flow_t.contiguous(), "label": record.label, "video_id": record.video_id}


def build_dataset(dataset: str, root: str | os.PathLike, cache_root: str | os.PathLike, subset: str = "train",
                  split: int = 1, input_size: int | None = None, ten_crop: bool = False, annotations=None,
                  **kwargs) -> TwoStreamDataset:
    """The train or test subset of ``ucf101``, ``hmdb51`` or ``puzzles:<name>`` as a TwoStreamDataset,
    with the augmentation each calls for.

    UCF-101 / HMDB-51: TSN's scale-jittered corner crops at ``input_size`` (224) with flips for
    training; short side resized to 256/224 of the crop and a centre crop (or ten crops) for testing.
    Puzzles: crops of 100% or 87.5% of the frame resized back to its size (stronger jitter would
    cut sprites out of the frame), flipped only where the puzzle's labels survive a mirror.
    ``annotations``: the folder of the split files (see :func:`~fusionkit.data.splits.load_split`).
    """
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', not {subset!r}")
    s = load_split(dataset, root, split, annotations)
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
    kwargs.setdefault("root", root)
    return TwoStreamDataset(getattr(s, subset), cache_root, train=train, **kwargs)
