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
folder is renamed into place at once, so a folder that exists was complete when written. Its
``files`` entry (name -> size in bytes) is the folder's manifest: a rerun checks it, cheaply, and
re-extracts a folder damaged since (:func:`check_cache_entry`). ``<out>/extract-flow.json`` records
the video root and the videos whose extraction failed, and why, so that a dataset missing them can
say so.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fusionkit.data.atomic import atomic_directory, atomic_write_text, remove_partial_directories
from fusionkit.data.parallel import check_not_bootstrapping, run_jobs
from fusionkit.data.video import VideoReadError, container_frame_count, read_video, truncation_warning
from fusionkit.registry import Registry

FLOW_BOUND = 20.0  # px; TSN / MMAction2 / denseflow clip flow to +-20 before quantising
JPEG_QUALITY = 95
VIDEO_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")
META_FILE = "meta.json"
CACHE_INFO_FILE = "extract-flow.json"  # in the cache's top folder: the video root, and the failed videos

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
class CacheEntryError(FileNotFoundError):
    """A cached frame or flow image is missing, truncated or does not decode; the message names it."""


class VideoLayoutError(FileNotFoundError):
    """The video root is not in the ``<Class>/<video>.<ext>`` layout; the message says what is there."""


def frame_name(kind: str, index: int) -> str:
    """File name of 0-based frame ``index``: kind is ``img``, ``flow_x`` or ``flow_y`` (1-based on disk)."""
    return f"{kind}_{index + 1:05d}.jpg"


def entry_files(frames: int, flows: int) -> list[str]:
    """The JPEG names of a cache folder holding ``frames`` RGB frames and ``flows`` flow fields."""
    return [frame_name("img", i) for i in range(frames)] + \
        [frame_name(k, i) for i in range(flows) for k in ("flow_x", "flow_y")]


def _encode_jpeg(image: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV failed to encode a JPEG")
    return buf.tobytes()


def decode_jpeg(path: str | os.PathLike, grey: bool = False) -> tuple[np.ndarray | None, str | None]:
    """Decode a JPEG file: ``(image, None)``, or ``(None, what is wrong)`` if it is missing, empty,
    truncated or does not decode.

    cv2.imread decodes a truncated JPEG without error (the lost part comes out grey; libjpeg only
    prints "Premature end of JPEG file"), so the end-of-image marker is checked first: it ends every
    complete JPEG, and cannot occur inside the compressed data (a 0xFF byte there is always
    followed by 0x00 or a restart marker).
    """
    import cv2

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, "missing"
    except OSError as e:
        return None, f"unreadable ({e.strerror or e})"
    if not data:
        return None, "empty (0 bytes)"
    if b"\xff\xd9" not in data[-16:]:  # a little slack for writers that pad after the marker
        return None, f"truncated ({len(data)} bytes, no JPEG end marker)"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    return (image, None) if image is not None else (None, "not a decodable JPEG")


def read_jpeg(path: str | os.PathLike, grey: bool = False) -> np.ndarray:
    """A JPEG as a BGR (or grey) uint8 array; :class:`CacheEntryError` naming the file and what is
    wrong with it otherwise."""
    image, problem = decode_jpeg(path, grey)
    if problem is not None:
        raise CacheEntryError(f"{'flow image' if grey else 'frame'} {path} is {problem}")
    return image


def write_cache_entry(dest: Path, frames: np.ndarray, flow: np.ndarray, meta: dict, bound: float = FLOW_BOUND,
                      replace: bool = False) -> None:
    """Write one video's RGB frames and quantised flow as a complete cache folder, atomically, with
    the manifest of its files (``meta["files"]``: name -> size). ``replace``: an existing folder is
    replaced (a repair) rather than kept."""
    import cv2

    with atomic_directory(dest, replace=replace) as tmp:
        files = {}

        def put(name: str, image: np.ndarray) -> None:
            data = _encode_jpeg(image)
            (tmp / name).write_bytes(data)
            files[name] = len(data)

        for i, frame in enumerate(frames):
            put(frame_name("img", i), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        q = quantize_flow(flow, bound)
        for i in range(len(q)):
            put(frame_name("flow_x", i), q[i, ..., 0])
            put(frame_name("flow_y", i), q[i, ..., 1])
        meta = {**meta, "frames": int(len(frames)), "flows": int(len(flow)), "height": int(frames.shape[1]),
                "width": int(frames.shape[2]), "bound": bound, "files": files}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1))


