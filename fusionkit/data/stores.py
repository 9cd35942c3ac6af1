"""Where a dataset's RGB frames and flow images are read from: fusionkit's own cache, or flow
brought from elsewhere.

- :class:`FusionkitCache`: ``fusionkit extract-flow``'s output (``<cache>/<video_id>/img_00001.jpg``,
  ``flow_x_00001.jpg``, ``flow_y_00001.jpg``, ``meta.json``).
- :class:`RawframeStore`: MMAction2's rawframes, as its ``build_rawframes.py`` (denseflow) and
  TSN's dense_flow write them and its ``RawframeDataset`` reads them: ``<root>/<video>/img_00001.jpg``
  and ``flow_x_00001.jpg`` / ``flow_y_00001.jpg`` (``flow_template="flow_{}_{:05d}.jpg"``, the default)
  or ``x_00001.jpg`` / ``y_00001.jpg`` (``flow_template="{}_{:05d}.jpg"``, MMAction2's flow configs),
  1-based (MMAction2's ``start_index``); videos and labels from MMAction2's annotation lists
  (:func:`load_rawframe_list`).
- :class:`UVFlowStore`: the separate-tree layout of feichtenhofer/twostreamfusion's UCF-101 / HMDB-51
  downloads and of its gpu_flow tool: ``<flow_root>/u/<video>/frame000001.jpg`` and
  ``<flow_root>/v/<video>/frame000001.jpg`` (flow from frame 1 to frame 2), the RGB frames in another
  tree, ``<rgb_root>/<video>/frame000001.jpg`` (their ``jpegs_256``). ``<video>`` is the bare video
  name there (``v_ApplyEyeMakeup_g01_c01``); a ``<Class>/<video>`` folder is used when present.

Quantisation: each maps [-bound, bound] px linearly onto 0..255. MMAction2's tools (``denseflow
-b=20``), TSN's dense_flow (``-b 20``) and gpu_flow (``clipFlow``: [-20, 20]) all use 20, the default.
twostreamfusion's "scaled" flow variant instead stores each frame's own min/max in
``u/<video>.bin``, which one fixed bound cannot read (not supported). Pass ``bound`` for flow written
with another.

Every store is checked the same way (:meth:`FrameStore.inspect`): a video is ``ok`` with its counts,
or one of :data:`PROBLEM_KINDS` with what is wrong, and :meth:`FrameStore.fix` says how to repair each kind.
"""
from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionkit.data.flow import (FLOW_BOUND, META_FILE, decode_jpeg, dequantize_flow, frame_name, inspect_cache_entry,
                                 read_cache_info, read_jpeg)
from fusionkit.data.splits import SplitError, VideoRecord

# What can be wrong with one video, in the order a report lists them (the dataset adds too_short).
PROBLEM_KINDS = ("missing_video", "failed", "not_extracted", "broken", "too_short")
CHECKS = ("names", "sizes", "decode")  # how closely inspect() looks, cheapest first


class FrameStore:
    """Base class: maps (video, kind, 0-based index) to a JPEG file; kind is img, flow_x or flow_y."""

    bound: float = FLOW_BOUND
    root: Path

    def path(self, video_id: str, kind: str, index: int) -> Path:
        raise NotImplementedError

    def inspect(self, record: VideoRecord, check: str = "names") -> tuple[str, dict | str]:
        """``("ok", {"frames": n, "flows": m, ...})``, or ``(kind, what is wrong)`` with a kind of
        :data:`PROBLEM_KINDS`. ``check``: ``names`` (every file exists; one listing per folder),
        ``sizes`` (and is not empty / has its recorded size), ``decode`` (and decodes)."""
        raise NotImplementedError

    def fix(self, kind: str) -> str:
        """How to repair the videos of a problem kind."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__} at {self.root}"

    def load_frames(self, video_id: str, indices) -> np.ndarray:
        """RGB frames at 0-based ``indices``: ``[N, H, W, 3]`` uint8."""
        import cv2

        return np.stack([cv2.cvtColor(read_jpeg(self.path(video_id, "img", i)), cv2.COLOR_BGR2RGB) for i in indices])

    def load_flow(self, video_id: str, indices) -> np.ndarray:
        """Flow fields at 0-based ``indices``, dequantised with this store's bound: ``[N, H, W, 2]`` px."""
        q = [np.stack([read_jpeg(self.path(video_id, k, i), grey=True) for k in ("flow_x", "flow_y")], -1)
             for i in indices]
        return dequantize_flow(np.stack(q), self.bound)

    def _check_files(self, video_id: str, frames: int, flows: int, check: str) -> list[str]:
        """With check sizes / decode: what is wrong with each file of a video (listing already done)."""
        if check == "names":
            return []
        files = [("img", i) for i in range(frames)] + [(k, i) for i in range(flows) for k in ("flow_x", "flow_y")]
        broken = []
        for kind, i in files:
            p = self.path(video_id, kind, i)
            if check == "decode":
                problem = decode_jpeg(p, grey=kind != "img")[1]
            else:
                problem = None if p.stat().st_size else "empty (0 bytes)"
            if problem:
                broken.append(f"{p} is {problem}")
        return broken


