"""The notebook runner (``make run``): progress while a notebook runs (cells done / total, elapsed
against the last recorded time, the notebook's own training bar), a summary table at the end,
no jupyter/papermill noise, and the timings recorded atomically to figures/results/make_run.json,
from which the README's timing table is rendered. Tiny fake notebooks; each runs in a second."""
from __future__ import annotations

import io
import json
from pathlib import Path

import nbformat
import pytest

from fusionkit.lab import run_notebooks as rn
from fusionkit.lab.results import seed_summary, validate_results

ROOT = Path(__file__).resolve().parents[1]


def write_notebook(path: Path, *cells: str, parameters: str = "SMOKE = False\nFIGURES_DIR = '../figures'") -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_markdown_cell("# a fake notebook")] + [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


SAVE = ("from fusionkit.lab.results import save_results, seed_summary\n"
        "save_results('{name}', {{'SMOKE': SMOKE}}, {{'conjunction': {{'rgb': seed_summary([0.5, 0.6]), "
        "'late': seed_summary([0.9, 1.0])}}}}, results_dir=FIGURES_DIR + '/results')")


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


# ---- parameters and noise -----------------------------------------------------------------------

def test_parameter_names_read_the_cell_as_python():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("SMOKE = False  # a=b: two '=' on a line\nPOSITION_FREQUENCIES = 3  # 0 = as "
                                          "published\nSEEDS = [\n  0,\n  1]\nN: int = 2\nA, B = 1, 2",
                                          metadata={"tags": ["parameters"]})]
    assert rn.parameter_names(nb) == {"SMOKE", "POSITION_FREQUENCIES", "SEEDS", "N", "A", "B"}
    nb.cells[0].metadata["tags"] = []
    assert rn.parameter_names(nb) is None


def test_no_tcp_warning_and_no_papermill_parse_noise(tmp_path, capfd):
    """The cell below has papermill's unparsable 'X = 3  # a=b'; the kernel starts with encryption."""
    nb = write_notebook(tmp_path / "nb" / "noisy.ipynb", "print('value', X)",
                        parameters="SMOKE = False\nX = 3  # 0 = off, a=b")
    capfd.readouterr()
    rn.execute_notebook(nb, tmp_path / "out.ipynb", {"SMOKE": True, "X": 4})
    out, err = capfd.readouterr()
    assert "without encryption" not in out + err
    assert "Unable to parse line" not in out + err and "Passed unknown parameter" not in out + err
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    assert executed["cells"][-1]["outputs"][0]["text"] == ["value 4\n"]


def test_a_parameter_the_notebook_does_not_declare_is_refused(tmp_path):
    nb = write_notebook(tmp_path / "p.ipynb", "pass", parameters="SMOKE = False")
    with pytest.raises(ValueError, match=r"p.ipynb: its parameters cell does not assign DEVICE"):
        rn.execute_notebook(nb, tmp_path / "out.ipynb", {"SMOKE": True, "DEVICE": "cuda"})


@pytest.mark.parametrize("threads", [1, 2])  # torch takes at most the machine's cores from OMP_NUM_THREADS
def test_the_kernel_runs_with_the_threads_asked_for_and_the_environment_is_restored(tmp_path, threads, monkeypatch):
    if (rn.os.cpu_count() or 1) < threads:
        pytest.skip(f"{threads} threads need {threads} cores: torch caps OMP_NUM_THREADS at the machine's")
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    nb = write_notebook(tmp_path / "t.ipynb", "import torch\nprint(torch.get_num_threads())", parameters="SMOKE = False")
    rn.execute_notebook(nb, tmp_path / "out.ipynb", {"SMOKE": True}, threads=threads)
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    assert executed["cells"][-1]["outputs"][0]["text"] == [f"{threads}\n"]
    assert rn.os.environ["OMP_NUM_THREADS"] == "7" and "MKL_NUM_THREADS" not in rn.os.environ
    with pytest.raises(ValueError, match="threads must be at least 1, got 0"):
        rn.execute_notebook(nb, tmp_path / "out.ipynb", {"SMOKE": True}, threads=0)


# ---- progress -----------------------------------------------------------------------------------

def cell(source: str):
    return nbformat.v4.new_code_cell(source)


