"""Optical flow: estimators, quantised storage, and the resumable, atomic extraction of a dataset.

Backends (``FLOW_BACKENDS``, by name): ``farneback`` and ``dis`` from OpenCV's core, ``tvl1`` from
opencv-contrib (``cv2.optflow``), and ``tvl1-torch``, the same TV-L1 in PyTorch
(:mod:`fusionkit.data.tvl1_torch`; CUDA when available, else the CPU; $FUSIONKIT_TVL1_DEVICE
chooses). Each maps two grey frames to forward flow ``[H, W, 2]`` (dx, dy) in pixels. A backend
whose function also has a ``batch(prev_stack, next_stack) -> [N, H, W, 2]`` attribute is given all
pairs of a video in one call by :func:`compute_flow`: that is how ``tvl1-torch`` batches.

Storage follows the two-stream papers and MMAction2's rawframes: per video a folder
``<out>/<Class>/<video>/`` with ``img_00001.jpg`` (RGB frame 1), ``flow_x_00001.jpg`` and
``flow_y_00001.jpg`` (flow from frame 1 to frame 2), 1-based; displacements clipped to +-20 px and
mapped linearly to 0..255 (:func:`quantize_flow`). ``meta.json`` is written last, and the whole
folder is renamed into place at once, so a folder that exists is complete.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fusionkit.data.atomic import atomic_directory, remove_partial_directories
from fusionkit.data.parallel import run_jobs
from fusionkit.data.video import VideoReadError, read_video
from fusionkit.registry import Registry

FLOW_BOUND = 20.0  # px; TSN / MMAction2 / denseflow clip flow to +-20 before quantising
JPEG_QUALITY = 95
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")
META_FILE = "meta.json"

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
# name -> factory returning ``fn(prev_grey, next_grey) -> flow [H, W, 2] float32``, optionally with
# ``fn.batch(prev_greys, next_greys) -> [N, H, W, 2]`` for all pairs at once
FLOW_BACKENDS = Registry("flow backend")
register_flow_backend = FLOW_BACKENDS.register


def get_flow_backend(name: str) -> FlowFn:
    return FLOW_BACKENDS.lookup(name)()


@register_flow_backend("farneback")
def _farneback() -> FlowFn:
    import cv2

    # The parameters of OpenCV's own sample (samples/python/opt_flow.py).
    return lambda prev, nxt: cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)


@register_flow_backend("dis")
def _dis() -> FlowFn:
    import cv2

    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return lambda prev, nxt: dis.calc(prev, nxt, None)


@register_flow_backend("tvl1")
def _tvl1() -> FlowFn:
    import cv2

    if not hasattr(cv2, "optflow"):
        raise RuntimeError(
            "the 'tvl1' flow backend needs OpenCV's contrib modules (cv2.optflow), which this OpenCV lacks. "
            "Install them in place of the core package: `pip uninstall -y opencv-python-headless && "
            "pip install opencv-contrib-python-headless`; or use --backend dis / farneback.")
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    return lambda prev, nxt: tvl1.calc(prev, nxt, None)


@register_flow_backend("tvl1-torch")
def _tvl1_torch() -> FlowFn:
    from fusionkit.data.tvl1_torch import default_device, tvl1_flow

    device = default_device()

    def fn(prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        return tvl1_flow(prev, nxt, device=device)

    fn.batch = fn  # tvl1_flow takes stacks [N, H, W] as well as single frames
    return fn


def to_grey(frames: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] uint8 RGB -> [N, H, W] uint8 grey (BT.601 luma, as cv2.COLOR_RGB2GRAY)."""
    import cv2

    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])


def compute_flow(frames: np.ndarray, backend: str | FlowFn = "dis") -> np.ndarray:
    """Forward flow between consecutive RGB frames: ``[N, H, W, 3]`` -> ``[N-1, H, W, 2]`` float32."""
    fn = get_flow_backend(backend) if isinstance(backend, str) else backend
    grey = to_grey(frames)
    if hasattr(fn, "batch"):  # the backend takes all pairs at once
        return np.asarray(fn.batch(grey[:-1], grey[1:]), np.float32)
    return np.stack([fn(grey[i], grey[i + 1]) for i in range(len(grey) - 1)]).astype(np.float32)


def quantize_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Flow in px -> uint8, clipping to +-bound and mapping [-bound, bound] linearly onto [0, 255]."""
    return np.round((np.clip(flow, -bound, bound) + bound) * (255.0 / (2 * bound))).astype(np.uint8)


def dequantize_flow(q: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
    """Inverse of :func:`quantize_flow` (up to the 40/255 px step): uint8 -> float32 px."""
    return (q.astype(np.float32) * (2 * bound / 255.0) - bound).astype(np.float32)


def endpoint_error(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean end-point error ||estimate - truth||_2 over pixels (those where ``mask`` is true)."""
    err = np.linalg.norm(np.asarray(estimate, np.float64) - truth, axis=-1)
    if mask is not None:
        if not mask.any():
            return float("nan")
        err = err[mask]
    return float(err.mean())


