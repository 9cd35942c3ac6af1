"""Execute the notebook series with papermill (``fusionkit run-notebooks``, ``make run``).

What runs (:func:`series_notebooks`): ``notebooks/*.ipynb`` in order, then the course assignments'
instructor versions, ``notebooks/assignments/*.ipynb`` (the sources, solutions in place), at the
same parameters, so their results JSONs (``figures/results/a1_*.json``, ``a2_*.json``) come from
``make run`` like every other notebook's. Executed copies keep the layout under ``--out``
(``build/assignments/a1_conv_fusion.ipynb``).

What a user sees. Each notebook runs in its own kernel; while it runs, one status line shows the
cells done out of its code cells, the time elapsed against the time it took in the last recorded
run, the running cell's first line and the notebook's own training bar (the ``tqdm`` widget the
Trainer shows, read off the kernel's widget messages) -- rewritten in place on a terminal, and
on a log (not a terminal) one line when a cell ends or every ``interval`` seconds in a long cell.
At the end a table: notebook, minutes, its headline result (from
``figures/results/<notebook>.json``). Two kinds of noise are removed at their source:

- jupyter's "Kernel is running over TCP without encryption" warning: the kernel is started with
  CurveZMQ keys (``KernelManager.transport_encryption="auto"``, used where the kernelspec and
  pyzmq support it, as ipykernel 7's do), so its sockets are encrypted and it has nothing to warn
  about.
- papermill's "Unable to parse line N" and "Passed unknown parameter": papermill reads the
  parameters cell line by line with a regular expression (any line with two ``=``, a comment
  containing one included, defeats it) only to warn about unknown parameters. The runner checks
  the parameters it passes against the cell's assignments itself (Python's ``ast``, exact) and
  filters those two papermill records.

Same numbers on every machine. Each kernel runs with the same number of torch CPU threads,
``threads`` (default :data:`KERNEL_THREADS`, 2: the committed results' machine), set through
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` in the kernel's environment. A float reduction split
over another number of threads rounds differently, and after some epochs the weights and the
accuracies differ (measured: two runs at the same thread count gave bitwise-identical weights and
flow, 1 against 2 threads did not), so without this a 16-core machine would not reproduce the
committed numbers, nor hit the run cache (:mod:`fusionkit.lab.run_cache` keys by thread count).
torch takes at most the machine's cores from ``OMP_NUM_THREADS``: a one-core machine runs one
thread whatever is asked (``make_run.json`` records what was asked, each result's cache entry what
was used).

What is recorded. :func:`run_notebooks` writes each notebook's wall time, cells and headline, the
machine (:func:`fusionkit.lab.machine.machine_description`) and its load before and after each
notebook to ``figures/results/make_run.json`` (``make_run_smoke.json`` for ``--smoke``),
atomically and in the results schema (:mod:`fusionkit.lab.results`, timings under ``extra``),
once every notebook has run. :func:`timing_table` renders the README's "make run timing" table
from it; ``python -m fusionkit.lab.run_notebooks --readme`` rewrites that table in README.md.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import html
import logging
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Callable, TextIO

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENGINE_NAME = "fusionkit-progress"
RECORD_NAME = "make_run"            # figures/results/make_run.json
SMOKE_RECORD_NAME = "make_run_smoke"
README_START = "<!-- make-run-timing: generated from figures/results/make_run.json by " \
               "`python -m fusionkit.lab.run_notebooks --readme`; tests/test_run_notebooks.py checks it -->"
README_END = "<!-- /make-run-timing -->"
README_ABSENT = ("Per-notebook wall time: measured by `make run`, see `figures/results/make_run.json` once run "
                 "(`python -m fusionkit.lab.run_notebooks --readme` then puts its table here).")
KERNEL_THREADS = 2  # torch CPU threads per kernel: the machine the committed results were made on (2 cores)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# papermill's parameter inference (a regular expression per line), replaced by parameter_names()
PAPERMILL_NOISE = ("Unable to parse line", "Passed unknown parameter")


class NotebookError(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the error."""


# ---- parameters ---------------------------------------------------------------------------------

def parameter_names(nb) -> set[str] | None:
    """The names the notebook's ``parameters``-tagged cell assigns (``ast``: any Python a cell can
    hold, comments included), or None when there is no such cell or it is not plain Python."""
    cell = next((c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])), None)
    if cell is None:
        return None
    try:
        tree = ast.parse(cell.source)
    except SyntaxError:
        return None
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
    return names


