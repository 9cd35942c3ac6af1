"""Where the notebooks keep their data, figures and build folders, whatever the working directory.

JupyterLab runs a notebook in the notebook's folder, papermill in the folder it is started from
(unless ``--cwd``), so a path relative to the working directory (``"../data"``) puts the puzzles in
one place from JupyterLab and beside the checkout from the repository root. The notebooks'
parameters cells name their folders with :func:`project_dir` instead::

    DATA_DIR: str = project_dir("data")        # <project>/data, or $FUSIONKIT_DATA
    FIGURES_DIR: str = project_dir("figures")  # <project>/figures, or $FUSIONKIT_FIGURES

A parameter given to papermill (``-p DATA_DIR /scratch/data``) still overrides it.
"""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_NAME_LINE = 'name = "fusionkit"'  # in the project's pyproject.toml
ENV_PREFIX = "FUSIONKIT_"


def is_project_root(folder: str | os.PathLike) -> bool:
    """A fusionkit checkout: a ``pyproject.toml`` naming the project, beside a ``notebooks/`` folder."""
    folder = Path(folder)
    try:
        text = (folder / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return False
    return PROJECT_NAME_LINE in text and (folder / "notebooks").is_dir()


def find_project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The fusionkit project holding ``start`` (default: the working directory) or one of its
    parents; else the checkout this package is imported from (an editable install); else None."""
    start = Path.cwd() if start is None else Path(start)
    for folder in (start.resolve(), *start.resolve().parents):
        if is_project_root(folder):
            return folder
    checkout = Path(__file__).resolve().parents[2]
    return checkout if is_project_root(checkout) else None


def project_dir(name: str, start: str | os.PathLike | None = None) -> str:
    """The absolute path of ``<project>/<name>`` (``name`` such as ``data``, ``figures``,
    ``build/bench``), the project found by :func:`find_project_root` from ``start`` (default: the
    working directory), so the same folder from the repository root, ``notebooks/`` or
    ``notebooks/assignments/``. ``$FUSIONKIT_<TOP>`` (``FUSIONKIT_DATA``, ``FUSIONKIT_FIGURES``,
    ``FUSIONKIT_BUILD``: the first part of ``name``, upper-cased) replaces ``<project>/<top>``.
    Outside any project (a notebook copied elsewhere, fusionkit installed from a wheel): the working
    directory stands in for the project."""
    top, _, rest = name.strip("/").partition("/")
    override = os.environ.get(ENV_PREFIX + top.upper().replace("-", "_"))
    if override:
        base = Path(override).expanduser()
    else:
        base = (find_project_root(start) or (Path.cwd() if start is None else Path(start))) / top
    path = base / rest if rest else base
    return str(path.absolute())
