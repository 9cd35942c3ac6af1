"""Balanced mini-batches: N classes x M videos per batch (Zhang et al. 2019, CCS §4.1).

"We randomly select N action categories. Then we randomly select M instance of the selected
identity from two different modalities to construct the mini-batch, in which totally 2 x N x M
instances are fed into the network." Batch-hard ranking losses (Eq. 4-5) need this: every anchor
then has positives (M - 1 other videos of its class, and its own other modality) and negatives
(N - 1 other classes), and every class mean of Eq. 5 is taken over M videos. One dataset item
is one video with both modalities, so a batch has N * M items (2 N M instances).

:class:`BalancedBatchSampler` plugs into any torch ``DataLoader`` as ``batch_sampler=`` and
works for any method: it only reads labels (:func:`dataset_labels` gets them from a
``TwoStreamDataset`` without loading a video).

Choices where the paper leaves room:

- Each batch draws its N classes uniformly at random without replacement, then M videos of each
  class: distinct videos when the class has at least M, otherwise *all* of its videos plus random
  repeats (drawn with replacement from the class) to make M. Small classes are kept rather than
  skipped: skipping would leave them out of the ranking losses entirely, and in training a repeat
  is a different random snippet and crop of the same video, not a copy. Every batch therefore has
  exactly N classes x M items.
- Batches are drawn independently, as the paper describes; an epoch is ``num_batches`` batches,
  by default ``len(labels) // (N * M)`` (about one pass over the data). A video may appear in
  two batches of one epoch and another not at all; each is seen once per epoch on average when
  the classes are of equal size (videos of small classes more often otherwise).
- Reproducible: the batches of an epoch depend only on ``(seed, epoch)``. As with PyTorch's
  ``DistributedSampler``, call :meth:`BalancedBatchSampler.set_epoch` before each epoch, or every
  epoch repeats the same batches.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Dataset, Sampler, Subset

__all__ = ["BalancedBatchSampler", "dataset_labels"]


def dataset_labels(dataset: Dataset) -> list[int]:
    """The label of every item of a ``TwoStreamDataset`` (``records[i].label``), or of a ``Subset``
    of one, without loading a video."""
    if isinstance(dataset, Subset):
        labels = dataset_labels(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    records = getattr(dataset, "records", None)
    if records is None:
        raise TypeError(f"dataset_labels: {type(dataset).__name__} has no `records` (VideoRecord list) to read the "
                        f"labels from; pass the labels to BalancedBatchSampler yourself")
    return [int(r.label) for r in records]


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches of ``classes_per_batch`` (N) classes x ``videos_per_class`` (M) dataset indices,
    grouped by class: ``[c1, c1, ..., c1, c2, ...]`` (M of each). See the module docstring.

    Args:
        labels: the label of each dataset item (ints), e.g. ``dataset_labels(train_set)``.
        classes_per_batch: N, at most the number of distinct labels.
        videos_per_class: M.
        num_batches: batches per epoch; default ``max(1, len(labels) // (N * M))``.
        seed: with the epoch (:meth:`set_epoch`), fixes the batches.

    ``DataLoader(dataset, batch_sampler=BalancedBatchSampler(dataset_labels(dataset), 4, 4))``.
    """

    def __init__(self, labels: Sequence[int], classes_per_batch: int, videos_per_class: int,
                 num_batches: int | None = None, seed: int = 0):
        labels = [int(label) for label in labels]
        if not labels:
            raise ValueError("BalancedBatchSampler: no labels (the dataset is empty)")
        if classes_per_batch < 1 or videos_per_class < 1:
            raise ValueError(f"BalancedBatchSampler: classes_per_batch and videos_per_class must be >= 1, got "
                             f"{classes_per_batch} and {videos_per_class}")
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(labels):
            by_class.setdefault(label, []).append(index)
        if classes_per_batch > len(by_class):
            raise ValueError(f"BalancedBatchSampler: a batch of {classes_per_batch} classes asked for, but the labels "
                             f"hold only {len(by_class)} classes ({sorted(by_class)}); lower classes_per_batch")
        if num_batches is None:
            num_batches = max(1, len(labels) // (classes_per_batch * videos_per_class))
        if num_batches < 1:
            raise ValueError(f"BalancedBatchSampler: num_batches must be >= 1, got {num_batches}")
        self.classes = sorted(by_class)
        self.by_class = {c: np.array(by_class[c]) for c in self.classes}
        self.classes_per_batch, self.videos_per_class = classes_per_batch, videos_per_class
        self.num_batches, self.seed, self.epoch = num_batches, seed, 0

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.videos_per_class

    def set_epoch(self, epoch: int) -> None:
        """Draw the batches of ``epoch`` on the next iteration (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def _videos(self, rng: np.random.Generator, cls: int) -> list[int]:
        """M videos of class ``cls``: distinct if it has M, else all of them plus repeats."""
        pool, m = self.by_class[cls], self.videos_per_class
        if len(pool) >= m:
            return rng.choice(pool, m, replace=False).tolist()
        extra = rng.choice(pool, m - len(pool), replace=True)
        return rng.permutation(np.concatenate([pool, extra])).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.num_batches):
            chosen = rng.choice(self.classes, self.classes_per_batch, replace=False)
            yield [index for cls in chosen for index in self._videos(rng, int(cls))]

    def __repr__(self) -> str:
        return (f"BalancedBatchSampler(classes_per_batch={self.classes_per_batch}, videos_per_class="
                f"{self.videos_per_class}, num_batches={self.num_batches}, classes={len(self.classes)}, seed={self.seed})")