def _check_level(check: str) -> str:
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, not {check!r}")
    return check


class FusionkitCache(FrameStore):
    """``fusionkit extract-flow``'s output folder. ``videos_root``: the videos it was extracted from,
    for messages and to tell a video missing from the root from one not extracted yet (default: the
    root extract-flow recorded in the cache)."""

    def __init__(self, root: str | os.PathLike, videos_root: str | os.PathLike | None = None,
                 bound: float = FLOW_BOUND):
        self.root = Path(root)
        self.bound = bound
        info = read_cache_info(self.root)
        self.videos_root = Path(videos_root) if videos_root is not None else (
            Path(info["root"]) if info["root"] else None)
        self.failed = info["failed"]
        self.backend = info.get("backend")

    def path(self, video_id: str, kind: str, index: int) -> Path:
        return self.root / video_id / frame_name(kind, index)

    def command(self) -> str:
        """The extract-flow command that completes or repairs this cache."""
        root = self.videos_root if self.videos_root is not None else "<videos>"
        backend = f" --backend {self.backend}" if self.backend else ""
        return f"fusionkit extract-flow --root {root} --out {self.root}{backend}"

    def inspect(self, record: VideoRecord, check: str = "names") -> tuple[str, dict | str]:
        entry = self.root / record.video_id
        if not (entry / META_FILE).is_file():
            if record.path in self.failed:
                return "failed", self.failed[record.path]
            if self.videos_root is not None and not (self.videos_root / record.path).is_file():
                return "missing_video", f"not at {self.videos_root / record.path}"
            return "not_extracted", f"no {entry / META_FILE}"
        meta, problem = inspect_cache_entry(entry, _check_level(check))
        if problem is not None and record.path in self.failed:  # a repair was tried, and failed
            return "failed", self.failed[record.path]
        if problem is not None:
            return "broken", f"{entry}: {problem}"
        return "ok", {k: v for k, v in meta.items() if k != "files"}  # the manifest is big, and checked

    def fix(self, kind: str) -> str:
        cmd = f"`{self.command()}`"
        return {
            "missing_video": f"put each video in {self.videos_root} (download it again) or remove its line from the "
                             f"split file",
            "failed": f"extract-flow reported them FAILED (why, below): fix or replace each video, then rerun {cmd}",
            "not_extracted": f"not extracted yet: run {cmd}",
            "broken": f"their cache folders are damaged: {cmd} re-extracts them (and reports them as repaired)",
        }.get(kind, "")


def _template_regex(template: str, args: tuple) -> re.Pattern:
    """A regex for the names ``template.format(*args, index)`` makes: the first fields take ``args``,
    the last one digits ('flow_{}_{:05d}.jpg' with ('x',) -> 'flow_x_(\\d+)\\.jpg')."""
    parts, fields = [], 0
    for literal, field_name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field_name is not None:
            parts.append(re.escape(str(args[fields])) if fields < len(args) else r"\d+")
            fields += 1
    return re.compile("".join(parts))


class _TemplateStore(FrameStore):
    """A store whose files are ``folder / template.format(*args, index + start_index)`` per kind."""

    start_index = 1
    tool = "the tool that wrote them"

    def _locations(self, video_id: str) -> dict[str, tuple[Path, str, tuple]]:
        """kind -> (folder, file name template, leading template arguments)."""
        raise NotImplementedError

    def path(self, video_id: str, kind: str, index: int) -> Path:
        folder, template, args = self._locations(video_id)[kind]
        return folder / template.format(*args, index + self.start_index)

    def inspect(self, record: VideoRecord, check: str = "names") -> tuple[str, dict | str]:
        _check_level(check)
        locations = self._locations(record.video_id)
        absent = [folder for folder, _, _ in locations.values() if not folder.is_dir()]
        if absent:
            return "not_extracted", f"no folder {absent[0]}"
        counts, problems = {}, []
        for kind, (folder, template, args) in locations.items():
            names = set(os.listdir(folder))
            n = 0
            while template.format(*args, n + self.start_index) in names:
                n += 1
            pattern = _template_regex(template, args)
            listed = sum(1 for name in names if pattern.fullmatch(name))
            if listed > n:  # numbered files beyond a gap
                problems.append(f"{folder / template.format(*args, n + self.start_index)} is missing "
                                f"({listed - n} numbered after it)")
            counts[kind] = n
        flows = min(counts["flow_x"], counts["flow_y"])
        if counts["flow_x"] != counts["flow_y"]:
            problems.append(f"{counts['flow_x']} x but {counts['flow_y']} y flow images")
        if not flows:
            folder = locations["flow_x"][0]
            problems.append(f"no flow images named like {self.path(record.video_id, 'flow_x', 0).name} in {folder} "
                            f"(it holds e.g. {', '.join(sorted(os.listdir(folder))[:3]) or 'nothing'}; "
                            f"see the file name template)")
        if counts["img"] < flows:
            problems.append(f"{counts['img']} RGB frames for {flows} flow fields (each flow field needs its frame)")
        total = getattr(record, "total_frames", None)
        if total and counts["img"] < total:
            problems.append(f"the annotation list says {total} frames, {counts['img']} found")
        if not problems:
            problems = self._check_files(record.video_id, counts["img"], flows, check)
        if problems:
            more = f"; and {len(problems) - 3} more" if len(problems) > 3 else ""
            return "broken", "; ".join(problems[:3]) + more
        return "ok", {"frames": counts["img"], "flows": flows}

    def fix(self, kind: str) -> str:
        own = "or extract fusionkit's own cache from the videos: `fusionkit extract-flow --root <videos> --out <cache>`"
        return {
            "not_extracted": f"no frames/flow for these in {self.describe()}: check that the video names match the "
                             f"folders (or {own})",
            "broken": f"re-extract these videos with {self.tool}, or download them again; {own}",
        }.get(kind, "")