def test_progress_on_a_log_prints_when_cells_end_and_during_long_cells():
    clock, stream = FakeClock(), io.StringIO()
    nb = nbformat.v4.new_notebook()
    nb.cells = [cell("a = 1"), nbformat.v4.new_markdown_cell("x"), cell("import torch\nrun_all()"), cell("  ")]
    progress = rn.NotebookProgress("04_cmmp", expected=600, stream=stream, interval=30, tty=False, clock=clock)
    progress.attach(nb)
    progress._start = progress._last_print = clock()  # start() without the ticker thread
    assert progress.total == 2  # code cells with source
    progress.cell_started(nb.cells[0], 0)
    clock.now += 5
    progress.cell_executed(nb.cells[0], 0)
    assert stream.getvalue() == ""  # 5 s since the last line: quiet
    progress.cell_started(nb.cells[2], 2)
    clock.now += 40
    progress.tick()  # a long cell: a heartbeat after `interval`
    assert stream.getvalue() == "  04_cmmp: 1/2 cells, 0:45 of ~10:00 | run_all()\n"
    clock.now += 10
    progress.tick()
    assert stream.getvalue().count("\n") == 1
    clock.now += 100
    progress.cell_executed(nb.cells[2], 2)
    assert stream.getvalue().count("\n") == 1  # the last cell: finish() says it
    progress.finish()
    assert stream.getvalue().splitlines()[-1] == "  04_cmmp: 2/2 cells in 2:35 (expected ~10:00)"


def test_progress_on_a_terminal_rewrites_one_line():
    clock, stream = FakeClock(), io.StringIO()
    nb = nbformat.v4.new_notebook()
    nb.cells = [cell("train()")]
    progress = rn.NotebookProgress("00_quickstart", stream=stream, tty=True, clock=clock)
    progress.attach(nb)
    progress._start = clock()
    progress.cell_started(nb.cells[0], 0)
    clock.now += 1
    progress.tick()
    clock.now += 1
    progress.tick()
    progress.cell_executed(nb.cells[0], 0)  # no line of its own on a terminal
    progress.finish()
    assert stream.getvalue() == ("\r  00_quickstart: 0/1 cells, 0:01 | train()"
                                 "\r  00_quickstart: 0/1 cells, 0:02 | train()"
                                 "\r  00_quickstart: 1/1 cells in 0:02" + " " * 8 + "\n")  # padded over the longer line


def test_progress_shows_the_notebooks_training_bar_from_its_widgets():
    """tqdm.auto's bar in a kernel: an HBox of HTML (description), FloatProgress, HTML (counts)."""
    class Client:
        widget_state = {"box": {"_model_name": "HBoxModel", "children": ["IPY_MODEL_l", "IPY_MODEL_bar", "IPY_MODEL_r"]},
                        "l": {"_model_name": "HTMLModel", "value": "epoch 3:&nbsp; 50%"},
                        "bar": {"_model_name": "FloatProgressModel", "value": 12, "max": 24},
                        "r": {"_model_name": "HTMLModel", "value": " 12/24 [00:03&lt;00:03,  3.9it/s]"},
                        "lone": {"_model_name": "FloatProgressModel", "value": 2, "max": 5}}

    nb = nbformat.v4.new_notebook()
    nb.cells = [cell("fit()")]
    progress = rn.NotebookProgress("x", stream=io.StringIO(), tty=False)
    progress.attach(nb, Client())
    progress.cell_started(nb.cells[0], 0)
    assert progress.bar_text() == ""
    progress.widget_updated("l")  # not a bar
    assert progress.bar_text() == ""
    progress.widget_updated("bar")
    assert progress.bar_text() == "epoch 3: 50% 12/24 [00:03<00:03, 3.9it/s]"
    assert progress.line().endswith("| fit() | epoch 3: 50% 12/24 [00:03<00:03, 3.9it/s]")
    progress.widget_updated("lone")
    assert progress.bar_text() == "2/5"
    progress.cell_executed(nb.cells[0], 0)  # a finished cell's bar is not shown
    assert progress.bar_text() == ""


