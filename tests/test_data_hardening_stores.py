"""Bring your own flow: MMAction2 / dense_flow rawframes with their annotation lists, and the u/v
trees of twostreamfusion, read and checked like extract-flow's cache (issue 16, item 13).

The layouts are built here from the session's extract-flow cache (the same JPEGs under the other
layouts' names), so items must come out identical to those read from the cache itself."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from fusionkit.data import transforms as T
from fusionkit.data.dataset import DatasetError, TwoStreamDataset
from fusionkit.data.flow import CacheEntryError, frame_name, read_cache_meta
from fusionkit.data.splits import SplitError, load_ucf101_split
from fusionkit.data.stores import RawframeStore, UVFlowStore, load_rawframe_list


def _items(ds):
    return [ds[i] for i in range(len(ds))]


def _same_items(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x["label"] == y["label"] and torch.equal(x["rgb"], y["rgb"]) and torch.equal(x["flow"], y["flow"])


def make_rawframes(cache: Path, records, out: Path, flow_prefix: str = "flow_") -> Path:
    """MMAction2's layout and annotation list (``<folder> <total frames> <0-based label>``)."""
    lines = []
    for r in records:
        entry, dest = cache / r.video_id, out / r.video_id
        dest.mkdir(parents=True)
        meta = read_cache_meta(entry)
        for i in range(meta["frames"]):
            shutil.copy(entry / frame_name("img", i), dest / f"img_{i + 1:05d}.jpg")
        for i in range(meta["flows"]):
            for k in "xy":
                shutil.copy(entry / frame_name(f"flow_{k}", i), dest / f"{flow_prefix}{k}_{i + 1:05d}.jpg")
        lines.append(f"{r.video_id} {meta['frames']} {r.label}")
    ann = out / "ucf101_test_split_1_rawframes.txt"
    ann.write_text("\n".join(lines) + "\n")
    return ann


def make_uv(cache: Path, records, flow_root: Path, rgb_root: Path) -> None:
    """twostreamfusion's trees: u/<video>/frame000001.jpg, v/..., jpegs_256/<video>/frame000001.jpg,
    folders named by the bare video name (no class folder), as its downloads are."""
    for r in records:
        entry, name = cache / r.video_id, os.path.basename(r.video_id)
        meta = read_cache_meta(entry)
        for sub in (flow_root / "u" / name, flow_root / "v" / name, rgb_root / name):
            sub.mkdir(parents=True)
        for i in range(meta["frames"]):
            shutil.copy(entry / frame_name("img", i), rgb_root / name / f"frame{i + 1:06d}.jpg")
        for i in range(meta["flows"]):
            shutil.copy(entry / frame_name("flow_x", i), flow_root / "u" / name / f"frame{i + 1:06d}.jpg")
            shutil.copy(entry / frame_name("flow_y", i), flow_root / "v" / name / f"frame{i + 1:06d}.jpg")


@pytest.fixture
def reference(motion_puzzle, motion_cache):
    split = load_ucf101_split(motion_puzzle)
    ds = TwoStreamDataset(split.test, motion_cache, num_segments=3, new_length=3, train=False, transform=T.Compose([]))
    return split.test, _items(ds)


@pytest.mark.parametrize("flow_prefix, template", [("flow_", "flow_{}_{:05d}.jpg"), ("", "{}_{:05d}.jpg")])
def test_mmaction2_rawframes_read_like_the_cache(motion_cache, reference, tmp_path, flow_prefix, template):
    records, expected = reference
    ann = make_rawframes(motion_cache, records, tmp_path / "rawframes", flow_prefix)
    listed = load_rawframe_list(ann)
    assert [(r.video_id, r.label, r.total_frames) for r in listed] == [(r.video_id, r.label, 12) for r in records]
    store = RawframeStore(tmp_path / "rawframes", flow_template=template)
    ds = TwoStreamDataset(listed, store, num_segments=3, new_length=3, train=False, transform=T.Compose([]))
    _same_items(_items(ds), expected)