class RawframeStore(_TemplateStore):
    """MMAction2 / dense_flow rawframes: ``<root>/<video>/img_00001.jpg``, ``flow_x_00001.jpg``,
    ``flow_y_00001.jpg``. ``rgb_template`` / ``flow_template`` are MMAction2's ``filename_tmpl``s
    (the flow one takes ``x`` / ``y``, then the frame number); ``start_index``: the first frame's number."""

    tool = "MMAction2's tools/data/build_rawframes.py (denseflow) or TSN's dense_flow"

    def __init__(self, root: str | os.PathLike, rgb_template: str = "img_{:05d}.jpg",
                 flow_template: str = "flow_{}_{:05d}.jpg", start_index: int = 1, bound: float = FLOW_BOUND):
        self.root, self.rgb_template, self.flow_template = Path(root), rgb_template, flow_template
        self.start_index, self.bound = start_index, bound

    def _locations(self, video_id: str) -> dict[str, tuple[Path, str, tuple]]:
        folder = self.root / video_id
        return {"img": (folder, self.rgb_template, ()), "flow_x": (folder, self.flow_template, ("x",)),
                "flow_y": (folder, self.flow_template, ("y",))}


class UVFlowStore(_TemplateStore):
    """twostreamfusion's separate trees: ``<flow_root>/u/<video>/frame000001.jpg``,
    ``<flow_root>/v/<video>/...`` and ``<rgb_root>/<video>/frame000001.jpg``."""

    tool = "feichtenhofer/gpu_flow (twostreamfusion's flow tool)"

    def __init__(self, flow_root: str | os.PathLike, rgb_root: str | os.PathLike, template: str = "frame{:06d}.jpg",
                 start_index: int = 1, bound: float = FLOW_BOUND):
        self.root, self.rgb_root, self.template = Path(flow_root), Path(rgb_root), template
        self.start_index, self.bound = start_index, bound
        self._folders: dict[str, tuple[Path, Path, Path]] = {}  # video -> (rgb, u, v), looked up once

    def describe(self) -> str:
        return f"UVFlowStore at {self.root} (u/, v/) with RGB frames in {self.rgb_root}"

    def _locations(self, video_id: str) -> dict[str, tuple[Path, str, tuple]]:
        if video_id not in self._folders:
            # their downloads name folders by the bare video name; gpu_flow keeps <Class>/ if the videos had it
            name = video_id if (self.root / "u" / video_id).is_dir() else os.path.basename(video_id)
            rgb = video_id if (self.rgb_root / video_id).is_dir() else os.path.basename(video_id)
            self._folders[video_id] = (self.rgb_root / rgb, self.root / "u" / name, self.root / "v" / name)
        rgb, u, v = self._folders[video_id]
        return {"img": (rgb, self.template, ()), "flow_x": (u, self.template, ()), "flow_y": (v, self.template, ())}


@dataclass(frozen=True)
class RawframeRecord(VideoRecord):
    """A line of an MMAction2 annotation list: frame folder, total frames, label."""

    total_frames: int = 0

    @property
    def video_id(self) -> str:
        return self.path  # a folder, not a file: no extension to strip


def load_rawframe_list(path: str | os.PathLike) -> list[RawframeRecord]:
    """MMAction2's rawframe annotation list (``ucf101_train_split_1_rawframes.txt``): lines
    ``<frame folder> <total frames> <label>``, labels 0-based, as ``tools/data/build_file_list.py``
    writes them and ``RawframeDataset`` reads them (total frames: the RGB frames)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MMAction2 annotation list not found: {path}")
    records = []
    for no, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].lstrip("-").isdigit():
            raise SplitError(f"{path}:{no}: expected '<frame folder> <total frames> <label>', got {line.strip()!r}"
                             + (" (a multi-label or start/end-frame list is not supported)" if len(parts) > 3 else ""))
        records.append(RawframeRecord(parts[0].replace("\\", "/"), label=int(parts[2]), total_frames=int(parts[1])))
    return records