class _DropPapermillNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(PAPERMILL_NOISE)


@contextlib.contextmanager
def _papermill_quiet():
    """Filter :data:`PAPERMILL_NOISE` from papermill's loggers (a logger's filter sees only the
    records logged on it, so each: ``papermill``, ``papermill.translators``, ...)."""
    names = {"papermill", "papermill.translators", "papermill.execute", "papermill.inspection"}
    names |= {name for name in logging.root.manager.loggerDict if name.startswith("papermill.")}
    loggers, noise = [logging.getLogger(name) for name in sorted(names)], _DropPapermillNoise()
    for logger in loggers:
        logger.addFilter(noise)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(noise)


def _kernel_config():
    """traitlets config starting the kernel with CurveZMQ transport encryption where supported."""
    from traitlets.config import Config

    config = Config()
    try:
        import zmq
        from jupyter_client.manager import KernelManager
    except ImportError:
        return config
    if "transport_encryption" in KernelManager.class_trait_names() and zmq.has("curve"):
        config.KernelManager.transport_encryption = "auto"  # 'auto': only if the kernelspec declares curve
    return config


# ---- progress -----------------------------------------------------------------------------------

def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


def _plain(text: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]*>", "", str(text))).split())


class NotebookProgress:
    """One notebook's progress: cells done / total, elapsed against ``expected`` seconds, the running
    cell's first line and, if the notebook shows one, its latest training bar.

    On a terminal (``tty``; default: ``stream.isatty()``) one line is rewritten every second;
    otherwise a line is printed when a cell ends at least ``interval`` seconds after the last line,
    and every ``interval`` seconds during a long cell. :meth:`finish` prints the final line."""

    def __init__(self, name: str, expected: float | None = None, stream: TextIO | None = None,
                 interval: float = 30.0, tty: bool | None = None, clock: Callable[[], float] = time.monotonic):
        self.name, self.expected, self.interval, self.clock = name, expected, interval, clock
        self.stream = stream if stream is not None else sys.stdout
        self.tty = tty if tty is not None else bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = self.done = 0
        self.cell = ""
        self.client = None                 # the notebook client (its widget_state: the kernel's widgets)
        self._bar: str | None = None       # comm id of the training bar updated last in the running cell
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = self._last_print = 0.0
        self._width = 0

    # -- called by the engine's client
    def attach(self, nb, client=None) -> None:
        """Count ``nb``'s code cells (as the engine runs it: parameters injected); ``client``'s
        ``widget_state`` holds the kernel's widgets (nbclient rebinds it at the start of a run)."""
        self.total = sum(1 for c in nb.cells if c.cell_type == "code" and c.source.strip())
        self.client = client

    @property
    def widgets(self) -> dict:
        return getattr(self.client, "widget_state", None) or {}

    def cell_started(self, cell, cell_index: int, **_) -> None:
        if cell.cell_type != "code" or not cell.source.strip():
            return
        with self._lock:
            lines = [line.strip() for line in cell.source.splitlines() if line.strip()]
            first = next((line for line in lines if not line.startswith(("#", "%", "import ", "from "))), lines[0])
            self.cell = first if len(first) <= 48 else first[:47] + "…"
            self._bar = None

    def cell_executed(self, cell, cell_index: int, execute_reply=None, **_) -> None:
        with self._lock:
            self.done += 1
            self._bar, self.cell = None, ""
            if not self.tty and self.done < self.total and self.clock() - self._last_print >= self.interval:
                self._emit(self.line())  # (after the last cell, finish() prints the final line)

    def widget_updated(self, comm_id: str) -> None:
        state = self.widgets.get(comm_id, {})
        if state.get("_model_name") == "FloatProgressModel":
            self._bar = comm_id

    # -- the status line
    def bar_text(self) -> str:
        """The latest training bar as text, e.g. ``epoch 3: 12/24 [00:03<00:03, 3.9it/s]``."""
        widgets, bar = self.widgets, self._bar
        if bar is None or bar not in widgets:
            return ""
        ref = f"IPY_MODEL_{bar}"
        box = next((s for s in list(widgets.values()) if s.get("_model_name") == "HBoxModel"  # list(): one snapshot
                    and ref in s.get("children", ())), None)
        if box is None:
            state = widgets[bar]
            return f"{state.get('value', 0):g}/{state.get('max', 0):g}"
        texts = []
        for child in box["children"]:
            state = widgets.get(str(child).removeprefix("IPY_MODEL_"), {})
            if state.get("_model_name") == "HTMLModel" and _plain(state.get("value", "")):
                texts.append(_plain(state["value"]))
        return " ".join(texts)

    def line(self, final: bool = False) -> str:
        elapsed = self.clock() - self._start
        timing = _clock(elapsed) + (f" of ~{_clock(self.expected)}" if self.expected else "")
        if final:
            return f"  {self.name}: {self.done}/{self.total} cells in {timing.replace(' of ~', ' (expected ~')}" + \
                (")" if self.expected else "")
        text = f"  {self.name}: {self.done}/{self.total} cells, {timing}"
        if self.done < self.total and self.cell:
            text += f" | {self.cell}"
        bar = self.bar_text()
        return text + (f" | {bar}" if bar else "")

    def _emit(self, text: str, final: bool = False) -> None:
        if self.tty:
            columns = shutil.get_terminal_size((120, 24)).columns - 1
            text = text if len(text) <= columns else text[:columns - 1] + "…"  # a wrapped line cannot be rewritten
            pad = max(0, self._width - len(text))
            self.stream.write("\r" + text + " " * pad + ("\n" if final else ""))
            self._width = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last_print = self.clock()

    def tick(self) -> None:
        """What the ticker thread does every second: refresh the line (terminal) or, on a log, print
        one if ``interval`` seconds passed since the last."""
        with self._lock:
            if self.tty or self.clock() - self._last_print >= self.interval:
                self._emit(self.line())

    def start(self) -> None:
        self._start = self._last_print = self.clock()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"progress {self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):  # the status line must never break a run
                self.tick()

    def finish(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            self._emit(self.line(final=True), final=True)


@functools.lru_cache(maxsize=None)
def _engine() -> str:
    """papermill's nbclient engine with a client that reports to a :class:`NotebookProgress`."""
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger

    class ProgressClient(PapermillNotebookClient):
        def __init__(self, nb_man, progress: NotebookProgress | None = None, **kw):
            super().__init__(nb_man, **kw)
            self.progress = progress
            if progress is not None:
                progress.attach(self.nb, self)
                self.on_cell_start = progress.cell_started
                self.on_cell_executed = progress.cell_executed

        def handle_comm_msg(self, outs, msg, cell_index):
            super().handle_comm_msg(outs, msg, cell_index)
            if self.progress is not None and "comm_id" in msg.get("content", {}):
                self.progress.widget_updated(msg["content"]["comm_id"])

    class ProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                     start_timeout=60, execution_timeout=None, progress=None, **kwargs):
            for key in ("input_path", "timeout", "startup_timeout"):
                kwargs.pop(key, None)
            return ProgressClient(nb_man, progress=progress, timeout=execution_timeout, startup_timeout=start_timeout,
                                  kernel_name=kernel_name, log=logger, log_output=log_output, stdout_file=stdout_file,
                                  stderr_file=stderr_file, **kwargs).execute()

    papermill_engines.register(ENGINE_NAME, ProgressEngine)
    return ENGINE_NAME


