"""The notebooks teach (DESIGN.md "Notebooks", issue 18): every notebook of the series has a header (what you
will learn, its run time rendered from the results, the paper sections with links), a **Predict first** prompt
before each experiment, graded Exercises with an answer for each in the instructor copy
(``notebooks/instructor/<notebook>.md``), a Summary rendered from the results file, and References; the
assignments have the header, Summary and References. No markdown cell types a measured number: what a
notebook's text says it measured is rendered from its results JSON, so text and results cannot drift.

What counts as a typed measurement (:func:`typed_measurements`), in the prose of a markdown cell once code
spans, fenced code, HTML comments and link targets are removed:

- a decimal fraction ``0.x`` / ``1.x`` (an accuracy: ``0.67``, ``1.00``, ``0.5``),
- a percentage (``85.2%``), a mean ± spread (``0.67 ± 0.04``),
- an approximate value (``≈0.5``, ``~300``), a duration (``8.4 min``, ``20 s``), a decimal ratio (``1.87×``).

Two kinds of number are not measurements and are exempt:

- a **quoted paper number**: the whole block (a paragraph or list item) cites the paper's table, section,
  equation or figure (``Table 1``, ``§3.5``, ``Eq. 4``, ``Fig. 3``);
- a **parameter**: a number right after ``=``, ``≥``, ``≤``, ``<`` or ``>`` (``α1 = 0.3``, ``top-1 ≥ 0.9``).

An instructor answer that quotes a measured number names the results key it comes from, as
`` `<results file>#<JSON pointer>` `` (RFC 6901, e.g. `` `07_benchmark.json#/variants/spatial(fusion=sum)/registration/spatial-S` ``);
the key must exist in ``figures/results/`` and the value it holds (a summary's mean, or a number), to the
digits shown, must appear in the answer.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SERIES = sorted((ROOT / "notebooks").glob("0*.ipynb"))
ASSIGNMENTS = sorted((ROOT / "notebooks" / "assignments").glob("*.ipynb"))
INSTRUCTOR = ROOT / "notebooks" / "instructor"
RESULTS = ROOT / "figures" / "results"

# a call that trains or measures: each needs a "Predict first" prompt after the previous one
EXPERIMENT_CALLS = ("puzzle_experiment(", "run_method(", "fine_tune(", "run_benchmark(", ".fit()", "endpoint_error(")
PREDICT = "**Predict first.**"
PAPER_LINK = re.compile(r"\]\((https://(arxiv\.org/abs/|openaccess\.thecvf\.com/|www\.ipol\.im/)[^)]+)\)")
EXERCISE = re.compile(r"^(\d+)\. \*\*\((★{1,3})\)\*\*", re.M)

MEASUREMENT = re.compile(
    r"\d+(?:\.\d+)?\s?%"                                              # 85.2%
    r"|\d\s*±\s*\d"                                                    # 0.67 ± 0.04
    r"|[≈~]\s?\d"                                                      # ≈0.5, ~300
    r"|(?<![\w.])\d+(?:\.\d+)?\s?(?:min|minutes?|s|sec|seconds?|h|hours?)\b"  # 8.4 min, 20 s
    r"|\d+\.\d+\s?×"                                                   # 1.87×
    r"|(?<![\w.])[01]\.\d+(?![\w]|\.\d)")                                   # 0.67, 1.00, 0.5
PARAMETER = re.compile(r"[=≥≤<>]\s*-?\d+(?:\.\d+)?")
PAPER_CITATION = re.compile(r"(?:Table|Tab\.|§|Sec\.|Eq\.|Fig\.|Figure)\s?\d")
BLOCK_START = re.compile(r"^\s*(?:[*+-]|\d+\.)\s|^\s*#")


def prose(markdown: str) -> str:
    """``markdown`` without fenced code, code spans, HTML comments, link targets and bare URLs."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    return re.sub(r"https?://\S+", " ", text)


def blocks(markdown: str) -> list[str]:
    """Paragraphs and list items (a wrapped line belongs to the block it continues)."""
    out: list[list[str]] = []
    for line in prose(markdown).splitlines():
        if not line.strip():
            out.append([])
        elif BLOCK_START.match(line) or not out:
            out.append([line])
        else:
            out[-1].append(line)
    return [" ".join(b) for b in out if b]


