"""Where a notebook's training time goes: data, forward, backward, optimizer, evaluation, writes.

Each profiled experiment is one ``puzzle_experiment`` call of a notebook, at the notebook's own
parameters, read from its ``parameters``-tagged cell (``SIZE``, ``FRAMES``, ``VIDEOS_PER_CLASS``,
``EPOCHS`` ...), with the training configuration and options its code passes (copied below, in
:data:`EXPERIMENTS`, from the notebook's cells), at ``--epochs`` epochs instead of the notebook's
(the seconds per epoch are what is measured; ``notebook_seconds`` scales them to the notebook's
epochs and seeds). The phases are timed by wrapping, for the duration of the call only:

- ``setup``: rendering the puzzle and extracting its flow (:func:`fusionkit.data.puzzles.prepare_puzzle`;
  zero when already done) and building the datasets;
- ``data``: waiting for the next training batch (every ``DataLoader`` iterator's ``__next__``;
  the first epoch decodes the in-memory datasets' videos);
- ``forward``: the Trainer's forward + objective (the body of its ``autocast`` block);
- ``backward``: ``Tensor.backward``; ``optimizer``: ``zero_grad`` + ``step``;
- ``evaluation``: testing (:func:`fusionkit.training.evaluate.predict`, and the per-epoch
  ``evaluate`` of ``track_test``), its own batches included;
- ``checkpoint``: the Trainer's checkpoint and history writes (each epoch, into the run cache's entry);
- ``other``: the rest of the wall time (the run cache's key and entry, model building, bookkeeping).

The run cache is on (a first call trains, so the phases are a training's); ``--cache-hit`` also
times the same call again, which is then read from the cache. ``--list`` prints every
``puzzle_experiment`` / ``run_benchmark`` call of every notebook, to read the duplicated work.

    python benchmarks/profile_notebooks.py [--experiments 02-late-registration ...] [--epochs 2]
                                           [--cache-hit] [--list] [--threads N]
    python benchmarks/profile_notebooks.py --bench-sizes 32 64 [--epochs 2]   # one benchmark job's cost

Results go to ``benchmarks/results/profile_notebooks.json`` with the machine and its load
(:mod:`fusionkit.lab.machine`); ``docs/performance.md`` quotes them.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from fusionkit.data.atomic import atomic_write_text
from fusionkit.lab.machine import finish_conditions, machine_description, measurement_conditions
from fusionkit.training.trainer import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
RESULTS = Path(__file__).parent / "results" / "profile_notebooks.json"
PHASES = ("setup", "data", "forward", "backward", "optimizer", "evaluation", "checkpoint", "other")


def notebook_parameters(notebook: str) -> dict:
    """The literal values of a notebook's ``parameters`` cell (names assigned a constant; calls such
    as ``project_dir(...)`` are left out)."""
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{notebook}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", []))
    values = {}
    for node in ast.parse(cell.source).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign)
                                                                      else None)
        if isinstance(target, ast.Name) and node.value is not None:
            with contextlib.suppress(ValueError):
                values[target.id] = ast.literal_eval(node.value)
    return values


def notebook_calls(notebook: str) -> list[str]:
    """Every ``puzzle_experiment(...)`` and ``run_benchmark(...)`` call in a notebook's code cells, as written."""
    import nbformat

    nb = nbformat.read(NOTEBOOKS / f"{notebook}.ipynb", as_version=4)
    calls = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for match in re.finditer(r"(puzzle_experiment|run_benchmark)\(", cell.source):
            depth, i = 0, match.end() - 1
            while i < len(cell.source):
                depth += {"(": 1, ")": -1}.get(cell.source[i], 0)
                if depth == 0:
                    break
                i += 1
            calls.append(" ".join(cell.source[match.start():i + 1].split()))
    return calls