def test_progress_of_a_real_run_shows_cells_and_the_bar(tmp_path):
    nb = write_notebook(tmp_path / "bar.ipynb", "import time\nfrom tqdm.auto import tqdm\n"
                        "for _ in tqdm(range(12), desc='epoch 1'):\n    time.sleep(0.25)", parameters="SMOKE = False")
    stream = io.StringIO()
    progress = rn.NotebookProgress("bar", expected=60, stream=stream, interval=0.5, tty=False)
    rn.execute_notebook(nb, tmp_path / "out.ipynb", {"SMOKE": True}, progress=progress)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("  bar: 3/3 cells in ") and lines[-1].endswith("(expected ~1:00)")
    assert any("/3 cells" in line and "epoch 1:" in line and "/12 [" in line for line in lines), lines


# ---- headlines, the record, the README table ----------------------------------------------------

def test_headline():
    s = seed_summary
    assert rn.notebook_headline({"accuracy": {"order": {"rgb": s([0.3]), "cmmp-S": s([1.0]), "late": s([0.4])},
                                              "conjunction": {"late": s([1.0])}}}) == "order: cmmp-S 1.00 (late 0.40)"
    # notebook 03's shape: the plain flow stream is the best output of `accuracy`, but the headline is the
    # variant that gains most over late fusion on its puzzle, and a tie goes to the fused output (-S)
    registration = {"late": s([0.42]), "rgb": s([0.25]), "flow": s([0.44])}
    variants = {"fusion=sum": {"registration": {"spatial-S": s([0.6])}},
                "fusion=bilinear": {"registration": {"spatial-S": s([1.0])}},
                "fusion=conv3d": {"order": {"conv_fusion-R": s([1.0, 1.0]), "conv_fusion-S": s([1.0, 1.0])}}}
    assert rn.notebook_headline({"accuracy": {"registration": registration, "order": {"late": s([0.39])}},
                                 "variants": variants}) == "fusion=conv3d order: conv_fusion-S 1.00 ± 0.00 (late 0.39)"
    # notebook 02's shape: late fusion is the only fusion, so where it gains most over the plain streams
    assert rn.notebook_headline({"accuracy": {"appearance": {"rgb": s([0.99]), "flow": s([0.3]), "late": s([0.94])},
                                              "conjunction": {"rgb": s([0.5]), "flow": s([0.6]), "late": s([0.97])}}}) \
        == "conjunction: late 0.97 (rgb 0.50, flow 0.60)"
    assert rn.notebook_headline({"accuracy": {"order": {"late": s([0.5, 0.7])}}}) == "order: late 0.60 ± 0.10"
    assert rn.notebook_headline({"accuracy": {}, "variants": {"fusion=sum": {"registration": {"spatial-S": s([0.9])}}}}) \
        == "fusion=sum registration: spatial-S 0.90"
    assert rn.notebook_headline({"accuracy": {"order": {"late": s([0.5])}},
                                 "extra": {"headline": "CMMP solves order in 9 of 10 runs"}}) \
        == "CMMP solves order in 9 of 10 runs"
    assert rn.notebook_headline({"accuracy": {}, "extra": {}}) == ""


def fake_series(tmp_path: Path) -> Path:
    folder = tmp_path / "notebooks"
    write_notebook(folder / "00_alpha.ipynb", "import time\ntime.sleep(0.2)", SAVE.format(name="00_alpha"))
    write_notebook(folder / "01_beta.ipynb", "x = 1", parameters="SMOKE = False")  # no results file, no FIGURES_DIR
    return folder


