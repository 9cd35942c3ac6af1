"""Optical flow: backends, quantised storage, the resumable and atomic cache, and the CLI."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from fusionkit import cli
from fusionkit.data.atomic import TMP_DIR_PREFIX
from fusionkit.data.flow import (
    FLOW_BACKENDS,
    FLOW_BOUND,
    META_FILE,
    compute_flow,
    dequantize_flow,
    endpoint_error,
    extract_flow,
    find_videos,
    frame_name,
    get_flow_backend,
    load_cached_flow,
    load_cached_frames,
    quantize_flow,
    read_cache_meta,
    to_grey,
)
from fusionkit.data.puzzles import load_ground_truth_flow, make_puzzles
from fusionkit.data.splits import load_ucf101_split
from fusionkit.data.video import read_video

REPO = Path(__file__).resolve().parents[1]
STEP = 2 * FLOW_BOUND / 255  # one grey level of a stored flow image, in px


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def expected_entry_files(frames: int) -> list[str]:
    names = [frame_name("img", i) for i in range(frames)]
    names += [frame_name(k, i) for i in range(frames - 1) for k in ("flow_x", "flow_y")]
    return sorted(names + [META_FILE])


def video_folders(cache: Path) -> list[Path]:
    """The non-hidden ``<Class>/<video>`` folders of a cache."""
    return sorted(p for p in cache.glob("*/*") if p.is_dir() and not p.name.startswith("."))


# --- quantisation ----------------------------------------------------------------------------
def test_quantize_maps_the_bound_linearly_onto_0_255():
    flow = np.array([-20.0, -10.0, 0.0, 10.0, 20.0, -20 + 40 / 255, 0.1])
    # hand-computed: (f + 20) * 255 / 40, rounded half to even
    np.testing.assert_array_equal(quantize_flow(flow), [0, 64, 128, 191, 255, 1, 128])
    assert quantize_flow(flow).dtype == np.uint8
    np.testing.assert_allclose(dequantize_flow(np.array([0, 255, 128], np.uint8)), [-20.0, 20.0, 40 * 128 / 255 - 20],
                               atol=1e-5)
    assert dequantize_flow(np.zeros(2, np.uint8)).dtype == np.float32


def test_quantize_clips_beyond_the_bound():
    np.testing.assert_array_equal(quantize_flow(np.array([-1e6, -25.0, -20.001, 20.001, 25.0, 1e6])),
                                  [0, 0, 0, 255, 255, 255])
    np.testing.assert_array_equal(dequantize_flow(quantize_flow(np.array([-33.0, 47.0]))), [-20.0, 20.0])


def test_quantisation_round_trip_is_within_half_a_step():
    flow = np.random.default_rng(0).uniform(-FLOW_BOUND, FLOW_BOUND, (50_000, 2)).astype(np.float32)
    err = np.abs(dequantize_flow(quantize_flow(flow)) - flow)
    assert err.max() <= 20 / 255 + 1e-5  # half of the 40/255 px step
    assert err.max() > 0.9 * 20 / 255  # and the step is really that coarse (no finer encoding)


def test_quantisation_with_another_bound():
    flow = np.array([-5.0, 0.0, 5.0, 7.0])
    np.testing.assert_array_equal(quantize_flow(flow, bound=5), [0, 128, 255, 255])
    assert np.abs(dequantize_flow(quantize_flow(flow[:3], 5), 5) - flow[:3]).max() <= 5 / 255 + 1e-6


def test_endpoint_error_by_hand():
    truth = np.zeros((2, 2, 2))
    estimate = np.array([[[3.0, 4.0], [0.0, 0.0]], [[0.0, 1.0], [0.0, 0.0]]])
    assert endpoint_error(estimate, truth) == pytest.approx((5 + 1) / 4)
    mask = np.array([[True, False], [True, False]])
    assert endpoint_error(estimate, truth, mask) == pytest.approx(3.0)
    assert np.isnan(endpoint_error(estimate, truth, np.zeros((2, 2), bool)))


# --- backends --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def frame_pair():
    """Two consecutive grey frames of a real video (or of a puzzle where OpenCV's samples are absent)."""
    path = Path("/usr/share/doc/opencv-doc/examples/data/tree.avi")  # OpenCV's sample (Debian's opencv-doc)
    if path.is_file():
        frames = read_video(path, [10, 11])
    else:
        from fusionkit.data.puzzles import get_puzzle

        frames = get_puzzle("motion").render(1, np.random.default_rng(0), frames=2, size=96).frames
    grey = to_grey(frames)
    return grey[0], grey[1]


def test_grey_conversion_is_bt601_luma():
    rgb = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    expected = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(to_grey(rgb).astype(np.float64) - expected).max() <= 1.0


def test_dis_backend_is_opencv_dis_medium(frame_pair):
    import cv2

    prev, nxt = frame_pair
    expected = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(prev, nxt, None)
    got = get_flow_backend("dis")(prev, nxt)
    assert got.shape == prev.shape + (2,) and np.abs(expected).max() > 0.1
    np.testing.assert_array_equal(got, expected)
    # and not some other preset: the test could tell them apart
    fast = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST).calc(prev, nxt, None)
    assert not np.array_equal(got, fast)


