"""The flow cache repairs itself (manifests), reports truncated videos, explains a wrong root layout
and honours the umask (issue 16, items 2, 4, 5 and 7)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest

from fusionkit.data.atomic import atomic_directory, atomic_write_text
from fusionkit.data.dataset import DatasetError, TwoStreamDataset
from fusionkit.data.flow import (
    CACHE_INFO_FILE,
    META_FILE,
    CacheEntryError,
    VideoLayoutError,
    check_cache_entry,
    extract_flow,
    find_videos,
    frame_name,
)
from fusionkit.data.splits import VideoRecord, load_ucf101_split
from fusionkit.data.video import container_frame_count, read_video, write_video


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def cache(motion_cache, tmp_path) -> Path:
    """A writable copy of the session's extracted cache (extracted from ``motion_puzzle``)."""
    copy = tmp_path / "cache"
    shutil.copytree(motion_cache, copy)
    return copy


# --- item 2: manifests, cheap verification, repair -----------------------------------------------
def test_meta_records_each_files_size(motion_cache):
    entry = next(p for p in sorted(motion_cache.glob("*/*")) if p.is_dir())
    meta = json.loads((entry / META_FILE).read_text())
    assert (meta["frames"], meta["flows"]) == (12, 11)
    assert len(meta["files"]) == 12 + 2 * 11
    assert meta["files"] == {p.name: p.stat().st_size for p in entry.iterdir() if p.suffix == ".jpg"}


def test_a_rerun_repairs_truncated_and_missing_files_to_the_same_bytes(motion_puzzle, motion_cache, cache):
    videos = find_videos(motion_puzzle)
    a, b = (cache / os.path.splitext(v)[0] for v in videos[:2])
    truncate(a / frame_name("flow_x", 3))
    (b / frame_name("img", 0)).unlink()
    report = extract_flow(motion_puzzle, cache, backend="dis", progress=False)
    assert sorted(report.repaired) == sorted(videos[:2])
    assert "flow_x_00004.jpg is" in report.repaired[videos[0]] and "when written" in report.repaired[videos[0]]
    assert "img_00001.jpg is missing" in report.repaired[videos[1]]
    assert report.extracted == [] and report.failed == {} and len(report.skipped) == 14
    assert "2 repaired" in str(report) and f"REPAIRED {videos[0]}" in str(report)
    assert tree_digest(cache) == tree_digest(motion_cache)  # repaired exactly; no .partial-* left


def test_verify_decodes_what_the_cheap_check_cannot_see(motion_puzzle, motion_cache, cache):
    video = find_videos(motion_puzzle)[2]
    entry = cache / os.path.splitext(video)[0]
    target = entry / frame_name("flow_y", 5)
    data = bytearray(target.read_bytes())
    data[-2:] = b"\0\0"  # same size, but the JPEG's end marker is gone
    target.write_bytes(bytes(data))
    assert check_cache_entry(entry) is None  # sizes match the manifest
    assert "flow_y_00006.jpg is truncated" in check_cache_entry(entry, decode=True)
    assert extract_flow(motion_puzzle, cache, progress=False).repaired == {}
    report = extract_flow(motion_puzzle, cache, progress=False, verify=True)
    assert list(report.repaired) == [video] and len(report.skipped) == 15
    assert tree_digest(cache) == tree_digest(motion_cache)


def test_folders_without_a_manifest_are_checked_by_name_and_decoded_with_verify(motion_puzzle, cache):
    """Caches written before manifests existed: a missing or empty file is found by name; a
    truncated one only by decoding (verify=True)."""
    videos = find_videos(motion_puzzle)
    entries = [cache / os.path.splitext(v)[0] for v in videos[:2]]
    for entry in entries:
        meta = json.loads((entry / META_FILE).read_text())
        del meta["files"]
        (entry / META_FILE).write_text(json.dumps(meta, indent=1))
    (entries[0] / frame_name("flow_x", 0)).write_bytes(b"")
    truncate(entries[1] / frame_name("img", 4))
    report = extract_flow(motion_puzzle, cache, progress=False)
    assert list(report.repaired) == [videos[0]] and "flow_x_00001.jpg is empty" in report.repaired[videos[0]]
    report = extract_flow(motion_puzzle, cache, progress=False, verify=True)
    assert list(report.repaired) == [videos[1]] and "img_00005.jpg is truncated" in report.repaired[videos[1]]
    assert "files" in json.loads((entries[1] / META_FILE).read_text())  # re-extracted with a manifest


