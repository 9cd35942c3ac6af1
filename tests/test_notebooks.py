"""Every notebook runs end to end under papermill in smoke mode, and is stored without outputs."""
import json
import re
from pathlib import Path

import nbformat
import pytest

from fusionkit.lab.results import load_results
from fusionkit.lab.run_notebooks import NotebookError, execute_notebook

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
# the course assignments: stored like the series (tests/test_assignments.py executes them through the grader)
ALL_NOTEBOOKS = NOTEBOOKS + sorted((Path(__file__).resolve().parent.parent / "notebooks" / "assignments").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.stem for p in NOTEBOOKS][:3] == ["00_quickstart", "01_video_and_flow", "02_two_stream_late_fusion"]


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.mark.parametrize("path", ALL_NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_has_a_tagged_parameters_cell_first(path):
    nb = nbformat.read(path, as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in first_code.metadata.get("tags", []), f"{path.name}: first code cell must be tagged"
    for name, value in (("SMOKE", "False"), ("DEVICE", ""), ("FIGURES_DIR", ""), ("DATA_DIR", "")):
        # `NAME: type = value`: papermill reads the type hint (tests/test_notebook_paths.py)
        assert re.search(rf"^{name}(: [^=]+)? = {value}", first_code.source, re.M), \
            f"{path.name}: the parameters cell lacks `{name} = {value or '...'}`"


@pytest.fixture(scope="session")
def smoke_dirs(tmp_path_factory):
    """Data shared by the notebooks of one test run; figures and results kept out of figures/."""
    return tmp_path_factory.mktemp("smoke_data"), tmp_path_factory.mktemp("smoke_figures")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_smoke_mode(path, smoke_dirs, tmp_path):
    data, figures = smoke_dirs
    try:
        execute_notebook(path, tmp_path / path.name,
                         {"SMOKE": True, "DATA_DIR": str(data), "FIGURES_DIR": str(figures)}, timeout=600)
    except NotebookError as e:  # names the notebook and cell
        pytest.fail(str(e))
    results = load_results(figures / "results" / f"{path.stem}.json")
    assert results["notebook"] == path.stem and results["params"]["SMOKE"] is True
    for where, outputs in results["accuracy"].items():
        for output, summary in outputs.items():
            assert 0.0 <= summary["mean"] <= 1.0, (where, output, summary)
    assert list(figures.glob(f"{path.stem[:2]}_*.png")), f"{path.name} saved no figure"


def test_a_failing_notebook_is_reported_with_its_name_and_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("SMOKE = False", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "99_broken.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(NotebookError, match=r"99_broken.ipynb failed in cell 3.*ValueError: broken on purpose"):
        execute_notebook(path, tmp_path / "out.ipynb", {"SMOKE": True})
    assert json.loads((tmp_path / "out.ipynb").read_text())["cells"]
