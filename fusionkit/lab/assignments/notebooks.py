"""Assignment notebooks in nbgrader's format: release a student version, autograde a submission.

The instructor's *source* notebook is the solution, marked up as nbgrader marks it up, so the same
file works with nbgrader itself (schema version 3 cell metadata, nbgrader's delimiters):

- a **solution cell** (``"nbgrader": {"solution": true, "grade_id": ...}``) holds the answer between
  ``### BEGIN SOLUTION`` and ``### END SOLUTION`` lines (the whole cell, without them). The student
  version replaces each region by ``# YOUR CODE HERE`` / ``raise NotImplementedError()`` at the
  region's indentation, so a half-done class still parses;
- a **test cell** (``"grade": true, "locked": true, "points": p``) passes when it runs without an
  error and without writing to stderr (nbgrader's rule), and earns its points, all or nothing.
  Lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` are removed from the
  student version and put back for grading;
- a **manually graded answer** (``"grade": true, "solution": true, "points": p``, nbgrader's
  "manually graded answer" cell, markdown or code) holds the instructor's rubric and model answer
  in the source; the student version replaces it by ``YOUR ANSWER HERE``. Grading does not score
  it: the report lists it under ``manual`` as "needs manual grading", with its points and the
  student's answer, and the automatic score is out of the automatic points only;
- **locked** cells (tests, and ``"locked": true`` instructions) are restored from the source before
  grading, whatever the student did to them; a deleted test cell earns nothing.

fusionkit adds one notebook-level entry, ``metadata["fusionkit"]``::

    {"assignment": "a1_conv_fusion",            # the source's file name: how grade finds the source
     "check_block": {"block": "BLOCK_NAME",     # a Python expression naming the student's block
                     "checks": {"contract": 1, "shapes": 2, ...},   # optional: which checks, points
                     "starts_as": "sum",        # optional: the initialisation the block must have
                     "training": {...}}}        # optional: TrainingCheck settings

Grading executes the submission with papermill (``SMOKE=True`` by default: the notebook's own
experiments shrink to seconds; the learning criterion is the block checker's ``trains`` check, which
runs at its full setting either way), runs *every* cell even after errors, then runs
:func:`~fusionkit.lab.assignments.check.check_block` on the student's block in the same kernel (the
block is defined there) and scores the test cells and the checks together.

Why not nbgrader itself: ``nbgrader generate_assignment`` / ``autograde`` work on a course folder
(``source/<assignment>/``, ``submitted/<student>/<assignment>/``) with a gradebook database
(``gradebook.db``), execute notebooks without papermill's parameter injection (so no ``SMOKE``),
have no notion of checking a fusion block in the student's kernel, and pull in the Jupyter server
stack, SQLAlchemy and Alembic. The two commands here need a source notebook and a submission, no
database, and score test cells as nbgrader's autograder does (except its partial credit for a test
cell whose last output is a number: here a test cell earns all its points or none).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Sequence

import nbformat
from nbformat import NotebookNode

from fusionkit.data.atomic import atomic_write_text
from fusionkit.lab.run_notebooks import PROJECT_ROOT

ASSIGNMENTS_DIR = PROJECT_ROOT / "notebooks" / "assignments"
SOLUTION = ("BEGIN SOLUTION", "END SOLUTION")  # nbgrader matches its delimiters anywhere in a line
HIDDEN_TESTS = ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
TEXT_STUB = ("YOUR ANSWER HERE",)
GRADING_TAG = "fusionkit-grading"
REPORT_MARKER = "FUSIONKIT-CHECK-REPORT "
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class AssignmentError(ValueError):
    """A source notebook breaks the format, or a submission cannot be matched to its source."""


# --- nbgrader cell metadata ------------------------------------------------------------------------
def nbgrader(cell: NotebookNode) -> dict:
    return cell.metadata.get("nbgrader", {})


def is_solution(cell: NotebookNode) -> bool:
    return bool(nbgrader(cell).get("solution", False))


def is_test(cell: NotebookNode) -> bool:
    return bool(nbgrader(cell).get("grade", False)) and not is_solution(cell)


def is_manual(cell: NotebookNode) -> bool:
    """nbgrader's manually graded answer: a solution cell that is also graded (by a person, by rubric)."""
    return bool(nbgrader(cell).get("grade", False)) and is_solution(cell)


def is_locked(cell: NotebookNode) -> bool:
    """nbgrader's rule: test cells are locked, solution cells never, others when marked ``locked``."""
    return not is_solution(cell) and (is_test(cell) or bool(nbgrader(cell).get("locked", False)))


