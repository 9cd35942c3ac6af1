"""Train/test split files of UCF-101 and HMDB-51, in their official formats.

UCF-101 (``ucfTrainTestlist/``; CRLF line endings in the official archive):

- ``classInd.txt``: ``1 ApplyEyeMakeup`` (1-based index, class name)
- ``trainlist0N.txt``: ``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1`` (path, 1-based label)
- ``testlist0N.txt``: ``ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi`` (path only; the label is
  the folder's class)

HMDB-51 (``testTrainMulti_7030_splits/``): one file per class and split,
``<class>_test_splitN.txt``, lines ``<video>.avi <tag>`` with tag 1 = train, 2 = test,
0 = unused; the video lives at ``<class>/<video>.avi``. Class indices follow the sorted class
names, as MMAction2 and TSN number them.

Labels here are 0-based.
"""
from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from fusionkit.data.atomic import atomic_write_text


# How a message names the split-file folder option: the command line's flag and the Python argument.
SPLIT_DIR_HINT = "`fusionkit train --split-dir DIR`; `annotations=DIR` in Python"


class SplitError(ValueError):
    """A split file is malformed or inconsistent; the message names the file and line."""


@dataclass(frozen=True)
class VideoRecord:
    path: str  # relative to the dataset root, "<Class>/<name>.avi"
    label: int  # 0-based

    @property
    def video_id(self) -> str:
        """The path without its extension: the key of the video's frame/flow cache."""
        return os.path.splitext(self.path)[0]


@dataclass
class Split:
    classes: list[str]
    train: list[VideoRecord] = field(default_factory=list)
    test: list[VideoRecord] = field(default_factory=list)

    def missing_videos(self, root: str | os.PathLike) -> list[str]:
        """Paths of this split's videos that are not under ``root``."""
        root = Path(root)
        return [r.path for r in self.train + self.test if not (root / r.path).is_file()]


