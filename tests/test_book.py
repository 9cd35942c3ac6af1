"""The book (``make book``, fusionkit/lab/book.py): built from smoke executions of the series, then read
in headless Chromium as a student would: every page loads without a console error, every image
loads, and the sidebar navigation reaches every notebook. Screenshots go to build/browser/book-*.png.

The executions: every notebook of the series at SMOKE=True with the project's runner, two at a time
(:func:`fusionkit.lab.book.execute_smoke`), once for the module. The checks of the site's content
(solutions stripped, student versions of the assignments, the benchmark table) need no browser;
the browser test skips without Debian's chromium or Playwright, unless FUSIONKIT_REQUIRE_BROWSER is
set (as .ci/run sets it).
"""
from __future__ import annotations

import functools
import html
import http.server
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urljoin, urlparse

import nbformat
import pytest

from fusionkit.lab.book import (BookError, assemble, book_notebook, build_book, execute_smoke, series_notebooks,
                                static_widget_html)
from tests.browser_helpers import Deadline, chromium_page, free_port
from tests.test_browser import _require_browser

REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "build" / "browser"
PLANTED = "FUSIONKIT-PLANTED-SOLUTION-7f3a"   # the text of a solution cell put into an executed copy
SERIES = [p.stem for p in series_notebooks()]
ASSIGNMENTS = sorted(p.stem for p in (REPO / "notebooks" / "assignments").glob("*.ipynb"))
BROWSER_TIMEOUT_S = 180


def _solution_cell(text: str) -> nbformat.NotebookNode:
    return nbformat.v4.new_code_cell(f"answer = {text!r}  # the worked answer", metadata={"tags": ["solution"]})


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """The book built from smoke executions, with a ``solution`` cell planted in one executed copy (as an
    exercise's worked answer would be) and an executed copy of the series' first notebook kept aside."""
    root = tmp_path_factory.mktemp("book")
    started = time.monotonic()
    executed, figures = execute_smoke(root / "smoke")
    executed_s = time.monotonic() - started
    first = executed / f"{SERIES[0]}.ipynb"
    nb = nbformat.read(first, as_version=4)
    nb.cells.insert(len(nb.cells) // 2, _solution_cell(PLANTED))
    nbformat.write(nb, first)
    index, source = build_book(root / "site", executed, figures)
    print(f"\nbook: smoke executions {executed_s:.0f} s, Sphinx {time.monotonic() - started - executed_s:.0f} s")
    return {"index": index, "source": source, "html": index.parent, "executed": executed, "figures": figures,
            "root": root}


# ---- the source tree and the HTML, without a browser --------------------------------------------

def test_the_book_has_the_series_in_order_then_the_assignments(book):
    source = book["source"]
    assert source.series == [f"notebooks/{name}" for name in SERIES]
    assert source.assignments == [f"notebooks/assignments/{name}" for name in ASSIGNMENTS]
    for page in source.series + source.assignments + ["benchmark", "figures"]:
        assert (book["html"] / f"{page}.html").is_file(), page
    landing = (source.root / "index.md").read_text()
    positions = [landing.index(f"notebooks/{name}.ipynb") for name in SERIES]
    assert positions == sorted(positions), "the landing page lists the series out of order"
    # what each notebook found, read from the results its run wrote
    from fusionkit.lab.results import load_results
    from fusionkit.lab.run_notebooks import notebook_headline

    headline = notebook_headline(load_results(book["figures"] / "results" / f"{SERIES[0]}.json"))
    assert headline and headline in landing


def test_solution_cells_are_stripped_and_the_edit_is_reported(book):
    source = book["source"]
    assert source.removed_solutions.get(SERIES[0]) == 1
    # the planted cell made the executed copy differ from its notebook: reported, not silently shown
    assert any(SERIES[0] in w and "make run" in w for w in source.warnings), source.warnings
    for path in [*book["html"].rglob("*.html"), *source.root.rglob("*.ipynb")]:
        assert PLANTED not in path.read_text(errors="replace"), f"a solution cell's text is in {path}"
    for path in source.root.rglob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        tagged = [i for i, c in enumerate(nb.cells) if "solution" in c.metadata.get("tags", [])]
        assert not tagged, f"{path}: cells {tagged} are tagged solution"
        assert not [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])], path
    assert not [p for p in book["html"].rglob("*") if "instructor" in p.name], "an instructor copy is in the site"


