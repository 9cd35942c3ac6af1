"""Balanced N classes x M videos batch sampler (Zhang et al. 2019, CCS §4.1)."""
from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from fusionkit.data.sampler import BalancedBatchSampler, dataset_labels
from fusionkit.data.splits import VideoRecord

# 5 classes: 6, 6, 5, 4 and 2 videos (class 4 has fewer than M = 3)
LABELS = [0] * 6 + [1] * 6 + [2] * 5 + [3] * 4 + [4] * 2


def _batches(sampler, epoch=0):
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("n, m", [(2, 3), (5, 3), (3, 1)])
def test_every_batch_has_n_classes_of_m_videos(n, m):
    sampler = BalancedBatchSampler(LABELS, n, m, num_batches=40, seed=0)
    batches = _batches(sampler)
    assert len(batches) == len(sampler) == 40 and sampler.batch_size == n * m
    for batch in batches:
        assert len(batch) == n * m and all(0 <= i < len(LABELS) for i in batch)
        counts = Counter(LABELS[i] for i in batch)
        assert len(counts) == n and set(counts.values()) == {m}
        # grouped by class, and videos distinct within a class that has at least M of them
        assert [LABELS[i] for i in batch] == [LABELS[batch[k * m]] for k in range(n) for _ in range(m)]
        for cls in counts:
            videos = [i for i in batch if LABELS[i] == cls]
            if LABELS.count(cls) >= m:
                assert len(set(videos)) == m


def test_small_class_gives_all_its_videos_plus_repeats():
    sampler = BalancedBatchSampler(LABELS, 5, 4, num_batches=10)
    for batch in _batches(sampler):
        small = [i for i in batch if LABELS[i] == 4]
        assert len(small) == 4 and set(small) == {21, 22}  # both of its videos, then repeats


def test_all_classes_and_videos_are_drawn():
    batches = _batches(BalancedBatchSampler(LABELS, 2, 3, num_batches=200))
    assert {i for batch in batches for i in batch} == set(range(len(LABELS)))


def test_seeds_reproduce_and_epochs_differ():
    a = BalancedBatchSampler(LABELS, 3, 2, seed=7)
    b = BalancedBatchSampler(LABELS, 3, 2, seed=7)
    assert _batches(a, 0) == _batches(b, 0) and _batches(a, 3) == _batches(b, 3)
    assert list(a) == list(a)  # without set_epoch, iterating again repeats the epoch
    assert _batches(a, 0) != _batches(a, 1)
    assert _batches(a, 0) != _batches(BalancedBatchSampler(LABELS, 3, 2, seed=8), 0)


def test_default_length_is_about_one_pass():
    assert len(BalancedBatchSampler(LABELS, 2, 3)) == len(LABELS) // 6
    assert len(BalancedBatchSampler(LABELS[:7], 2, 3)) == 1
    assert len(BalancedBatchSampler(LABELS[:5], 1, 8)) == 1  # never zero batches


def test_in_a_dataloader():
    dataset = TensorDataset(torch.arange(len(LABELS)), torch.tensor(LABELS))
    loader = DataLoader(dataset, batch_sampler=BalancedBatchSampler(LABELS, 2, 3, seed=0))
    assert len(loader) == 3
    for index, label in loader:
        assert index.shape == (6,) and label.tolist() == [LABELS[i] for i in index.tolist()]
        assert sorted(Counter(label.tolist()).values()) == [3, 3]


def test_dataset_labels_reads_records_without_loading():
    records = [VideoRecord(f"C{label}/v_{k}.avi", label) for k, label in enumerate(LABELS)]
    dataset = SimpleNamespace(records=records)  # stands in for a TwoStreamDataset: only .records is read
    assert dataset_labels(dataset) == LABELS
    subset = Subset(dataset, [0, 7, 22])
    assert dataset_labels(subset) == [0, 1, 4]
    with pytest.raises(TypeError, match="no `records`"):
        dataset_labels(TensorDataset(torch.zeros(3)))


def test_errors():
    with pytest.raises(ValueError, match="a batch of 6 classes asked for, but the labels hold only 5 classes"):
        BalancedBatchSampler(LABELS, 6, 2)
    with pytest.raises(ValueError, match="must be >= 1"):
        BalancedBatchSampler(LABELS, 0, 2)
    with pytest.raises(ValueError, match="must be >= 1"):
        BalancedBatchSampler(LABELS, 2, 0)
    with pytest.raises(ValueError, match="num_batches"):
        BalancedBatchSampler(LABELS, 2, 2, num_batches=0)
    with pytest.raises(ValueError, match="empty"):
        BalancedBatchSampler([], 1, 1)