def read_cache_meta(entry: str | os.PathLike) -> dict:
    path = Path(entry) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no extracted frames/flow at {Path(entry)}: run `fusionkit extract-flow --root "
                                f"<videos> --out <cache>` first (or check --flow-root)")
    return json.loads(path.read_text())


def inspect_cache_entry(entry: str | os.PathLike, check: str = "sizes") -> tuple[dict | None, str | None]:
    """``(meta, problem)`` of one video's cache folder; ``problem`` is None when it is intact.

    ``check="sizes"``: the manifest in meta.json is checked with one ``stat`` per file, each file
    existing with its recorded size. ``"decode"``: every JPEG is also decoded (and its size in
    pixels checked). ``"names"``: only that every file is listed (one listing per folder). Folders
    written before the manifest existed (no ``files`` in meta.json) are checked by name and count:
    every frame and flow file that the meta's counts imply exists and is not empty; only
    ``"decode"`` finds a truncated file there.
    """
    if check not in ("names", "sizes", "decode"):
        raise ValueError(f"check must be 'names', 'sizes' or 'decode', not {check!r}")
    entry = Path(entry)
    try:
        meta = json.loads((entry / META_FILE).read_text())
        names = entry_files(meta["frames"], meta["flows"])
    except FileNotFoundError:
        return None, f"no {META_FILE} (not extracted)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{META_FILE} is unreadable ({type(e).__name__}: {e})"
    manifest = meta.get("files")
    listed = set(os.listdir(entry)) if check == "names" else None
    broken = []
    for name in names:
        if listed is not None:
            if name not in listed:
                broken.append(f"{name} is missing")
            continue
        try:
            size = (entry / name).stat().st_size
        except FileNotFoundError:
            broken.append(f"{name} is missing")
            continue
        if manifest is not None and manifest.get(name) != size:
            broken.append(f"{name} is {size} bytes, {manifest.get(name)} when written")
        elif size == 0:
            broken.append(f"{name} is empty")
        elif check == "decode":
            image, problem = decode_jpeg(entry / name, grey=not name.startswith("img"))
            if problem is None and image.shape[:2] != (meta.get("height"), meta.get("width")):
                problem = f"{image.shape[1]}x{image.shape[0]} pixels, not {meta.get('width')}x{meta.get('height')}"
            if problem is not None:
                broken.append(f"{name} is {problem}")
    if broken:
        more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
        return meta, f"{len(broken)} of {len(names)} files broken: {'; '.join(broken[:3])}{more}"
    return meta, None


def check_cache_entry(entry: str | os.PathLike, decode: bool = False) -> str | None:
    """What is wrong with one video's cache folder, or None if it is intact (see
    :func:`inspect_cache_entry`)."""
    return inspect_cache_entry(entry, "decode" if decode else "sizes")[1]


def load_cached_frames(entry: str | os.PathLike, indices) -> np.ndarray:
    """RGB frames at 0-based ``indices`` from a cache folder: ``[N, H, W, 3]`` uint8."""
    import cv2

    return np.stack([cv2.cvtColor(read_jpeg(Path(entry) / frame_name("img", i)), cv2.COLOR_BGR2RGB) for i in indices])


def load_cached_flow(entry: str | os.PathLike, indices, bound: float = FLOW_BOUND) -> np.ndarray:
    """Flow fields at 0-based ``indices``, dequantised to px: ``[N, H, W, 2]`` float32."""
    q = [np.stack([read_jpeg(Path(entry) / frame_name(kind, i), grey=True) for kind in ("flow_x", "flow_y")], -1)
         for i in indices]
    return dequantize_flow(np.stack(q), bound)


