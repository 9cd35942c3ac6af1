"""Shared fixtures: a small rendered puzzle dataset and its extracted flow cache (session-scoped,
built once per test run in a temporary folder), and a helper that finds real footage.

Sizes are kept small so that the whole suite stays fast on 2 CPU cores. The frame size is 64
(not 48): decord 0.6.0 fails on frames 16, 24 or 48 pixels wide ("DECORDArrayCopyFromTo: The size
must exactly match"), so 48-pixel videos would all be read through the PyAV fallback, with a
warning each (tests/test_video.py checks that fallback on purpose).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Parameters of the shared `motion` dataset: 4 classes x 4 videos, 2 clips per group -> groups 1-2
# per class, group 1 (the default test_groups = 1) is the test set: 8 train and 8 test videos.
MOTION_PUZZLE_PARAMS = dict(videos_per_class=4, frames=12, size=64, seed=0, clips_per_group=2)

# Real footage shipped by Debian's opencv-doc package (OpenCV's sample videos).
REAL_VIDEO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
REQUIRE_REAL_VIDEO_ENV = "FUSIONKIT_REQUIRE_REAL_VIDEO"


def find_real_video(name: str, directory: Path = REAL_VIDEO_DIR) -> Path:
    """Path of one of OpenCV's sample videos (vtest.avi, Megamind.avi, tree.avi, Megamind_bugy.avi).

    Skips the calling test where it is missing, unless FUSIONKIT_REQUIRE_REAL_VIDEO is set (as
    .ci/run sets it), in which case the test fails saying how to install it.
    """
    path = Path(directory) / name
    if path.is_file():
        return path
    message = (f"real test video {path} is missing: install Debian's opencv-doc package "
               f"(`apt-get install opencv-doc`), which ships OpenCV's sample videos")
    if os.environ.get(REQUIRE_REAL_VIDEO_ENV):
        pytest.fail(f"{message} ({REQUIRE_REAL_VIDEO_ENV} is set, so it is required)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def real_video():
    """``real_video("tree.avi")`` -> Path of OpenCV's sample video (see :func:`find_real_video`)."""
    return find_real_video


@pytest.fixture(scope="session")
def motion_puzzle(tmp_path_factory) -> Path:
    """Root of a small rendered `motion` puzzle dataset in the UCF-101 layout (videos, ground-truth
    `.flow.npz`, classInd.txt, trainlist01.txt, testlist01.txt). Treat it as read-only."""
    from fusionkit.data.puzzles import make_puzzles

    root = tmp_path_factory.mktemp("motion_puzzle")
    return make_puzzles("motion", root, progress=False, **MOTION_PUZZLE_PARAMS)


@pytest.fixture(scope="session")
def motion_cache(motion_puzzle, tmp_path_factory) -> Path:
    """Frame/flow cache of `motion_puzzle` extracted with the "dis" backend:
    `<cache>/<Class>/<video>/img_00001.jpg, flow_x_00001.jpg, flow_y_00001.jpg, meta.json`.
    Treat it as read-only."""
    from fusionkit.data.flow import extract_flow

    cache = tmp_path_factory.mktemp("motion_cache")
    report = extract_flow(motion_puzzle, cache, backend="dis", workers=1, progress=False)
    assert not report.failed, str(report)
    return cache


@pytest.fixture(autouse=True)
def _registries_restored():
    """Each test's registrations (a student block defined in ``__main__``, a toy method) are undone
    after it: a block whose source cannot be read makes every later run uncacheable
    (fusionkit.lab.run_cache), so one test's registry must not leak into the next."""
    from fusionkit.fusion import FUSIONS
    from fusionkit.methods.recipe import METHODS
    from fusionkit.training.schedules import SCHEDULES

    registries = (FUSIONS, METHODS, SCHEDULES)
    for registry in registries:
        registry._load()
    saved = [dict(registry) for registry in registries]
    yield
    for registry, entries in zip(registries, saved):
        dict.clear(registry)
        dict.update(registry, entries)