# ---- one notebook -------------------------------------------------------------------------------

@contextlib.contextmanager
def kernel_threads(threads: int | None):
    """Kernels started inside use ``threads`` torch CPU threads (``OMP_NUM_THREADS`` and
    ``MKL_NUM_THREADS`` in the environment they inherit); None leaves the environment as it is."""
    if threads is None:
        yield
        return
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    saved = {name: os.environ.get(name) for name in THREAD_ENV}
    os.environ.update({name: str(threads) for name in THREAD_ENV})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def execute_notebook(path: str | os.PathLike, output: str | os.PathLike, parameters: dict | None = None,
                     timeout: int | None = None, progress: NotebookProgress | None = None,
                     threads: int | None = None) -> Path:
    """Run one notebook with papermill in its own folder (as JupyterLab would) and save the executed
    copy to ``output``. Raises :class:`NotebookError` naming the notebook and failing cell, and
    ValueError for a parameter its parameters cell does not assign. ``progress`` reports as it runs;
    ``threads``: the kernel's torch CPU threads (:func:`kernel_threads`; None: torch's default)."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    path, output = Path(path), Path(output)
    parameters = dict(parameters or {})
    declared = parameter_names(nbformat.read(path, as_version=4))
    unknown = sorted(set(parameters) - declared) if declared is not None else []
    if unknown:
        raise ValueError(f"notebook {path.name}: its parameters cell does not assign {', '.join(unknown)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    if progress is not None:
        progress.start()
    try:
        with _papermill_quiet(), kernel_threads(threads):
            papermill.execute_notebook(str(path), str(output), parameters=parameters, cwd=str(path.parent),
                                       kernel_name="python3", progress_bar=False, execution_timeout=timeout,
                                       engine_name=_engine(), progress=progress, config=_kernel_config())
    except PapermillExecutionError as e:
        first_line = next((line for line in (e.source or "").splitlines() if line.strip()), "")
        raise NotebookError(f"notebook {path.name} failed in cell {e.cell_index} (0-based, counting papermill's "
                            f"injected parameters; it starts {first_line!r}): {e.ename}: {e.evalue}\n"
                            f"(executed copy with the traceback: {output})") from e
    finally:
        if progress is not None:
            progress.finish()
    return output


# ---- headlines, the record, the table -----------------------------------------------------------

PLAIN_STREAMS = ("rgb", "flow")  # the two plain towers' outputs (fusionkit.models.two_stream.output_names)


def notebook_headline(results: dict) -> str:
    """A notebook's headline: its own (``extra["headline"]``) if it states one; else the fused output
    that gains most over late fusion on the same puzzle (``order: fusion=conv3d_pool3d conv_fusion-S
    1.00 (late 0.39)``); else, where late fusion is the only fusion, the puzzle where it gains most
    over the plain streams (``conjunction: late 0.97 (rgb 0.53, flow 0.51)``); else the best output on
    the first dataset. A plain stream never headlines a notebook about fusing them (the best output
    alone gave ``registration: flow 0.44`` for notebook 03, whose point is spatial fusion's 1.00)."""
    own = (results.get("extra") or {}).get("headline")
    if isinstance(own, str) and own:
        return own
    accuracy = results.get("accuracy") or {}
    groups = [("", accuracy)] + [(f"{label} ", acc) for label, acc in (results.get("variants") or {}).items()]
    # (variant label, dataset, output, its summary, its place among the run's outputs)
    rows = [(label, dataset, output, summary, place) for label, acc in groups for dataset, outputs in acc.items()
            for place, (output, summary) in enumerate(outputs.items())]

    def value(summary: dict) -> str:
        spread = f" ± {summary['std']:.2f}" if len(summary.get("seeds", ())) > 1 else ""
        return f"{summary['mean']:.2f}{spread}"

    def late_mean(dataset: str) -> float:
        return accuracy[dataset]["late"]["mean"]

    fused = [r for r in rows if r[2] not in ("late", *PLAIN_STREAMS) and "late" in accuracy.get(r[1], {})]
    if fused:
        # a tie goes to the later output of a run: the fused one comes after its towers' (-R, -F, -S)
        label, dataset, output, summary, _ = max(fused, key=lambda r: (r[3]["mean"] - late_mean(r[1]), r[4]))
        return f"{label}{dataset}: {output} {value(summary)} (late {late_mean(dataset):.2f})"
    plain = {d: {s: outputs[s]["mean"] for s in PLAIN_STREAMS if s in outputs}
             for d, outputs in accuracy.items() if "late" in outputs}
    if any(plain.values()):
        dataset = max((d for d in plain if plain[d]), key=lambda d: late_mean(d) - max(plain[d].values()))
        streams = ", ".join(f"{s} {mean:.2f}" for s, mean in plain[dataset].items())
        return f"{dataset}: late {value(accuracy[dataset]['late'])} ({streams})"
    if not rows:
        return ""
    label, dataset = rows[0][:2]
    output, summary = max(((r[2], r[3]) for r in rows if r[:2] == (label, dataset)), key=lambda kv: kv[1]["mean"])
    return f"{label}{dataset}: {output} {value(summary)}"


def record_path(figures_dir: str | os.PathLike = PROJECT_ROOT / "figures", smoke: bool = False) -> Path:
    return Path(figures_dir) / "results" / f"{SMOKE_RECORD_NAME if smoke else RECORD_NAME}.json"


def load_record(path: str | os.PathLike) -> dict | None:
    import json

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def timing_table(record: dict) -> str:
    """The "make run timing" markdown table of a record written by :func:`run_notebooks`."""
    extra = record["extra"]
    machine, load = extra["machine"], extra["load"]
    rows = ["| notebook | minutes | headline |", "|---|---|---|"]
    for name, nb in extra["notebooks"].items():
        rows.append(f"| `{name}` | {nb['seconds'] / 60:.1f} | {nb['headline'].replace('|', '/') or '–'} |")
    rows.append(f"| puzzles and flow | {extra['prepare_seconds'] / 60:.1f} | |")
    rows.append(f"| **total** | **{extra['total_seconds'] / 60:.1f}** | |")
    start, end = load["start"]["load_average"][0], load["end"]["load_average"][0]
    caption = (f"`make run`{' --smoke' if record['params']['smoke'] else ''} on {extra['started'][:10]}: "
               f"{machine['cpu_model']}, {machine['cpu_count']} cores, torch {machine['torch']}; 1-minute load "
               f"average {start:.2f} at the start, {end:.2f} at the end"
               + (" (busy with other jobs at the start: slower than on an idle machine)"
                  if load["start"]["busy"] else "") + ".")
    return caption + "\n\n" + "\n".join(rows)


def readme_block(record: dict | None) -> str:
    """What README.md holds between its make-run-timing markers."""
    return README_ABSENT if record is None else timing_table(record)


def update_readme(readme: str | os.PathLike = PROJECT_ROOT / "README.md",
                  record: str | os.PathLike = PROJECT_ROOT / "figures" / "results" / f"{RECORD_NAME}.json") -> bool:
    """Rewrite README.md's make-run-timing block from ``record`` (absent: the placeholder); True if changed."""
    from fusionkit.data.atomic import atomic_write_text

    readme = Path(readme)
    text = readme.read_text()
    start, end = text.index(README_START), text.index(README_END)
    new = text[:start + len(README_START)] + "\n" + readme_block(load_record(record)) + "\n" + text[end:]
    if new != text:
        atomic_write_text(readme, new)
    return new != text


def readme_timing(readme: str | os.PathLike = PROJECT_ROOT / "README.md") -> str:
    """The text README.md holds between its make-run-timing markers."""
    text = Path(readme).read_text()
    return text[text.index(README_START) + len(README_START):text.index(README_END)].strip("\n")


def summary_table(rows: list[dict], total: float) -> str:
    """The table printed at the end of a run: notebook, minutes (expected), headline."""
    width = max([len(r["notebook"]) for r in rows] + [8])
    lines = [f"{'notebook':{width}s}  minutes  expected  headline"]
    for r in rows:
        expected = f"{r['expected'] / 60:8.1f}" if r.get("expected") else f"{'':8s}"
        status = "" if r["status"] == "ok" else f"[{r['status']}] "
        lines.append(f"{r['notebook']:{width}s}  {r['seconds'] / 60:7.1f}  {expected}  {status}{r['headline']}")
    lines.append(f"{'total':{width}s}  {total / 60:7.1f}")
    return "\n".join(lines)


# ---- the series ---------------------------------------------------------------------------------

ASSIGNMENTS = "assignments"  # the course assignments' folder inside the notebooks folder


def series_notebooks(notebooks: str | os.PathLike = PROJECT_ROOT / "notebooks") -> list[Path]:
    """The notebooks ``make run`` executes, in order: the series, then the assignments' instructor versions."""
    notebooks = Path(notebooks)
    return sorted(notebooks.glob("*.ipynb")) + sorted((notebooks / ASSIGNMENTS).glob("*.ipynb"))


def run_notebooks(notebooks: str | os.PathLike = PROJECT_ROOT / "notebooks", out: str | os.PathLike = PROJECT_ROOT / "build",
                  smoke: bool = False, data_dir: str | os.PathLike = PROJECT_ROOT / "data", workers: int = 2,
                  prepare: bool = True, figures_dir: str | os.PathLike = PROJECT_ROOT / "figures",
                  stream: TextIO | None = None, interval: float = 30.0, record: bool = True,
                  threads: int = KERNEL_THREADS, keep_going: bool = False,
                  only: list[str] | None = None) -> list[Path]:
    """Build the puzzles and their flow (teaching parameters), then execute every notebook in order
    (:func:`series_notebooks`: the series, then the assignments' instructor versions), showing each
    one's progress and a summary table at the end, and (``record``) write the timings,
    machine and load to :func:`record_path` once all have run. ``DATA_DIR`` / ``FIGURES_DIR`` are
    passed to the notebooks that declare them; every kernel runs with ``threads`` torch threads
    (:data:`KERNEL_THREADS`: the same numbers on any machine). A failing notebook stops the run,
    unless ``keep_going`` (``make -k``'s sense): then the rest still run and one
    :class:`NotebookError` naming every failure is raised at the end. A run with a failure writes no
    record. ``only``: run just these notebooks (names without ``.ipynb``, e.g. ``["04_cmmp"]``;
    ValueError naming any that is not in the series); a part of the series is not ``make run``, so
    it writes no record either, and leaves the puzzles to its notebooks (each renders what it uses)."""
    import nbformat
    import torch

    from fusionkit.data.puzzles import PUZZLES, prepare_puzzle
    from fusionkit.lab.machine import check_load, load_average, machine_description
    from fusionkit.lab.results import load_results, save_results

    stream = stream if stream is not None else sys.stdout
    say = lambda text: (stream.write(text + "\n"), stream.flush())  # noqa: E731
    paths = series_notebooks(notebooks)
    if only is not None:
        unknown = sorted(set(only) - {p.stem for p in paths})
        if unknown:
            raise ValueError(f"not in the series: {', '.join(unknown)}; the notebooks are "
                             f"{', '.join(p.stem for p in paths)}")
        paths, record = [p for p in paths if p.stem in only], False
    where = record_path(figures_dir, smoke)
    previous = ((load_record(where) or {}).get("extra") or {}).get("notebooks", {})
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    load = {"start": check_load("make run")}
    machine = machine_description(torch.device("cpu"))
    expected = sum(previous.get(p.stem, {}).get("seconds", 0) for p in paths)
    say(f"{len(paths)} notebooks (SMOKE={smoke})" + (f", ~{expected / 60:.0f} min in the last recorded run"
                                                      if expected else "") +
        f"; {machine['cpu_count']} cores, {threads} torch threads per kernel, load average "
        f"{load['start']['load_average'][0]:.2f}")
    if prepare and not smoke and only is None:  # a part of the series renders what its notebooks ask for
        for name in sorted(PUZZLES):
            prepare_puzzle(name, data_dir, workers=workers)
    prepare_seconds = time.perf_counter() - t0
    done, rows, failures = [], [], []
    try:
        for nb in paths:
            declared = parameter_names(nbformat.read(nb, as_version=4)) or set()
            params = {"SMOKE": smoke}
            params.update({k: str(v) for k, v in (("DATA_DIR", data_dir), ("FIGURES_DIR", figures_dir))
                           if k in declared})
            row = {"notebook": nb.stem, "expected": previous.get(nb.stem, {}).get("seconds"), "status": "failed",
                   "headline": "", "load_before": load_average()}
            rows.append(row)
            say(f"executing {nb.name} (SMOKE={smoke})")
            progress = NotebookProgress(nb.stem, row["expected"], stream=stream, interval=interval)
            start = time.perf_counter()
            try:
                done.append(execute_notebook(nb, Path(out) / nb.relative_to(notebooks), params, progress=progress,
                                             threads=threads))
                row["status"] = "ok"
            except NotebookError as e:
                if not keep_going:
                    raise
                failures.append(str(e))
                say(f"FAILED (going on with the rest): {e}")
            finally:
                row.update(seconds=time.perf_counter() - start, cells=progress.total, cells_done=progress.done,
                           load_after=load_average())
            results = Path(figures_dir) / "results" / f"{nb.stem}.json"
            if results.is_file() and results.stat().st_mtime >= time.time() - row["seconds"] - 1:
                row["headline"] = notebook_headline(load_results(results))  # written by this run, not stale
    finally:
        total = time.perf_counter() - t0
        if rows:
            say("\n" + summary_table(rows, total))
    if failures:
        raise NotebookError(f"{len(failures)} of {len(paths)} notebooks failed:\n" + "\n".join(failures))
    load["end"] = check_load("make run", warn=False)
    if record:
        extra = {"started": started, "total_seconds": total, "prepare_seconds": prepare_seconds, "machine": machine,
                 "load": load, "notebooks": {r["notebook"]: {k: v for k, v in r.items() if k not in ("notebook",
                                                                                                     "expected")}
                                             for r in rows}}
        save_results(where.stem, {"smoke": smoke, "workers": workers, "threads": threads,
                                  "notebooks": [p.stem for p in paths]}, {},
                     extra, results_dir=where.parent)
        say(f"timings: {where}")
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="README's make-run timing table from figures/results/make_run.json")
    parser.add_argument("--readme", action="store_true", help="rewrite README.md's make-run timing block")
    parser.add_argument("--record", type=Path, default=record_path())
    parser.add_argument("--readme-path", type=Path, default=PROJECT_ROOT / "README.md")
    args = parser.parse_args(argv)
    if args.readme:
        changed = update_readme(args.readme_path, args.record)
        print(f"{args.readme_path}: {'updated' if changed else 'already up to date'}")
    else:
        print(readme_block(load_record(args.record)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