def replace_regions(source: str, delimiters: tuple[str, str], stub: tuple[str, ...]) -> tuple[str, int]:
    """Replace every region from a line containing ``delimiters[0]`` to one containing
    ``delimiters[1]`` (both included) by the ``stub`` lines at the first line's indentation; return
    the new source and the number of regions. Raises on nested or unterminated regions."""
    out, inside, count = [], False, 0
    for line in source.split("\n"):
        if delimiters[0] in line:
            if inside:
                raise AssignmentError(f"nested {delimiters[0]!r} regions")
            inside, count = True, count + 1
            indent = line[:len(line) - len(line.lstrip())]
            out += [indent + s for s in stub]
        elif delimiters[1] in line:
            if not inside:
                raise AssignmentError(f"{delimiters[1]!r} without {delimiters[0]!r}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise AssignmentError(f"{delimiters[0]!r} without {delimiters[1]!r}")
    return "\n".join(out), count


def validate_source(nb: NotebookNode, path: str | os.PathLike) -> None:
    """Check what nbgrader's validator checks, and what this grader needs: unique grade ids, points
    on test cells, solution regions only in solution cells, hidden tests only in test cells."""
    seen: set[str] = set()
    for i, cell in enumerate(nb.cells):
        meta, where = nbgrader(cell), f"{Path(path).name}, cell {i}"
        try:
            replace_regions(cell.source, SOLUTION, ())
            replace_regions(cell.source, HIDDEN_TESTS, ())
        except AssignmentError as e:
            raise AssignmentError(f"{where}: {e}") from None
        if any(d in cell.source for d in SOLUTION) and not is_solution(cell):
            raise AssignmentError(f"{where}: a solution region outside a solution cell (nbgrader refuses it too); "
                                  f"set \"solution\": true in its nbgrader metadata")
        if any(d in cell.source for d in HIDDEN_TESTS) and not is_test(cell):
            raise AssignmentError(f"{where}: hidden tests outside a test cell; set \"grade\": true, \"locked\": true")
        if not (meta.get("grade") or meta.get("solution") or meta.get("locked")):
            continue
        grade_id = meta.get("grade_id", "")
        if not grade_id or grade_id in seen:
            raise AssignmentError(f"{where}: nbgrader cells need a unique, non-empty grade_id (got {grade_id!r})")
        seen.add(grade_id)
        if is_manual(cell) and not float(meta.get("points", 0)) > 0:
            raise AssignmentError(f"{where} ({grade_id}): a manually graded answer needs points > 0 (nbgrader's "
                                  f"\"points\" in its metadata)")
        if is_test(cell) and (cell.cell_type != "code" or not float(meta.get("points", 0)) > 0):
            raise AssignmentError(f"{where} ({grade_id}): a test cell must be a code cell with points > 0")


def read_notebook(path: str | os.PathLike) -> NotebookNode:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    return nbformat.read(path, as_version=4)


# --- release -----------------------------------------------------------------------------------------
def release_notebook(source: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the student version of ``source`` to ``out_dir/<same name>``: solution regions (or whole
    solution cells) replaced by nbgrader's stub, hidden tests removed, outputs cleared, and the cells
    locked as nbgrader's ``LockCells`` locks them (tests and instructions read-only and undeletable,
    solution cells undeletable)."""
    nb = read_notebook(source)
    validate_source(nb, source)
    for cell in nb.cells:
        if is_solution(cell):
            stub = CODE_STUB if cell.cell_type == "code" else TEXT_STUB
            cell.source, regions = replace_regions(cell.source, SOLUTION, stub)
            if not regions:
                cell.source = "\n".join(stub)
            cell.metadata["deletable"] = False
        elif is_locked(cell):
            cell.source, _ = replace_regions(cell.source, HIDDEN_TESTS, ())
            cell.metadata.update(deletable=False, editable=False)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        for key in ("papermill", "execution"):
            cell.metadata.pop(key, None)
    nb.metadata.pop("papermill", None)
    out = Path(out_dir) / Path(source).name
    if out.resolve() == Path(source).resolve():
        raise AssignmentError(f"releasing {source} into its own folder would overwrite the solutions; choose another OUT_DIR")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, nbformat.writes(nb))
    return out


# --- grade -------------------------------------------------------------------------------------------
def find_source(submission: NotebookNode, submission_path: str | os.PathLike) -> Path:
    """The source notebook of a submission: ``notebooks/assignments/<assignment>.ipynb``, where the
    assignment is named in the submission's ``metadata["fusionkit"]["assignment"]``."""
    name = submission.metadata.get("fusionkit", {}).get("assignment")
    path = ASSIGNMENTS_DIR / f"{name}.ipynb"
    if not name or not path.is_file():
        raise AssignmentError(f"cannot tell which assignment {submission_path} answers (metadata names "
                              f"{name!r}; looked for {path}); pass the instructor's notebook with --source")
    return path


def restore_locked_cells(submission: NotebookNode, source: NotebookNode) -> list[str]:
    """Put the source's version of every locked cell (tests with their hidden parts, instructions)
    back into ``submission``, matched by grade_id, as nbgrader's ``OverwriteCells`` does. Returns
    the grade ids of locked cells the submission lacks."""
    by_id = {nbgrader(c)["grade_id"]: c for c in submission.cells if nbgrader(c).get("grade_id")}
    missing = []
    for cell in source.cells:
        if not is_locked(cell):
            continue
        grade_id = nbgrader(cell)["grade_id"]
        if grade_id not in by_id:
            missing.append(grade_id)
            continue
        target = by_id[grade_id]
        target.cell_type, target.source = cell.cell_type, cell.source
        target.metadata["nbgrader"] = dict(nbgrader(cell))
    return missing


def manual_answers(submission: NotebookNode, source: NotebookNode) -> list[dict]:
    """The source's manually graded answers, each with its points and the student's answer, for the
    report's ``manual`` list: a person grades them by the rubric in the source's cell."""
    by_id = {nbgrader(c).get("grade_id"): c for c in submission.cells if nbgrader(c).get("grade_id")}
    out = []
    for cell in filter(is_manual, source.cells):
        grade_id = nbgrader(cell)["grade_id"]
        answer = by_id[grade_id].source.strip() if grade_id in by_id else ""
        stub = "\n".join(TEXT_STUB if cell.cell_type == "markdown" else CODE_STUB)
        status = ("missing from the submission (deleted?)" if grade_id not in by_id else
                  "not answered (the stub is still there)" if not answer or answer == stub else "needs manual grading")
        out.append({"grade_id": grade_id, "points": float(nbgrader(cell)["points"]), "status": status,
                    "answer": answer})
    return out


def check_options(config: dict, skip: Sequence[str] = ()) -> dict:
    """:func:`~fusionkit.lab.assignments.check.check_block`'s keyword arguments from an assignment's
    ``check_block`` metadata, with the checks and their points spelled out and those in ``skip`` left out."""
    from fusionkit.lab.assignments.check import select_checks

    options = {k: v for k, v in config.items() if k != "block"}
    options["checks"] = {check.name: points for check, points in select_checks(config.get("checks"))
                         if check.name not in skip}
    return options


def assignment_check_options(assignment: str, skip: Sequence[str] = ()) -> dict:
    """What grading passes to ``check_block`` for ``assignment`` (its source notebook's metadata),
    without the checks in ``skip``: the notebook checks the block as it will be graded."""
    nb = read_notebook(ASSIGNMENTS_DIR / f"{assignment}.ipynb")
    return check_options(nb.metadata.get("fusionkit", {}).get("check_block", {}), skip)


def grading_cell(config: dict) -> NotebookNode:
    """The cell appended to a submission: check the student's block in their kernel and print the
    report as one marked JSON line."""
    options = check_options(config)
    source = (f"import json as _fk_json\n"
              f"from fusionkit.lab.assignments.check import check_block as _fk_check_block\n"
              f"_fk_report = _fk_check_block({config['block']}, **_fk_json.loads({json.dumps(options)!r}))\n"
              f"print({REPORT_MARKER!r} + _fk_json.dumps(_fk_report.to_dict()))")
    return nbformat.v4.new_code_cell(source, metadata={"tags": [GRADING_TAG]})


def cell_error(cell: NotebookNode) -> tuple[str, str] | None:
    """``(one-line message, traceback)`` of a failed cell under nbgrader's rule (an error output or
    anything on stderr), or None."""
    for output in cell.get("outputs", []):
        if output.output_type == "error":
            trace = _ANSI.sub("", "\n".join(output.get("traceback", [])))
            return f"{output.ename}: {output.evalue}".strip(), trace
        if output.output_type == "stream" and output.name == "stderr":
            text = output.text.strip()
            return f"the cell wrote to stderr, which nbgrader counts as a failure: {text.splitlines()[0] if text else ''}", text
    return None


def execute_submission(notebook: NotebookNode, executed: Path, parameters: dict, cwd: Path,
                       timeout: int | None) -> tuple[NotebookNode, str | None]:
    """Run every cell with papermill, errors or not; return the executed notebook and why execution
    stopped early (a timeout, a dead kernel), if it did."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    executed.parent.mkdir(parents=True, exist_ok=True)
    stopped = None
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / executed.name
        nbformat.write(notebook, merged)
        try:
            papermill.execute_notebook(str(merged), str(executed), parameters=parameters, cwd=str(cwd),
                                       kernel_name="python3", progress_bar=False, execution_timeout=timeout,
                                       allow_errors=True)
        except PapermillExecutionError:
            pass  # cells raised; with allow_errors every cell still ran, and grading reads their outputs
        except Exception as e:  # a timeout or a dead kernel: grade what ran
            stopped = f"execution stopped: {type(e).__name__}: {e}"
            if not executed.is_file():
                nbformat.write(notebook, executed)
    return nbformat.read(executed, as_version=4), stopped


def block_results(executed: NotebookNode, config: dict, stopped: str | None):
    """The block checker's results from the grading cell's output; when there are none (the block
    could not be found or checked), every configured check fails with the reason."""
    from fusionkit.lab.assignments.check import CheckReport, CheckResult, select_checks

    cell = next(c for c in executed.cells if GRADING_TAG in c.metadata.get("tags", []))
    for output in cell.get("outputs", []):
        for line in output.get("text", "").splitlines() if output.output_type == "stream" else []:
            if line.startswith(REPORT_MARKER):
                return CheckReport.from_dict(json.loads(line[len(REPORT_MARKER):])).results
    error = cell_error(cell)
    reason = error[0] if error else (stopped or "the checker printed no report")
    return [CheckResult(check.name, False, 0.0, points, f"the block could not be checked: {reason}",
                        error[1] if error else None)
            for check, points in select_checks(config.get("checks"))]


def grade_notebook(submission: str | os.PathLike, source: str | os.PathLike | None = None,
                   out: str | os.PathLike | None = None, executed: str | os.PathLike | None = None,
                   smoke: bool = True, data_dir: str | os.PathLike = PROJECT_ROOT / "data",
                   figures_dir: str | os.PathLike | None = None, timeout: int | None = 600):
    """Grade one submission; write the JSON report to ``out`` (default ``<submission>.grade.json``)
    and the executed notebook to ``executed`` (default ``<submission>.graded.ipynb``).

    ``figures_dir``: where the notebook saves figures and results (default: a temporary folder, so
    grading never overwrites the course's figures). Returns the
    :class:`~fusionkit.lab.assignments.check.CheckReport` (test cells first, then block checks; its
    score is out of these automatic points), with the manually graded answers under ``extra["manual"]``.
    """
    from fusionkit.lab.assignments.check import CheckReport, CheckResult

    start = time.perf_counter()
    submission = Path(submission)
    student = read_notebook(submission)
    source = Path(source) if source is not None else find_source(student, submission)
    reference = read_notebook(source)
    validate_source(reference, source)
    missing = restore_locked_cells(student, reference)
    config = reference.metadata.get("fusionkit", {}).get("check_block", {})
    if config:
        student.cells.append(grading_cell(config))
    executed = Path(executed) if executed is not None else submission.with_suffix(".graded.ipynb")
    with tempfile.TemporaryDirectory() as tmp:
        parameters = {"SMOKE": smoke, "DATA_DIR": str(Path(data_dir).resolve()),
                      "FIGURES_DIR": str(Path(figures_dir).resolve()) if figures_dir is not None else tmp}
        ran, stopped = execute_submission(student, executed, parameters, submission.parent.resolve(), timeout)
    by_id = {nbgrader(c).get("grade_id"): c for c in ran.cells if nbgrader(c).get("grade_id")}
    results = []
    for cell in filter(is_test, reference.cells):
        grade_id, points = nbgrader(cell)["grade_id"], float(nbgrader(cell)["points"])
        ran_cell = by_id.get(grade_id)
        if grade_id in missing:
            failure = ("the test cell is missing from the submission (deleted?)", None)
        elif not ran_cell.get("outputs") and ran_cell.get("execution_count") is None:
            failure = (f"the test cell did not run ({stopped or 'execution stopped before it'})", None)
        else:
            failure = cell_error(ran_cell)
        results.append(CheckResult(grade_id, failure is None, 0.0 if failure else points, points,
                                   failure[0] if failure else "passed", failure[1] if failure else None,
                                   kind="notebook test"))
    if config:
        results += block_results(ran, config, stopped)
    manual = manual_answers(student, reference)
    cell_errors = [{"cell": i, "grade_id": nbgrader(c).get("grade_id"), "error": err[0]}
                   for i, c in enumerate(ran.cells) if c.cell_type == "code" and (err := cell_error(c))]
    out = Path(out) if out is not None else submission.with_suffix(".grade.json")
    report = CheckReport(submission.name, results, {
        "assignment": reference.metadata.get("fusionkit", {}).get("assignment", source.stem),
        "source": str(source), "executed": str(executed), "report": str(out), "smoke": smoke, "stopped": stopped,
        "cell_errors": cell_errors, "manual": manual, "manual_points": sum(m["points"] for m in manual),
        "seconds": round(time.perf_counter() - start, 1)})
    atomic_write_text(out, json.dumps(report.to_dict(), indent=1))
    return report