def test_farneback_backend_is_opencv_farneback_with_the_sample_parameters(frame_pair):
    import cv2

    prev, nxt = frame_pair
    expected = cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)
    np.testing.assert_array_equal(get_flow_backend("farneback")(prev, nxt), expected)
    other = cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 9, 3, 5, 1.2, 0)
    assert not np.array_equal(expected, other)


def test_compute_flow_is_the_backend_on_consecutive_grey_frames():
    from fusionkit.data.puzzles import get_puzzle

    rgb = get_puzzle("motion").render(0, np.random.default_rng(3), frames=4, size=64).frames
    flow = compute_flow(rgb, "farneback")
    assert flow.shape == (3, 64, 64, 2) and flow.dtype == np.float32
    grey = to_grey(rgb)
    fn = get_flow_backend("farneback")
    for t in range(3):
        np.testing.assert_array_equal(flow[t], fn(grey[t], grey[t + 1]))
    # a callable works as a backend too
    calls = []
    zero = compute_flow(rgb, lambda a, b: calls.append(1) or np.zeros(a.shape + (2,), np.float32))
    assert len(calls) == 3 and not zero.any()


@pytest.mark.parametrize("backend,bound", [("dis", 0.5), ("farneback", 0.3)])
def test_backends_recover_the_ground_truth_on_puzzle_videos(motion_puzzle, backend, bound):
    """Measured end-point error on the moving pixels of the 16 shared puzzle videos (64 px, about
    1 px/frame): DIS at most 0.29 px (mean 0.23), Farneback at most 0.11 px (mean 0.07). Zero flow
    scores at least 0.95 px there, so a broken estimator fails this test."""
    split = load_ucf101_split(motion_puzzle)
    expected_sign = {"MoveLeft": (-1, 0), "MoveRight": (1, 0), "MoveUp": (0, -1), "MoveDown": (0, 1)}
    for record in split.train + split.test:
        frames = read_video(motion_puzzle / record.path)
        truth = load_ground_truth_flow(motion_puzzle / record.path)
        estimate = compute_flow(frames, backend)
        moving = np.linalg.norm(truth, axis=-1) > 0
        epe = endpoint_error(estimate, truth, moving)
        zero_epe = endpoint_error(np.zeros_like(truth), truth, moving)
        assert epe < bound, (record.path, epe)
        assert zero_epe > 2.5 * epe and zero_epe > 0.9, (record.path, epe, zero_epe)
        assert endpoint_error(estimate, truth) < 0.6  # the whole frame, low-texture background included
        mean = estimate[moving].mean(axis=0)
        sx, sy = expected_sign[split.classes[record.label]]
        assert (np.sign(mean[0]) == sx) if sx else (np.sign(mean[1]) == sy), (record.path, mean)


