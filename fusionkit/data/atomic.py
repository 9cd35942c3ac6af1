"""Atomic writes: a killed process never leaves a half-written file or folder behind.

Everything is written under a temporary name in the destination's own folder (same filesystem)
and renamed into place, since rename is atomic on POSIX and Windows. ``tempfile`` creates its files
0600 and folders 0700 (private, whatever the umask); they are given the permissions a plain
``open``/``mkdir`` would have given under the current umask before they are renamed into place, so
that a cache shared with a group (umask 002) stays readable by that group.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def current_umask() -> int:
    """The process's umask. Linux shows it in /proc; elsewhere it can only be read by setting it
    (briefly changing it for every thread of the process)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # overwriting keeps the file's mode, as open() would
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~current_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


TMP_DIR_PREFIX = ".partial-"


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, replace: bool = False):
    """Yield a temporary folder beside ``path``; on success it is renamed to ``path``.

    On any error (or a kill) the final folder does not exist; a leftover ``.partial-*`` folder is
    removed by :func:`remove_partial_directories` on the next run. If ``path`` already exists it is
    kept (a concurrent run finished first), unless ``replace`` (a repair): then the old folder is
    moved aside and deleted once the new one is in place. A kill between those two renames leaves
    no folder at all, which the next run extracts again.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_DIR_PREFIX}{path.name}.", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())
        yield tmp
        if path.exists() and replace:
            old = Path(tempfile.mkdtemp(prefix=f"{TMP_DIR_PREFIX}{path.name}.old.", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        elif path.exists():  # a concurrent run finished first: keep theirs, identical by determinism
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_partial_directories(root: str | os.PathLike) -> int:
    """Delete ``.partial-*`` folders left under ``root`` by killed runs; return how many."""
    removed = 0
    for tmp in list(Path(root).rglob(f"{TMP_DIR_PREFIX}*")):  # listed first: the loop deletes
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
            removed += 1
    return removed
