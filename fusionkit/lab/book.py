"""The course book: a static HTML site of the *executed* notebooks (``fusionkit book``, ``make book``).

``make run`` executes the series (``notebooks/*.ipynb``) into ``build/`` (:mod:`fusionkit.lab.run_notebooks`)
and its figures and numbers go to ``figures/``. The book renders those executed copies as they are --
it never executes a notebook -- so a student sees every result without running anything:

- a landing page (``docs/book/index.md``, with a generated table of the notebooks, each one's
  headline result read from ``figures/results/<notebook>.json`` and the parameters it ran with);
- the series 00-07 in order, as ``make run`` executed them, with every ``solution``-tagged cell
  removed (the worked answers of the exercises belong to the instructor's copy); papermill's
  injected-parameters cell is dropped too (it shows the paths of the machine that ran it);
- the benchmark table (``figures/results/benchmark.md``, written by ``fusionkit bench``) and heatmap;
- every figure in ``figures/``, grouped by notebook, except the assignments' (``a1_*``: those show the
  results of the instructor's solution);
- the assignments' **student** versions, made by :func:`~fusionkit.lab.assignments.notebooks.release_notebook`
  (what ``fusionkit assignment release`` writes: solutions stubbed, hidden tests removed).

:func:`assemble` writes that source tree, :func:`render` runs Sphinx on it, :func:`build_book` does
both. Widget outputs (the trainer's tqdm bars, the explorers) need a kernel, or ipywidgets' embedding
script from a CDN; neither exists in a static offline site, so :func:`static_widget_html` renders each
from the widget state saved in the executed notebook (bar at its final value, controls at their values,
an Output widget's figures) and the notebook's widget state is dropped.

The builder: Sphinx with MyST-NB (``nb_execution_mode = "off"``) and the book theme, i.e. the stack
that Jupyter Book 1 wraps, used directly. Chosen because it builds offline and does not execute:
Jupyter Book 2 is a Node program (mystmd) that downloads its site theme at build time, and Jupyter
Book 1 pins Sphinx 7 and MyST-Parser 3 (``~=``), old releases this project's lower-bounds-only
dependencies would be held to; MyST-NB and sphinx-book-theme are the same Executable Books projects,
maintained and on current Sphinx. Maths becomes MathML when the book is built (latex2mathml,
docs/book/conf.py) instead of Sphinx's default MathJax from a CDN, so reading the site needs no
network either.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat import NotebookNode

from fusionkit.data.atomic import atomic_write_text
from fusionkit.lab.run_notebooks import PROJECT_ROOT, notebook_headline

BOOK_DOCS = PROJECT_ROOT / "docs" / "book"        # conf.py and the landing page's text
CONTENTS_MARKER = "<!-- fusionkit-book: contents -->"
SOLUTION_TAG = "solution"                         # cells with a worked answer: never in the book
INJECTED_TAG = "injected-parameters"              # papermill's cell of the parameters it was given
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
BENCHMARK_NAME = "benchmark"                      # fusionkit bench's default --name
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class BookError(RuntimeError):
    """The book cannot be built; the message says what is missing and what to run."""


@dataclass
class BookSource:
    """What :func:`assemble` wrote: the source folder, its pages, and what the build should report."""
    root: Path
    series: list[str]                 # page names (notebooks/<stem>) in order
    assignments: list[str]            # page names (notebooks/assignments/<stem>)
    removed_solutions: dict[str, int] = field(default_factory=dict)   # notebook -> cells removed
    unlinked: dict[str, list[str]] = field(default_factory=dict)       # page -> repository files it links to
    warnings: list[str] = field(default_factory=list)


# ---- notebooks ------------------------------------------------------------------------------------

def series_notebooks(notebooks_dir: str | os.PathLike = PROJECT_ROOT / "notebooks") -> list[Path]:
    """The series as ``make run`` executes it: ``notebooks/*.ipynb`` in name order (not the
    sub-folders: assignments, instructor copies)."""
    return sorted(Path(notebooks_dir).glob("*.ipynb"))


def _tags(cell: NotebookNode) -> list[str]:
    return cell.metadata.get("tags", [])


def strip_solutions(nb: NotebookNode) -> int:
    """Remove every cell tagged ``solution`` from ``nb`` (in place); return how many."""
    kept = [c for c in nb.cells if SOLUTION_TAG not in _tags(c)]
    removed = len(nb.cells) - len(kept)
    nb.cells = kept
    return removed


def _cell_sources(nb: NotebookNode) -> list[str]:
    return [c.source for c in nb.cells if INJECTED_TAG not in _tags(c)]


def check_executed(executed: NotebookNode, source: NotebookNode, executed_path: Path, source_path: Path) -> str | None:
    """Refuse an executed copy that is not one (no papermill record, no outputs) or whose run failed;
    return a warning if it was executed from other cells than ``source`` has now, else None."""
    record = executed.metadata.get("papermill")
    ran = any(c.cell_type == "code" and c.get("execution_count") for c in executed.cells)
    if record is None or not ran:
        raise BookError(f"{executed_path} has not been executed (no papermill record or no outputs): the book shows "
                        f"the notebooks as `make run` executed them; run `make run` to write it")
    if record.get("exception"):
        failed = next((i for i, c in enumerate(executed.cells) if c.cell_type == "code"
                       and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        raise BookError(f"{executed_path} is from a run that failed"
                        + (f" (cell {failed} raised an error)" if failed is not None else "")
                        + f"; fix {source_path.name} and run `make run` again")
    if _cell_sources(executed) != _cell_sources(source):
        return (f"{executed_path} was executed from an older version of {source_path} (their cells differ); the "
                f"book shows the executed version: run `make run` to refresh it")
    return None


def notebook_title(nb: NotebookNode, default: str) -> str:
    """The notebook's first markdown heading (the page title Sphinx will use), else ``default``."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            match = re.search(r"^#{1,6}\s+(.+?)\s*#*\s*$", cell.source, re.M)
            if match:
                return match.group(1)
    return default


# ---- widgets, rendered from their saved state -----------------------------------------------------

def _output_html(output: dict) -> str:
    """One saved output (an Output widget's) as HTML."""
    kind = output.get("output_type")
    if kind == "stream":
        return f"<pre>{html.escape(output.get('text', ''))}</pre>"
    if kind == "error":
        return f"<pre>{html.escape(_ANSI.sub('', chr(10).join(output.get('traceback', []))))}</pre>"
    data = output.get("data", {})
    for mime in ("image/png", "image/jpeg"):
        if mime in data:
            payload = data[mime] if isinstance(data[mime], str) else "".join(data[mime])
            return f'<img alt="figure" src="data:{mime};base64,{payload.strip()}">'
    if "image/svg+xml" in data:
        return "".join(data["image/svg+xml"])
    if "text/html" in data:
        return "".join(data["text/html"])
    if "text/plain" in data:
        return f"<pre>{html.escape(''.join(data['text/plain']))}</pre>"
    return ""


def static_widget_html(model_id: str, state: dict, _depth: int = 0) -> tuple[str, bool]:
    """HTML showing widget ``model_id`` as it was when the notebook finished (``state``: the
    notebook's ``metadata.widgets`` widget-state ``state`` dict), and whether it holds a control
    (slider, dropdown, ...) a reader could have moved in JupyterLab. Boxes lay out their children,
    HTML and labels show their text, progress bars their final value, an Output widget its outputs,
    a control its description and value."""
    model = state.get(model_id)
    if model is None or _depth > 32:
        return "", False
    name, s = model.get("model_name", ""), model.get("state", {})
    description = html.escape(str(s.get("description", "")))
    if name in ("HBoxModel", "VBoxModel", "BoxModel", "GridBoxModel", "AccordionModel", "TabModel", "StackModel"):
        parts = [static_widget_html(str(c).removeprefix("IPY_MODEL_"), state, _depth + 1) for c in s.get("children", [])]
        direction = "row" if name == "HBoxModel" else "column"
        inner = "".join(f"<div>{h}</div>" for h, _ in parts if h)
        return (f'<div class="fusionkit-widget" style="display:flex;flex-direction:{direction};gap:0.5em;'
                f'align-items:{"center" if direction == "row" else "stretch"}">{inner}</div>',
                any(control for _, control in parts))
    if name in ("HTMLModel", "HTMLMathModel"):
        return (f"{description} " if description else "") + str(s.get("value", "")), False
    if name == "LabelModel":
        return html.escape(str(s.get("value", ""))), False
    if name in ("FloatProgressModel", "IntProgressModel"):
        return (f'{description} <progress value="{s.get("value", 0)}" max="{s.get("max", 100)}"></progress>', False)
    if name == "OutputModel":
        return "".join(_output_html(o) for o in s.get("outputs", [])), False
    if name == "ImageModel":
        return "", False  # its bytes are not in the saved state
    if "_options_labels" in s:  # Dropdown, Select, RadioButtons, ToggleButtons
        index = s.get("index")
        labels = s["_options_labels"]
        if isinstance(index, (list, tuple)):
            value = ", ".join(str(labels[i]) for i in index)
        else:
            value = labels[index] if isinstance(index, int) and 0 <= index < len(labels) else ""
    else:
        value = s.get("value", "")
    label = f"{description}: " if description else ""
    return f'<span class="fusionkit-widget-control">{label}<code>{html.escape(str(value))}</code></span>', True


STATIC_WIDGET_NOTE = ('<p class="fusionkit-widget-note"><em>An interactive widget, shown as it was when the notebook '
                      'was executed: open the notebook in JupyterLab and run it to use the controls.</em></p>')


def render_widgets(nb: NotebookNode) -> int:
    """Replace every widget-view output of ``nb`` by static HTML from its saved widget state, and
    drop the state (so no page loads ipywidgets' CDN scripts); return the outputs replaced."""
    saved = nb.metadata.pop("widgets", {}) or {}
    state = saved.get(WIDGET_STATE, {}).get("state", {})
    replaced = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW not in data:
                outputs.append(output)
                continue
            body, interactive = static_widget_html(data[WIDGET_VIEW].get("model_id", ""), state)
            replaced += 1
            if not body:
                continue
            outputs.append(nbformat.v4.new_output("display_data", data={
                "text/html": body + (STATIC_WIDGET_NOTE if interactive else ""),
                "text/plain": "".join(data.get("text/plain", ""))}))
        cell.outputs = outputs
    return replaced


PATH_PARAMETERS = ("DATA_DIR", "FIGURES_DIR")  # where the run kept its files: nothing a reader needs


def book_notebook(nb: NotebookNode) -> int:
    """Make an executed notebook a book page (in place): solution cells removed, papermill's
    injected-parameters cell replaced by a line saying which parameters the run was given (not the
    paths of the machine that ran it), widgets rendered statically. Returns the solution cells removed."""
    removed = strip_solutions(nb)
    given = {k: v for k, v in nb.metadata.get("papermill", {}).get("parameters", {}).items() if k not in PATH_PARAMETERS}
    note = nbformat.v4.new_markdown_cell("*This page shows a run with " + ", ".join(f"`{k} = {v!r}`" for k, v in
                                                                                given.items()) + ".*")
    nb.cells = [note if INJECTED_TAG in _tags(c) else c for c in nb.cells if INJECTED_TAG not in _tags(c) or given]
    render_widgets(nb)
    return removed


# ---- links to the repository ---------------------------------------------------------------------

MARKDOWN_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)(?P<title>\s+\"[^\"]*\")?\)")
NOT_A_FILE = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|#|/)")  # a URL (http:, mailto:), an anchor, an absolute path


def unlink_outside(nb: NotebookNode, page: str, root: Path) -> list[str]:
    """Make plain text of the links in ``nb``'s markdown (the page ``page`` of the book in ``root``) to
    repository files the book does not hold, such as ``../README.md`` or a library module: the link's
    text followed by the file's path in the repository, since a static site has no repository to link
    to. The book is laid out as the repository, so ``page``'s folder stands for the notebook's own.
    Links to pages, images and files the book holds are kept. Returns the paths unlinked."""
    from urllib.parse import unquote

    folder = Path(page).parent
    unlinked: list[str] = []

    def replace(match: re.Match) -> str:
        target = match["target"]
        path = unquote(target.split("#", 1)[0])
        if NOT_A_FILE.match(target) or not path or (root / folder / path).exists():
            return match[0]
        in_repo = os.path.normpath(folder / path).replace(os.sep, "/")
        unlinked.append(in_repo)
        text = match["text"].strip()
        if text.strip("`") in (in_repo, path, Path(path).name):
            return f"`{in_repo}`"
        return f"{text} (`{in_repo}` in the repository)"

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = MARKDOWN_LINK.sub(replace, cell.source)
    return unlinked


# ---- pages -----------------------------------------------------------------------------------------

def _headline(figures_dir: Path, stem: str) -> str:
    from fusionkit.lab.results import load_results

    path = figures_dir / "results" / f"{stem}.json"
    if not path.is_file():
        return ""
    return notebook_headline(load_results(path))


def _cell(text: str) -> str:
    return text.replace("|", "/").replace("\n", " ")


def _run_description(record: dict) -> str:
    parameters = record.get("parameters", {})
    when = (record.get("end_time") or "")[:10]
    minutes = f", {record['duration'] / 60:.1f} min" if record.get("duration") else ""
    return f"SMOKE={parameters.get('SMOKE', False)}{minutes}" + (f", {when}" if when else "")


def contents_markdown(series: list[tuple[str, str, str, str]], assignments: list[tuple[str, str]],
                      has_figures: bool) -> str:
    """The landing page's generated part: a table of the series (page, title, headline, run) and
    of the assignments, and the (hidden) toctrees that make the site's navigation."""
    lines = ["## The series", "", "| notebook | what it found | executed |", "|---|---|---|"]
    for page, title, headline, run in series:
        lines.append(f"| [{_cell(title)}]({page}.ipynb) | {_cell(headline) or '–'} | {run} |")
    lines += ["", "Then [the benchmark](benchmark.md): every method on every puzzle over seeds"
              + (", and [every figure](figures.md) of the series on one page." if has_figures else ".")]
    if assignments:
        lines += ["", "## Assignments", "",
                  "The students' versions (`fusionkit assignment release`): solutions replaced by stubs, hidden "
                  "tests removed. Download one (the button at the top of its page), complete it in JupyterLab and "
                  "hand it in for `fusionkit assignment grade`.", ""]
        lines += [f"- [{_cell(title)}]({page}.ipynb)" for page, title in assignments]

    def toctree(caption: str, pages: list[str]) -> list[str]:
        return ["", "```{toctree}", ":hidden:", ":maxdepth: 1", f":caption: {caption}", "", *pages, "```"]

    lines += toctree("The series", [page for page, *_ in series])
    lines += toctree("Results", ["benchmark"] + (["figures"] if has_figures else []))
    if assignments:
        lines += toctree("Assignments", [page for page, _ in assignments])
    return "\n".join(lines) + "\n"


def benchmark_markdown(figures_dir: Path) -> tuple[str, list[Path]]:
    """The benchmark page: ``fusionkit bench``'s table and heatmap, with its settings; and the
    images it shows (to copy). Raises :class:`BookError` if the table is missing."""
    table = figures_dir / "results" / f"{BENCHMARK_NAME}.md"
    if not table.is_file():
        raise BookError(f"no benchmark table at {table}: it is written by `fusionkit bench` (and by notebook "
                        f"07_benchmark, which `make run` executes); run `make run` first")
    lines = ["# The benchmark: which fusion solves which puzzle", "",
             "Test top-1 accuracy of every method on every puzzle, mean ± standard deviation over seeds "
             "(bold: the best of a puzzle). Written by `fusionkit bench` to `figures/results/benchmark.md`; "
             "[notebook 07](notebooks/07_benchmark.ipynb) runs it and explains each cell."]
    record = figures_dir / "results" / f"{BENCHMARK_NAME}.json"
    if record.is_file():
        params = json.loads(record.read_text()).get("params", {})
        settings = ", ".join(f"{key} {params[key] if key != 'seeds' else len(params[key])}" for key in
                             ("seeds", "epochs", "videos_per_class", "frames", "size", "flow_backend") if key in params)
        if settings:
            lines += ["", f"Settings: {settings}."]
    lines += ["", table.read_text().strip()]
    images = []
    heatmap = figures_dir / f"{BENCHMARK_NAME}_heatmap.png"
    if heatmap.is_file():
        lines += ["", f"![the benchmark as a heatmap](figures/{heatmap.name})"]
        images.append(heatmap)
    return "\n".join(lines) + "\n", images


def figures_markdown(figures: list[Path], titles: dict[str, tuple[str, str]]) -> str:
    """One page with every figure, under the notebook that draws it (``NN_`` / ``aN_`` prefix of its
    name; ``titles``: prefix -> (page, title)); figures of no notebook come last."""
    lines = ["# Figures", "", "Every figure the notebooks save to `figures/`, under the notebook that draws it."]
    groups: dict[str, list[Path]] = {}
    for path in figures:
        groups.setdefault(path.name.split("_", 1)[0] if path.name.split("_", 1)[0] in titles else "", []).append(path)
    for prefix in [*titles, ""]:
        if prefix not in groups:
            continue
        page, title = titles.get(prefix, ("", "Other figures"))
        lines += ["", f"## {title}" if not page else f"## [{title}]({page}.ipynb)"]
        for path in groups[prefix]:
            lines += ["", f"![{path.stem}](figures/{path.name})", "", f"`{path.name}`"]
    return "\n".join(lines) + "\n"


# ---- the source tree --------------------------------------------------------------------------------

def assemble(out: str | os.PathLike, executed_dir: str | os.PathLike = PROJECT_ROOT / "build",
             figures_dir: str | os.PathLike = PROJECT_ROOT / "figures",
             notebooks_dir: str | os.PathLike = PROJECT_ROOT / "notebooks",
             docs_dir: str | os.PathLike = BOOK_DOCS) -> BookSource:
    """Write the book's Sphinx source tree to ``out`` (emptied first), laid out as the repository is
    so that the notebooks' relative links and images resolve: ``conf.py``, ``_static/`` and the
    landing page from ``docs_dir``; ``notebooks/`` (the executed copies in ``executed_dir`` of the
    series in ``notebooks_dir``, made book pages by :func:`book_notebook`); ``notebooks/assignments/``
    (the student version of each notebook in ``notebooks_dir/assignments``); ``figures/`` (of
    ``figures_dir``), ``benchmark.md`` and ``figures.md``. Links to repository files the book does
    not hold are made plain text (:func:`unlink_outside`). Raises :class:`BookError` naming every
    executed copy that is missing, with the command that writes them."""
    from fusionkit.lab.assignments.notebooks import release_notebook

    out, executed_dir, figures_dir = Path(out), Path(executed_dir), Path(figures_dir)
    notebooks_dir, docs_dir = Path(notebooks_dir), Path(docs_dir)
    assignments_dir = notebooks_dir / "assignments"
    sources = series_notebooks(notebooks_dir)
    if not sources:
        raise BookError(f"no notebooks in {notebooks_dir}")
    missing = [p.stem for p in sources if not (executed_dir / p.name).is_file()]
    if missing:
        raise BookError(f"no executed copy of {', '.join(missing)} in {executed_dir}: the book shows the notebooks as "
                        f"`make run` executed them and does not execute them itself. Run `make run` first (teaching "
                        f"parameters), or `fusionkit book --smoke` to execute them at SMOKE=True into build/book/smoke "
                        f"(minutes, numbers not meaningful) and build a test book from those")
    landing = docs_dir / "index.md"
    template = landing.read_text()
    if CONTENTS_MARKER not in template:
        raise BookError(f"{landing} lacks the line {CONTENTS_MARKER!r} where the table of contents goes")

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(docs_dir, out)  # conf.py, _static/ (the landing page is rewritten below)
    (out / "notebooks").mkdir()
    book = BookSource(root=out, series=[], assignments=[])
    rows, titles = [], {}
    for source_path in sources:
        executed_path = executed_dir / source_path.name
        nb = nbformat.read(executed_path, as_version=4)
        warning = check_executed(nb, nbformat.read(source_path, as_version=4), executed_path, source_path)
        if warning:
            book.warnings.append(warning)
        run = _run_description(nb.metadata.get("papermill", {}))
        removed = book_notebook(nb)
        if removed:
            book.removed_solutions[source_path.stem] = removed
        page = f"notebooks/{source_path.stem}"
        nbformat.write(nb, out / f"{page}.ipynb")  # (its links are checked once every page is in place)
        title = notebook_title(nb, source_path.stem)
        rows.append((page, title, _headline(figures_dir, source_path.stem), run))
        titles[source_path.stem.split("_", 1)[0]] = (page, title)
        book.series.append(page)

    assignment_rows = []
    for source_path in sorted(assignments_dir.glob("*.ipynb")):
        student = release_notebook(source_path, out / "notebooks" / "assignments")
        nb = nbformat.read(student, as_version=4)
        removed = strip_solutions(nb)
        if removed:
            book.removed_solutions[source_path.stem] = removed
        nbformat.write(nb, student)
        page = f"notebooks/assignments/{source_path.stem}"
        title = notebook_title(nb, source_path.stem)
        assignment_rows.append((page, title))
        book.assignments.append(page)

    (out / "figures").mkdir()
    benchmark, images = benchmark_markdown(figures_dir)
    # an assignment's figures are the instructor's solution's results: not for the students' book
    solutions = {p.stem.split("_", 1)[0] for p in assignments_dir.glob("*.ipynb")}
    figures = sorted(p for p in figures_dir.glob("*.png") if p not in images and p.name.split("_", 1)[0] not in solutions)
    for path in [*images, *figures]:
        shutil.copy2(path, out / "figures" / path.name)
    atomic_write_text(out / "benchmark.md", benchmark)
    if figures:
        atomic_write_text(out / "figures.md", figures_markdown(figures, titles))
    for page in book.series + book.assignments:
        path = out / f"{page}.ipynb"
        nb = nbformat.read(path, as_version=4)
        targets = unlink_outside(nb, page, out)
        if targets:
            book.unlinked[page] = targets
            nbformat.write(nb, path)
    contents = contents_markdown(rows, assignment_rows, has_figures=bool(figures))
    atomic_write_text(out / "index.md", template.replace(CONTENTS_MARKER, contents.rstrip("\n")))
    return book


# ---- the build ------------------------------------------------------------------------------------

def render(source: str | os.PathLike, html_dir: str | os.PathLike, doctrees: str | os.PathLike | None = None,
           strict: bool = True) -> Path:
    """Run Sphinx (``python -m sphinx -b html``, a fresh build) on ``source`` into ``html_dir``;
    ``strict``: any warning (a missing image, a broken link) fails the build, all of them listed.
    Returns the landing page, ``html_dir/index.html``."""
    source, html_dir = Path(source), Path(html_dir)
    doctrees = Path(doctrees) if doctrees is not None else html_dir.parent / "doctrees"
    if html_dir.exists():
        shutil.rmtree(html_dir)
    command = [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-q", *(["-W", "--keep-going"] if strict else []),
               "-d", str(doctrees), str(source), str(html_dir)]
    done = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        report = (done.stderr or done.stdout).strip()
        if "No module named sphinx" in report:
            report += "\n(the book's builder is in the dev extra: .venv/bin/pip install -e '.[dev]', or make install)"
        raise BookError(f"Sphinx could not build the book from {source} (exit {done.returncode}):\n{report}")
    return html_dir / "index.html"


def build_book(out: str | os.PathLike = PROJECT_ROOT / "build" / "book",
               executed_dir: str | os.PathLike = PROJECT_ROOT / "build",
               figures_dir: str | os.PathLike = PROJECT_ROOT / "figures",
               notebooks_dir: str | os.PathLike = PROJECT_ROOT / "notebooks", strict: bool = True) -> tuple[Path, BookSource]:
    """Assemble the book's source into ``out/src`` and render it into ``out/html``; return the
    landing page and what :func:`assemble` reported."""
    out = Path(out)
    book = assemble(out / "src", executed_dir, figures_dir, notebooks_dir)
    return render(out / "src", out / "html", out / "doctrees", strict=strict), book


def _execute_one(path: str, output: str, parameters: dict, timeout: int | None) -> str:
    from fusionkit.lab.run_notebooks import execute_notebook

    return str(execute_notebook(path, output, parameters, timeout=timeout))


def _one_thread() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"  # the kernels this worker starts inherit it: no oversubscribed cores


def execute_smoke(out: str | os.PathLike, notebooks_dir: str | os.PathLike = PROJECT_ROOT / "notebooks",
                  workers: int = 2, timeout: int | None = 600) -> tuple[Path, Path]:
    """Execute the series at ``SMOKE=True`` with the project's runner
    (:func:`~fusionkit.lab.run_notebooks.execute_notebook`) into ``out/executed``, each notebook's
    data in ``out/data/<notebook>`` and the figures and results in ``out/figures`` (the committed
    ``figures/`` untouched); return (executed folder, figures folder), what :func:`build_book` takes
    for a test book. ``workers`` notebooks run at once, each kernel on one thread (OMP_NUM_THREADS=1);
    each has its own data folder, so no two render the same puzzle into one place at once. Raises
    :class:`~fusionkit.lab.run_notebooks.NotebookError` for the first notebook that fails."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from fusionkit.lab.run_notebooks import parameter_names

    out = Path(out)
    executed, figures = out / "executed", out / "figures"
    jobs = []
    for path in series_notebooks(notebooks_dir):
        declared = parameter_names(nbformat.read(path, as_version=4)) or set()
        parameters = {"SMOKE": True, **{k: str(v) for k, v in (("DATA_DIR", out / "data" / path.stem),
                                                               ("FIGURES_DIR", figures)) if k in declared}}
        jobs.append((str(path), str(executed / path.name), parameters, timeout))
    if workers <= 1:
        for job in jobs:
            _execute_one(*job)
        return executed, figures
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as pool:
        for future in [pool.submit(_execute_one, *job) for job in jobs]:
            future.result()
    return executed, figures
