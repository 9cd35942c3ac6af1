"""Reading and writing video files.

decord first (fast random access), PyAV when decord is missing or fails on a file: decord has no
wheels for some platforms and chokes on some encodings. Both return the same RGB frames (checked
by tests/test_video.py on the puzzles and on real footage).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

BACKENDS = ("decord", "pyav")


class VideoReadError(RuntimeError):
    """A video could not be read; the message names the file and why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read video {self.path}: {reason}")


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def _read_decord(path: Path, indices: Sequence[int] | None) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    n = len(reader)
    if n == 0:
        raise ValueError("decord found no frames")
    idx = list(range(n)) if indices is None else _check_indices(indices, n)
    return reader.get_batch(idx).asnumpy()


def _read_pyav(path: Path, indices: Sequence[int] | None) -> np.ndarray:
    import av

    # stop after the last frame asked for (a negative index: decode all, then report it out of range)
    last = None if indices is None or min(indices, default=0) < 0 else max(indices, default=-1)
    frames = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("the file has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        # Decode sequentially (exact frame order, as decord gives it, whatever the container's index
        # says), keeping only the frames asked for and stopping after the last of them.
        wanted = None if indices is None else set(indices)
        for i, frame in enumerate(container.decode(stream)):
            if last is not None and i > last:
                break
            frames.append(frame.to_ndarray(format="rgb24") if wanted is None or i in wanted else None)
    if not frames:
        raise ValueError("PyAV decoded no frames")
    if indices is None:
        return np.stack(frames)
    idx = _check_indices(indices, len(frames))
    return np.stack([frames[i] for i in idx])


def _check_indices(indices: Sequence[int], n: int) -> list[int]:
    idx = [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < n]
    if bad:
        raise IndexError(f"frame indices {bad[:5]} out of range for a video of {n} frames")
    return idx


_READERS = {"decord": _read_decord, "pyav": _read_pyav}


def read_video(path: str | os.PathLike, indices: Sequence[int] | None = None, backend: str = "auto") -> np.ndarray:
    """Frames of a video as ``[N, H, W, 3]`` uint8 RGB (all frames, or those at ``indices``).

    ``backend``: ``"auto"`` (decord, falling back to PyAV with a warning when decord is missing
    or fails on this file), ``"decord"`` or ``"pyav"``. Raises :class:`VideoReadError` naming the
    file and the reason when the file is missing, empty, corrupt or has no video stream.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoReadError(path, "no such file" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "the file is empty (0 bytes)")
    if backend not in ("auto", *BACKENDS):
        raise ValueError(f"unknown video backend {backend!r}; choose 'auto', 'decord' or 'pyav'")
    order = [backend] if backend != "auto" else (["decord", "pyav"] if decord_available() else ["pyav"])
    errors = []
    for name in order:
        try:
            frames = _READERS[name](path, indices)
        except IndexError:
            raise
        except ImportError as e:
            errors.append(f"{name} is not installed ({e})")
            continue
        except Exception as e:  # decord raises DECORDError, PyAV av.error.* / ValueError: all mean "unreadable"
            errors.append(f"{name}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
            continue
        if name != order[0]:
            warnings.warn(f"{path}: {errors[-1]}; read with {name} instead", RuntimeWarning, stacklevel=2)
        return frames
    raise VideoReadError(path, "; ".join(errors) + ". Is it a complete, valid video file? Re-download or re-encode it "
                         "(e.g. `ffmpeg -i in.avi -c:v mpeg4 -q:v 2 out.avi`).")


def count_frames(path: str | os.PathLike, backend: str = "auto") -> int:
    """Number of decodable frames."""
    return len(read_video(path, backend=backend))


def container_frame_count(path: str | os.PathLike) -> int | None:
    """The number of frames the file's header promises (AVI's frame count, MP4's sample count), or
    None where the container does not say (often MKV / WebM) or PyAV cannot open it.

    A file cut short (an interrupted download or copy) keeps its header, so it decodes to fewer
    frames than this: decord and PyAV both stop quietly at the cut (tests/test_data_hardening_*).
    """
    try:
        import av

        with av.open(str(path)) as container:
            frames = container.streams.video[0].frames if container.streams.video else 0
    except Exception:  # no PyAV, or a file it cannot open: read_video reports those
        return None
    return int(frames) or None


def truncation_warning(path: str | os.PathLike, decoded: int, promised: int | None) -> str | None:
    """A message when a video decoded to fewer frames than its container promises, else None."""
    if promised is None or decoded >= promised:
        return None
    return (f"{path}: decoded {decoded} of the {promised} frames its container promises; the file looks truncated "
            f"(an interrupted download or copy?). Re-download it, or re-encode what is left "
            f"(`ffmpeg -i in.avi -c:v mpeg4 -q:v 2 out.avi`) to silence this.")


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: int = 25, codec: str = "mpeg4") -> None:
    """Write ``[N, H, W, 3]`` uint8 RGB frames with PyAV (default MPEG-4 Part 2 in AVI, like UCF-101's
    XviD files), at near-lossless quality, atomically (temporary file, then rename)."""
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame height and width must be even for yuv420p video, got {frames.shape[1:3]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(codec, rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = 20_000_000  # far above need: the encoder runs at its finest quantiser
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