def test_tvl1_without_opencv_contrib_says_how_to_install_it():
    import cv2

    if hasattr(cv2, "optflow"):
        pytest.skip("this OpenCV has the contrib modules: tvl1 is available")
    with pytest.raises(RuntimeError, match="pip install opencv-contrib-python-headless"):
        get_flow_backend("tvl1")
    assert "tvl1" in FLOW_BACKENDS


def test_tvl1_with_opencv_contrib_estimates_flow(frame_pair):
    import cv2

    if not hasattr(cv2, "optflow"):
        pytest.skip("needs opencv-contrib (cv2.optflow)")
    prev, nxt = frame_pair
    expected = cv2.optflow.DualTVL1OpticalFlow_create().calc(prev, nxt, None)
    np.testing.assert_allclose(get_flow_backend("tvl1")(prev, nxt), expected, atol=1e-5)


def test_unknown_backend_is_a_key_error_listing_the_choices():
    with pytest.raises(KeyError, match=r"unknown flow backend 'raft'.*\['dis', 'farneback', 'tvl1', 'tvl1-torch'\]"):
        get_flow_backend("raft")


def test_extract_flow_checks_the_backend_before_writing_anything(motion_puzzle, tmp_path):
    with pytest.raises(KeyError, match="unknown flow backend"):
        extract_flow(motion_puzzle, tmp_path / "cache", backend="raft", progress=False)
    assert not (tmp_path / "cache").exists()


# --- the cache -------------------------------------------------------------------------------
def test_cache_layout_is_one_folder_per_video_with_frames_flow_and_meta(motion_puzzle, motion_cache):
    videos = find_videos(motion_puzzle)
    assert len(videos) == 16
    assert [p.relative_to(motion_cache).as_posix() for p in video_folders(motion_cache)] == \
        sorted(os.path.splitext(v)[0] for v in videos)
    assert not list(motion_cache.rglob(f"{TMP_DIR_PREFIX}*"))
    for rel in videos:
        entry = motion_cache / os.path.splitext(rel)[0]
        assert sorted(os.listdir(entry)) == expected_entry_files(12)  # 12 frames, 11 flow pairs
        meta = read_cache_meta(entry)
        files = meta.pop("files")  # the manifest extract-flow verifies on a rerun: each JPEG's name and size
        assert meta == {"video": rel, "backend": "dis", "frames": 12, "flows": 11, "height": 64, "width": 64,
                        "bound": FLOW_BOUND}
        jpegs = [f for f in expected_entry_files(12) if f.endswith(".jpg")]
        assert files == {f: (entry / f).stat().st_size for f in jpegs}
        assert json.loads((entry / META_FILE).read_text()) == {**meta, "files": files}


def test_first_flow_file_is_numbered_00001(motion_cache):
    entry = video_folders(motion_cache)[0]
    assert (entry / "img_00001.jpg").is_file() and (entry / "flow_x_00001.jpg").is_file()
    assert not (entry / "img_00000.jpg").exists() and not (entry / "flow_x_00012.jpg").exists()


def test_cached_flow_matches_compute_flow_within_quantisation_and_jpeg_error(motion_puzzle, motion_cache):
    """Measured: at most 0.234 px = half a quantisation step (0.078) + one JPEG grey level (0.157)."""
    for rel in find_videos(motion_puzzle)[::3]:
        frames = read_video(motion_puzzle / rel)
        flow = compute_flow(frames, "dis")
        entry = motion_cache / os.path.splitext(rel)[0]
        cached = load_cached_flow(entry, range(len(flow)))
        assert cached.shape == flow.shape and cached.dtype == np.float32
        err = np.abs(cached - flow)
        assert err.max() <= 20 / 255 + 2 * STEP, err.max()
        assert err.mean() <= 0.06, err.mean()
        # indices pick fields in order; x and y are not swapped
        np.testing.assert_array_equal(load_cached_flow(entry, [4, 0]), cached[[4, 0]])
        moving = np.linalg.norm(flow, axis=-1) > 0.5
        assert np.abs(cached[moving] - flow[moving]).mean() < np.abs(cached[moving][:, ::-1] - flow[moving]).mean()


