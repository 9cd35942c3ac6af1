"""Two-stream puzzles: synthetic videos whose labels are designed to need a particular kind of fusion.

Every video has a static, smooth, low-contrast random-texture background (shared by the clips of
one group, as a UCF-101 group shares its actors and scene), one or two flat-coloured sprites,
small per-frame noise, random size, position and speed, and exact ground-truth optical flow from
the renderer. Where the label depends on the direction of motion, the frame is a torus along that
direction (a sprite leaving one side enters the other), so no single frame's sprite position hints
at the direction (see :meth:`Puzzle.place_path`). The colours of a puzzle differ in hue but have the same grey level (luma), so a
flow estimator working on grey frames cannot tell them apart: the motion stream is colour-blind.

A puzzle is a subclass of :class:`Puzzle` that overrides one hook, :meth:`Puzzle.tracks`, which
says which sprites a video of a given class holds and where they are in every frame. Rendering,
ground-truth flow and writing the UCF-101 layout are shared.

Register a new puzzle with ``@register_puzzle("name")``; ``get_puzzle("name")`` builds one.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fusionkit.data.atomic import atomic_write_text
from fusionkit.registry import Registry

# --- colours -------------------------------------------------------------------------------
# Flat sprite colours: distinct hues, equal luma (ITU-R BT.601: Y = .299 R + .587 G + .114 B ~ 0.6),
# so grey-level optical flow sees every sprite alike. tests/test_puzzles.py checks the luma.
PALETTE: dict[str, tuple[float, float, float]] = {
    "Red": (0.95, 0.45, 0.45),
    "Green": (0.35, 0.776, 0.35),
    "Blue": (0.55, 0.55, 1.00),
    "Yellow": (0.70, 0.62, 0.20),
    "Magenta": (0.90, 0.38, 0.95),
    "Cyan": (0.25, 0.72, 0.80),
}
COLOUR_A, COLOUR_B = "Red", "Blue"  # the two colours of `conjunction` and `registration`
BACKGROUND_LUMA = 0.35
BACKGROUND_CONTRAST = 0.06  # peak deviation of the smooth background texture
NOISE_STD = 0.01  # per-frame pixel noise (about 2.5 grey levels)
SUPERSAMPLING = 4  # sub-pixel samples per axis for anti-aliased sprite edges
# Bumped whenever rendering changes, so prepare_puzzle never reuses videos of an older design.
RENDER_VERSION = 2
DIRECTIONS = {"Left": (-1.0, 0.0), "Right": (1.0, 0.0), "Up": (0.0, -1.0), "Down": (0.0, 1.0)}


def luma(rgb) -> float:
    """Grey level of an RGB colour in [0, 1] (ITU-R BT.601, what cv2.cvtColor(RGB2GRAY) uses)."""
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


# --- shapes: inside-tests on offsets (dx, dy) from the centre, in units of the sprite radius -----
SHAPES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Circle": lambda dx, dy: dx**2 + dy**2 <= 1.0,
    "Square": lambda dx, dy: np.maximum(abs(dx), abs(dy)) <= 0.85,
    # upward triangle with its base at dy = 0.8 and apex at dy = -1
    "Triangle": lambda dx, dy: (dy <= 0.8) & (abs(dx) <= (dy + 1.0) / 1.8),
    "Cross": lambda dx, dy: ((abs(dx) <= 0.33) & (abs(dy) <= 1.0)) | ((abs(dy) <= 0.33) & (abs(dx) <= 1.0)),
}


@dataclass
class Sprite:
    """One flat-coloured sprite and its centre (x, y) in pixels at every frame."""

    shape: str
    colour: str
    radius: float
    centres: np.ndarray  # [F, 2] float, (x, y); may run past the frame when ``wrap``
    wrap: bool = False  # the frame is a torus: what leaves one side enters the other


@dataclass
class PuzzleVideo:
    """A rendered video: frames, exact forward flow (frame t -> t+1) and its label."""

    frames: np.ndarray  # [F, H, W, 3] uint8 RGB
    flow: np.ndarray  # [F-1, H, W, 2] float32, (dx, dy) in pixels of frame t's pixels
    label: int
    class_name: str


class Puzzle:
    """Base class. Subclasses set ``classes`` and override :meth:`tracks`."""

    name: str = ""
    classes: tuple[str, ...] = ()
    # Does mirroring a video left-right keep its label? (Decides whether training may flip it.)
    hflip_preserves_label: bool = False

    def tracks(self, label: int, rng: np.random.Generator, frames: int, size: int) -> list[Sprite]:
        raise NotImplementedError

    def max_new_length(self, frames: int) -> int | None:
        """The longest flow stack (L) a snippet may have without breaking the puzzle's design
        (None: any length)."""
        return None

    # shared helpers for the hook -------------------------------------------------------------
    @staticmethod
    def radius(rng: np.random.Generator, size: int) -> float:
        return float(rng.uniform(0.09, 0.14) * size)

    @staticmethod
    def speed(rng: np.random.Generator, frames: int, size: int, radius: float, travel_fraction: float = 1.0) -> float:
        """Pixels per frame, random, scaled with the frame size, capped so the path fits the frame."""
        fits = (size - 2 * radius - 4) / max(frames - 1, 1) / travel_fraction
        return float(min(rng.uniform(0.9, 1.6) * size / 64, fits * 0.95))

    @staticmethod
    def place_path(rng: np.random.Generator, size: int, radius: float, offsets: np.ndarray,
                   wrap_axis: int | None = None) -> np.ndarray:
        """Centres = a random start + ``offsets`` [F, 2].

        Without wrapping, the start is drawn uniformly among those that keep the whole sprite
        inside the frame at every frame. With ``wrap_axis`` (0: x, 1: y) the frame is a torus along
        that axis and the start is uniform over the whole axis, so at *every* frame the sprite's
        position is uniform and says nothing of its direction. That matters: TSN draws RGB frames
        only from the first F - L + 1 frames (a snippet's flow must fit), and in a bounded frame a
        sprite seen early sits nearer the side it leaves from, which would give the direction away.
        """
        margin = radius + 2
        low = margin - offsets.min(axis=0)
        high = size - margin - offsets.max(axis=0)
        if wrap_axis is not None:
            low[wrap_axis], high[wrap_axis] = 0.0, float(size)
        if np.any(high < low):
            raise ValueError(f"a path of extent {np.ptp(offsets, axis=0)} px does not fit a {size}px frame")
        return rng.uniform(low, high) + offsets

    def render(self, label: int, rng: np.random.Generator, frames: int = 24, size: int = 64,
               background: np.ndarray | None = None) -> PuzzleVideo:
        """Render one video of class ``label`` (deterministic given ``rng``'s state)."""
        if not 0 <= label < len(self.classes):
            raise ValueError(f"label {label} out of range for puzzle {self.name!r} with {len(self.classes)} classes")
        if frames < 2 or size < 16:
            raise ValueError(f"need frames >= 2 and size >= 16, got frames={frames}, size={size}")
        if background is None:
            background = make_background(rng, size)
        sprites = self.tracks(label, rng, frames, size)
        video = np.repeat(background[None], frames, axis=0)
        flow = np.zeros((frames - 1, size, size, 2), np.float32)
        for sprite in sprites:  # later sprites are drawn on top (and own the flow where they overlap)
            cover = coverage(sprite, size)
            colour = np.asarray(PALETTE[sprite.colour], np.float32)
            video = video * (1 - cover[..., None]) + colour * cover[..., None]
            step = np.diff(sprite.centres, axis=0).astype(np.float32)  # [F-1, 2]
            inside = cover[:-1] >= 0.5
            flow[inside] = np.broadcast_to(step[:, None, None, :], flow.shape)[inside]
        video = video + rng.normal(0, NOISE_STD, video.shape).astype(np.float32)
        frames_u8 = np.clip(np.round(video * 255), 0, 255).astype(np.uint8)
        return PuzzleVideo(frames_u8, flow, label, self.classes[label])


def make_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Static, smooth, low-contrast grey texture [H, W, 3] float32: 6x6 random values, bicubic-upsampled."""
    import cv2

    coarse = rng.uniform(-1, 1, (6, 6)).astype(np.float32)
    smooth = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    smooth = smooth / max(float(np.abs(smooth).max()), 1e-6)
    grey = BACKGROUND_LUMA + BACKGROUND_CONTRAST * smooth
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


def coverage(sprite: Sprite, size: int) -> np.ndarray:
    """Fraction of each pixel covered by the sprite at every frame, [F, H, W] float32 (anti-aliased
    by supersampling; pixel (i, j) spans [j, j+1) x [i, i+1), so its centre is at (j+.5, i+.5))."""
    s = SUPERSAMPLING
    sub = (np.arange(size * s) + 0.5) / s  # sample positions along one axis
    inside_test = SHAPES[sprite.shape]
    out = np.empty((len(sprite.centres), size, size), np.float32)
    for t, (cx, cy) in enumerate(sprite.centres):
        dx, dy = sub[None, :] - cx, sub[:, None] - cy
        if sprite.wrap:  # shortest offset on the torus
            dx, dy = (dx + size / 2) % size - size / 2, (dy + size / 2) % size - size / 2
        dx, dy = dx / sprite.radius, dy / sprite.radius
        hits = inside_test(dx, dy).astype(np.float32)
        out[t] = hits.reshape(size, s, size, s).mean(axis=(1, 3))
    return out


# --- registry ---------------------------------------------------------------------------------
PUZZLES = Registry("puzzle")


def register_puzzle(name: str):
    def wrap(cls: type[Puzzle]) -> type[Puzzle]:
        cls.name = name
        return PUZZLES.register(name)(cls)

    return wrap


def get_puzzle(name: str) -> Puzzle:
    return PUZZLES.lookup(name)()


def _straight_line(rng, frames, size, radius, direction, wrap: bool = False) -> np.ndarray:
    """Constant-velocity path along a unit ``direction``, placed at random where it fits (or
    anywhere along a left-right / up-down direction on a torus, with ``wrap``)."""
    v = Puzzle.speed(rng, frames, size, radius)
    direction = np.asarray(direction, np.float64)
    offsets = np.arange(frames)[:, None] * v * direction[None]
    return Puzzle.place_path(rng, size, radius, offsets, wrap_axis=int(np.argmax(np.abs(direction))) if wrap else None)


@register_puzzle("appearance")
class AppearancePuzzle(Puzzle):
    """Label = the sprite's shape (4). Colour, direction (any angle) and speed are random.

    RGB stream: knows all of it from one frame. Flow stream: sees a blob's outline moving, which
    carries some shape, but blurred by the estimator; the puzzle needs only one stream.
    """

    classes = tuple(SHAPES)
    hflip_preserves_label = True  # every shape is left-right symmetric

    def tracks(self, label, rng, frames, size):
        r = self.radius(rng, size)
        angle = rng.uniform(0, 2 * math.pi)
        path = _straight_line(rng, frames, size, r, (math.cos(angle), math.sin(angle)))
        return [Sprite(self.classes[label], str(rng.choice(list(PALETTE))), r, path)]


@register_puzzle("motion")
class MotionPuzzle(Puzzle):
    """Label = direction of motion: left, right, up, down (4). Shape and colour are random.

    RGB stream: one frame shows a sprite somewhere; the frame is a torus along the motion axis, so
    at every frame its position is uniform whatever the direction: it knows nothing (chance, 25%).
    Flow stream: knows all of it.
    """

    classes = tuple(f"Move{d}" for d in DIRECTIONS)

    def tracks(self, label, rng, frames, size):
        r = self.radius(rng, size)
        path = _straight_line(rng, frames, size, r, list(DIRECTIONS.values())[label], wrap=True)
        return [Sprite(str(rng.choice(list(SHAPES))), str(rng.choice(list(PALETTE))), r, path, wrap=True)]


@register_puzzle("conjunction")
class ConjunctionPuzzle(Puzzle):
    """Label = colour {Red, Blue} x direction {left, right} (4); the shape is always a square.

    RGB stream: knows the colour, not the direction (50%). Flow stream: knows the direction, not
    the colour, which has the same grey level (50%). Any fusion solves it; late fusion of the
    two streams' scores suffices, since each stream rules out a different half of the classes.
    """

    classes = tuple(f"{c}{d}" for c in (COLOUR_A, COLOUR_B) for d in ("Left", "Right"))

    def tracks(self, label, rng, frames, size):
        colour = (COLOUR_A, COLOUR_B)[label // 2]
        r = self.radius(rng, size)
        path = _straight_line(rng, frames, size, r, DIRECTIONS[("Left", "Right")[label % 2]], wrap=True)
        return [Sprite("Square", colour, r, path, wrap=True)]


@register_puzzle("registration")
class RegistrationPuzzle(Puzzle):
    """Two sprites of one (random) shape, one Red and one Blue; only one of them moves, left or
    right. Label = which colour moves x direction (4).

    RGB stream: a frame shows both sprites and no motion, so it knows nothing (25%). Flow stream:
    knows the direction but not which colour moved (50%). Late fusion stays near 50%: the answer
    needs "what moves where", registering appearance and motion at the same pixels
    (Feichtenhofer et al. 2016, Sec. 3.1).
    """

    classes = tuple(f"{c}Moves{d}" for c in (COLOUR_A, COLOUR_B) for d in ("Left", "Right"))

    def tracks(self, label, rng, frames, size):
        mover, still = ((COLOUR_A, COLOUR_B), (COLOUR_B, COLOUR_A))[label // 2]
        shape = str(rng.choice(list(SHAPES)))
        r = self.radius(rng, size)
        # the sprites live in separate horizontal bands so they never overlap
        margin = r + 2
        while True:
            y_move, y_still = rng.uniform(margin, size - margin, 2)
            if abs(y_move - y_still) >= 2 * r + 2:
                break
        path = _straight_line(rng, frames, size, r, DIRECTIONS[("Left", "Right")[label % 2]], wrap=True)
        path[:, 1] = y_move
        # the still sprite is placed anywhere along x as the mover is, so neither stands out
        still_centre = np.array([rng.uniform(0, size), y_still])
        return [Sprite(shape, mover, r, path, wrap=True), Sprite(shape, still, r, np.tile(still_centre, (frames, 1)), wrap=True)]


@register_puzzle("order")
class OrderPuzzle(Puzzle):
    """One sprite (random shape and colour) goes one way and comes back: left-then-right,
    right-then-left, up-then-down, down-then-up (4).

    RGB stream: knows nothing (25%). Flow stream: one snippet sees one direction, so it knows the
    axis but not the order (50%); order-free averaging of segment scores (TSN consensus, late
    fusion) cannot tell the two orders apart either. Needs temporal fusion across segments
    (3D conv, LSTM).

    Timeline of the F-1 flow fields: pause, out, pause, back, pause, with equal-length out and back
    phases at one speed and every pause at least :meth:`pause_length` long. Why the pauses: a stack
    of L flow fields that spanned the turn would show the order within one snippet; and with a pause
    only in the middle, "motion, then stillness" would mark the first phase. With pauses at both ends
    too, a snippet of either phase looks alike (stillness around one direction of motion). Safe for
    snippets of up to ``pause_length + 1`` flow fields: L = 5 at 24 frames, L = 4 at 16 frames.
    """

    classes = ("LeftThenRight", "RightThenLeft", "UpThenDown", "DownThenUp")

    @staticmethod
    def pause_length(frames: int) -> int:
        return min(4, (frames - 1) // 5)

    def max_new_length(self, frames: int) -> int:
        return self.pause_length(frames) + 1

    def tracks(self, label, rng, frames, size):
        first = ("Left", "Right", "Up", "Down")[label]
        direction = np.asarray(DIRECTIONS[first], np.float64)
        steps = frames - 1
        edge = self.pause_length(frames)
        moving = (steps - 3 * edge) // 2  # flow fields in each of the out and back phases
        if edge < 1 or moving < 1:
            raise ValueError(f"the order puzzle needs frames >= 6 (pause, out, pause, back, pause), got frames={frames}")
        middle = steps - 2 * moving - 2 * edge
        r = self.radius(rng, size)
        v = self.speed(rng, frames, size, r, travel_fraction=moving / steps)
        step_sizes = np.concatenate([np.zeros(edge), np.full(moving, v), np.zeros(middle), np.full(moving, -v),
                                     np.zeros(edge)])
        offsets = np.concatenate([[0.0], np.cumsum(step_sizes)])[:, None] * direction[None]
        path = self.place_path(rng, size, r, offsets, wrap_axis=int(np.argmax(np.abs(direction))))
        return [Sprite(str(rng.choice(list(SHAPES))), str(rng.choice(list(PALETTE))), r, path, wrap=True)]


# --- writing the UCF-101 layout -----------------------------------------------------------------
def video_relpath(class_name: str, group: int, clip: int) -> str:
    """UCF-101 naming: ``<Class>/v_<Class>_gXX_cYY.avi``."""
    return f"{class_name}/v_{class_name}_g{group:02d}_c{clip:02d}.avi"


def _render_and_write(job: tuple) -> str:
    puzzle_name, out, label, index, frames, size, seed, clips_per_group, fps = job
    puzzle = get_puzzle(puzzle_name)
    group, clip = index // clips_per_group + 1, index % clips_per_group + 1
    # One background per group, shared across classes, so the scene never tells the class.
    background = make_background(np.random.default_rng([seed, 1, group]), size)
    rng = np.random.default_rng([seed, 2, label, index])
    video = puzzle.render(label, rng, frames, size, background)
    rel = video_relpath(video.class_name, group, clip)
    path = Path(out) / rel
    from fusionkit.data.video import write_video

    write_video(path, video.frames, fps=fps)
    flow_path = path.with_name(path.stem + ".flow.npz")
    tmp = flow_path.with_name(flow_path.name + ".tmp.npz")
    np.savez_compressed(tmp, flow=video.flow)
    os.replace(tmp, flow_path)
    return rel


def make_puzzles(puzzle: str, out: str | os.PathLike, videos_per_class: int = 30, frames: int = 24,
                 size: int = 64, seed: int = 0, clips_per_group: int = 3, test_groups: int | None = None,
                 fps: int = 25, workers: int = 1, progress: bool = True) -> Path:
    """Render a puzzle as a UCF-101-style dataset under ``out``.

    Writes ``<Class>/v_<Class>_gXX_cYY.avi`` (MPEG-4 in AVI, as UCF-101's XviD files), the exact
    ground-truth flow beside each video as ``v_..._cYY.flow.npz`` (key ``flow``, [F-1, H, W, 2]),
    ``classInd.txt``, ``trainlist01.txt`` / ``testlist01.txt`` (split by group, as UCF-101 does:
    the first ``test_groups`` groups are the test set, default about 30% of them) and
    ``puzzle.json`` with the parameters. Deterministic given ``seed``.
    """
    from fusionkit.data.parallel import check_not_bootstrapping, run_jobs
    from fusionkit.data.splits import write_ucf101_split

    if workers > 1:
        check_not_bootstrapping("make_puzzles")
    p = get_puzzle(puzzle)
    out = Path(out)
    n_groups = math.ceil(videos_per_class / clips_per_group)
    if test_groups is None:
        test_groups = max(1, round(0.3 * n_groups))
    if not 0 < test_groups < n_groups:
        raise ValueError(f"need 0 < test_groups < number of groups ({n_groups}); got {test_groups}. "
                         f"Use more videos per class or fewer clips per group.")
    jobs = [(puzzle, str(out), label, i, frames, size, seed, clips_per_group, fps)
            for label in range(len(p.classes)) for i in range(videos_per_class)]
    rels = run_jobs(_render_and_write, jobs, workers=workers, desc=f"puzzle {puzzle}", progress=progress,
                    name="make_puzzles")
    samples = [(rel, job[2]) for rel, job in zip(rels, jobs)]
    is_test = [int(rel.rsplit("_g", 1)[1][:2]) <= test_groups for rel, _ in samples]
    write_ucf101_split(out, p.classes, samples, is_test, split=1)
    atomic_write_text(out / "puzzle.json", json.dumps({
        "puzzle": puzzle, "classes": list(p.classes), "videos_per_class": videos_per_class, "frames": frames,
        "size": size, "seed": seed, "clips_per_group": clips_per_group, "test_groups": test_groups, "fps": fps,
        "hflip_preserves_label": p.hflip_preserves_label, "max_new_length": p.max_new_length(frames),
        "render_version": RENDER_VERSION,
    }, indent=2))
    return out


def load_ground_truth_flow(video_path: str | os.PathLike) -> np.ndarray:
    """The renderer's exact flow [F-1, H, W, 2] stored beside a puzzle video."""
    path = Path(video_path)
    flow_path = path.with_name(path.stem + ".flow.npz")
    if not flow_path.exists():
        raise FileNotFoundError(f"no ground-truth flow {flow_path} beside {path}: only puzzle videos "
                                f"written by `fusionkit make-puzzles` have one")
    with np.load(flow_path) as data:
        return data["flow"]


def prepare_puzzle(name: str, data_dir: str | os.PathLike = "data", backend: str = "dis", videos_per_class: int = 30,
                   frames: int = 24, size: int = 64, seed: int = 0, workers: int = 1,
                   progress: bool = True, test_groups: int | None = None) -> tuple[Path, Path]:
    """Render a puzzle and extract its flow unless already done; return ``(video_root, flow_cache)``.

    Each parameter set gets its own folders (``<data_dir>/puzzles/<name>_n.._f.._s.._seed..``, with
    ``_t..`` when ``test_groups`` is given (see :func:`make_puzzles`), and
    ``<data_dir>/flow/<backend>/<same>``), so changing a parameter never mixes old and new videos.
    Both steps resume where a killed run stopped.
    """
    from fusionkit.data.flow import extract_flow
    from fusionkit.data.parallel import check_not_bootstrapping

    if workers > 1:  # before anything else: in a worker importing an unguarded script, stop at once
        check_not_bootstrapping("prepare_puzzle")
    key = f"{name}_v{RENDER_VERSION}_n{videos_per_class}_f{frames}_s{size}_seed{seed}"
    key += f"_t{test_groups}" if test_groups is not None else ""
    root = Path(data_dir) / "puzzles" / key
    cache = Path(data_dir) / "flow" / backend / key
    if not (root / "puzzle.json").is_file():  # written last: its presence means the render finished
        make_puzzles(name, root, videos_per_class, frames, size, seed, test_groups=test_groups, workers=workers,
                     progress=progress)
    report = extract_flow(root, cache, backend=backend, workers=workers, progress=progress)
    if report.failed:
        raise RuntimeError(f"flow extraction failed for puzzle {name!r}: {report}")
    return root, cache