def test_assignments_are_the_student_versions(book):
    from fusionkit.lab.assignments.notebooks import SOLUTION, is_solution

    for name in ASSIGNMENTS:
        instructor = nbformat.read(REPO / "notebooks" / "assignments" / f"{name}.ipynb", as_version=4)
        page = (book["html"] / "notebooks" / "assignments" / f"{name}.html").read_text()
        assert "YOUR CODE HERE" in page, name
        assert not any(marker in page for marker in SOLUTION), name
        # no line of a solution reaches the page (of its regions, or of the whole cell if it has none: a
        # model answer): lines long enough to be the solution's own, and not given elsewhere in the notebook
        text = html.unescape(re.sub(r"<[^>]+>", "", page))
        given = {line.strip() for cell in instructor.cells if not is_solution(cell) for line in cell.source.splitlines()}
        for cell in filter(is_solution, instructor.cells):
            regions = SOLUTION[0] in cell.source
            inside = not regions
            for line in cell.source.splitlines():
                if regions:
                    inside = (inside or SOLUTION[0] in line) and SOLUTION[1] not in line
                code = line.strip()
                if inside and len(code) > 30 and SOLUTION[0] not in line and code not in given:
                    assert code not in text, f"{name}: solution line {code!r} is in the student page"


def test_the_benchmark_page_shows_the_table_and_heatmap(book):
    table = (book["figures"] / "results" / "benchmark.md").read_text()
    rows = [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("|")]
    assert rows, table
    page = (book["html"] / "benchmark.html").read_text()
    assert page.count("<tr") == len(rows) + 1  # header + one row per method
    for method in rows:
        assert method.replace("(", "").split("=")[0] in page.replace("(", ""), method
    assert 'src="_images/benchmark_heatmap' in page


def test_widgets_are_rendered_from_their_saved_state(book):
    """tqdm's bars and the explorers: shown at their final state, no widget script (it would come from a CDN)."""
    pages = [(book["html"] / f"{page}.html").read_text() for page in book["source"].series]
    assert not any("embed-amd" in p or "require.min.js" in p for p in pages)
    assert any("<progress" in p for p in pages)
    state = {"bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_t", "IPY_MODEL_p"]}},
             "t": {"model_name": "HTMLModel", "state": {"value": "epoch 3/3: 100%"}},
             "p": {"model_name": "FloatProgressModel", "state": {"value": 24.0, "max": 24.0}},
             "w": {"model_name": "FloatSliderModel", "state": {"value": 0.25, "description": "RGB weight"}}}
    html, interactive = static_widget_html("bar", state)
    assert "epoch 3/3: 100%" in html and '<progress value="24.0" max="24.0">' in html and not interactive
    html, interactive = static_widget_html("w", state)
    assert "RGB weight: <code>0.25</code>" in html and interactive


def test_missing_executions_say_to_run_make_run(tmp_path):
    with pytest.raises(BookError, match=r"no executed copy of 00_quickstart.*Run `make run` first.*--smoke"):
        assemble(tmp_path / "src", executed_dir=tmp_path / "nothing-here")


def test_a_copy_from_a_failed_run_is_refused(book, tmp_path):
    executed = tmp_path / "executed"
    executed.mkdir()
    for path in book["executed"].glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        if path.stem == SERIES[-1]:
            nb.metadata.papermill["exception"] = True
        nbformat.write(nb, executed / path.name)
    with pytest.raises(BookError, match=rf"{SERIES[-1]}.ipynb is from a run that failed.*make run"):
        assemble(tmp_path / "src", executed_dir=executed, figures_dir=book["figures"])


