"""The two-stream puzzles: rendering, exact ground-truth flow, label semantics, the UCF-101 layout."""
from __future__ import annotations

import colorsys
import itertools
import json
import re

import numpy as np
import pytest

from fusionkit.data.puzzles import (
    COLOUR_A,
    COLOUR_B,
    PALETTE,
    PUZZLES,
    RENDER_VERSION,
    SHAPES,
    coverage,
    get_puzzle,
    load_ground_truth_flow,
    luma,
    make_background,
    make_puzzles,
)
from fusionkit.data.splits import load_split, load_ucf101_split
from fusionkit.data.video import read_video

ALL_CASES = [(name, label) for name in sorted(PUZZLES) for label in range(4)]
SIZE, FRAMES = 64, 16


def render(name: str, label: int, seed: int = 0, frames: int = FRAMES, size: int = SIZE):
    """Render one video with a known background, and replay the puzzle's hook with the same RNG
    state to get its sprites (render() calls tracks() first when given a background)."""
    puzzle = get_puzzle(name)
    background = make_background(np.random.default_rng([seed, 99]), size)
    video = puzzle.render(label, np.random.default_rng(seed), frames, size, background=background)
    sprites = puzzle.tracks(label, np.random.default_rng(seed), frames, size)
    return video, sprites, background


def pixel_centres(size):
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    return xs, ys


def centroid_from_frames(frames, background, sprite, size):
    """The sprite's centre in every frame measured from the *pixels*: estimate per pixel how much of
    the sprite colour is blended over the known background (least squares over RGB), then take the
    weighted centroid in a window around the sprite. Independent of the renderer's flow code. For a
    sprite on a torus, pixel offsets from the expected centre are taken the short way round."""
    colour = np.asarray(PALETTE[sprite.colour])
    d = colour - background  # [H, W, 3]
    alpha = np.clip(((frames / 255.0 - background) * d).sum(-1) / (d * d).sum(-1), 0, 1)  # [F, H, W]
    xs, ys = pixel_centres(size)
    out = []
    for t, (cx, cy) in enumerate(sprite.centres):
        ox, oy = xs - cx, ys - cy
        if sprite.wrap:
            ox, oy = (ox + size / 2) % size - size / 2, (oy + size / 2) % size - size / 2
        window = (np.abs(ox) <= sprite.radius + 1.5) & (np.abs(oy) <= sprite.radius + 1.5)
        a = alpha[t] * window
        out.append((cx + (a * ox).sum() / a.sum(), cy + (a * oy).sum() / a.sum()))
    return np.array(out)


def mean_moving_flow(flow):
    """Mean flow vector over the pixels that move, per flow field: [F-1, 2] (0 where nothing moves)."""
    moving = np.linalg.norm(flow, axis=-1) > 0
    out = np.zeros((len(flow), 2))
    for t in range(len(flow)):
        if moving[t].any():
            out[t] = flow[t][moving[t]].mean(axis=0)
    return out


def sprite_colour_at_moving_pixels(video):
    """Median RGB (0..1) of the frames at the pixels that move (a sprite's interior)."""
    moving = np.linalg.norm(video.flow, axis=-1) > 0
    return np.median(video.frames[:-1][moving] / 255.0, axis=0)


def nearest_palette_colour(rgb):
    return min(PALETTE, key=lambda c: np.abs(np.asarray(PALETTE[c]) - rgb).sum())


# --- the palette ---------------------------------------------------------------------------
def test_palette_colours_share_a_grey_level():
    lumas = {name: luma(rgb) for name, rgb in PALETTE.items()}
    assert max(lumas.values()) - min(lumas.values()) <= 0.02, lumas
    # luma() is BT.601, as OpenCV's RGB2GRAY (what the flow backends see)
    import cv2

    for rgb in PALETTE.values():
        pixel = np.round(np.asarray(rgb, np.float64) * 255).astype(np.uint8).reshape(1, 1, 3)
        assert abs(cv2.cvtColor(pixel, cv2.COLOR_RGB2GRAY)[0, 0] - luma(rgb) * 255) <= 1.5


def test_palette_colours_have_distinct_hues():
    hues = {name: colorsys.rgb_to_hsv(*rgb)[0] for name, rgb in PALETTE.items()}
    for (a, ha), (b, hb) in itertools.combinations(hues.items(), 2):
        distance = min(abs(ha - hb), 1 - abs(ha - hb))  # on the hue circle, 1 = 360 degrees
        assert distance >= 1 / 12, (a, b, ha, hb)  # at least 30 degrees apart
    for rgb in PALETTE.values():
        assert colorsys.rgb_to_hsv(*rgb)[1] >= 0.3  # saturated enough to see the hue


