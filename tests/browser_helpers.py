"""Helpers of tests/test_browser.py: a throw-away JupyterLab server and a headless Chromium.

The browser is Debian's ``chromium`` (``apt-get install chromium``) driven by Playwright's Python
package through ``executable_path``: no ``playwright install``, no browser download. On a closed
network Chromium must be started with its background services off, or it floods refused connections.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import nbformat

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


class Deadline:
    """One time budget shared by all the waits of a test."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self, cap: float | None = None) -> float:
        left = max(self.end - time.monotonic(), 1.0)
        return min(left, cap) if cap is not None else left

    def left_ms(self, cap: float | None = None) -> float:
        return 1000.0 * self.left(cap)


def smoke_copy(notebook: Path, dest_dir: Path, data_dir: Path, figures_dir: Path) -> Path:
    """Copy ``notebook`` into ``dest_dir`` with its ``parameters`` cell set to smoke mode and its
    data/figures folders pointed at ``data_dir``/``figures_dir``; the other cells are unchanged."""
    nb = nbformat.read(notebook, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    assert "parameters" in cell.metadata.get("tags", []), f"{notebook.name}: first code cell is not tagged parameters"
    source = cell.source
    for name, value in (("SMOKE", True), ("DATA_DIR", str(data_dir)), ("FIGURES_DIR", str(figures_dir))):
        source, n = re.subn(rf"^{name}(\s*:[^=\n]+)?\s*=\s*[^#\n]*?(\s*(#.*)?)$",
                            lambda m: f"{name} = {value!r}{m.group(2)}", source, count=1, flags=re.M)
        assert n == 1, f"{notebook.name}: the parameters cell has no `{name} = ...` line"
    cell.source = source
    out = Path(dest_dir) / notebook.name
    nbformat.write(nb, out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _isolated_env(home: Path) -> dict:
    """The server's (and so the kernel's) environment: its own Jupyter config, runtime, data and
    settings folders, so that nothing of the user's set-up leaks in. Kernel specs and lab extensions
    (jupyterlab_widgets) are still found in the venv's ``sys.prefix/share/jupyter``."""
    env = dict(os.environ)
    for key in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH", "JUPYTER_PREFER_ENV_PATH", "MPLBACKEND", "JUPYTER_TOKEN"):
        env.pop(key, None)  # MPLBACKEND=Agg would stop the kernel from showing figures inline
    dirs = {"JUPYTER_CONFIG_DIR": "config", "JUPYTER_RUNTIME_DIR": "runtime", "JUPYTER_DATA_DIR": "data",
            "JUPYTERLAB_SETTINGS_DIR": "lab-settings", "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
            "IPYTHONDIR": "ipython"}
    for key, name in dirs.items():
        (home / name).mkdir(parents=True, exist_ok=True)
        env[key] = str(home / name)
    # No "get Jupyter news?" toast nor update check (closed network, clean screenshot).
    notification = home / "lab-settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True, exist_ok=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    return env


class LabServer:
    def __init__(self, proc: subprocess.Popen, port: int, token: str, log: Path):
        self.proc, self.port, self.token, self.log = proc, port, token, log

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}?token={self.token}"

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@contextmanager
def jupyter_lab(root_dir: Path, home: Path, deadline: Deadline, startup_timeout: float = 90) -> Iterator[LabServer]:
    """Run ``python -m jupyterlab`` (this interpreter's) on a free localhost port with a token, serving
    ``root_dir``; wait until it answers; stop it and its kernels on exit, whatever happens."""
    port, token = free_port(), secrets.token_hex(16)
    log = home / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--ServerApp.root_dir={root_dir}",
           f"--IdentityProvider.token={token}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI runs as root
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=root_dir, env=_isolated_env(home), stdin=subprocess.DEVNULL,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    server = LabServer(proc, port, token, log)
    try:
        _wait_until_up(server, min(startup_timeout, deadline.left()))
        yield server
    finally:
        _stop(proc)


def _wait_until_up(server: LabServer, timeout: float) -> None:
    end = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with code {server.proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(server.url("api/status"), timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > end:
            raise TimeoutError(f"jupyter lab did not answer on port {server.port} in {timeout:.0f} s:\n"
                               f"{server.log_tail()}")
        time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM lets the server shut its kernels down; whatever of its process group is left after
    that (kernels, their workers) gets SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group that Popen(start_new_session=True) made
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@contextmanager
def chromium_page(viewport=(1400, 1000)):
    """A Playwright (sync API) page in Debian's headless Chromium, with a fresh temporary profile."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, chromium_sandbox=False,
                                    args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
            page = context.new_page()
            yield page
        finally:
            browser.close()


# JavaScript run in the page: JupyterLab's app is at window.jupyterapp (--LabApp.expose_app_in_browser).

JS_NOTEBOOK_READY = """(name) => {
    const app = window.jupyterapp;
    const w = app && app.shell && app.shell.currentWidget;
    if (!w || !w.context || w.context.path !== name || !w.context.isReady || !w.content) return false;
    const kernel = w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle' && kernel.connectionStatus === 'connected';
}"""

JS_RUN_ALL = """() => {
    const app = window.jupyterapp;
    window.__fusionkitRunAll = {done: false, result: null, error: null};
    app.commands.execute('notebook:run-all-cells').then(
        (r) => { window.__fusionkitRunAll = {done: true, result: r, error: null}; },
        (e) => { window.__fusionkitRunAll = {done: true, result: null, error: String(e)}; });
    return true;
}"""

# The run is over: the run-all command finished (it stops at the first cell that raises) and the
# kernel is idle. Whether every cell ran (has an execution count) is asserted from JS_SUMMARY.
JS_RUN_OVER = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const state = window.__fusionkitRunAll;
    if (!state || !state.done) return false;
    const kernel = w.sessionContext.session && w.sessionContext.session.kernel;
    return !!kernel && kernel.status === 'idle';
}"""

JS_SUMMARY = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const cells = [];
    w.content.widgets.forEach((c, i) => {
        if (c.model.type !== 'code') return;
        const outputs = c.model.outputs.toJSON();
        cells.push({index: i, executionCount: c.model.executionCount,
                    outputTypes: outputs.map((o) => o.output_type),
                    errors: outputs.filter((o) => o.output_type === 'error')
                                   .map((o) => `${o.ename}: ${o.evalue}`)});
    });
    return {runAll: window.__fusionkitRunAll, kernel: w.sessionContext.session.kernel.status, cells};
}"""

# Height the notebook's scrolling panel would need to show every cell at once, then scrolled to the
# top: JupyterLab scrolls inside its own panels, so Playwright's full_page alone shows one screen.
JS_CONTENT_HEIGHT = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const scroller = w.content.node.querySelector('.jp-WindowedPanel-outer') || w.content.node;
    const cells = w.content.node.querySelectorAll('.jp-Cell');
    const top = scroller.getBoundingClientRect().top - scroller.scrollTop;
    const bottom = cells.length ? cells[cells.length - 1].getBoundingClientRect().bottom - top : scroller.scrollHeight;
    return {content: Math.ceil(bottom), client: scroller.clientHeight};
}"""

JS_SCROLL_TOP = """() => {
    const w = window.jupyterapp.shell.currentWidget;
    const scroller = w.content.node.querySelector('.jp-WindowedPanel-outer') || w.content.node;
    scroller.scrollTop = 0;
}"""