def test_reading_a_truncated_flow_jpeg_names_the_video_and_the_repair_command(motion_puzzle, cache):
    split = load_ucf101_split(motion_puzzle)
    record = split.test[0]
    truncate(cache / record.video_id / frame_name("flow_x", 0))
    ds = TwoStreamDataset([record], cache, root=motion_puzzle, num_segments=1, new_length=11, train=False)
    with pytest.raises(CacheEntryError) as info:
        ds[0]  # reads every flow field: the only snippet holds all 11
    message = str(info.value)
    assert f"video {record.path}" in message and "flow_x_00001.jpg is truncated" in message
    assert f"fusionkit extract-flow --root {motion_puzzle} --out {cache} --backend dis" in message
    assert isinstance(info.value, FileNotFoundError)  # what the loaders raised before


def test_a_missing_flow_jpeg_is_found_before_training_with_the_repair_command(motion_puzzle, cache):
    split = load_ucf101_split(motion_puzzle)
    (cache / split.train[1].video_id / frame_name("flow_y", 7)).unlink()
    with pytest.raises(DatasetError) as info:
        TwoStreamDataset(split.train, cache, num_segments=3, new_length=2)
    message = str(info.value)
    assert "1 of 8 videos cannot be used" in message and "flow_y_00008.jpg is missing" in message
    assert split.train[1].path in message
    # the root extract-flow recorded in the cache, not a placeholder
    assert f"fusionkit extract-flow --root {motion_puzzle.resolve()} --out {cache}" in message
    assert json.loads((cache / CACHE_INFO_FILE).read_text())["root"] == str(motion_puzzle.resolve())


# --- item 4: truncated videos ------------------------------------------------------------------
def _truncated_video(root: Path) -> str:
    frames = np.random.default_rng(0).integers(0, 255, (30, 32, 32, 3)).astype(np.uint8)
    rel = "A/v_A_g01_c01.avi"
    write_video(root / rel, frames)
    truncate(root / rel, 0.6)
    return rel


def test_a_truncated_video_is_extracted_with_a_warning_in_the_report_and_its_meta(tmp_path):
    root = tmp_path / "videos"
    rel = _truncated_video(root)
    decoded = len(read_video(root / rel))
    assert container_frame_count(root / rel) == 30 and 2 <= decoded < 30
    with pytest.warns(RuntimeWarning, match=rf"1 video\(s\) decode to fewer frames.*decoded {decoded} of the 30"):
        report = extract_flow(root, tmp_path / "cache", progress=False)
    assert report.extracted == [rel] and "looks truncated" in report.truncated[rel]
    assert f"TRUNCATED {rel}" in str(report) and "1 truncated" in str(report)
    meta = json.loads((tmp_path / "cache" / "A" / "v_A_g01_c01" / META_FILE).read_text())
    assert meta["truncated"] == {"decoded": decoded, "container": 30} and meta["frames"] == decoded
    with pytest.warns(RuntimeWarning):  # still reported when the video is skipped next time
        assert list(extract_flow(root, tmp_path / "cache", progress=False).truncated) == [rel]

    with pytest.warns(RuntimeWarning, match="fewer frames than their container promises"):
        ds = TwoStreamDataset([VideoRecord(rel, 0)], tmp_path / "cache", num_segments=2, new_length=2)
    assert f"{rel}: decoded {decoded} of the 30 frames" in ds.summary()


