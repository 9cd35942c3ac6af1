"""Execute the notebook series with papermill (``fusionkit run-notebooks``, ``make run``)."""
from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class NotebookError(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the error."""


def execute_notebook(path: str | os.PathLike, output: str | os.PathLike, parameters: dict | None = None,
                     timeout: int | None = None) -> Path:
    """Run one notebook with papermill in its own folder (as JupyterLab would) and save the executed
    copy to ``output``. Raises :class:`NotebookError` naming the notebook and failing cell."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    path, output = Path(path), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(path), str(output), parameters=parameters or {}, cwd=str(path.parent),
                                   kernel_name="python3", progress_bar=False, execution_timeout=timeout)
    except PapermillExecutionError as e:
        first_line = next((line for line in (e.source or "").splitlines() if line.strip()), "")
        raise NotebookError(f"notebook {path.name} failed in cell {e.cell_index} (0-based, counting papermill's "
                            f"injected parameters; it starts {first_line!r}): {e.ename}: {e.evalue}\n"
                            f"(executed copy with the traceback: {output})") from e
    return output


def run_notebooks(notebooks: str | os.PathLike = PROJECT_ROOT / "notebooks", out: str | os.PathLike = PROJECT_ROOT / "build",
                  smoke: bool = False, data_dir: str | os.PathLike = PROJECT_ROOT / "data", workers: int = 2,
                  prepare: bool = True) -> list[Path]:
    """Build the puzzles and their flow (teaching parameters), then execute every notebook in order."""
    from fusionkit.data.puzzles import PUZZLES, prepare_puzzle

    if prepare and not smoke:
        for name in sorted(PUZZLES):
            prepare_puzzle(name, data_dir, workers=workers)
    done = []
    for nb in sorted(Path(notebooks).glob("*.ipynb")):
        print(f"executing {nb.name} (SMOKE={smoke})", flush=True)
        done.append(execute_notebook(nb, Path(out) / nb.name, {"SMOKE": smoke}))
    return done