def test_sprites_have_the_same_grey_level_in_rendered_frames():
    """In the grey image the flow estimators see, a Red and a Blue sprite look alike."""
    from fusionkit.data.flow import to_grey

    greys = {}
    for label in range(4):
        video, sprites, _ = render("registration", label)
        grey = to_grey(video.frames).astype(np.float64)
        for sprite in sprites:
            inside = coverage(sprite, SIZE) == 1
            greys.setdefault(sprite.colour, []).append(np.median(grey[inside]))
    assert abs(np.mean(greys[COLOUR_A]) - np.mean(greys[COLOUR_B])) <= 2.0, greys


# --- rendering -----------------------------------------------------------------------------
@pytest.mark.parametrize("name,label", ALL_CASES)
def test_every_puzzle_renders_frames_and_flow_of_the_documented_shapes(name, label):
    video = get_puzzle(name).render(label, np.random.default_rng(label), frames=10, size=48)
    assert video.frames.shape == (10, 48, 48, 3) and video.frames.dtype == np.uint8
    assert video.flow.shape == (9, 48, 48, 2) and video.flow.dtype == np.float32
    assert video.label == label and video.class_name == get_puzzle(name).classes[label]
    assert np.linalg.norm(video.flow, axis=-1).max() > 0.3  # something moves
    if name == "appearance":  # its sprite stays inside the frame: the border never moves
        assert not video.flow[:, [0, -1], :].any() and not video.flow[:, :, [0, -1]].any()


@pytest.mark.parametrize("name", ["motion", "conjunction", "registration", "order"])
def test_direction_puzzles_place_sprites_uniformly_at_every_frame(name):
    """On a torus, the sprite's position along the motion axis is uniform at every frame whatever the
    class, so the early frames TSN samples for RGB do not hint at the direction."""
    puzzle = get_puzzle(name)
    for label in range(2):  # e.g. left vs right
        early, late = [], []
        for seed in range(300):
            sprite = puzzle.tracks(label, np.random.default_rng(seed), 24, SIZE)[0]
            axis = int(np.argmax(np.ptp(sprite.centres, axis=0)))  # the axis it moves along
            assert sprite.wrap
            early.append(sprite.centres[0, axis] % SIZE)
            late.append(sprite.centres[-1, axis] % SIZE)
        for positions in (early, late):
            counts = np.histogram(positions, bins=4, range=(0, SIZE))[0]
            assert counts.min() > 45, counts  # 75 expected per bin


def test_rendering_is_deterministic_given_the_seed():
    for name in sorted(PUZZLES):
        puzzle = get_puzzle(name)
        a = puzzle.render(1, np.random.default_rng(7))
        b = puzzle.render(1, np.random.default_rng(7))
        c = puzzle.render(1, np.random.default_rng(8))
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.flow, b.flow)
        assert not np.array_equal(a.frames, c.frames)
        assert not np.array_equal(a.flow, c.flow)


def test_background_is_static_smooth_grey_and_low_contrast():
    video, sprites, background = render("motion", 0)
    assert np.allclose(background[..., 0], background[..., 1]) and np.allclose(background[..., 1], background[..., 2])
    assert background.max() - background.min() <= 0.12 + 1e-6
    assert np.abs(np.diff(background[..., 0], axis=0)).max() < 0.02  # smooth: no edges
    covered = np.zeros((FRAMES, SIZE, SIZE), bool)
    for sprite in sprites:
        covered |= coverage(sprite, SIZE) > 0
    free = ~covered.any(axis=0)  # never touched by a sprite
    residual = video.frames[:, free] / 255.0 - background[free]
    assert abs(residual.mean()) < 0.002 and 0.005 < residual.std() < 0.015  # only the small noise


# --- exact ground-truth flow ---------------------------------------------------------------
@pytest.mark.parametrize("name,label", ALL_CASES)
def test_ground_truth_flow_is_the_sprite_displacement_inside_its_mask(name, label):
    """Where a sprite covers at least half a pixel in frame t, the flow is exactly the step of its
    centre from t to t+1; everywhere else it is zero (the background is static)."""
    video, sprites, _ = render(name, label)
    expected = np.zeros_like(video.flow)
    owned = np.zeros(video.flow.shape[:3], bool)
    for sprite in sprites:  # later sprites are drawn on top
        inside = coverage(sprite, SIZE)[:-1] >= 0.5
        step = np.diff(sprite.centres, axis=0).astype(np.float32)
        expected[inside] = np.broadcast_to(step[:, None, None], expected.shape)[inside]
        owned |= inside
    np.testing.assert_array_equal(video.flow, expected)
    assert not video.flow[~owned].any()


