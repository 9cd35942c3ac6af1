"""Atomic writes: a killed process never leaves a half-written file or folder behind.

Everything is written under a temporary name in the destination's own folder (same filesystem)
and renamed into place, since rename is atomic on POSIX and Windows.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


TMP_DIR_PREFIX = ".partial-"


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike):
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path``.

    On any error (or a kill) the final folder does not exist; a leftover ``.partial-*`` folder is
    removed by :func:`remove_partial_directories` on the next run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_DIR_PREFIX}{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists():  # a concurrent run finished first: keep theirs, identical by determinism
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_partial_directories(root: str | os.PathLike) -> int:
    """Delete ``.partial-*`` folders left under ``root`` by killed runs; return how many."""
    removed = 0
    for tmp in Path(root).rglob(f"{TMP_DIR_PREFIX}*"):
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
    return removed