def _teaching(p: dict, epochs: str = "EPOCHS", weight_decay: float = 1e-4, **config) -> TrainConfig:
    return TrainConfig(epochs=p[epochs], batch_size=8, optimizer="adamw", lr=2e-3, weight_decay=weight_decay,
                       progress=False, **config)


def _common(p: dict, **extra) -> dict:
    return dict(videos_per_class=p["VIDEOS_PER_CLASS"], frames=p["FRAMES"], size=p["SIZE"], **extra)


# name -> (notebook, what it is, (parameters) -> (method, puzzle, config, kwargs), needs streams from)
# Copied from the notebooks' cells: the config and options each passes for this call.
EXPERIMENTS = {
    "02-late-registration": ("02_two_stream_late_fusion", "late streams, one of 5 puzzles x 2 seeds",
                             lambda p: ("late", "registration", _teaching(p), _common(p, dropout=0.3)), None),
    "03-late-registration": ("03_conv_fusion", "late streams before the fusion functions (a)",
                             lambda p: ("late", "registration", _teaching(p),
                                        _common(p, test_segments=3, dropout=0.3, head_hidden=p["HEAD_HIDDEN"])), None),
    "03-spatial-conv": ("03_conv_fusion", "spatial conv fusion fine-tuned from them, one of 5 functions x 2 seeds",
                        lambda p: ("spatial", "registration", _teaching(p, "FINETUNE_EPOCHS"),
                                   _common(p, test_segments=3, dropout=0.3, head_hidden=p["HEAD_HIDDEN"], fusion="conv",
                                           finetune=p["FINETUNE"])), "03-late-registration"),
    "04-late-order": ("04_cmmp", "stage 1 streams, one of 3 puzzles x 2 seeds",
                      lambda p: ("late", "order", _teaching(p, weight_decay=5e-4), _common(p, dropout=0.3, test_segments=3)),
                      None),
    "04-cmmp-order": ("04_cmmp", "CMMP stage 2, one of 4 rows x 3 puzzles x 2 seeds",
                      lambda p: ("cmmp", "order", replace(_teaching(p, "FINETUNE_EPOCHS", weight_decay=5e-4),
                                                          lr=p["FINETUNE_LR"]),
                                 _common(p, dropout=0.3, test_segments=3)), "04-late-order"),
}


