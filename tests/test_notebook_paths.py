"""The notebooks' folders resolve from the project whatever the working directory, and papermill
reads their parameters cells with types (issue 16, item 15)."""
from __future__ import annotations

import ast
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from fusionkit.lab.paths import find_project_root, project_dir

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb")) + sorted((REPO / "notebooks" / "assignments").glob("*.ipynb"))
ENV_VARS = ("FUSIONKIT_DATA", "FUSIONKIT_FIGURES", "FUSIONKIT_BUILD")


def _parameters_cell(path: Path):
    nb = nbformat.read(path, as_version=4)
    return next(c for c in nb.cells if c.cell_type == "code")


def _fake_project(folder: Path, notebooks=("00_quickstart.ipynb",)) -> Path:
    """A checkout's skeleton: pyproject.toml naming fusionkit, notebooks/ (and notebooks/assignments/)."""
    (folder / "notebooks" / "assignments").mkdir(parents=True)
    (folder / "pyproject.toml").write_text('[project]\nname = "fusionkit"\n')
    for name in notebooks:
        shutil.copy(REPO / "notebooks" / name, folder / "notebooks" / name)
    return folder


@pytest.fixture
def no_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def test_project_dir_is_the_same_from_the_root_and_the_notebook_folders(tmp_path, monkeypatch, no_env):
    project = _fake_project(tmp_path / "project")
    for cwd in (project, project / "notebooks", project / "notebooks" / "assignments"):
        monkeypatch.chdir(cwd)
        assert find_project_root() == project.resolve()
        assert project_dir("data") == str(project.resolve() / "data")
        assert project_dir("build/bench") == str(project.resolve() / "build" / "bench")
    monkeypatch.setenv("FUSIONKIT_FIGURES", str(tmp_path / "figs"))
    monkeypatch.setenv("FUSIONKIT_BUILD", str(tmp_path / "b"))
    assert project_dir("figures") == str(tmp_path / "figs") and project_dir("build/bench") == str(tmp_path / "b" / "bench")
    assert project_dir("data") == str(project.resolve() / "data")
    monkeypatch.chdir(tmp_path)  # outside any project: the checkout fusionkit is imported from
    assert project_dir("data") == str(REPO / "data")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_each_parameter_with_its_type(path, caplog):
    """`papermill --help-notebook` lists every parameter with a type (not "Unknown type"), and
    parses every line (no "Unable to parse line" warning)."""
    import papermill

    with caplog.at_level(logging.WARNING, logger="papermill"):
        inferred = papermill.inspect_notebook(str(path))
    assert not [r.getMessage() for r in caplog.records if "Unable to parse" in r.getMessage()]
    cell = _parameters_cell(path)
    assigned = [node.target.id for node in ast.parse(cell.source).body if isinstance(node, ast.AnnAssign)]
    plain = [t.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign) for t in node.targets]
    assert not plain, f"{path.name}: parameters without a type hint: {plain}"
    assert list(inferred) == assigned
    untyped = {name: p["inferred_type_name"] for name, p in inferred.items() if p["inferred_type_name"] in ("None", "")}
    assert not untyped


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_parameters_cell_puts_data_and_figures_in_the_project(path, tmp_path, monkeypatch, no_env):
    monkeypatch.chdir(tmp_path)  # anywhere: the same folders
    namespace: dict = {}
    exec(_parameters_cell(path).source, namespace)
    assert namespace["DATA_DIR"] == str(REPO / "data") and namespace["FIGURES_DIR"] == str(REPO / "figures")
    if "WORK_DIR" in namespace:
        assert namespace["WORK_DIR"] == str(REPO / "build" / "bench")


def _papermill(notebook: str, output: Path, cwd: Path, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    environment.update(env)
    result = subprocess.run([sys.executable, "-m", "papermill", notebook, str(output), "-p", "SMOKE", "True",
                             "--no-progress-bar"], cwd=cwd, env=environment, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Unable to parse" not in result.stderr
    return result


def test_papermill_from_the_root_and_from_notebooks_writes_inside_the_project(tmp_path):
    """`papermill notebooks/00_quickstart.ipynb out.ipynb -p SMOKE True`, run from the checkout's root
    (where papermill users run it) and from notebooks/ (where JupyterLab runs it): the puzzles go to
    <project>/data, the figures to <project>/figures (or $FUSIONKIT_FIGURES), nothing beside the
    checkout; its trained runs go to <project>/build/run-cache."""
    project, out = _fake_project(tmp_path / "project"), tmp_path / "out"
    out.mkdir()
    _papermill("notebooks/00_quickstart.ipynb", out / "from_root.ipynb", cwd=project)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "project"]
    assert sorted(p.name for p in project.iterdir()) == ["build", "data", "figures", "notebooks", "pyproject.toml"]
    assert [p.name for p in (project / "build").iterdir()] == ["run-cache"]  # the trained runs, reused on re-runs
    results = json.loads((project / "figures" / "results" / "00_quickstart.json").read_text())
    assert results["params"]["SMOKE"] is True
    assert list((project / "figures").glob("00_*.png")) and (project / "data" / "puzzles").is_dir()
    data_before = sorted(p.relative_to(project).as_posix() for p in (project / "data").rglob("*"))

    figures = tmp_path / "figures_elsewhere"
    _papermill("00_quickstart.ipynb", out / "from_notebooks.ipynb", cwd=project / "notebooks",
               FUSIONKIT_FIGURES=str(figures))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figures_elsewhere", "out", "project"]
    assert sorted(p.name for p in (project / "notebooks").iterdir()) == ["00_quickstart.ipynb", "assignments"]
    assert (figures / "results" / "00_quickstart.json").is_file()
    # the same puzzle, found where the first run put it: nothing rendered twice
    assert sorted(p.relative_to(project).as_posix() for p in (project / "data").rglob("*")) == data_before