# --- the cache -------------------------------------------------------------------------------
def frame_name(kind: str, index: int) -> str:
    """File name of 0-based frame ``index``: kind is ``img``, ``flow_x`` or ``flow_y`` (1-based on disk)."""
    return f"{kind}_{index + 1:05d}.jpg"


def _encode_jpeg(image: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def write_cache_entry(dest: Path, frames: np.ndarray, flow: np.ndarray, meta: dict, bound: float = FLOW_BOUND) -> None:
    """Write one video's RGB frames and quantised flow as a complete cache folder, atomically."""
    import cv2

    with atomic_directory(dest) as tmp:
        for i, frame in enumerate(frames):
            (tmp / frame_name("img", i)).write_bytes(_encode_jpeg(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)))
        q = quantize_flow(flow, bound)
        for i in range(len(q)):
            (tmp / frame_name("flow_x", i)).write_bytes(_encode_jpeg(q[i, ..., 0]))
            (tmp / frame_name("flow_y", i)).write_bytes(_encode_jpeg(q[i, ..., 1]))
        meta = {**meta, "frames": int(len(frames)), "flows": int(len(flow)), "height": int(frames.shape[1]),
                "width": int(frames.shape[2]), "bound": bound}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))


def read_cache_meta(entry: str | os.PathLike) -> dict:
    path = Path(entry) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no extracted frames/flow at {Path(entry)}: run `fusionkit extract-flow --root "
                                f"<videos> --out <cache>` first (or check --flow-root)")
    return json.loads(path.read_text())


def load_cached_frames(entry: str | os.PathLike, indices) -> np.ndarray:
    """RGB frames at 0-based ``indices`` from a cache folder: ``[N, H, W, 3]`` uint8."""
    import cv2

    out = []
    for i in indices:
        img = cv2.imread(str(Path(entry) / frame_name("img", i)), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"missing or unreadable frame {Path(entry) / frame_name('img', i)}")
        out.append(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    return np.stack(out)


def load_cached_flow(entry: str | os.PathLike, indices, bound: float = FLOW_BOUND) -> np.ndarray:
    """Flow fields at 0-based ``indices``, dequantised to px: ``[N, H, W, 2]`` float32."""
    import cv2

    out = []
    for i in indices:
        xy = []
        for kind in ("flow_x", "flow_y"):
            path = Path(entry) / frame_name(kind, i)
            q = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
            if q is None:
                raise FileNotFoundError(f"missing or unreadable flow image {path}")
            xy.append(q)
        out.append(np.stack(xy, axis=-1))
    return dequantize_flow(np.stack(out), bound)


def find_videos(root: str | os.PathLike) -> list[str]:
    """Relative paths ``<Class>/<video>.<ext>`` of the videos under ``root`` (UCF-101 / HMDB-51 layout)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video root {root} is not a folder")
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*")
                  if p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."))


def _extract_one(job: tuple) -> tuple[str, str | None]:
    root, out, rel, backend, bound = job
    try:
        frames = read_video(Path(root) / rel)
        if len(frames) < 2:
            raise VideoReadError(Path(root) / rel, f"only {len(frames)} frame(s); flow needs at least 2")
        flow = compute_flow(frames, backend)
        write_cache_entry(Path(out) / os.path.splitext(rel)[0], frames, flow, {"video": rel, "backend": backend}, bound)
        return rel, None
    except (VideoReadError, RuntimeError, OSError, ValueError) as e:
        return rel, str(e)


@dataclass
class ExtractionReport:
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        s = f"{len(self.extracted)} extracted, {len(self.skipped)} already done, {len(self.failed)} failed"
        for rel, why in list(self.failed.items())[:10]:
            s += f"\n  FAILED {rel}: {why}"
        return s


def extract_flow(root: str | os.PathLike, out: str | os.PathLike, backend: str = "dis", workers: int = 1,
                 videos: list[str] | None = None, bound: float = FLOW_BOUND, progress: bool = True) -> ExtractionReport:
    """Decode every video under ``root`` and write its RGB frames and quantised flow under ``out``.

    Resumable: videos whose cache folder is complete are skipped, and folders left half-written
    by a killed run are removed first, so rerunning completes the cache. Parallel over ``workers``
    processes. A video that cannot be read does not stop the others: it is listed in the report's
    ``failed`` (the CLI then exits non-zero).
    """
    get_flow_backend(backend)  # fail fast on an unknown or unavailable backend
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_partial_directories(out)
    videos = find_videos(root) if videos is None else videos
    report = ExtractionReport()
    todo = []
    for rel in videos:
        if (out / os.path.splitext(rel)[0] / META_FILE).is_file():
            report.skipped.append(rel)
        else:
            todo.append((str(root), str(out), rel, backend, bound))
    for rel, error in run_jobs(_extract_one, todo, workers=workers, desc=f"flow ({backend})", progress=progress):
        if error is None:
            report.extracted.append(rel)
        else:
            report.failed[rel] = error
    return report