@pytest.mark.filterwarnings("ignore::fusionkit.lab.machine.MachineBusyWarning")
def test_run_notebooks_records_timings_machine_and_load(tmp_path):
    folder, figures, stream = fake_series(tmp_path), tmp_path / "figures", io.StringIO()
    done = rn.run_notebooks(folder, tmp_path / "build", smoke=False, prepare=False, figures_dir=figures, stream=stream)
    assert [p.name for p in done] == ["00_alpha.ipynb", "01_beta.ipynb"]
    path = figures / "results" / "make_run.json"
    record = json.loads(path.read_text())
    assert validate_results(record) == []  # the results schema, like every file in figures/results
    assert record["notebook"] == "make_run" and record["params"] == {"smoke": False, "workers": 2, "threads": 2,
                                                                     "notebooks": ["00_alpha", "01_beta"]}
    extra = record["extra"]
    assert {"cpu_model", "cpu_count", "torch", "load_average_at_start"} <= set(extra["machine"])
    assert {"load_average", "busy", "cpu_count"} <= set(extra["load"]["start"]) and "load_average" in extra["load"]["end"]
    assert list(extra["notebooks"]) == ["00_alpha", "01_beta"]
    alpha, beta = extra["notebooks"]["00_alpha"], extra["notebooks"]["01_beta"]
    assert alpha["status"] == beta["status"] == "ok" and 0.2 < alpha["seconds"] < extra["total_seconds"]
    assert (alpha["cells"], alpha["cells_done"], beta["cells"]) == (4, 4, 3)  # parameters injected
    assert len(alpha["load_before"]) == len(alpha["load_after"]) == 3
    assert alpha["headline"] == "conjunction: late 0.95 ± 0.05 (rgb 0.55)" and beta["headline"] == ""
    assert json.loads((figures / "results" / "00_alpha.json").read_text())["params"] == {"SMOKE": False}
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    out = stream.getvalue()
    assert "executing 00_alpha.ipynb" in out and "  00_alpha: 4/4 cells in 0:" in out
    table = out[out.index("notebook "):].splitlines()
    assert table[0].split() == ["notebook", "minutes", "expected", "headline"]
    assert table[1].split()[0] == "00_alpha" and table[1].endswith("conjunction: late 0.95 ± 0.05 (rgb 0.55)")
    assert table[3].split()[0] == "total"

    # the next run shows the last run's times as expected
    stream = io.StringIO()
    rn.run_notebooks(folder, tmp_path / "build", smoke=False, prepare=False, figures_dir=figures, stream=stream)
    assert f"(expected ~{rn._clock(alpha['seconds'])})" in stream.getvalue()
    assert "in the last recorded run" in stream.getvalue().splitlines()[0]


@pytest.mark.filterwarnings("ignore::fusionkit.lab.machine.MachineBusyWarning")
def test_the_assignments_instructor_versions_run_after_the_series_and_are_recorded(tmp_path):
    folder, figures, stream = fake_series(tmp_path), tmp_path / "figures", io.StringIO()
    write_notebook(folder / "assignments" / "a1_gamma.ipynb", "SOLUTION = 42  # the instructor's version",
                   SAVE.format(name="a1_gamma"))
    assert [p.name for p in rn.series_notebooks(folder)] == ["00_alpha.ipynb", "01_beta.ipynb", "a1_gamma.ipynb"]
    done = rn.run_notebooks(folder, tmp_path / "build", smoke=True, prepare=False, figures_dir=figures, stream=stream)
    assert done[-1] == tmp_path / "build" / "assignments" / "a1_gamma.ipynb" and done[-1].is_file()
    assert json.loads((figures / "results" / "a1_gamma.json").read_text())["params"] == {"SMOKE": True}
    record = json.loads((figures / "results" / "make_run_smoke.json").read_text())
    assert record["params"]["notebooks"] == ["00_alpha", "01_beta", "a1_gamma"]
    assert record["extra"]["notebooks"]["a1_gamma"]["headline"] == "conjunction: late 0.95 ± 0.05 (rgb 0.55)"
    table = stream.getvalue()[stream.getvalue().index("notebook "):].splitlines()
    assert table[3].split()[0] == "a1_gamma" and table[3].endswith("conjunction: late 0.95 ± 0.05 (rgb 0.55)")


def test_make_run_covers_the_course_assignments():
    names = [p.relative_to(ROOT / "notebooks").as_posix() for p in rn.series_notebooks()]
    assert names[-2:] == ["assignments/a1_conv_fusion.ipynb", "assignments/a2_design_your_block.ipynb"]
    assert names[0] == "00_quickstart.ipynb"