def _lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, stripped text) of the non-blank lines; any line ending."""
    text = path.read_text(encoding="utf-8-sig")
    return [(i, line.strip()) for i, line in enumerate(text.splitlines(), 1) if line.strip()]


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected {path}. Place the official split files there, "
                                f"or point to the folder holding them ({SPLIT_DIR_HINT}).")
    return path


def _unknown_class(name: str, classes: Sequence[str], where: str) -> SplitError:
    close = difflib.get_close_matches(name, classes, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return SplitError(f"{where}: unknown class {name!r}{hint}; the class list has {len(classes)} classes")


def _annotation_dir(root: Path, annotations, subfolder: str, probe: str) -> Path:
    if annotations is not None:
        return Path(annotations)
    return root / subfolder if (root / subfolder / probe).exists() or not (root / probe).exists() else root


def load_ucf101_split(root: str | os.PathLike, split: int = 1, annotations: str | os.PathLike | None = None) -> Split:
    """Read UCF-101's ``classInd.txt``, ``trainlist0{split}.txt`` and ``testlist0{split}.txt``.

    ``annotations``: the folder with those files; by default ``root/ucfTrainTestlist`` if it
    exists, else ``root`` (where ``fusionkit make-puzzles`` writes them).
    """
    if split not in (1, 2, 3):
        raise ValueError(f"UCF-101 has splits 1, 2 and 3, not {split}")
    ann = _annotation_dir(Path(root), annotations, "ucfTrainTestlist", "classInd.txt")
    class_file = _need(ann / "classInd.txt", "UCF-101 class index")
    classes: list[str] = []
    for no, line in _lines(class_file):
        m = re.fullmatch(r"(\d+)\s+(\S+)", line)
        if not m:
            raise SplitError(f"{class_file}:{no}: expected '<index> <ClassName>', got {line!r}")
        if int(m.group(1)) != len(classes) + 1:
            raise SplitError(f"{class_file}:{no}: class indices must run 1, 2, 3, ... in order; got {m.group(1)} "
                             f"where {len(classes) + 1} was expected")
        classes.append(m.group(2))
    index = {c: i for i, c in enumerate(classes)}

    def parse(path: Path, with_label: bool) -> list[VideoRecord]:
        records = []
        for no, line in _lines(path):
            parts = line.split()
            if len(parts) != (2 if with_label else 1):
                raise SplitError(f"{path}:{no}: expected '<Class>/<video>.avi" + (" <label>'" if with_label else "'")
                                 + f", got {line!r}")
            video = parts[0].replace("\\", "/")
            folder = video.split("/", 1)[0] if "/" in video else None
            if folder is None:
                raise SplitError(f"{path}:{no}: the path {video!r} has no '<Class>/' folder")
            if folder not in index:
                raise _unknown_class(folder, classes, f"{path}:{no}")
            label = index[folder]
            if with_label:
                if not parts[1].isdigit() or not 1 <= int(parts[1]) <= len(classes):
                    raise SplitError(f"{path}:{no}: label {parts[1]!r} is not a class index 1..{len(classes)}")
                if int(parts[1]) - 1 != label:
                    raise SplitError(f"{path}:{no}: label {parts[1]} is class {classes[int(parts[1]) - 1]!r} but the "
                                     f"video sits in folder {folder!r} (class {label + 1})")
            records.append(VideoRecord(video, label))
        return records

    train = parse(_need(ann / f"trainlist0{split}.txt", f"UCF-101 train list of split {split}"), True)
    test = parse(_need(ann / f"testlist0{split}.txt", f"UCF-101 test list of split {split}"), False)
    return Split(classes, train, test)


def load_hmdb51_split(root: str | os.PathLike, split: int = 1, annotations: str | os.PathLike | None = None) -> Split:
    """Read HMDB-51's ``<class>_test_split{split}.txt`` files (1 = train, 2 = test, 0 = unused).

    ``annotations``: the folder with those files; by default ``root/testTrainMulti_7030_splits``
    if it exists, else ``root``.
    """
    if split not in (1, 2, 3):
        raise ValueError(f"HMDB-51 has splits 1, 2 and 3, not {split}")
    root = Path(root)
    ann = Path(annotations) if annotations is not None else (
        root / "testTrainMulti_7030_splits" if (root / "testTrainMulti_7030_splits").is_dir() else root)
    suffix = f"_test_split{split}.txt"
    files = sorted(ann.glob(f"*{suffix}"))
    if not files:
        raise FileNotFoundError(f"no HMDB-51 split files '*{suffix}' in {ann}. Unpack test_train_splits.rar there "
                                f"(its testTrainMulti_7030_splits/ folder), or point to the folder holding them "
                                f"({SPLIT_DIR_HINT}).")
    classes = [f.name[: -len(suffix)] for f in files]
    out = Split(classes)
    for label, (name, path) in enumerate(zip(classes, files)):
        for no, line in _lines(path):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise SplitError(f"{path}:{no}: expected '<video>.avi <0|1|2>', got {line!r}")
            record = VideoRecord(f"{name}/{parts[0]}", label)
            if parts[1] == "1":
                out.train.append(record)
            elif parts[1] == "2":
                out.test.append(record)
    return out


def write_ucf101_split(root: str | os.PathLike, classes: Sequence[str], samples: Sequence[tuple[str, int]],
                       is_test: Sequence[bool], split: int = 1) -> None:
    """Write ``classInd.txt`` and the split's train/test lists in UCF-101's exact format (CRLF)."""
    root = Path(root)
    crlf = "\r\n"
    atomic_write_text(root / "classInd.txt", "".join(f"{i} {c}{crlf}" for i, c in enumerate(classes, 1)))
    train = "".join(f"{rel} {label + 1}{crlf}" for (rel, label), t in zip(samples, is_test) if not t)
    test = "".join(f"{rel}{crlf}" for (rel, _), t in zip(samples, is_test) if t)
    atomic_write_text(root / f"trainlist0{split}.txt", train)
    atomic_write_text(root / f"testlist0{split}.txt", test)


DATASETS = {"ucf101": load_ucf101_split, "hmdb51": load_hmdb51_split}


def load_split(dataset: str, root: str | os.PathLike, split: int = 1, annotations=None) -> Split:
    """``dataset``: ``ucf101``, ``hmdb51``, or ``puzzles:<name>`` (UCF-101 layout, split 1)."""
    kind = dataset.split(":", 1)[0]
    if kind == "puzzles":
        return load_ucf101_split(root, split, annotations)
    if kind not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; use 'ucf101', 'hmdb51' or 'puzzles:<name>'")
    return DATASETS[kind](root, split, annotations)
