"""TV-L1 optical flow in PyTorch (fusionkit.data.tvl1_torch) and its flow backend ``tvl1-torch``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusionkit.data.flow import compute_flow, endpoint_error, get_flow_backend, to_grey
from fusionkit.data.puzzles import get_puzzle, load_ground_truth_flow
from fusionkit.data.splits import load_ucf101_split
from fusionkit.data.tvl1_torch import (DEVICE_ENV, _downscale, _median_opencv, _median_torch, default_device,
                                       tvl1_flow)
from fusionkit.data.video import read_video


def shifted_texture(h: int, w: int, dx: float = 0.0, dy: float = 0.0, seed: int = 0) -> np.ndarray:
    """A smooth random texture (a sum of 12 low-frequency plane waves) in [0.15, 0.85], moved by
    (dx, dy) px: sampled exactly at the shifted positions, so the flow between two of them is known."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w))
    for _ in range(12):
        fx, fy = rng.uniform(-0.25, 0.25, 2)
        img += np.cos(2 * np.pi * (fx * (x - dx) + fy * (y - dy)) + rng.uniform(0, 2 * np.pi))
    return (0.5 + 0.35 * img / 12).astype(np.float32)


@pytest.fixture(scope="module")
def puzzle_pairs() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prev [N, H, W], next [N, H, W], ground-truth flow [N, H, W, 2]) of a small `registration` video."""
    video = get_puzzle("registration").render(1, np.random.default_rng(5), frames=5, size=48)
    grey = to_grey(video.frames)
    return grey[:-1], grey[1:], video.flow


# --- accuracy --------------------------------------------------------------------------------
def test_recovers_a_known_sub_pixel_shift():
    """Measured: mean error 0.019 px and at most 0.042 px per component inside a 6 px margin; 0.037 px
    over the whole frame, whose border pixels have their match outside the other frame."""
    shift = np.array([0.6, -0.35])
    flow = tvl1_flow(shifted_texture(48, 64), shifted_texture(48, 64, *shift))
    inside = flow[6:-6, 6:-6] - shift
    assert np.linalg.norm(inside, axis=-1).mean() < 0.04
    assert np.abs(inside).max() < 0.1
    assert np.linalg.norm(flow - shift, axis=-1).mean() < 0.08  # the whole frame


def test_identical_frames_give_exactly_zero_flow():
    frame = (shifted_texture(40, 50) * 255).astype(np.uint8)
    np.testing.assert_array_equal(tvl1_flow(frame, frame), 0)


def test_puzzle_videos_ground_truth_against_a_bound_and_opencv_farneback_and_dis(motion_puzzle):
    """EPE on one video per class of the shared `motion` puzzle (64 px, about 1 px/frame), measured:
    tvl1-torch 0.095 px over the whole frame (at most 0.108; DIS 0.32, Farneback 0.25) and 0.32 on
    the moving sprites (at most 0.59; DIS 0.26, Farneback 0.08: lambda = 0.15 smooths a sprite's
    edge into the static background, and OpenCV's own TV-L1 does the same: 0.386 px there on all 16
    videos, tvl1-torch 0.383). Zero flow scores 1.1 to 1.4 px on the sprites, so a broken estimator
    fails."""
    split = load_ucf101_split(motion_puzzle)
    records = {r.label: r for r in split.train}  # one video per class
    epe = {b: [] for b in ("tvl1-torch", "dis", "farneback")}
    for record in records.values():
        frames = read_video(motion_puzzle / record.path)
        truth = load_ground_truth_flow(motion_puzzle / record.path)
        moving = np.linalg.norm(truth, axis=-1) > 0
        for backend in epe:
            estimate = compute_flow(frames, backend)
            epe[backend].append((endpoint_error(estimate, truth), endpoint_error(estimate, truth, moving)))
        assert endpoint_error(np.zeros_like(truth), truth, moving) > 2 * epe["tvl1-torch"][-1][1]
    whole, moving = np.array(epe["tvl1-torch"]).T
    assert whole.max() < 0.15 and moving.max() < 0.7, epe
    for other in ("dis", "farneback"):  # the smoothest flow over the whole frame
        assert whole.mean() < 0.75 * np.array(epe[other])[:, 0].mean(), epe


def test_matches_opencv_tvl1_where_opencv_contrib_is_installed(puzzle_pairs):
    """Measured with opencv-contrib-python-headless 5.0: 0.017 px apart on average; EPE 0.106 px for
    both."""
    import cv2

    if not hasattr(cv2, "optflow"):
        pytest.skip("needs opencv-contrib (cv2.optflow); benchmarks/flow_tvl1.py compares the two in a side venv")
    prev, nxt, truth = puzzle_pairs
    ours = tvl1_flow(prev, nxt)
    theirs = np.stack([cv2.optflow.DualTVL1OpticalFlow_create().calc(a, b, None) for a, b in zip(prev, nxt)])
    assert np.linalg.norm(ours - theirs, axis=-1).mean() < 0.05
    assert endpoint_error(ours, truth) < 1.1 * endpoint_error(theirs, truth) + 0.01


# --- batching, shapes, devices ---------------------------------------------------------------
def test_a_batch_gives_the_same_flow_as_one_pair_at_a_time(puzzle_pairs):
    prev, nxt, _ = puzzle_pairs
    batched = tvl1_flow(prev, nxt)
    one_by_one = np.stack([tvl1_flow(a, b) for a, b in zip(prev, nxt)])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    # nor does the order of the pairs or the chunk size matter (each pair stops on its own)
    np.testing.assert_allclose(tvl1_flow(prev[::-1], nxt[::-1])[::-1], batched, atol=1e-5)
    np.testing.assert_allclose(tvl1_flow(prev, nxt, batch_size=3), batched, atol=1e-5)


def test_shapes_dtypes_and_input_types(puzzle_pairs):
    prev, nxt, _ = puzzle_pairs
    stack = tvl1_flow(prev[:2], nxt[:2])
    assert stack.shape == (2, 48, 48, 2) and stack.dtype == np.float32
    single = tvl1_flow(prev[0], nxt[0])
    assert single.shape == (48, 48, 2) and single.dtype == np.float32
    np.testing.assert_allclose(single, stack[0], atol=1e-5)
    # tensors work as well as arrays, and float frames in [0, 1] as uint8 (OpenCV's convention)
    np.testing.assert_allclose(tvl1_flow(torch.from_numpy(prev[:2]), torch.from_numpy(nxt[:2])), stack, atol=1e-5)
    as_float = tvl1_flow(prev[:2] / np.float32(255), nxt[:2] / np.float32(255))
    np.testing.assert_allclose(as_float, stack, atol=1e-3)


def test_odd_frame_sizes():
    shift = np.array([-0.4, 0.7])
    flow = tvl1_flow(shifted_texture(37, 53, seed=2), shifted_texture(37, 53, *shift, seed=2))
    assert flow.shape == (37, 53, 2)
    assert np.linalg.norm(flow[6:-6, 6:-6] - shift, axis=-1).mean() < 0.05
    tiny = tvl1_flow(shifted_texture(5, 7), shifted_texture(5, 7, 0.3, 0.0))  # below every pyramid level
    assert tiny.shape == (5, 7, 2) and np.isfinite(tiny).all()


@pytest.mark.parametrize("prev_shape,next_shape,match", [
    ((2, 16, 16), (3, 16, 16), "same shape"),
    ((16, 16), (16, 17), "same shape"),
    ((16, 16, 3), (16, 16, 3), r"grey frame \[H, W\].*to_grey"),
    ((1, 2, 16, 16), (1, 2, 16, 16), r"stack of them \[N, H, W\]"),
    ((16,), (16,), r"grey frame \[H, W\]"),
    ((1, 16), (1, 16), "at least 2x2"),
])
def test_bad_shapes_are_value_errors_that_say_what_was_wrong(prev_shape, next_shape, match):
    with pytest.raises(ValueError, match=match):
        tvl1_flow(np.zeros(prev_shape, np.uint8), np.zeros(next_shape, np.uint8))


def test_bad_dtypes_and_parameters_are_value_errors():
    frame = np.zeros((16, 16), np.uint8)
    with pytest.raises(ValueError, match="uint8 .* or floating point"):
        tvl1_flow(frame.astype(np.int32), frame.astype(np.int32))
    with pytest.raises(ValueError, match="median_filtering must be"):
        tvl1_flow(frame, frame, median_filtering=7)
    with pytest.raises(ValueError, match="0 < scale_step < 1"):
        tvl1_flow(frame, frame, scale_step=1.0)


def test_both_median_filters_are_opencv_median_blur():
    import cv2

    flow = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 2, 19, 23)).astype(np.float32))
    flow[0, 0, :5] = 1.5  # ties
    expected = np.stack([[cv2.medianBlur(c, 5) for c in pair] for pair in flow.numpy()])
    np.testing.assert_array_equal(_median_opencv(flow, 5).numpy(), expected)
    np.testing.assert_array_equal(_median_torch(flow, 5).numpy(), expected)
    np.testing.assert_array_equal(_median_torch(flow, 3).numpy(),
                                  np.stack([[cv2.medianBlur(c, 3) for c in pair] for pair in flow.numpy()]))


def test_pyramid_levels_are_opencv_resize_by_the_scale_step():
    import cv2

    for h, w in ((112, 112), (37, 53), (240, 320)):
        image = np.random.default_rng(h).uniform(0, 255, (h, w)).astype(np.float32)
        expected = cv2.resize(image, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
        level = _downscale(torch.from_numpy(image)[None], expected.shape, 0.8)[0].numpy()
        np.testing.assert_allclose(level, expected, atol=0.01)  # of 255 grey levels


def test_device_defaults_to_cuda_when_available_and_the_environment_overrides(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert default_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert default_device() == torch.device("cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_gives_the_cpu_flow(puzzle_pairs):
    prev, nxt, _ = puzzle_pairs
    cuda, cpu = tvl1_flow(prev, nxt, device="cuda"), tvl1_flow(prev, nxt, device="cpu")
    assert cuda.shape == cpu.shape and cuda.dtype == np.float32
    assert np.linalg.norm(cuda - cpu, axis=-1).mean() < 0.02  # float rounding differs between devices


# --- the flow backend ------------------------------------------------------------------------
def test_backend_through_compute_flow_takes_a_video_in_one_batch(monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    video = get_puzzle("motion").render(2, np.random.default_rng(1), frames=4, size=32)
    fn = get_flow_backend("tvl1-torch")
    calls = []
    monkeypatch.setattr(fn, "batch", lambda a, b: calls.append(len(a)) or tvl1_flow(a, b))
    flow = compute_flow(video.frames, fn)
    assert calls == [3]  # all three pairs in one call
    assert flow.shape == (3, 32, 32, 2) and flow.dtype == np.float32
    grey = to_grey(video.frames)
    np.testing.assert_allclose(flow, tvl1_flow(grey[:-1], grey[1:]), atol=1e-6)
    np.testing.assert_allclose(fn(grey[0], grey[1]), flow[0], atol=1e-5)  # and one pair at a time
    np.testing.assert_allclose(compute_flow(video.frames, "tvl1-torch"), flow, atol=1e-6)