class PhaseTimer:
    """Seconds by phase while active (see the module docstring); nested evaluation counts once."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.evaluating = 0

    def _timed(self, phase: str, fn):
        timer = self

        def wrapper(*args, **kwargs):
            if timer.evaluating and phase != "evaluation":
                return fn(*args, **kwargs)
            start = time.perf_counter()
            timer.evaluating += phase == "evaluation"
            try:
                return fn(*args, **kwargs)
            finally:
                timer.evaluating -= phase == "evaluation"
                if not (timer.evaluating and phase == "evaluation"):
                    timer.seconds[phase] += time.perf_counter() - start

        return wrapper

    @contextlib.contextmanager
    def active(self):
        import fusionkit.lab.experiments as experiments
        import fusionkit.training.evaluate as evaluate
        import fusionkit.training.trainer as trainer
        from torch.utils.data import dataloader

        timer = self
        original_autocast = trainer.autocast

        @contextlib.contextmanager
        def timed_autocast(device):
            start = time.perf_counter()
            with original_autocast(device):
                yield
            if not timer.evaluating:
                timer.seconds["forward"] += time.perf_counter() - start

        patches = [(experiments, "prepare_puzzle", "setup"), (experiments, "build_dataset", "setup"),
                   (dataloader._BaseDataLoaderIter, "__next__", "data"), (torch.Tensor, "backward", "backward"),
                   (torch.optim.Optimizer, "zero_grad", "optimizer"), (torch.optim.AdamW, "step", "optimizer"),
                   (torch.optim.SGD, "step", "optimizer"), (evaluate, "predict", "evaluation"),
                   (trainer, "evaluate", "evaluation"), (trainer.Trainer, "save_checkpoint", "checkpoint")]
        saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
        try:
            for owner, name, phase in patches:
                setattr(owner, name, self._timed(phase, getattr(owner, name)))
            trainer.autocast = timed_autocast
            yield self
        finally:
            trainer.autocast = original_autocast
            for owner, name, fn in saved:
                setattr(owner, name, fn)


def profile_call(method: str, puzzle: str, config: TrainConfig, data_dir, seeds=(0,), init_from=None,
                 **kwargs) -> tuple[dict, object]:
    """``{"phases": seconds by phase, "wall": ..., "cached": [...]}`` of one ``puzzle_experiment`` call, and its run."""
    from fusionkit.lab.experiments import puzzle_experiment

    timer = PhaseTimer()
    start = time.perf_counter()
    with timer.active():
        run = puzzle_experiment(method, puzzle, seeds=seeds, config=config, data_dir=data_dir, init_from=init_from,
                                **kwargs)
    wall = time.perf_counter() - start
    phases = {p: round(timer.seconds.get(p, 0.0), 2) for p in PHASES[:-1]}
    phases["other"] = round(wall - sum(phases.values()), 2)
    return {"phases": phases, "wall": round(wall, 2), "cached": run.cached}, run


def bench_job_cost(sizes=(32, 64), puzzle: str = "registration", entries=("late", "spatial(fusion=conv)"),
                   epochs: int = 2, data_dir=ROOT / "data") -> dict:
    """Seconds of one benchmark job (:func:`fusionkit.lab.bench._run_job`: ``late``, then each entry
    from its streams) at each frame size, at ``epochs`` epochs per entry instead of the benchmark's,
    with the per-entry seconds scaled to the teaching settings' epochs (training scales with epochs;
    the evaluation share, once per entry, is counted as training here, so the scaled figure errs high)."""
    from fusionkit.data.puzzles import prepare_puzzle
    from fusionkit.lab import bench
    from fusionkit.methods import get_method

    costs = {}
    for size in sizes:
        settings = replace(bench.TEACHING, puzzles=(puzzle,), seeds=(0,), size=size, epochs=epochs,
                           finetune_epochs=epochs)
        prepare_puzzle(puzzle, data_dir, backend=settings.flow_backend, videos_per_class=settings.videos_per_class,
                       frames=settings.frames, size=size, test_groups=settings.test_groups, progress=False)
        job = (puzzle, 0, 0, settings, tuple(entries), str(data_dir), "cpu", None, (), False)
        start = time.perf_counter()
        result = bench._run_job(job)
        wall = time.perf_counter() - start
        scaled = {}
        for name in entries:
            entry = bench.get_entry(name)
            teaching_epochs = (bench.TEACHING.epochs if get_method(entry.method).pretrain is None
                               else round(bench.TEACHING.finetune_epochs * entry.epochs_scale))
            scaled[name] = round(result["seconds"][name] * teaching_epochs / epochs, 1)
        costs[size] = {"seconds": {k: round(v, 2) for k, v in result["seconds"].items()}, "wall": round(wall, 2),
                       "teaching_seconds": scaled, "accuracy": result["accuracy"], "epochs": epochs}
    return costs


def experiment(name: str, epochs: int) -> dict:
    """One of :data:`EXPERIMENTS` at ``epochs`` epochs: its notebook, parameters, call and the notebook's epochs."""
    notebook, what, make, streams_from = EXPERIMENTS[name]
    params = notebook_parameters(notebook)
    method, puzzle, config, kwargs = make(params)
    return dict(notebook=notebook, what=what, params=params, method=method, puzzle=puzzle, kwargs=kwargs,
                config=replace(config, epochs=epochs), notebook_epochs=config.epochs, streams_from=streams_from)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--experiments", nargs="+", choices=sorted(EXPERIMENTS), default=sorted(EXPERIMENTS))
    parser.add_argument("--epochs", type=int, default=2, help="epochs per call instead of the notebook's (default 2)")
    parser.add_argument("--cache-hit", action="store_true", help="also time each call again, read from the run cache")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--data", default=str(ROOT / "data"), help="puzzles and flow (the notebooks' data folder)")
    parser.add_argument("--list", action="store_true", help="print every notebook's training calls and stop")
    parser.add_argument("--bench-sizes", type=int, nargs="+",
                        help="instead: one benchmark job's cost at these frame sizes (e.g. 32 64), at --epochs")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.list:
        for path in sorted(NOTEBOOKS.glob("0*.ipynb")):
            for call in notebook_calls(path.stem):
                print(f"{path.stem}: {call}")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    conditions = measurement_conditions("profile_notebooks")
    # a private run cache: the profile trains (and, with --cache-hit, reads back) without touching the project's
    os.environ["FUSIONKIT_BUILD"] = tempfile.mkdtemp(prefix="fusionkit-profile-")
    if args.bench_sizes:
        costs = bench_job_cost(tuple(args.bench_sizes), epochs=args.epochs, data_dir=args.data)
        for size, cost in costs.items():
            print(f"bench job at {size}x{size}: {cost['wall']:.1f} s at {args.epochs} epochs per entry; scaled to the "
                  f"teaching epochs {cost['teaching_seconds']}; accuracy {cost['accuracy']}", flush=True)
        report = {"machine": machine_description(torch.device("cpu")), "threads": torch.get_num_threads(),
                  "conditions": finish_conditions(conditions), "bench_job_cost": costs}
        atomic_write_text(Path(args.out), json.dumps(report, indent=1))
        print(f"wrote {args.out}")
        return 0
    results, runs = {}, {}

    def run(name: str) -> dict:
        e = experiment(name, args.epochs)
        init_from = None
        if e["streams_from"] is not None:
            if e["streams_from"] not in runs:
                run(e["streams_from"])
            init_from = runs[e["streams_from"]].models
        call = dict(data_dir=args.data, init_from=init_from, **e["kwargs"])
        record, runs[name] = profile_call(e["method"], e["puzzle"], e["config"], **call)
        per_epoch = {p: round(record["phases"][p] / args.epochs, 2)
                     for p in ("data", "forward", "backward", "optimizer", "checkpoint")}
        seeds = len(e["params"].get("SEEDS", [0]))
        record.update(notebook=e["notebook"], what=e["what"], method=e["method"], puzzle=e["puzzle"], epochs=args.epochs,
                      notebook_epochs=e["notebook_epochs"], per_epoch=per_epoch, seeds=seeds,
                      notebook_seconds=round(seeds * (e["notebook_epochs"] * sum(per_epoch.values())
                                                      + record["phases"]["evaluation"]), 1),
                      settings={"size": e["params"]["SIZE"], "frames": e["params"]["FRAMES"],
                                "videos_per_class": e["params"]["VIDEOS_PER_CLASS"], "config": repr(e["config"]),
                                **{k: v for k, v in e["kwargs"].items() if k not in ("videos_per_class", "frames", "size")}})
        if args.cache_hit:
            hit, _ = profile_call(e["method"], e["puzzle"], e["config"], **call)
            record["cache_hit"] = {"wall": hit["wall"], "cached": hit["cached"]}
        results[name] = record
        print(f"{name}: {record['wall']:.1f} s for {args.epochs} epochs; per epoch {per_epoch}; evaluation "
              f"{record['phases']['evaluation']:.1f} s; setup {record['phases']['setup']:.1f} s"
              + (f"; again from the cache {record['cache_hit']['wall']:.1f} s" if args.cache_hit else ""), flush=True)
        return record

    for name in args.experiments:
        if name not in results:
            run(name)
    report = {"machine": machine_description(torch.device("cpu")), "threads": torch.get_num_threads(),
              "conditions": finish_conditions(conditions), "experiments": results}
    atomic_write_text(Path(args.out), json.dumps(report, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