def read_cache_info(out: str | os.PathLike) -> dict:
    """``<out>/extract-flow.json``: ``{"root": the video root (absolute), "backend": of the last run,
    "failed": {video: why}}``; None / empty for a cache written before it existed."""
    try:
        info = json.loads((Path(out) / CACHE_INFO_FILE).read_text())
    except (OSError, ValueError):
        info = {}
    return {"root": info.get("root"), "backend": info.get("backend"), "failed": dict(info.get("failed") or {})}


def _write_cache_info(out: Path, root: str, backend: str, failed: dict[str, str]) -> None:
    text = json.dumps({"root": root, "backend": backend, "failed": dict(sorted(failed.items()))}, indent=1)
    path = out / CACHE_INFO_FILE
    if not path.is_file() or path.read_text() != text:  # unchanged: leave the file (and its mtime) alone
        atomic_write_text(path, text)


def find_videos(root: str | os.PathLike) -> list[str]:
    """Relative paths ``<Class>/<video>.<ext>`` of the videos under ``root`` (UCF-101 / HMDB-51 layout).

    Raises :class:`VideoLayoutError` saying which layout was expected and what was found when
    there are none (videos directly in ``root``, one level too deep, only frames, nothing).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"video root {root} is not a folder")
    found = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*") if _is_video(p))
    if not found:
        example = root / "ApplyEyeMakeup" / "v_ApplyEyeMakeup_g01_c01.avi"
        raise VideoLayoutError(f"no videos in {root} in the expected layout <root>/<Class>/<video>.avi (UCF-101 and "
                               f"HMDB-51: one folder per class, e.g. {example}); {_describe_wrong_layout(root)}")
    return found


def _is_video(p: Path) -> bool:
    return p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith(".")


def _describe_wrong_layout(root: Path, limit: int = 100_000) -> str:
    """What ``root`` holds instead of class folders of videos, and what to do about it."""
    direct = sorted(p.name for p in root.iterdir() if _is_video(p))
    if direct:
        return (f"found {len(direct)} video file(s) directly in {root} (e.g. {direct[0]}): move each into a folder "
                f"named after its class, as the split files list them (<Class>/<video>)")
    for pattern in ("*/*/*", "*/*/*/*"):  # one or two levels too deep, e.g. root/UCF101/UCF-101/<Class>/...
        deeper = sorted(p for _, p in zip(range(limit), root.glob(pattern)) if _is_video(p))
        if deeper:
            top = deeper[0].parent.parent
            return (f"found {len(deeper)} video file(s) deeper down (e.g. {deeper[0].relative_to(root)}): "
                    f"pass the folder holding the class folders, {top}, as the root")
    jpegs = sum(1 for _, p in zip(range(limit), root.glob("*/*/*.jpg")))
    if jpegs:
        return (f"found no video files but {jpegs} .jpg files in <root>/*/*/: this looks like extracted frames (a "
                f"frame/flow cache), not videos; pass the folder that holds the videos")
    return f"found no video files ({', '.join(VIDEO_EXTENSIONS)}) at all"


def _extract_one(job: tuple) -> tuple[str, str | None, str | None]:
    """(video, error or None, truncation warning or None)."""
    root, out, rel, backend, bound, replace = job
    path = Path(root) / rel
    try:
        frames = read_video(path)
        if len(frames) < 2:
            raise VideoReadError(path, f"only {len(frames)} frame(s); flow needs at least 2")
        meta = {"video": rel, "backend": backend}
        promised = container_frame_count(path)
        warning = truncation_warning(path, len(frames), promised)
        if warning:
            meta["truncated"] = {"decoded": int(len(frames)), "container": promised}
        flow = compute_flow(frames, backend)
        write_cache_entry(Path(out) / os.path.splitext(rel)[0], frames, flow, meta, bound, replace=replace)
        return rel, None, warning
    except (VideoReadError, RuntimeError, OSError, ValueError) as e:
        return rel, str(e), None


@dataclass
class ExtractionReport:
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    repaired: dict[str, str] = field(default_factory=dict)  # video -> what was broken in its folder
    truncated: dict[str, str] = field(default_factory=dict)  # video -> warning (extracted from what decodes)

    def __str__(self) -> str:
        s = f"{len(self.extracted)} extracted, {len(self.skipped)} already done, {len(self.failed)} failed"
        s += f", {len(self.repaired)} repaired" if self.repaired else ""
        s += f", {len(self.truncated)} truncated" if self.truncated else ""
        for label, items in (("FAILED", self.failed), ("REPAIRED", self.repaired), ("TRUNCATED", self.truncated)):
            for rel, why in list(items.items())[:10]:
                s += f"\n  {label} {rel}: {why}"
            if len(items) > 10:
                s += f"\n  ... and {len(items) - 10} more {label.lower()}"
        return s


def extract_flow(root: str | os.PathLike, out: str | os.PathLike, backend: str = "dis", workers: int = 1,
                 videos: list[str] | None = None, bound: float = FLOW_BOUND, progress: bool = True,
                 verify: bool = False) -> ExtractionReport:
    """Decode every video under ``root`` and write its RGB frames and quantised flow under ``out``.

    Resumable: videos whose cache folder is complete are skipped, and folders left half-written
    by a killed run are removed first, so rerunning completes the cache. "Complete" is checked, not
    assumed: a folder whose files no longer match its manifest (missing, or of another size: a disk
    error, a stray ``rm``, a half-finished copy) is extracted again and listed in the report's
    ``repaired``. ``verify=True`` also decodes every JPEG of the folders it would skip (about as long
    as reading the whole cache once). Folders written before manifests existed are checked by
    their file names, or decoded with ``verify=True``.

    Parallel over ``workers`` processes. A video that cannot be read does not stop the others: it is
    listed in the report's ``failed`` (the CLI then exits non-zero) and in ``<out>/extract-flow.json``.
    A video that decodes to fewer frames than its container promises is extracted from what decodes,
    with a RuntimeWarning, an entry in the report's ``truncated`` and ``truncated`` in its meta.json.
    """
    if workers > 1:
        check_not_bootstrapping("extract_flow")
    get_flow_backend(backend)  # fail fast on an unknown or unavailable backend
    videos = find_videos(root) if videos is None else videos
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_partial_directories(out)
    root_abs = str(Path(root).resolve())
    old_failed = read_cache_info(out)["failed"]
    _write_cache_info(out, root_abs, backend, old_failed)  # the root now: a killed run has it too
    report = ExtractionReport()
    todo, broken = [], {}
    for rel in videos:
        entry = out / os.path.splitext(rel)[0]
        if (entry / META_FILE).is_file():
            meta, problem = inspect_cache_entry(entry, "decode" if verify else "sizes")
            if problem is None:
                report.skipped.append(rel)
                cut = meta.get("truncated")
                if cut:
                    report.truncated[rel] = truncation_warning(Path(root) / rel, cut["decoded"], cut["container"])
                continue
            broken[rel] = problem
        todo.append((str(root), str(out), rel, backend, bound, rel in broken))
    for rel, error, warning in run_jobs(_extract_one, todo, workers=workers, desc=f"flow ({backend})",
                                        progress=progress, name="extract_flow"):
        if error is not None:
            report.failed[rel] = error + (f" (and its cache folder is broken: {broken[rel]})" if rel in broken else "")
        elif rel in broken:
            report.repaired[rel] = broken[rel]
        else:
            report.extracted.append(rel)
        if warning:
            report.truncated[rel] = warning
    if report.truncated:
        first = next(iter(report.truncated.values()))
        warnings.warn(f"{len(report.truncated)} video(s) decode to fewer frames than their container promises "
                      f"(listed in the report's 'truncated'); first: {first}", RuntimeWarning, stacklevel=2)
    listed = set(videos)  # failures of videos not tried in this run stay recorded
    still_failed = {v: why for v, why in old_failed.items() if v not in listed}
    _write_cache_info(out, root_abs, backend, {**still_failed, **report.failed})
    return report