def typed_measurements(markdown: str) -> list[str]:
    """The numbers in ``markdown`` that look like measurements and are neither quoted from a paper nor
    parameters (the module docstring states the rules)."""
    found = []
    for block in blocks(markdown):
        if PAPER_CITATION.search(block):
            continue
        found += [m.group(0) for m in MEASUREMENT.finditer(PARAMETER.sub(" ", block))]
    return found


def cells(path: Path) -> list:
    return nbformat.read(path, as_version=4).cells


def heading(cell) -> str:
    return cell.source.lstrip().splitlines()[0] if cell.cell_type == "markdown" and cell.source.strip() else ""


def section(nb_cells, title: str) -> int:
    """Index of the markdown cell whose first line is ``## <title>``."""
    found = [i for i, c in enumerate(nb_cells) if heading(c) == f"## {title}"]
    assert len(found) == 1, f"expected one '## {title}' cell, found {len(found)}"
    return found[0]


def exercises(nb_cells) -> list[tuple[int, str]]:
    """(number, difficulty stars) of each exercise of the Exercises cell."""
    return [(int(n), stars) for n, stars in EXERCISE.findall(nb_cells[section(nb_cells, "Exercises")].source)]


def instructor_answers(stem: str) -> dict[int, str]:
    text = (INSTRUCTOR / f"{stem}.md").read_text()
    parts = re.split(r"^## Exercise (\d+)\b.*$", text, flags=re.M)
    return {int(n): body.strip() for n, body in zip(parts[1::2], parts[2::2])}


def resolve(pointer_ref: str):
    """The value at `` <file>#<JSON pointer> `` in figures/results (KeyError naming what is missing)."""
    name, _, pointer = pointer_ref.partition("#")
    value = json.loads((RESULTS / name).read_text())
    for token in pointer.lstrip("/").split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        value = value[int(token)] if isinstance(value, list) else value[token]
    return value


# ---- the rules themselves ----------------------------------------------------------------------------

def test_a_typed_measurement_is_caught_and_quoted_papers_and_parameters_are_not():
    planted = "Sum fusion reached 0.67 on `registration`, while late fusion stayed near 50%."
    assert typed_measurements(planted) == ["0.67", "50%"]
    assert typed_measurements("Conv fusion: 0.90 ± 0.14 over three seeds.") == ["0.90", "0.14"]
    assert typed_measurements("CMMP: 53 ± 4 points.") == ["3 ± 4"]
    assert typed_measurements("The benchmark takes about 15 min; the block ≈0.5.") == ["15 min", "≈0"]
    assert typed_measurements("CMA_iter1-R counts 1.87× one ResNet-50.") == ["1.87×"]
    # quoted from the paper: the block cites its table / section / equation
    assert typed_measurements("In Table 1 sum fusion at ReLU5 reaches 85.20%,\nmax 82.70%.") == []
    assert typed_measurements("The paper's range is 2 points (§4.3): 95.4–97.4%.") == []
    # parameters, code and links
    assert typed_measurements("Margins α1 = 0.3, α3 = 0.8; solved means top-1 ≥ 0.9.") == []
    assert typed_measurements("Set `SIZE = 32` and `lr=0.003`; see [arXiv:1604.06573](https://arxiv.org/abs/1604.06573).") == []
    # a citation in one paragraph does not exempt the next one
    assert typed_measurements("Table 1 gives 85.96%.\n\nHere conv reached 1.00.") == ["1.00"]
    # a wrapped line belongs to its list item
    assert typed_measurements("* Table 2: ReLU5 best,\n  85.96%.\n* ours 0.98") == ["0.98"]


def test_a_planted_number_in_a_notebook_fails_the_scan(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 99 · x\n\nLate fusion scored 0.49 here."),
                nbformat.v4.new_code_cell("print(0.49)")]  # code prints are not markdown
    path = tmp_path / "99_planted.ipynb"
    nbformat.write(nb, path)
    assert markdown_measurements(path) == [(0, "0.49")]


def test_a_results_pointer_resolves_and_names_what_is_missing():
    assert resolve("02_two_stream_late_fusion.json#/params/SEEDS/1") == 1
    with pytest.raises(KeyError):
        resolve("02_two_stream_late_fusion.json#/accuracy/no_such_puzzle")


# ---- the notebooks ------------------------------------------------------------------------------------

def markdown_measurements(path: Path, only=None) -> list[tuple[int, str]]:
    return [(i, m) for i, c in enumerate(cells(path)) if c.cell_type == "markdown" and (only is None or only(c))
            for m in typed_measurements(c.source)]