def test_cached_frames_match_the_decoded_video(motion_puzzle, motion_cache):
    rel = find_videos(motion_puzzle)[5]
    frames = read_video(motion_puzzle / rel)
    cached = load_cached_frames(motion_cache / os.path.splitext(rel)[0], range(len(frames)))
    assert cached.shape == frames.shape and cached.dtype == np.uint8
    err = np.abs(cached.astype(np.int16) - frames)
    assert err.mean() < 1.5  # JPEG at quality 95; measured about 0.8
    # RGB order, not BGR: channel means match, and would not if swapped
    assert np.abs(cached.mean(axis=(0, 1, 2)) - frames.mean(axis=(0, 1, 2))).max() < 1.0


def test_missing_cache_entries_name_the_command_or_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="fusionkit extract-flow"):
        read_cache_meta(tmp_path / "Class" / "v_x")
    with pytest.raises(FileNotFoundError, match="img_00003.jpg"):
        load_cached_frames(tmp_path, [2])
    with pytest.raises(FileNotFoundError, match="flow_x_00001.jpg"):
        load_cached_flow(tmp_path, [0])


def test_a_second_run_skips_everything(motion_puzzle, motion_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(motion_cache, cache)
    before = tree_digest(cache)
    mtimes = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    report = extract_flow(motion_puzzle, cache, backend="dis", progress=False)
    assert report.extracted == [] and report.failed == {}
    assert report.skipped == find_videos(motion_puzzle)
    assert str(report).startswith("0 extracted, 16 already done, 0 failed")
    assert tree_digest(cache) == before
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == mtimes


def test_a_corrupt_video_is_reported_and_the_others_are_extracted(motion_puzzle, tmp_path):
    root = tmp_path / "videos"
    good = find_videos(motion_puzzle)[:3]
    for rel in good:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(motion_puzzle / rel, root / rel)
    bad = "MoveLeft/v_MoveLeft_g09_c01.avi"
    (root / bad).parent.mkdir(parents=True, exist_ok=True)
    (root / bad).write_bytes(np.random.default_rng(1).bytes(5000))
    empty = "MoveUp/v_MoveUp_g09_c02.avi"
    (root / empty).parent.mkdir(parents=True, exist_ok=True)
    (root / empty).touch()

    report = extract_flow(root, tmp_path / "cache", backend="dis", progress=False)
    assert sorted(report.failed) == sorted([bad, empty])
    assert str(root / bad) in report.failed[bad] and "cannot read video" in report.failed[bad]
    assert "empty" in report.failed[empty]
    assert report.extracted == sorted(good)
    assert f"FAILED {bad}" in str(report) and "3 extracted" in str(report)
    done = [p.relative_to(tmp_path / "cache").as_posix() for p in video_folders(tmp_path / "cache")]
    assert done == sorted(os.path.splitext(r)[0] for r in good)  # nothing at all for the bad ones
    assert not list((tmp_path / "cache").rglob(f"{TMP_DIR_PREFIX}*"))
    # a rerun retries only the failures
    again = extract_flow(root, tmp_path / "cache", backend="dis", progress=False)
    assert again.extracted == [] and sorted(again.failed) == sorted([bad, empty]) and len(again.skipped) == 3


def test_a_one_frame_video_cannot_give_flow(tmp_path):
    from fusionkit.data.video import write_video

    write_video(tmp_path / "videos" / "A" / "v_A_g01_c01.avi", np.zeros((1, 32, 32, 3), np.uint8))
    report = extract_flow(tmp_path / "videos", tmp_path / "cache", progress=False)
    assert "only 1 frame(s)" in report.failed["A/v_A_g01_c01.avi"]


def test_leftover_partial_folders_are_removed(motion_puzzle, motion_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(motion_cache, cache)
    victim = video_folders(cache)[0]
    shutil.rmtree(victim)
    partial = victim.parent / f"{TMP_DIR_PREFIX}{victim.name}.abc123"  # as a killed run leaves it
    partial.mkdir()
    (partial / "img_00001.jpg").write_bytes(b"half a jpeg")
    report = extract_flow(motion_puzzle, cache, backend="dis", progress=False)
    assert report.extracted == [victim.relative_to(cache).as_posix() + ".avi"]
    assert not partial.exists() and not list(cache.rglob(f"{TMP_DIR_PREFIX}*"))
    assert tree_digest(cache) == tree_digest(motion_cache)


def test_extraction_in_worker_processes_gives_the_same_cache(motion_puzzle, motion_cache, tmp_path):
    report = extract_flow(motion_puzzle, tmp_path / "cache", backend="dis", workers=2, progress=False)
    assert len(report.extracted) == 16 and not report.failed
    assert tree_digest(tmp_path / "cache") == tree_digest(motion_cache)


def test_find_videos_lists_class_folders_only(tmp_path):
    for rel in ["B/v_b.avi", "A/v_a.MP4", "A/notes.txt", "A/.v_hidden.avi", "top.avi", "A/deeper/v.avi"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert find_videos(tmp_path) == ["A/v_a.MP4", "B/v_b.avi"]
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        find_videos(tmp_path / "nope")


# --- the kill test ---------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fusionkit.cli", *args]


def _folders_being_written(cache: Path) -> list[Path]:
    """Folders (hidden or not) under ``cache`` holding some files but no meta.json yet."""
    found = []
    for p in cache.glob("*/*"):
        try:
            if p.is_dir() and not (p / META_FILE).exists() and any(p.iterdir()):
                found.append(p)
        except FileNotFoundError:  # renamed into place while we looked
            pass
    return found


def test_a_killed_extraction_leaves_only_complete_folders_and_resumes_to_the_same_bytes(tmp_path, capsys):
    """SIGKILL `fusionkit extract-flow` mid-run: every video folder that exists is complete; a rerun
    finishes the job, and the cache is byte-identical to an uninterrupted run's."""
    assert "if __name__ == \"__main__\":" in (REPO / "fusionkit" / "cli.py").read_text()
    root = make_puzzles("motion", tmp_path / "videos", videos_per_class=12, frames=16, size=64, seed=1,
                        clips_per_group=3, progress=False)
    n = len(find_videos(root))
    assert n == 48
    reference = tmp_path / "reference"
    assert not extract_flow(root, reference, backend="dis", progress=False).failed

    out = tmp_path / "cache"
    log = (tmp_path / "killed.log").open("wb")
    proc = subprocess.Popen(_cli("extract-flow", "--root", str(root), "--out", str(out), "--workers", "1"),
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 120
        ready_since = None
        while True:
            complete = [p for p in video_folders(out) if (p / META_FILE).is_file()] if out.is_dir() else []
            if len(complete) >= 2:
                # kill while a video's files are being written, if we catch that moment (we nearly
                # always do), so that a non-atomic writer would leave a half-written folder
                ready_since = ready_since or time.monotonic()
                if _folders_being_written(out) or time.monotonic() - ready_since > 2:
                    proc.send_signal(signal.SIGKILL)
                    break
            assert proc.poll() is None, "extract-flow ended before it could be killed: " + \
                (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline, "extract-flow made no progress"
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL

    folders = video_folders(out)
    assert 2 <= len(folders) < n, len(folders)  # killed part way
    for folder in folders:  # no incomplete video folder
        assert sorted(os.listdir(folder)) == expected_entry_files(16), folder
    for folder in (p for p in out.glob("*/*") if p.name.startswith(".")):
        assert folder.name.startswith(TMP_DIR_PREFIX)  # only the hidden temporary folder of the killed video

    # rerun (in this process: a second subprocess would only pay the start-up again)
    rc = cli.main(["extract-flow", "--root", str(root), "--out", str(out), "--workers", "1", "--quiet"])
    assert rc == 0
    assert f"{n - len(folders)} extracted, {len(folders)} already done, 0 failed" in capsys.readouterr().out
    assert not list(out.rglob(f"{TMP_DIR_PREFIX}*"))
    assert tree_digest(out) == tree_digest(reference)


# --- the CLI ---------------------------------------------------------------------------------
def test_cli_make_puzzles_then_extract_flow(tmp_path, capsys):
    out = tmp_path / "conj"
    rc = cli.main(["make-puzzles", "--puzzle", "conjunction", "--out", str(out), "--videos-per-class", "4",
                   "--frames", "5", "--size", "32", "--seed", "2", "--quiet"])
    assert rc == 0
    assert f"wrote puzzle 'conjunction' to {out}" in capsys.readouterr().out
    split = load_ucf101_split(out)
    assert split.classes == ["RedLeft", "RedRight", "BlueLeft", "BlueRight"]
    # CLI defaults: 3 clips per group -> groups of 4 videos per class: g01 (c01-c03) and g02 (c01)
    assert len(split.train) + len(split.test) == 16 and split.missing_videos(out) == []
    assert read_video(out / split.train[0].path).shape == (5, 32, 32, 3)
    meta = json.loads((out / "puzzle.json").read_text())
    assert (meta["frames"], meta["size"], meta["seed"], meta["videos_per_class"]) == (5, 32, 2, 4)

    rc = cli.main(["extract-flow", "--root", str(out), "--out", str(tmp_path / "cache"), "--backend", "farneback",
                   "--quiet"])
    assert rc == 0
    assert "16 extracted, 0 already done, 0 failed" in capsys.readouterr().out
    assert read_cache_meta(tmp_path / "cache" / split.test[0].video_id)["backend"] == "farneback"


def test_cli_make_puzzles_all_writes_one_folder_per_puzzle(tmp_path, capsys):
    from fusionkit.data.puzzles import PUZZLES

    rc = cli.main(["make-puzzles", "--puzzle", "all", "--out", str(tmp_path), "--videos-per-class", "4",
                   "--frames", "6", "--size", "16", "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PUZZLES)
    for name in PUZZLES:
        assert json.loads((tmp_path / name / "puzzle.json").read_text())["puzzle"] == name


def test_cli_unknown_backend_exits_2_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["extract-flow", "--root", str(tmp_path), "--out", str(tmp_path / "c"), "--backend", "raft"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'raft'" in err and "dis" in err and "farneback" in err


def test_cli_unavailable_backend_exits_2_saying_how_to_install_it(motion_puzzle, tmp_path, capsys):
    import cv2

    if hasattr(cv2, "optflow"):
        pytest.skip("this OpenCV has the contrib modules: tvl1 is available")
    rc = cli.main(["extract-flow", "--root", str(motion_puzzle), "--out", str(tmp_path / "c"), "--backend", "tvl1"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("fusionkit extract-flow: error:") and "opencv-contrib-python-headless" in err


def test_cli_missing_root_exits_2(tmp_path, capsys):
    rc = cli.main(["extract-flow", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "c"), "--quiet"])
    assert rc == 2
    assert "is not a folder" in capsys.readouterr().err


def test_cli_extract_flow_exits_1_when_a_video_fails(tmp_path, capsys):
    (tmp_path / "videos" / "A").mkdir(parents=True)
    (tmp_path / "videos" / "A" / "v_bad.avi").write_bytes(b"\x00" * 1000)
    rc = cli.main(["extract-flow", "--root", str(tmp_path / "videos"), "--out", str(tmp_path / "c"), "--quiet"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "1 failed" in out and "FAILED A/v_bad.avi" in out


def test_cli_unknown_puzzle_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["make-puzzles", "--puzzle", "colour", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "invalid choice: 'colour'" in capsys.readouterr().err


def test_cli_bad_make_puzzles_arguments_exit_2_with_the_reason(tmp_path, capsys):
    # 2 videos per class in groups of 3: a single group cannot be split into train and test
    rc = cli.main(["make-puzzles", "--puzzle", "motion", "--out", str(tmp_path), "--videos-per-class", "2", "--quiet"])
    assert rc == 2
    assert "test_groups" in capsys.readouterr().err
