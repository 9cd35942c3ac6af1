"""Run independent jobs in worker processes, in order, with a progress bar."""
from __future__ import annotations

import multiprocessing as mp
from typing import Callable, Sequence

from tqdm.auto import tqdm


def _init_worker() -> None:
    # One OpenCV (and torch) thread per process: the workers are the parallelism, and results stay
    # deterministic. torch reads OMP_NUM_THREADS when a worker first imports it (tvl1-torch flow).
    import os

    import cv2

    os.environ["OMP_NUM_THREADS"] = "1"
    cv2.setNumThreads(1)


def run_jobs(fn: Callable, jobs: Sequence, workers: int = 1, desc: str = "", progress: bool = True,
             unit: str = "video") -> list:
    """``[fn(job) for job in jobs]`` over ``workers`` processes (spawned, so it is safe from a
    notebook that already runs torch threads), keeping the jobs' order."""
    bar = tqdm(total=len(jobs), desc=desc, disable=not progress, unit=unit)
    try:
        if workers <= 1 or len(jobs) <= 1:
            results = []
            for job in jobs:
                results.append(fn(job))
                bar.update()
            return results
        ctx = mp.get_context("spawn")
        with ctx.Pool(min(workers, len(jobs)), initializer=_init_worker) as pool:
            results = []
            for result in pool.imap(fn, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
                results.append(result)
                bar.update()
            return results
    finally:
        bar.close()