def test_there_are_eight_notebooks_and_two_assignments():
    assert [p.stem[:2] for p in SERIES] == [f"0{i}" for i in range(8)]
    assert len(ASSIGNMENTS) == 2


@pytest.mark.parametrize("path", SERIES, ids=lambda p: p.stem)
def test_no_markdown_cell_types_a_measurement(path):
    typed = markdown_measurements(path)
    assert not typed, (f"{path.name}: markdown cells type measured numbers {typed} (cell index, text): render them "
                       "from the results file with fusionkit.viz.text in a code cell, or cite the paper's table")


@pytest.mark.parametrize("path", ASSIGNMENTS, ids=lambda p: p.stem)
def test_assignment_header_summary_and_references_type_no_measurement(path):
    # the rest of an assignment's text is its author's (the course assignments' own tests cover it)
    nb_cells = cells(path)
    first = next(i for i, c in enumerate(nb_cells) if c.cell_type == "markdown")
    mine = {first, section(nb_cells, "Summary"), section(nb_cells, "References")}
    typed = [(i, m) for i, m in markdown_measurements(path) if i in mine]
    assert not typed, f"{path.name}: {typed}"


@pytest.mark.parametrize("path", SERIES + ASSIGNMENTS, ids=lambda p: p.stem)
def test_header_says_what_you_learn_the_run_time_and_the_papers(path):
    nb_cells = cells(path)
    header = nb_cells[0]
    assert header.cell_type == "markdown" and header.source.startswith("# ")
    assert "**What you will learn.**" in header.source
    assert "**Paper sections.**" in header.source and PAPER_LINK.search(header.source), \
        f"{path.name}: the header names the paper sections with a link to the arXiv / CVF page"
    code = [c.source for c in nb_cells if c.cell_type == "code"]
    assert f'run_time("{path.stem}", FIGURES_DIR)' in "\n".join(code[:3]), \
        f"{path.name}: a code cell right after the parameters renders the run time (fusionkit.viz.text.run_time)"


@pytest.mark.parametrize("path", SERIES + ASSIGNMENTS, ids=lambda p: p.stem)
def test_no_notebook_links_a_design_document_the_repository_lacks(path):
    assert not any("DESIGN.md" in c.source for c in cells(path)), \
        f"{path.name} mentions DESIGN.md, which the repository does not contain: link docs/architecture.md or the README"


@pytest.mark.parametrize("path", SERIES, ids=lambda p: p.stem)
def test_every_experiment_is_preceded_by_a_predict_first_prompt(path):
    waiting = False  # a prompt seen since the last experiment
    experiments = 0
    for i, c in enumerate(cells(path)):
        if c.cell_type == "markdown" and PREDICT in c.source:
            waiting = True
        elif c.cell_type == "code" and any(call in c.source for call in EXPERIMENT_CALLS):
            assert waiting, f"{path.name}: the experiment in cell {i} has no '{PREDICT}' prompt before it"
            waiting, experiments = False, experiments + 1
    assert experiments, f"{path.name}: no experiment found"


@pytest.mark.parametrize("path", SERIES, ids=lambda p: p.stem)
def test_exercises_are_graded_and_answered_in_the_instructor_copy(path):
    found = exercises(cells(path))
    assert 3 <= len(found) <= 5, f"{path.name}: {len(found)} exercises (3-5 wanted)"
    assert [n for n, _ in found] == list(range(1, len(found) + 1))
    levels = [len(stars) for _, stars in found]
    assert levels == sorted(levels) and len(set(levels)) >= 2, f"{path.name}: exercises graded by difficulty {levels}"
    answers = instructor_answers(path.stem)
    assert sorted(answers) == [n for n, _ in found], f"{path.stem}.md answers {sorted(answers)}"
    for n, answer in answers.items():
        assert len(answer.split()) >= 30, f"{path.stem}.md, exercise {n}: a worked answer, not a hint"


@pytest.mark.parametrize("path", SERIES, ids=lambda p: p.stem)
def test_instructor_numbers_name_their_results_key(path):
    for n, answer in instructor_answers(path.stem).items():
        for paragraph in blocks(answer):
            if not typed_measurements(paragraph):
                continue
            refs = re.findall(r"`([\w.-]+\.json#/[^`]+)`", answer)
            assert refs, f"{path.stem}.md, exercise {n}: a measured number without its results key: {paragraph[:80]}"
        for ref in re.findall(r"`([\w.-]+\.json#/[^`]+)`", answer):
            value = resolve(ref)
            value = value["mean"] if isinstance(value, dict) else value
            assert isinstance(value, (int, float)), f"{ref} is not a number"
            shown = {f"{value:.{d}f}" for d in (2, 3)} | {f"{value:g}"}
            assert any(s in answer for s in shown), \
                f"{path.stem}.md, exercise {n}: {ref} holds {value:.3f}, which the answer does not quote"