def test_book_notebook_keeps_everything_but_solutions_and_injected_parameters():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("SMOKE = False", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("SMOKE = True", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_markdown_cell("## Exercises"), _solution_cell("x"),
                nbformat.v4.new_markdown_cell("answer", metadata={"tags": ["solution", "hide-input"]}),
                nbformat.v4.new_code_cell("print(1)")]
    nb.metadata["papermill"] = {"parameters": {"SMOKE": True, "DATA_DIR": "/scratch/data"}}
    assert book_notebook(nb) == 2
    assert [c.source for c in nb.cells] == ["SMOKE = False", "*This page shows a run with `SMOKE = True`.*",
                                            "## Exercises", "print(1)"]
    nb.cells.insert(1, nbformat.v4.new_code_cell("DATA_DIR = '/x'", metadata={"tags": ["injected-parameters"]}))
    nb.metadata["papermill"]["parameters"] = {"DATA_DIR": "/x"}
    book_notebook(nb)
    assert "DATA_DIR = '/x'" not in [c.source for c in nb.cells]


# ---- in the browser -------------------------------------------------------------------------------

@contextmanager
def serve(folder: Path):
    """The site over HTTP on localhost, as it would be served (file:// pages behave differently)."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


JS_IMAGES = """() => Array.from(document.images).map((img) => ({
    src: img.currentSrc.slice(0, 120), complete: img.complete, width: img.naturalWidth}))"""
JS_NAV_LINKS = """() => Array.from(document.querySelectorAll(
    '.bd-sidebar-primary a.reference.internal, .prev-next-area a')).map((a) => a.href)"""


def _page_name(url: str, base: str) -> str:
    path = urlparse(url).path[len(urlparse(base).path):] or "index.html"
    return path.removesuffix(".html")


def _images_held(path: Path) -> int:
    """Images among a book page's notebook outputs: PNG/JPEG outputs, and <img> in HTML outputs (a widget's)."""
    count = 0
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            count += bool({"image/png", "image/jpeg"} & set(data)) or "".join(data.get("text/html", "")).count("<img")
    return count


def test_every_page_loads_in_a_real_browser_and_the_navigation_reaches_every_notebook(book):
    _require_browser()
    deadline = Deadline(BROWSER_TIMEOUT_S)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for old in SCREENSHOTS.glob("book-*.png"):
        old.unlink()
    with serve(book["html"]) as base, chromium_page(viewport=(1400, 900)) as page:
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
        page.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
        seen, queue, report = set(), [base], {}
        while queue:
            url = queue.pop(0).split("#")[0]
            name = _page_name(url, base)
            if name in seen or not url.startswith(base):
                continue
            seen.add(name)
            before = len(problems)
            page.goto(url, wait_until="load", timeout=deadline.left_ms(60))
            page.wait_for_load_state("networkidle", timeout=deadline.left_ms(30))
            images = page.evaluate(JS_IMAGES)
            broken = [i["src"] for i in images if not (i["complete"] and i["width"] > 0)]
            report[name] = {"images": len(images), "broken": broken, "problems": problems[before:]}
            page.screenshot(path=str(SCREENSHOTS / f"book-{name.replace('/', '-')}.png"), full_page=True)
            queue += [urljoin(url, href) for href in page.evaluate(JS_NAV_LINKS)]
    failing = {name: r for name, r in report.items() if r["broken"] or r["problems"]}
    assert not failing, f"pages with console errors, failed requests or broken images: {failing}"
    expected = {"index", "benchmark", "figures", *book["source"].series, *book["source"].assignments}
    assert expected <= seen, f"the navigation does not reach {sorted(expected - seen)} (reached {sorted(seen)})"
    # every figure an executed notebook holds is on its page (inline plots, and those of the widgets' outputs)
    held = {page: _images_held(book["source"].root / f"{page}.ipynb") for page in book["source"].series}
    assert sum(held.values()) > 0
    fewer = {page: (report[page]["images"], n) for page, n in held.items() if report[page]["images"] < n}
    assert not fewer, f"pages showing fewer images than their notebook holds (shown, held): {fewer}"
    # every figure of the series, the benchmark's heatmap on its own page; none of the assignments' solutions
    series_figures = [p for p in book["figures"].glob("*.png") if p.name[:2].isdigit()]
    assert report["figures"]["images"] == len(series_figures) > 0


def test_links_to_repository_files_the_book_lacks_become_their_paths(tmp_path):
    from fusionkit.lab.book import unlink_outside

    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "03_conv_fusion.ipynb").write_text("{}")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(
        "See [the layers](../docs/architecture.md#layers), [README.md](../README.md), "
        "[`fusionkit/methods/ccs.py`](../fusionkit/methods/ccs.py), [notebook 03](03_conv_fusion.ipynb), "
        "![a figure](../figures/missing.png), [the paper](https://arxiv.org/abs/1604.06573) and [above](#top).")]
    assert unlink_outside(nb, "notebooks/05_ccs", tmp_path) == ["docs/architecture.md", "README.md",
                                                                "fusionkit/methods/ccs.py"]
    assert nb.cells[0].source == (
        "See the layers (`docs/architecture.md` in the repository), `README.md`, `fusionkit/methods/ccs.py`, "
        "[notebook 03](03_conv_fusion.ipynb), ![a figure](../figures/missing.png), "
        "[the paper](https://arxiv.org/abs/1604.06573) and [above](#top).")


def test_the_figures_page_leaves_out_the_assignments_solution_figures(book, tmp_path):
    figures = REPO / "figures"  # the committed ones hold the assignments' (a1_*, a2_*: the instructor's solutions)
    source = assemble(tmp_path / "src", executed_dir=book["executed"], figures_dir=figures)
    page = (source.root / "figures.md").read_text()
    shown = sorted(re.findall(r"\]\(figures/([^)]+)\)", page))
    expected = sorted(p.name for p in figures.glob("*.png") if p.name[:2].isdigit())
    assert shown == expected and any(p.name.startswith("a1_") for p in figures.glob("*.png"))
    assert sorted(p.name for p in (source.root / "figures").iterdir()) == sorted(expected + ["benchmark_heatmap.png"])