@pytest.mark.parametrize("name,label", ALL_CASES)
def test_ground_truth_flow_matches_the_motion_of_the_rendered_pixels(name, label):
    """The flow agrees with the frames themselves: the centroid of each sprite, measured from its
    colour in the pixels, moves by the flow inside the sprite (a zero or reversed flow would miss
    by a pixel or more per step)."""
    video, sprites, background = render(name, label)
    for sprite in sprites:
        inside = coverage(sprite, SIZE)[:-1] == 1  # fully covered pixels of frame t
        flow_step = np.stack([video.flow[t][inside[t]].mean(axis=0) for t in range(FRAMES - 1)])
        measured = centroid_from_frames(video.frames, background, sprite, SIZE)
        # per step: the 4x4 supersampling moves straight edges in quarter pixels, hence ~0.2 px
        np.testing.assert_allclose(np.diff(measured, axis=0), flow_step, atol=0.3)
        # over the whole video the errors do not accumulate
        np.testing.assert_allclose(measured[-1] - measured[0], flow_step.sum(axis=0), atol=0.3)


def test_warping_frame_t_by_the_flow_lands_on_the_same_colour_in_frame_t_plus_1():
    """For sprite pixels of frame t, frame t+1 sampled at (x, y) + flow has the same colour; shifting
    the sprite's frame-t mask by the flow gives its frame-t+1 mask."""
    import cv2

    video, sprites, _ = render("registration", 1)
    (mover, still) = sprites
    xs, ys = pixel_centres(SIZE)
    for t in range(FRAMES - 1):
        cov_t, cov_t1 = coverage(mover, SIZE)[t], coverage(mover, SIZE)[t + 1]
        flow = video.flow[t]
        map_x = (xs - 0.5 + flow[..., 0]).astype(np.float32)
        map_y = (ys - 0.5 + flow[..., 1]).astype(np.float32)
        # the sprites live on a torus: sample across the border the short way round
        warped = cv2.remap(video.frames[t + 1].astype(np.float32), map_x, map_y, cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_WRAP)
        warped_cov = cv2.remap(cov_t1, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
        # interior pixels: the colour is carried along (up to the per-frame noise)
        interior = cv2.erode((cov_t == 1).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        diff = np.abs(warped[interior] - video.frames[t][interior].astype(np.float32))
        assert diff.mean() < 4.0 and diff.max() < 15, (t, diff.mean(), diff.max())
        # masks: the next frame's coverage pulled back by the flow is this frame's coverage
        inside = cov_t >= 0.5
        assert np.abs(warped_cov[inside] - cov_t[inside]).mean() < 0.08
        # ...and pulling it back by no flow at all would not be (the test can fail)
        assert np.abs(cov_t1[inside] - cov_t[inside]).mean() > 2 * np.abs(warped_cov[inside] - cov_t[inside]).mean()


def test_ground_truth_flow_is_stored_beside_each_video(motion_puzzle):
    split = load_ucf101_split(motion_puzzle)
    for record in split.train + split.test:
        flow = load_ground_truth_flow(motion_puzzle / record.path)
        frames = read_video(motion_puzzle / record.path)
        assert flow.shape == (len(frames) - 1, *frames.shape[1:3], 2) and flow.dtype == np.float32
        assert (motion_puzzle / record.path).with_suffix(".flow.npz").is_file()


def test_ground_truth_flow_of_a_foreign_video_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="make-puzzles"):
        load_ground_truth_flow(tmp_path / "Some" / "video.avi")


# --- label semantics -----------------------------------------------------------------------
@pytest.mark.parametrize("label", range(4))
def test_motion_label_is_the_direction_of_the_mean_flow(label):
    expected = {"MoveLeft": (-1, 0), "MoveRight": (1, 0), "MoveUp": (0, -1), "MoveDown": (0, 1)}
    for seed in range(3):
        video, sprites, _ = render("motion", label, seed)
        mean = mean_moving_flow(video.flow).mean(axis=0)
        direction = mean / np.linalg.norm(mean)
        np.testing.assert_allclose(direction, expected[video.class_name], atol=1e-6)
        assert np.linalg.norm(mean) >= 0.5  # at least half a pixel per frame at 64 px
        assert len(sprites) == 1


@pytest.mark.parametrize("label", range(4))
def test_appearance_label_is_the_shape(label):
    video, sprites, _ = render("appearance", label)
    assert [s.shape for s in sprites] == [video.class_name] and video.class_name == list(SHAPES)[label]
    # the rendered area matches the shape's own area (a circle of radius r covers pi r^2)
    area = (coverage(sprites[0], SIZE)[0]).sum() / sprites[0].radius ** 2
    expected_area = {"Circle": np.pi, "Square": 1.7 ** 2, "Triangle": 1.8 * 1.8 / 1.8, "Cross": 2 * 0.66 * 2 - 0.66 ** 2}
    assert area == pytest.approx(expected_area[video.class_name], rel=0.08)


@pytest.mark.parametrize("label", range(4))
def test_conjunction_label_is_colour_and_direction(label):
    video, sprites, _ = render("conjunction", label)
    colour = (COLOUR_A, COLOUR_B)[label // 2]
    assert video.class_name.startswith(colour)
    assert nearest_palette_colour(sprite_colour_at_moving_pixels(video)) == colour
    dx, dy = mean_moving_flow(video.flow).mean(axis=0)
    assert dy == 0 and np.sign(dx) == (-1 if video.class_name.endswith("Left") else 1)
    assert [s.shape for s in sprites] == ["Square"]


@pytest.mark.parametrize("label", range(4))
def test_registration_moves_exactly_one_sprite_of_the_class_colour(label):
    for seed in range(3):
        video, sprites, _ = render("registration", label, seed)
        assert len(sprites) == 2 and {s.colour for s in sprites} == {COLOUR_A, COLOUR_B}
        assert sprites[0].shape == sprites[1].shape
        moves = [bool(np.abs(np.diff(s.centres, axis=0)).any()) for s in sprites]
        assert sorted(moves) == [False, True]
        mover = sprites[moves.index(True)]
        assert video.class_name == f"{mover.colour}Moves{'Left' if label % 2 == 0 else 'Right'}"
        # from the pixels: what moves has the class's colour
        assert nearest_palette_colour(sprite_colour_at_moving_pixels(video)) == mover.colour
        dx, dy = mean_moving_flow(video.flow).mean(axis=0)
        assert dy == 0 and np.sign(dx) == (-1 if label % 2 == 0 else 1)
        # and only one sprite's worth of pixels moves
        moving = np.linalg.norm(video.flow, axis=-1) > 0
        assert moving.sum(axis=(1, 2)).max() <= (coverage(mover, SIZE) >= 0.5).sum(axis=(1, 2)).max()


@pytest.mark.parametrize("label", range(4))
def test_order_pauses_goes_one_way_pauses_comes_back_and_pauses(label):
    first = {"LeftThenRight": (-1, 0), "RightThenLeft": (1, 0), "UpThenDown": (0, -1), "DownThenUp": (0, 1)}
    for seed in range(2):
        video, sprites, _ = render("order", label, seed, frames=24)  # 23 flow fields
        expected = np.asarray(first[video.class_name], float)
        mean = mean_moving_flow(video.flow)  # [23, 2]
        along = mean @ expected
        across = mean @ expected[::-1]
        assert not across.any()
        sign = np.sign(np.round(along, 6)).astype(int)
        runs = [(s, len(list(g))) for s, g in itertools.groupby(sign)]
        assert [s for s, _ in runs] == [0, 1, 0, -1, 0], sign
        assert min(n for s, n in runs if s == 0) >= 4, runs  # every pause >= 4 flow fields at 24 frames
        assert runs[1][1] == runs[3][1] >= 4, runs  # out and back equally long
        assert np.allclose(sprites[0].centres[0], sprites[0].centres[-1], atol=1e-9)  # back where it started


@pytest.mark.parametrize("frames", [12, 16, 24, 32])
def test_order_snippets_cannot_tell_the_order(frames):
    """Every stack of up to max_new_length flow fields of a left-then-right video shows the same
    pattern of motion as some stack of a right-then-left video, and vice versa: what differs is only
    *when* each pattern occurs, which averaging over segments forgets."""
    puzzle = get_puzzle("order")
    length = puzzle.max_new_length(frames)
    assert length >= (4 if frames >= 16 else 2)

    def patterns(label):
        video = puzzle.render(label, np.random.default_rng(0), frames=frames, size=SIZE)
        sign = tuple(np.sign(np.round(video.flow[..., 0].sum(axis=(1, 2)), 6)).astype(int))
        return {sign[t:t + length] for t in range(len(sign) - length + 1)}

    left_first, right_first = patterns(0), patterns(1)
    assert left_first == right_first
    assert all(not ({1, -1} <= set(p)) for p in left_first)  # no stack sees both directions
    # a longer stack would give it away
    longer = puzzle.max_new_length(frames) + 2
    video = puzzle.render(0, np.random.default_rng(0), frames=frames, size=SIZE)
    sign = np.sign(np.round(video.flow[..., 0].sum(axis=(1, 2)), 6)).astype(int)
    assert any({1, -1} <= set(sign[t:t + longer]) for t in range(len(sign) - longer + 1))


# --- the UCF-101 layout --------------------------------------------------------------------
def test_make_puzzles_writes_the_ucf101_split_files(motion_puzzle):
    classes = get_puzzle("motion").classes
    class_ind = (motion_puzzle / "classInd.txt").read_bytes()
    assert class_ind == "".join(f"{i} {c}\r\n" for i, c in enumerate(classes, 1)).encode()

    train = (motion_puzzle / "trainlist01.txt").read_bytes().decode()
    test = (motion_puzzle / "testlist01.txt").read_bytes().decode()
    for text in (train, test):
        assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")  # CRLF, every line
    train_lines, test_lines = train.split("\r\n")[:-1], test.split("\r\n")[:-1]
    train_re = re.compile(r"(\w+)/v_\1_g(\d\d)_c(\d\d)\.avi (\d+)")
    test_re = re.compile(r"(\w+)/v_\1_g(\d\d)_c(\d\d)\.avi")
    groups = {"train": set(), "test": set()}
    for line in train_lines:
        m = train_re.fullmatch(line)
        assert m, line
        assert classes[int(m.group(4)) - 1] == m.group(1)  # 1-based label of the folder's class
        groups["train"].add(int(m.group(2)))
    for line in test_lines:
        m = test_re.fullmatch(line)
        assert m, line  # path only, no label
        groups["test"].add(int(m.group(2)))
    # 4 videos per class, 2 clips per group: groups 1 and 2; the default 30% -> the first group is test
    assert groups == {"train": {2}, "test": {1}}
    assert len(train_lines) == len(test_lines) == 8
    listed = [line.split()[0] for line in train_lines + test_lines]
    assert len(set(listed)) == 16
    on_disk = sorted(p.relative_to(motion_puzzle).as_posix() for p in motion_puzzle.glob("*/*.avi"))
    assert sorted(listed) == on_disk
    for rel in listed:
        assert (motion_puzzle / rel).with_suffix(".flow.npz").is_file()
    meta = json.loads((motion_puzzle / "puzzle.json").read_text())
    assert meta["puzzle"] == "motion" and meta["classes"] == list(classes) and meta["test_groups"] == 1


def test_split_files_read_back_consistently(motion_puzzle):
    split = load_ucf101_split(motion_puzzle)
    assert split.classes == list(get_puzzle("motion").classes)
    assert len(split.train) == len(split.test) == 8
    for record in split.train + split.test:
        assert record.path.split("/")[0] == split.classes[record.label]
    assert {r.path for r in split.train}.isdisjoint(r.path for r in split.test)
    assert split.missing_videos(motion_puzzle) == []
    assert load_split("puzzles:motion", motion_puzzle) == split


def test_test_set_is_exactly_the_first_test_groups_groups(tmp_path):
    root = make_puzzles("conjunction", tmp_path, videos_per_class=5, frames=4, size=32, clips_per_group=1,
                        test_groups=2, progress=False)
    split = load_ucf101_split(root)
    group = lambda r: int(re.search(r"_g(\d\d)_", r.path).group(1))  # noqa: E731
    assert sorted({group(r) for r in split.test}) == [1, 2]
    assert sorted({group(r) for r in split.train}) == [3, 4, 5]
    assert len(split.test) == 2 * 4 and len(split.train) == 3 * 4
    # every class is in both sets, and the labels follow the class of the folder
    assert {r.label for r in split.test} == {r.label for r in split.train} == {0, 1, 2, 3}


def test_make_puzzles_is_deterministic_given_the_seed(tmp_path):
    kwargs = dict(videos_per_class=2, frames=6, size=32, clips_per_group=1, progress=False)
    a = make_puzzles("order", tmp_path / "a", seed=3, **kwargs)
    b = make_puzzles("order", tmp_path / "b", seed=3, **kwargs)
    c = make_puzzles("order", tmp_path / "c", seed=4, **kwargs)
    rels = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert rels == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    for rel in rels:
        if rel.endswith(".avi"):
            np.testing.assert_array_equal(read_video(a / rel), read_video(b / rel))
            assert not np.array_equal(read_video(a / rel), read_video(c / rel))
        elif rel.endswith(".npz"):
            np.testing.assert_array_equal(np.load(a / rel)["flow"], np.load(b / rel)["flow"])
            assert not np.array_equal(np.load(a / rel)["flow"], np.load(c / rel)["flow"])


def test_clips_of_a_group_share_their_background_across_classes(motion_puzzle):
    """As UCF-101's groups share a scene: the static background says nothing of the class."""
    first = {}
    for path in sorted(motion_puzzle.glob("*/*_g01_c01.avi")):
        frames = read_video(path).astype(np.float64)
        flow = load_ground_truth_flow(path)
        still = ~np.linalg.norm(flow, axis=-1).any(axis=0)  # never-moving pixels
        first[path.parent.name] = (frames.mean(axis=0), still)
    (a, sa), (b, sb) = list(first.values())[:2]
    both = sa & sb
    # where neither sprite ever is, the two videos show the same scene (up to noise and coding)
    assert np.abs(a[both] - b[both]).mean() < 4


# --- bad arguments -------------------------------------------------------------------------
def test_unknown_puzzle_lists_the_choices(tmp_path):
    with pytest.raises(KeyError, match="unknown puzzle 'colour'.*appearance.*motion"):
        get_puzzle("colour")
    with pytest.raises(KeyError, match="unknown puzzle"):
        make_puzzles("colour", tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_label_out_of_range_is_a_clear_error():
    puzzle = get_puzzle("motion")
    for label in (-1, 4):
        with pytest.raises(ValueError, match=rf"label {label} out of range for puzzle 'motion' with 4 classes"):
            puzzle.render(label, np.random.default_rng(0))


def test_too_few_frames_or_pixels_is_a_clear_error():
    with pytest.raises(ValueError, match="frames >= 2"):
        get_puzzle("motion").render(0, np.random.default_rng(0), frames=1)
    with pytest.raises(ValueError, match="size >= 16"):
        get_puzzle("motion").render(0, np.random.default_rng(0), size=8)


def test_order_needs_room_for_pauses_and_both_directions():
    with pytest.raises(ValueError, match="order puzzle needs frames >= 6"):
        get_puzzle("order").render(0, np.random.default_rng(0), frames=5)
    video = get_puzzle("order").render(0, np.random.default_rng(0), frames=6)  # pause, out, pause, back, pause
    assert np.sign(np.round(mean_moving_flow(video.flow)[:, 0], 6)).tolist() == [0, -1, 0, 1, 0]


@pytest.mark.parametrize("test_groups", [0, 2, 5])
def test_too_many_test_groups_is_a_clear_error(tmp_path, test_groups):
    # 4 videos per class in groups of 2 -> 2 groups: the test set must leave a train group
    with pytest.raises(ValueError, match=rf"0 < test_groups < number of groups \(2\); got {test_groups}"):
        make_puzzles("motion", tmp_path, videos_per_class=4, clips_per_group=2, test_groups=test_groups,
                     progress=False)
    assert not any(tmp_path.iterdir())  # checked before rendering anything


def test_a_single_group_cannot_be_split(tmp_path):
    with pytest.raises(ValueError, match="more videos per class or fewer clips per group"):
        make_puzzles("motion", tmp_path, videos_per_class=3, clips_per_group=3, progress=False)


def test_prepare_puzzle_renders_and_extracts_once(tmp_path):
    from fusionkit.data.flow import read_cache_meta
    from fusionkit.data.puzzles import prepare_puzzle

    root, cache = prepare_puzzle("motion", tmp_path, videos_per_class=4, frames=4, size=32, progress=False)
    assert root == tmp_path / "puzzles" / f"motion_v{RENDER_VERSION}_n4_f4_s32_seed0" and cache == tmp_path / "flow" / "dis" / root.name
    split = load_ucf101_split(root)
    assert read_cache_meta(cache / split.train[0].video_id)["frames"] == 4
    stamp = (root / "puzzle.json").stat().st_mtime_ns
    assert prepare_puzzle("motion", tmp_path, videos_per_class=4, frames=4, size=32, progress=False) == (root, cache)
    assert (root / "puzzle.json").stat().st_mtime_ns == stamp  # not rendered again