def test_a_complete_video_gives_no_truncation_warning(tmp_path):
    write_video(tmp_path / "videos" / "A" / "v.avi", np.zeros((6, 32, 32, 3), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = extract_flow(tmp_path / "videos", tmp_path / "cache", progress=False)
    assert report.truncated == {} and "truncated" not in json.loads(
        (tmp_path / "cache" / "A" / "v" / META_FILE).read_text())


def test_truncated_real_footage_decodes_fewer_frames_than_its_header_promises(real_video, tmp_path):
    source = real_video("Megamind.avi")
    assert container_frame_count(source) == len(read_video(source)) == 270  # a complete file keeps its promise
    copy = tmp_path / "Megamind.avi"
    shutil.copy(source, copy)
    truncate(copy, 0.5)
    assert container_frame_count(copy) == 270 and len(read_video(copy)) < 270


def test_opencvs_tree_sample_is_itself_truncated(real_video, tmp_path):
    """OpenCV's tree.avi promises 444 frames (its AVI header; cv2.CAP_PROP_FRAME_COUNT says so too)
    but holds only 69 video chunks: extract_flow says so."""
    root = tmp_path / "videos"
    (root / "Tree").mkdir(parents=True)
    shutil.copy(real_video("tree.avi"), root / "Tree" / "tree.avi")
    with pytest.warns(RuntimeWarning, match="decoded 68 of the 444 frames its container promises"):
        report = extract_flow(root, tmp_path / "cache", backend="farneback", progress=False)
    assert list(report.truncated) == ["Tree/tree.avi"] and report.extracted == ["Tree/tree.avi"]


# --- item 5: a root in the wrong layout ------------------------------------------------------------
def test_videos_directly_in_the_root_are_named_with_the_expected_layout(tmp_path):
    for i in range(3):
        (tmp_path / f"v_{i}.avi").write_bytes(b"x")
    with pytest.raises(VideoLayoutError, match=r"expected layout <root>/<Class>/<video>\.avi.*found 3 video file\(s\) "
                                               r"directly in"):
        extract_flow(tmp_path, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()  # nothing written for a wrong root


def test_videos_too_deep_name_the_root_to_pass(tmp_path):
    (tmp_path / "UCF101" / "UCF-101" / "Fencing").mkdir(parents=True)
    (tmp_path / "UCF101" / "UCF-101" / "Fencing" / "v_Fencing_g01_c01.avi").write_bytes(b"x")
    with pytest.raises(VideoLayoutError, match=f"deeper down.*pass the folder holding the class folders, "
                                               f"{tmp_path / 'UCF101' / 'UCF-101'}, as the root"):
        find_videos(tmp_path / "UCF101")


def test_a_root_without_videos_says_so(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    with pytest.raises(VideoLayoutError, match=r"found no video files \(\.avi"):
        find_videos(tmp_path)
    assert isinstance(VideoLayoutError("x"), FileNotFoundError)  # the CLI reports it as an error (exit 2)


# --- item 7: the umask ------------------------------------------------------------------------
@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.parametrize("umask", [0o002, 0o077])
def test_cache_folders_and_atomic_files_get_the_umask_permissions(tmp_path, umask):
    write_video(tmp_path / "videos" / "A" / "v.avi", np.zeros((3, 32, 32, 3), np.uint8))
    old = os.umask(umask)
    try:
        extract_flow(tmp_path / "videos", tmp_path / "cache", progress=False)
        atomic_write_text(tmp_path / "note.txt", "x")
        with atomic_directory(tmp_path / "folder"):
            pass
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "cache" / "A" / "v") == 0o777 & ~umask
    assert mode(tmp_path / "folder") == 0o777 & ~umask
    for f in [tmp_path / "note.txt", tmp_path / "cache" / CACHE_INFO_FILE, tmp_path / "cache" / "A" / "v" / META_FILE]:
        assert mode(f) == 0o666 & ~umask, f


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_overwriting_a_file_atomically_keeps_its_mode(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("a")
    path.chmod(0o640)
    atomic_write_text(path, "b")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and path.read_text() == "b"