@pytest.mark.filterwarnings("ignore::fusionkit.lab.machine.MachineBusyWarning")
def test_smoke_runs_record_apart_and_a_failure_writes_no_record(tmp_path):
    folder, figures = fake_series(tmp_path), tmp_path / "figures"
    rn.run_notebooks(folder, tmp_path / "build", smoke=True, prepare=False, figures_dir=figures, stream=io.StringIO())
    assert (figures / "results" / "make_run_smoke.json").is_file()
    assert not (figures / "results" / "make_run.json").exists()
    assert json.loads((figures / "results" / "00_alpha.json").read_text())["params"] == {"SMOKE": True}

    write_notebook(folder / "02_broken.ipynb", "raise ValueError('broken on purpose')", parameters="SMOKE = False")
    stream = io.StringIO()
    with pytest.raises(rn.NotebookError, match="02_broken.ipynb failed"):
        rn.run_notebooks(folder, tmp_path / "build", smoke=False, prepare=False, figures_dir=figures, stream=stream)
    assert "[failed]" in stream.getvalue().splitlines()[-2]  # the summary still shows what ran
    assert not (figures / "results" / "make_run.json").exists()

    write_notebook(folder / "03_after.ipynb", SAVE.format(name="03_after"))
    stream = io.StringIO()
    with pytest.raises(rn.NotebookError, match=r"(?s)1 of 4 notebooks failed:\nnotebook 02_broken.ipynb failed"):
        rn.run_notebooks(folder, tmp_path / "build", smoke=False, prepare=False, figures_dir=figures, stream=stream,
                         keep_going=True)
    assert (figures / "results" / "03_after.json").is_file()  # the notebook after the broken one ran
    assert "FAILED (going on with the rest)" in stream.getvalue()
    assert not (figures / "results" / "make_run.json").exists()

    (figures / "results" / "03_after.json").unlink()
    done = rn.run_notebooks(folder, tmp_path / "build", smoke=False, prepare=False, figures_dir=figures,
                            stream=io.StringIO(), only=["03_after"])
    assert [p.name for p in done] == ["03_after.ipynb"] and (figures / "results" / "03_after.json").is_file()
    assert not (figures / "results" / "make_run.json").exists()  # a part of the series is not make run
    with pytest.raises(ValueError, match=r"not in the series: 09_none; the notebooks are 00_alpha, 01_beta"):
        rn.run_notebooks(folder, tmp_path / "build", prepare=False, figures_dir=figures, only=["09_none", "01_beta"])


@pytest.mark.filterwarnings("ignore::fusionkit.lab.machine.MachineBusyWarning")
def test_timing_table_and_readme_update(tmp_path):
    folder, figures = fake_series(tmp_path), tmp_path / "figures"
    rn.run_notebooks(folder, tmp_path / "build", smoke=False, prepare=False, figures_dir=figures, stream=io.StringIO())
    record = json.loads((figures / "results" / "make_run.json").read_text())
    table = rn.timing_table(record)
    lines = table.splitlines()
    assert lines[0].startswith("`make run` on ") and "cores" in lines[0] and "load average" in lines[0]
    assert lines[2:4] == ["| notebook | minutes | headline |", "|---|---|---|"]
    assert lines[4] == f"| `00_alpha` | {record['extra']['notebooks']['00_alpha']['seconds'] / 60:.1f} | " \
                       f"conjunction: late 0.95 ± 0.05 (rgb 0.55) |"
    assert lines[5].startswith("| `01_beta` |") and lines[5].endswith("| – |")
    assert lines[-1].startswith("| **total** |")

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n\n{rn.README_START}\nold text\n{rn.README_END}\n\nafter\n")
    assert rn.update_readme(readme, tmp_path / "absent.json")
    assert rn.readme_timing(readme) == rn.README_ABSENT
    assert rn.update_readme(readme, figures / "results" / "make_run.json")
    assert rn.readme_timing(readme) == table and readme.read_text().endswith(f"{rn.README_END}\n\nafter\n")
    assert not rn.update_readme(readme, figures / "results" / "make_run.json")  # already up to date


def test_readme_timing_table_comes_from_make_run_json():
    """README.md's make-run timing block is what figures/results/make_run.json renders to."""
    record_file = ROOT / "figures" / "results" / "make_run.json"
    readme = ROOT / "README.md"
    if not record_file.exists():
        assert rn.readme_timing(readme) == rn.README_ABSENT
        pytest.skip("figures/results/make_run.json is written by a full `make run`; none committed yet")
    assert rn.readme_timing(readme) == rn.timing_table(json.loads(record_file.read_text())), (
        "README.md's timing table is out of date: python -m fusionkit.lab.run_notebooks --readme")
