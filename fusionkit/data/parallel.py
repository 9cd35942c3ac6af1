"""Run independent jobs in worker processes, in order, with a progress bar.

Workers are spawned processes (safe from a notebook that already runs torch threads), each fed one
job at a time through its own pipe. This is not ``multiprocessing.Pool``, for three reasons:

- a Pool replaces a worker that dies while starting, forever: a script that calls ``extract_flow``
  without an ``if __name__ == "__main__":`` guard hangs instead of failing (see
  :func:`check_not_bootstrapping`);
- a Pool's queues use named semaphores, which a killed parent leaves for multiprocessing's resource
  tracker to clean up with a "leaked semaphore objects" warning; pipes need none;
- a Pool waits forever for a worker killed mid-job (e.g. out of memory); here that is an error
  naming the job.

Workers end with their parent (:func:`_die_with_parent`), so killing the main process, even with
SIGKILL, leaves none running.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import traceback
from multiprocessing.connection import wait
from typing import Callable, Sequence

from tqdm.auto import tqdm

# Exit status of a worker that stopped because it was importing an unguarded main script.
GUARD_EXIT_CODE = 86


def main_guard_message(what: str) -> str:
    # In a spawned worker importing it, __main__ has no __file__ yet; the parent's argv came along.
    main = getattr(sys.modules.get("__main__"), "__file__", None) or (
        sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c") else "your script")
    return (f"{what} with workers > 1 starts worker processes with the 'spawn' method, which runs the main "
            f"script ({main}) again in each of them; a script that calls {what} at its top level would call it "
            f"again in every worker. Put the script's top-level code under a main guard:\n\n"
            f"    if __name__ == \"__main__\":\n        ...\n\nor pass workers=1.")


def check_not_bootstrapping(what: str) -> None:
    """Stop this process at once if it is a spawned worker still importing the main script.

    multiprocessing sets ``_inheriting`` on the current process while a spawned child re-imports
    the parent's main module (the same flag its own "bootstrapping phase" error checks). A call
    from there comes from the top level of an unguarded script: running it would redo the work
    (or delete the parent's half-written folders) in every worker. The worker exits with
    :data:`GUARD_EXIT_CODE`, which the parent turns into an error saying how to fix the script.
    """
    if getattr(mp.current_process(), "_inheriting", False):
        sys.stderr.write(f"fusionkit worker process: {main_guard_message(what)}\n")
        sys.stderr.flush()
        raise SystemExit(GUARD_EXIT_CODE)


def _die_with_parent(parent_pid: int) -> None:
    """End this worker when the main process ends, however it ends (SIGKILL cannot be caught, so
    the parent cannot stop its workers itself)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1  # <linux/prctl.h>: the kernel sends us this signal when the parent dies
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)
    # Everywhere (and as a second line on Linux): spawn leaves the child a pipe whose other end
    # only the parent holds; it becomes readable when the parent is gone.
    parent = mp.parent_process()
    if parent is not None:
        def watch() -> None:
            wait([parent.sentinel])
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


def _init_worker(parent_pid: int) -> None:
    # One OpenCV (and torch) thread per process: the workers are the parallelism, and results stay
    # deterministic. torch reads OMP_NUM_THREADS when a worker first imports it (tvl1-torch flow).
    import cv2

    os.environ["OMP_NUM_THREADS"] = "1"
    cv2.setNumThreads(1)
    # Ctrl-C reaches the whole process group; the parent handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(parent_pid)


def _worker(fn: Callable, conn, parent_pid: int) -> None:
    _init_worker(parent_pid)
    conn.send(("ready",))
    while True:
        try:
            item = conn.recv()
        except EOFError:  # the parent closed the pipe or is gone
            return
        if item is None:
            return
        index, job = item
        try:
            reply = ("result", index, fn(job))
        except BaseException as e:  # the parent re-raises it, as Pool did
            reply = ("error", index, e, traceback.format_exc())
        try:
            conn.send(reply)
        except Exception:  # an unpicklable result or exception
            conn.send(("error", index, RuntimeError(f"{fn.__name__} returned or raised something that cannot be sent "
                                                    f"back from a worker"), traceback.format_exc()))


def run_jobs(fn: Callable, jobs: Sequence, workers: int = 1, desc: str = "", progress: bool = True,
             unit: str = "video", name: str | None = None) -> list:
    """``[fn(job) for job in jobs]`` over ``workers`` processes, keeping the jobs' order.

    ``fn`` must be importable (a module-level function of a module, not of the main script). An
    exception raised by ``fn`` is raised here, with the worker's traceback as a note. ``name``: the
    user-facing function that runs the jobs, for error messages (default: ``fn``'s name).
    """
    name = name or getattr(fn, "__name__", "run_jobs")
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, unit=unit)
    try:
        if workers <= 1 or len(jobs) <= 1:
            results = []
            for job in jobs:
                results.append(fn(job))
                bar.update()
            return results
        check_not_bootstrapping(name)
        return _run_in_workers(fn, list(jobs), min(workers, len(jobs)), bar, name)
    finally:
        bar.close()


def _run_in_workers(fn: Callable, jobs: list, n: int, bar, what: str) -> list:
    ctx = mp.get_context("spawn")
    procs, running = {}, {}  # connection -> its process; -> the job index it runs (None: starting)
    try:
        for _ in range(n):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(fn, theirs, os.getpid()), daemon=True)
            proc.start()
            theirs.close()  # only the worker holds its end now, so ours reads EOF if the worker dies
            procs[ours], running[ours] = proc, None
        results, todo, done = [None] * len(jobs), list(enumerate(jobs))[::-1], 0
        while done < len(jobs):
            for conn in wait(list(running)):
                try:
                    reply = conn.recv()
                except EOFError:
                    raise _worker_died(procs[conn], running[conn], jobs, what) from None
                if reply[0] == "error":
                    _, index, error, tb = reply
                    error.add_note(f"raised in a worker process running job {jobs[index]!r}:\n{tb}")
                    raise error
                if reply[0] == "result":
                    results[reply[1]] = reply[2]
                    done += 1
                    bar.update()
                running[conn] = todo[-1][0] if todo else None
                try:
                    conn.send(todo.pop() if todo else None)  # None: nothing left, the worker exits
                except OSError:  # it died just now
                    raise _worker_died(procs[conn], running[conn], jobs, what) from None
                if running[conn] is None:
                    del running[conn]
        for conn in running:  # workers still starting when the last job finished
            with contextlib.suppress(OSError):
                conn.send(None)
        running.clear()
        return results
    finally:
        for conn, proc in procs.items():
            if running:  # stopped by an error (or Ctrl-C): the other jobs no longer matter
                proc.terminate()
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
            conn.close()


def _worker_died(proc, index: int | None, jobs: list, what: str) -> RuntimeError:
    proc.join()
    code = proc.exitcode
    if index is None and code == GUARD_EXIT_CODE:
        return RuntimeError(main_guard_message(what))
    if index is None:
        return RuntimeError(f"a worker process of {what} exited with code {code} while starting (its error is "
                            f"printed above); run with workers=1 to see it in this process")
    return RuntimeError(f"a worker process of {what} died (exit code {code}{', killed by a signal' if code < 0 else ''}"
                        f", e.g. out of memory) while running job {jobs[index]!r}")