@pytest.mark.parametrize("path", SERIES + ASSIGNMENTS, ids=lambda p: p.stem)
def test_summary_is_rendered_from_the_results_and_references_are_linked(path):
    nb_cells = cells(path)
    summary = section(nb_cells, "Summary")
    render = nb_cells[summary + 1]
    assert render.cell_type == "code" and "load_results(" in render.source and "Markdown(" in render.source, \
        f"{path.name}: the Summary's numbers come from a code cell rendering the saved results"
    references = nb_cells[section(nb_cells, "References")].source
    assert PAPER_LINK.search(references), f"{path.name}: References link the papers"


# ---- the helpers the notebooks render with ----------------------------------------------------------------

def test_text_helpers_format_summaries_and_the_run_time(tmp_path):
    from fusionkit.viz.text import accuracy_table, mean_std, per_seed, run_time

    two = {"mean": 0.6666, "std": 0.0392, "seeds": [0.69, 0.61, 0.69]}
    assert mean_std(two) == "0.67 ± 0.04" and mean_std({"mean": 0.5, "std": 0.0, "seeds": [0.5]}) == "0.50"
    assert per_seed(two) == "0.69 / 0.61 / 0.69"
    assert accuracy_table({"late": {"rgb": two}}, ["rgb", "flow"]).splitlines()[2] == "| late | 0.67 ± 0.04 | – |"
    with pytest.raises(TypeError, match="results summary"):
        mean_std(0.67)

    (tmp_path / "results").mkdir()
    assert "not measured yet by `make run`" in run_time("02_x", tmp_path)
    assert "On a GPU: not measured yet" in run_time("02_x", tmp_path)
    (tmp_path / "results" / "02_x.json").write_text(json.dumps({"extra": {"seconds": {"a": 60, "b": 120}}}))
    assert "its experiments took 3.0 min" in run_time("02_x", tmp_path)
    record = {"extra": {"started": "2026-12-02T07:00:00+0000", "machine": {"cpu_count": 2, "cpu_model": "Xeon"},
                        "load": {"start": {"load_average": [0.5, 0.4, 0.3]}},
                        "notebooks": {"02_x": {"seconds": 750.0}}}}
    (tmp_path / "results" / "make_run.json").write_text(json.dumps(record))
    assert run_time("02_x", tmp_path).startswith(
        "**Run time.** On 2 CPU cores: 12.5 min in the `make run` of 2026-12-02 (2 cores, Xeon; load average 0.50")


def test_assignment_summary_reads_blocks_learning_curves_and_the_check():
    from fusionkit.viz.text import assignment_summary

    one = lambda v: {"mean": v, "std": 0.0, "seeds": [v]}  # noqa: E731
    results = {"params": {"SEEDS": [0], "SMOKE": True},
               "accuracy": {"registration": {"rgb": one(0.25), "flow": one(0.5), "late": one(0.5)}},
               "variants": {"fusion=sum": {"registration": {"spatial-S": one(0.75)}},
                            "fusion=mine": {"registration": {"spatial-S": one(1.0)}},
                            "fusion=pool3d": {"order": {"conv_fusion-S": one(0.5)}}},
               "extra": {"speed": {"mine": {"curve_mean": one(0.8), "epochs_to_0.9": [3]},
                                   "sum": {"curve_mean": one(0.6), "epochs_to_0.9": [None]}},
                         "check": {"score": 11.0, "max_score": 12.0, "checks": ["a", "b"]}}}
    lines = assignment_summary(results).splitlines()
    assert lines == [
        "- **`registration`** (seeds [0]): RGB alone 0.25, flow alone 0.50, late fusion 0.50.",
        "- **`sum`** (fine-tuned from the late model): test 0.75; mean top-1 over the fine-tuning epochs 0.60, "
        "epochs to 0.9 per seed – (–: not reached).",
        "- **`mine`** (fine-tuned from the late model): test 1.00; mean top-1 over the fine-tuning epochs 0.80, "
        "epochs to 0.9 per seed 3 (–: not reached).",
        "- **`check_block`**: 11 of 12 points on the checks run here (2 checks; the training check is skipped in "
        "smoke mode)."]
