"""TSN sampling, the dataset's shapes and labels, and the pairing of RGB and flow under augmentation."""
import random

import numpy as np
import pytest
import torch

from fusionkit.data import transforms as T
from fusionkit.data.dataset import TwoStreamDataset, build_dataset, segment_starts
from fusionkit.data.splits import load_ucf101_split


# --- segment sampling -----------------------------------------------------------------------
def test_test_mode_takes_segment_centres():
    # 30 valid starts, 3 segments of 10: centres at 5, 15, 25 (TSN's tick/2 + tick*k)
    assert segment_starts(30, 3, train=False) == [5, 15, 25]
    assert segment_starts(10, 25, train=False) == [int(0.2 + 0.4 * k) for k in range(25)]


def test_train_mode_draws_one_start_inside_each_segment():
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(200):
        starts = segment_starts(30, 3, train=True, generator=g)
        assert [s // 10 for s in starts] == [0, 1, 2]
        seen.update(starts)
    assert seen == set(range(30))  # every start is reachable


def test_train_mode_with_fewer_starts_than_segments_spreads_them():
    starts = segment_starts(2, 5, train=True)
    assert starts == sorted(starts) and set(starts) <= {0, 1}


def test_no_valid_start_is_an_error():
    with pytest.raises(ValueError, match="fewer flow fields"):
        segment_starts(0, 3, train=True)


# --- paired transforms on a hand-made pair --------------------------------------------------
def _square_pair(h=48, w=64, l=2, box=(10, 20, 12, 16), motion=(3.0, -2.0)):
    """RGB with a red box on grey, flow (x, y) = ``motion`` inside the box and 0 elsewhere."""
    top, left, bh, bw = box
    rgb = torch.full((1, 3, h, w), 0.4)
    rgb[0, :, top:top + bh, left:left + bw] = torch.tensor([0.9, 0.2, 0.2])[:, None, None]
    flow = torch.zeros(1, 2 * l, h, w)
    flow[0, 0::2, top:top + bh, left:left + bw] = motion[0]
    flow[0, 1::2, top:top + bh, left:left + bw] = motion[1]
    return rgb, flow


def _masks(rgb, flow):
    saturation = rgb.max(1).values - rgb.min(1).values
    return saturation > 0.25, flow.abs().amax(1) > 0.5


def _iou(a, b):
    return (a & b).sum().item() / max((a | b).sum().item(), 1)


def test_hflip_mirrors_both_and_negates_flow_x_only():
    rgb, flow = _square_pair()
    frgb, fflow = T.hflip(rgb, flow)
    torch.testing.assert_close(frgb, rgb.flip(-1))
    torch.testing.assert_close(fflow[:, 0::2], -flow[:, 0::2].flip(-1))
    torch.testing.assert_close(fflow[:, 1::2], flow[:, 1::2].flip(-1))


def test_resize_scales_displacements_with_the_image():
    rgb, flow = _square_pair(h=48, w=64, box=(8, 16, 24, 32), motion=(4.0, -2.0))
    _, small = T.resize(rgb, flow, 24, 16)  # x shrinks by 4, y by 2
    centre = small[0, :, 6 + 2, 4 + 3]  # well inside the box
    torch.testing.assert_close(centre, torch.tensor([1.0, -1.0, 1.0, -1.0]))


@pytest.mark.parametrize("seed", range(20))
def test_random_crops_and_flips_keep_rgb_and_flow_registered(seed):
    random.seed(seed)
    rgb, flow = _square_pair()
    aug = T.Compose([T.MultiScaleCrop(40, scales=(1.0, 0.875, 0.75, 0.66)), T.RandomHorizontalFlip()])
    a_rgb, a_flow = aug(rgb, flow)
    assert a_rgb.shape[-2:] == a_flow.shape[-2:] == (40, 40)
    m_rgb, m_flow = _masks(a_rgb, a_flow)
    if m_rgb.sum() == 0:  # the crop missed the box: then there must be no motion either
        assert m_flow.sum() == 0
        return
    assert _iou(m_rgb, m_flow) > 0.8
    # y motion keeps its sign; x motion keeps its size (its sign depends on the flip)
    fx = a_flow[0, 0][m_flow[0]].mean().item()
    fy = a_flow[0, 1][m_flow[0]].mean().item()
    assert fy < 0 and abs(fx) > abs(fy)


def test_eval_transform_centre_crop_and_normalisation():
    rgb, flow = _square_pair(h=48, w=64)
    out_rgb, out_flow = T.eval_transform(40)(rgb, flow)
    assert out_rgb.shape == (1, 3, 40, 40) and out_flow.shape == (1, 4, 40, 40)
    # flow is divided by the +-20 px bound
    assert out_flow.abs().max().item() == pytest.approx(3.0 / 20.0 * 40 / 48, rel=0.05)
    mean = torch.tensor(T.IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(T.IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(out_rgb[0, :, 0, 0], ((torch.full((3, 1, 1), 0.4) - mean) / std)[:, 0, 0])


def test_centre_crop_larger_than_frame_is_an_error():
    rgb, flow = _square_pair(h=32, w=32)
    with pytest.raises(ValueError, match="larger than"):
        T.CenterCrop(40)(rgb, flow)


# --- the dataset on a real extracted cache ---------------------------------------------------
@pytest.fixture(scope="module")
def motion_gt_cache(motion_puzzle, tmp_path_factory):
    """A cache like extract-flow's, but holding the renderer's exact flow instead of an estimate:
    estimators smear motion into the flat background around a sprite, which would blur the
    pixel-level pairing checks below."""
    from fusionkit.data.flow import find_videos, write_cache_entry
    from fusionkit.data.puzzles import load_ground_truth_flow
    from fusionkit.data.video import read_video

    cache = tmp_path_factory.mktemp("motion_gt_cache")
    for rel in find_videos(motion_puzzle):
        frames = read_video(motion_puzzle / rel)
        write_cache_entry(cache / rel[:-4], frames, load_ground_truth_flow(motion_puzzle / rel), {"video": rel})
    return cache


def _unnormalise(rgb):
    mean = torch.tensor(T.IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(T.IMAGENET_STD)[None, :, None, None]
    return rgb * std + mean


def test_dataset_items_have_the_documented_shapes(motion_puzzle, motion_cache):
    split = load_ucf101_split(motion_puzzle)
    ds = TwoStreamDataset(split.train, motion_cache, num_segments=3, new_length=4, train=True)
    item = ds[0]
    h = w = item["rgb"].shape[-1]
    assert item["rgb"].shape == (3, 3, h, w) and item["flow"].shape == (3, 8, h, w)
    assert item["label"] == split.train[0].label and item["video_id"] == split.train[0].video_id
    test = TwoStreamDataset(split.test, motion_cache, num_segments=7, new_length=4, train=False)
    assert test[0]["rgb"].shape[0] == 7
    assert len(ds) == len(split.train) and len(test) == len(split.test)


def test_snippet_flow_matches_the_cache_in_order(motion_puzzle, motion_cache):
    """Channels x1, y1, x2, y2 ... are the flow fields t, t+1, ... of each snippet's start t."""
    from fusionkit.data.flow import load_cached_flow

    split = load_ucf101_split(motion_puzzle)
    ds = TwoStreamDataset(split.test, motion_cache, num_segments=2, new_length=3, train=False,
                          transform=T.Compose([]))
    item, starts = ds[0], ds.snippet_starts(0)
    cached = load_cached_flow(motion_cache / split.test[0].video_id, range(starts[1], starts[1] + 3))
    expected = torch.from_numpy(cached).permute(0, 3, 1, 2).reshape(6, *cached.shape[1:3])
    torch.testing.assert_close(item["flow"][1], expected)


@pytest.mark.parametrize("flip", [0.0, 1.0])
def test_augmented_sprite_pixels_coincide_with_its_flow(motion_puzzle, motion_gt_cache, flip):
    """After crops, scale jitter and flips, the moving sprite in each RGB frame sits where its flow
    is non-zero, and a flip turns leftward motion rightward (and leaves vertical motion alone)."""
    split = load_ucf101_split(motion_puzzle)
    size = 40
    aug = T.Compose([T.MultiScaleCrop(size), T.RandomHorizontalFlip(flip), T.Normalize()])
    ds = TwoStreamDataset(split.train, motion_gt_cache, num_segments=3, new_length=1, train=True, transform=aug)
    classes = load_ucf101_split(motion_puzzle).classes
    random.seed(0)
    ious, checked = [], 0
    for i in range(len(ds)):
        item = ds[i]
        rgb = _unnormalise(item["rgb"])
        flow = item["flow"] * 20.0  # back to px
        saturation = rgb.max(1).values - rgb.min(1).values
        m_rgb = saturation > 0.2
        m_flow = flow.norm(dim=1) > 0.5
        for t in range(len(rgb)):
            if m_rgb[t].sum() < 10 or m_flow[t].sum() < 10:  # the crop cut the sprite off
                continue
            ious.append(_iou(m_rgb[t], m_flow[t]))
            fx = flow[t, 0][m_flow[t]].mean().item()
            fy = flow[t, 1][m_flow[t]].mean().item()
            name = classes[item["label"]]
            expected = {"MoveLeft": (-1, 0), "MoveRight": (1, 0), "MoveUp": (0, -1), "MoveDown": (0, 1)}[name]
            ex = expected[0] * (-1 if flip else 1)
            if ex:
                assert np.sign(fx) == ex and abs(fx) > abs(fy), (name, fx, fy)
            else:
                assert np.sign(fy) == expected[1] and abs(fy) > abs(fx), (name, fx, fy)
            checked += 1
    assert checked >= len(ds)  # most snippets were checked
    assert np.median(ious) > 0.8 and min(ious) > 0.5, ious


def test_misregistered_augmentation_would_be_caught(motion_puzzle, motion_gt_cache):
    """The IoU check above can fail: flipping only the flow drops the overlap."""

    class FlipFlowOnly(T.PairedTransform):
        def __call__(self, rgb, flow):
            return rgb, T.hflip(rgb, flow)[1]

    split = load_ucf101_split(motion_puzzle)
    ds = TwoStreamDataset(split.train, motion_gt_cache, num_segments=3, new_length=1, train=False,
                          transform=FlipFlowOnly())
    item = ds[0]
    saturation = item["rgb"].max(1).values - item["rgb"].min(1).values
    ious = [_iou(saturation[t] > 0.2, item["flow"][t].norm(dim=0) > 0.5) for t in range(3)]
    assert max(ious) < 0.3


def test_missing_cache_names_the_command_to_run(motion_puzzle, tmp_path):
    split = load_ucf101_split(motion_puzzle)
    with pytest.raises(FileNotFoundError, match="fusionkit extract-flow"):
        TwoStreamDataset(split.train, tmp_path / "empty", num_segments=3)


def test_snippet_longer_than_video_is_an_error(motion_puzzle, motion_cache):
    split = load_ucf101_split(motion_puzzle)
    with pytest.raises(ValueError, match="new_length"):
        TwoStreamDataset(split.train, motion_cache, new_length=500)


def test_build_dataset_reads_the_split(motion_puzzle, motion_cache):
    train = build_dataset("puzzles:motion", motion_puzzle, motion_cache, "train", num_segments=2, new_length=2)
    test = build_dataset("puzzles:motion", motion_puzzle, motion_cache, "test", num_segments=2, new_length=2)
    assert train.train and not test.train
    assert {r.video_id for r in train.records}.isdisjoint(r.video_id for r in test.records)
    with pytest.raises(ValueError, match="subset"):
        build_dataset("puzzles:motion", motion_puzzle, motion_cache, "val")


def test_dataloader_batches_items(motion_puzzle, motion_cache):
    split = load_ucf101_split(motion_puzzle)
    ds = TwoStreamDataset(split.train[:4], motion_cache, num_segments=2, new_length=2)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["rgb"].shape[:2] == (4, 2) and batch["flow"].shape[:3] == (4, 2, 4)
    assert batch["label"].tolist() == [r.label for r in split.train[:4]]


def test_in_memory_items_equal_disk_items_and_need_no_second_read(motion_puzzle, motion_cache, tmp_path):
    import shutil

    from fusionkit.training.runtime import seed_everything

    split = load_ucf101_split(motion_puzzle)
    copy = tmp_path / "cache"
    shutil.copytree(motion_cache, copy)
    disk = TwoStreamDataset(split.train[:3], copy, num_segments=3, new_length=2)
    memory = TwoStreamDataset(split.train[:3], copy, num_segments=3, new_length=2, in_memory=True)
    for ds in (disk, memory):
        seed_everything(0)  # the same snippet draws and augmentation
        ds.items = [ds[i] for i in range(len(ds))]
    for a, b in zip(disk.items, memory.items):
        assert torch.equal(a["rgb"], b["rgb"]) and torch.equal(a["flow"], b["flow"]) and a["label"] == b["label"]
    for entry in copy.iterdir():  # decoded once: the files are no longer needed
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    seed_everything(0)
    again = [memory[i] for i in range(len(memory))]
    assert all(torch.equal(a["flow"], b["flow"]) for a, b in zip(memory.items, again))
