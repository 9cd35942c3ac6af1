"""Dataset errors that point the right way, all at once, and skip_bad (issue 16, item 3)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from fusionkit.data.dataset import DatasetError, TwoStreamDataset, build_dataset, check_dataset
from fusionkit.data.flow import extract_flow, frame_name
from fusionkit.data.splits import load_ucf101_split


@pytest.fixture
def damaged(motion_puzzle, motion_cache, tmp_path):
    """A copy of the motion puzzle and its cache with one video of each kind of problem:
    ``missing`` deleted from the root (and the cache), ``failed`` replaced by garbage (extract-flow
    reports it FAILED), ``pending`` never extracted, ``broken`` missing a flow file."""
    root, cache = tmp_path / "videos", tmp_path / "cache"
    shutil.copytree(motion_puzzle, root)
    shutil.copytree(motion_cache, cache)
    train = load_ucf101_split(root).train
    missing, failed, pending, broken = train[0], train[2], train[4], train[6]
    (root / missing.path).unlink()
    for r in (missing, failed, pending):
        shutil.rmtree(cache / r.video_id)
    (root / failed.path).write_bytes(np.random.default_rng(0).bytes(3000))
    report = extract_flow(root, cache, videos=[failed.path], progress=False)
    assert list(report.failed) == [failed.path]
    (cache / broken.video_id / frame_name("flow_x", 2)).unlink()
    return root, cache, {"missing": missing, "failed": failed, "pending": pending, "broken": broken}


def test_every_problem_is_reported_at_once_grouped_with_its_fix(damaged):
    root, cache, bad = damaged
    with pytest.raises(DatasetError) as info:
        check_dataset("puzzles:motion", root, cache)
    message, problems = str(info.value), info.value.problems
    assert message.startswith(f"4 of 16 videos cannot be used (FusionkitCache at {cache})")
    command = f"`fusionkit extract-flow --root {root} --out {cache} --backend dis`"
    assert f"- listed in the split file but absent from the video root (1): put each video in {root} (download it " \
           f"again) or remove its line from the split file" in message
    assert f"{bad['missing'].path}: not at {root / bad['missing'].path}" in message
    assert f"- extraction failed (1): extract-flow reported them FAILED (why, below): fix or replace each video, " \
           f"then rerun {command}" in message
    assert f"{bad['failed'].path}: cannot read video {root / bad['failed'].path}" in message
    assert f"- no extracted frames/flow (1): not extracted yet: run {command}" in message
    assert f"- frames or flow damaged (1): their cache folders are damaged: {command} re-extracts them" in message
    assert "flow_x_00003.jpg is missing" in message
    assert {kind: list(group) for kind, group in problems.items()} == {
        "missing_video": [bad["missing"].path], "failed": [bad["failed"].path],
        "not_extracted": [bad["pending"].path], "broken": [bad["broken"].path]}
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)


def test_building_the_dataset_reports_the_same_problems(damaged):
    root, cache, bad = damaged
    with pytest.raises(DatasetError, match="4 of 8 videos cannot be used") as info:
        build_dataset("puzzles:motion", root, cache, "train", num_segments=2, new_length=2)
    assert set(info.value.problems) == {"missing_video", "failed", "not_extracted", "broken"}
    # without the root, the one extract-flow recorded in the cache still tells the kinds apart
    with pytest.raises(DatasetError) as info:
        TwoStreamDataset(load_ucf101_split(root).train, cache, new_length=2)
    assert set(info.value.problems) == {"missing_video", "failed", "not_extracted", "broken"}


def test_the_check_finds_too_short_videos_and_their_fix(motion_puzzle, motion_cache):
    with pytest.raises(DatasetError, match=r"fewer flow fields than the snippet length \(16\): use a smaller "
                                           r"new_length \(the shortest of these has 11 flow fields\)"):
        check_dataset("puzzles:motion", motion_puzzle, motion_cache, new_length=12)
    report = check_dataset("puzzles:motion", motion_puzzle, motion_cache, new_length=11, check="decode")
    assert len(report.usable) == 16 and str(report).startswith("all 16 videos usable")


def test_skip_bad_builds_the_dataset_from_the_rest_and_says_what_it_left_out(damaged):
    root, cache, bad = damaged
    with pytest.warns(RuntimeWarning, match=r"left out 4 of 8 videos that cannot be used \(skip_bad=True"):
        ds = build_dataset("puzzles:motion", root, cache, "train", num_segments=2, new_length=2, skip_bad=True)
    assert len(ds) == 4 and {r.path for r in ds.records}.isdisjoint(r.path for r in bad.values())
    assert sorted(ds.left_out) == sorted(r.path for r in bad.values())
    assert ds.left_out[bad["failed"].path].startswith("extraction failed: cannot read video")
    assert ds.left_out[bad["missing"].path].startswith("listed in the split file but absent from the video root")
    assert "4 videos; 4 of 8 videos cannot be used" in ds.summary()
    item = ds[0]  # the rest works
    assert item["video_id"] == ds.records[0].video_id and item["flow"].shape[1] == 4


def test_skip_bad_with_nothing_usable_still_raises(motion_puzzle, tmp_path):
    split = load_ucf101_split(motion_puzzle)
    with pytest.raises(DatasetError, match="(?s)8 of 8 videos cannot be used.*not extracted yet: run `fusionkit "
                                           f"extract-flow --root {motion_puzzle} --out {tmp_path}`"):
        TwoStreamDataset(split.train, tmp_path, root=motion_puzzle, skip_bad=True)


def test_a_root_in_the_wrong_layout_is_diagnosed_when_no_listed_video_is_there(motion_puzzle, tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        shutil.copy(motion_puzzle / name, root / name)
    for video in sorted(motion_puzzle.glob("*/*.avi"))[:3]:
        shutil.copy(video, root / video.name)  # flat: no class folders
    with pytest.raises(DatasetError, match=r"(?s)None of the videos is there: no videos in .* found 3 video file\(s\) "
                                           r"directly in"):
        check_dataset("puzzles:motion", root, tmp_path / "cache")