def test_twostreamfusion_uv_trees_read_like_the_cache(motion_cache, reference, tmp_path):
    records, expected = reference
    make_uv(motion_cache, records, tmp_path / "tvl1_flow", tmp_path / "jpegs_256")
    store = UVFlowStore(tmp_path / "tvl1_flow", tmp_path / "jpegs_256")
    ds = TwoStreamDataset(records, store, num_segments=3, new_length=3, train=False, transform=T.Compose([]))
    _same_items(_items(ds), expected)
    assert "RGB frames in" in store.describe()


def test_the_quantisation_bound_is_a_parameter(motion_cache, reference, tmp_path):
    records, expected = reference
    make_uv(motion_cache, records[:2], tmp_path / "flow", tmp_path / "rgb")
    store = UVFlowStore(tmp_path / "flow", tmp_path / "rgb", bound=10.0)
    ds = TwoStreamDataset(records[:2], store, num_segments=3, new_length=3, train=False, transform=T.Compose([]))
    for item, ref in zip(_items(ds), expected):  # dequantised on [-10, 10]: half the displacement
        torch.testing.assert_close(item["flow"], ref["flow"] / 2)


def test_missing_frames_of_brought_flow_are_named_with_their_fix(motion_cache, reference, tmp_path):
    records, _ = reference
    ann = make_rawframes(motion_cache, records, tmp_path / "raw")
    (tmp_path / "raw" / records[0].video_id / "flow_y_00004.jpg").unlink()  # a gap
    (tmp_path / "raw" / records[1].video_id / "img_00012.jpg").unlink()  # fewer frames than the list says
    shutil.rmtree(tmp_path / "raw" / records[2].video_id)
    with pytest.raises(DatasetError) as info:
        TwoStreamDataset(load_rawframe_list(ann), RawframeStore(tmp_path / "raw"), new_length=3)
    message = str(info.value)
    assert message.startswith("3 of 8 videos cannot be used (RawframeStore at")
    assert f"{tmp_path / 'raw' / records[0].video_id / 'flow_y_00004.jpg'} is missing (7 numbered after it)" in message
    assert "the annotation list says 12 frames, 11 found" in message
    assert f"no folder {tmp_path / 'raw' / records[2].video_id}" in message
    assert "re-extract these videos with MMAction2's tools/data/build_rawframes.py (denseflow)" in message
    assert "`fusionkit extract-flow --root <videos> --out <cache>`" in message


def test_a_wrong_file_name_template_says_what_the_folder_holds(motion_cache, reference, tmp_path):
    records, _ = reference
    ann = make_rawframes(motion_cache, records[:1], tmp_path / "raw", flow_prefix="")  # x_00001.jpg
    with pytest.raises(DatasetError, match=r"no flow images named like flow_x_00001\.jpg in .* \(it holds e\.g\. "
                                           r"img_00001\.jpg, img_00002\.jpg, img_00003\.jpg; see the file name "
                                           r"template"):
        TwoStreamDataset(load_rawframe_list(ann), RawframeStore(tmp_path / "raw"))


def test_an_unreadable_brought_frame_names_the_video_when_read(motion_cache, reference, tmp_path):
    records, _ = reference
    make_uv(motion_cache, records[:1], tmp_path / "flow", tmp_path / "rgb")
    name = os.path.basename(records[0].video_id)
    target = tmp_path / "flow" / "v" / name / "frame000001.jpg"
    target.write_bytes(target.read_bytes()[:100])
    store = UVFlowStore(tmp_path / "flow", tmp_path / "rgb")
    with pytest.raises(DatasetError, match="frame000001.jpg is truncated"):  # check="decode" finds it first
        TwoStreamDataset(records[:1], store, new_length=11, check="decode")
    ds = TwoStreamDataset(records[:1], store, num_segments=1, new_length=11, train=False)
    with pytest.raises(CacheEntryError, match=f"video {records[0].path}: flow image .*frame000001.jpg is truncated.*"
                                              f"gpu_flow"):
        ds[0]


def test_a_malformed_annotation_list_names_the_line(tmp_path):
    ann = tmp_path / "list.txt"
    ann.write_text("A/v_1 12 0\nA/v_2 twelve 0\n")
    with pytest.raises(SplitError, match=r"list.txt:2: expected '<frame folder> <total frames> <label>'"):
        load_rawframe_list(ann)
    with pytest.raises(FileNotFoundError, match="annotation list not found"):
        load_rawframe_list(tmp_path / "nope.txt")
