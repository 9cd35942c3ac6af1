"""A real-browser check of the quick-start notebook: JupyterLab on localhost, the notebook opened in
headless Chromium, all cells run; no error output, and the widget views (tqdm's ipywidgets progress
bars) rendered. A screenshot is saved to build/browser/00_quickstart.png.

Needs Debian's ``chromium`` (/usr/bin/chromium) and Playwright's Python package (a dev extra; no
``playwright install``: the system browser is used). Skips without them, unless
FUSIONKIT_REQUIRE_BROWSER is set (as .ci/run sets it), in which case it fails.
"""
from __future__ import annotations

import importlib.util
import os
import re
import time
from pathlib import Path

import pytest

from tests.browser_helpers import (CHROMIUM, JS_CONTENT_HEIGHT, JS_NOTEBOOK_READY, JS_RUN_ALL, JS_RUN_OVER,
                                   JS_SCROLL_TOP, JS_SUMMARY, Deadline, chromium_page, jupyter_lab, smoke_copy)

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "00_quickstart.ipynb"
SCREENSHOT = REPO / "build" / "browser" / "00_quickstart.png"
REQUIRE_BROWSER_ENV = "FUSIONKIT_REQUIRE_BROWSER"
TOTAL_TIMEOUT_S = 300  # server start + page load + kernel start + the smoke run + checks

# Output nodes that show an error: JupyterLab renders tracebacks (and stderr) with this mime type.
STDERR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
ERROR_TEXT = re.compile(r"Traceback|\b\w*Error\b:")
WIDGET_VIEW = ".jp-OutputArea-output .jupyter-widgets"


def _require_browser() -> None:
    missing = []
    if not CHROMIUM.is_file():
        missing.append(f"{CHROMIUM} (install Debian's chromium: `apt-get install chromium`)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright Python package (`pip install -e '.[dev]'`; no `playwright install` needed)")
    if not missing:
        return
    message = "browser check needs " + " and ".join(missing)
    if os.environ.get(REQUIRE_BROWSER_ENV):
        pytest.fail(f"{message} ({REQUIRE_BROWSER_ENV} is set, so it is required)")
    pytest.skip(message)


def test_quickstart_runs_in_jupyterlab_in_a_real_browser(tmp_path):
    _require_browser()
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    started = time.monotonic()
    deadline = Deadline(TOTAL_TIMEOUT_S)
    root, home = tmp_path / "root", tmp_path / "home"
    for d in (root, home, tmp_path / "data", tmp_path / "figures"):
        d.mkdir()
    SCREENSHOT.unlink(missing_ok=True)
    nb = smoke_copy(NOTEBOOK, root, data_dir=tmp_path / "data", figures_dir=tmp_path / "figures")

    with jupyter_lab(root, home, deadline) as server, chromium_page() as page:
        page.set_default_timeout(60_000)
        console = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None)
        try:
            page.goto(server.url(f"lab/tree/{nb.name}"), timeout=deadline.left_ms(120))
            page.wait_for_function("() => !!(window.jupyterapp && window.jupyterapp.shell)",
                                   timeout=deadline.left_ms(120))
            # The notebook open and its kernel (the venv's `python3` kernel spec) started and idle.
            page.wait_for_function(JS_NOTEBOOK_READY, arg=nb.name, timeout=deadline.left_ms(120), polling=500)
            page.evaluate("() => window.jupyterapp.shell.collapseLeft()")  # more room for the notebook
            page.evaluate(JS_RUN_ALL)
            try:
                page.wait_for_function(JS_RUN_OVER, timeout=deadline.left_ms(), polling=1000)
            except PlaywrightTimeoutError:
                pytest.fail(f"the notebook did not finish running within {TOTAL_TIMEOUT_S} s in all: "
                            f"{page.evaluate(JS_SUMMARY)}\nserver log:\n{server.log_tail(2000)}")
            summary = page.evaluate(JS_SUMMARY)
            # Let the last outputs and widget views render.
            page.wait_for_timeout(1500)
        finally:
            screenshot_error = _screenshot(page)

        detail = f"\nsummary: {summary}\nbrowser console errors: {console[-10:]}\nserver log:\n{server.log_tail(2000)}"
        assert summary["runAll"]["error"] is None, f"run-all-cells failed: {summary['runAll']['error']}{detail}"
        errors = [(c["index"], c["errors"]) for c in summary["cells"] if c["errors"]]
        assert not errors, f"cells with error outputs: {errors}{detail}"
        assert summary["runAll"]["result"] is True, f"run-all-cells did not succeed{detail}"
        not_run = [c["index"] for c in summary["cells"] if c["executionCount"] is None]
        assert not not_run, f"cells left without an execution count: {not_run}{detail}"
        assert page.locator(".jp-OutputArea-child .jp-OutputArea-error").count() == 0, detail
        stderr = [t for t in page.locator(STDERR_OUTPUT).all_inner_texts() if ERROR_TEXT.search(t)]
        assert not stderr, f"error text in stderr outputs: {[t[:500] for t in stderr]}{detail}"

        # Widget views rendered by the widgets manager (not the text fallback "HBox(children=...)").
        assert page.locator(WIDGET_VIEW).count() > 0, f"no ipywidgets view rendered in any output{detail}"
        outputs_text = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
        for bad in ("Error displaying widget", "Loading widget..."):
            assert bad not in outputs_text, f"{bad!r} in the outputs{detail}"
        # And real outputs: the figures are inline PNGs, the accuracy lines are printed.
        assert page.locator('.jp-OutputArea-output[data-mime-type="image/png"] img').count() >= 2, detail
        assert "test top-1" in outputs_text and "results saved to" in outputs_text, detail
    assert SCREENSHOT.is_file(), f"no screenshot saved: {screenshot_error}"
    print(f"\nbrowser check: {time.monotonic() - started:.1f} s; screenshot {SCREENSHOT}")


def _screenshot(page) -> str | None:
    """A full screenshot of the notebook: the viewport grown to its content (bounded), then saved.
    Never raises (it runs on failures too); returns what went wrong, if anything."""
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    try:
        page.evaluate(JS_SCROLL_TOP)
        size = page.evaluate(JS_CONTENT_HEIGHT)
        extra = max(0, size["content"] - size["client"]) + 40
        viewport = page.viewport_size
        page.set_viewport_size({"width": viewport["width"], "height": min(viewport["height"] + extra, 12000)})
        page.wait_for_timeout(1000)
        page.evaluate(JS_SCROLL_TOP)
        page.wait_for_timeout(500)
    except Exception:  # the app may not have loaded: still save what the page shows
        pass
    try:
        page.screenshot(path=str(SCREENSHOT), full_page=True, timeout=30_000)
    except Exception as e:
        return repr(e)
    return None
