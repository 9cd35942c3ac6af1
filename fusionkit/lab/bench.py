"""``fusionkit bench``: every fusion method on every puzzle over several seeds, in one table.

Each puzzle is built to need one kind of cross-modal dependence (the README's puzzle table): ``appearance`` and
``motion`` one stream, ``conjunction`` any fusion, ``registration`` "what moves where" at the same
pixel, ``order`` the order of the segments. The table shows which mechanism meets which need, so
each entry carries a line saying what its mechanism can see (:attr:`BenchEntry.mechanism`).

A job is one (puzzle, data seed, training seed): on the puzzle's videos rendered from that data
seed it trains the two streams separately (``late``, the baseline and the stage-1 weights that the
fusion methods start from, as each paper does), then every other entry. Every trained entry goes
through the run cache (:mod:`fusionkit.lab.run_cache`), so a job trained before (by an earlier
benchmark, or a notebook with the same settings) is read back, not trained again. Jobs run in
worker processes (one torch thread each) and each job's result is written atomically to
``<work_dir>/jobs/`` as it finishes, so an interrupted benchmark resumes where it stopped
(``--resume``).

    fusionkit bench [--quick] [--seeds 0 1 2] [--data-seeds 0 1] [--puzzles order registration]
                    [--blocks my_block --plugins blocks.py]

writes ``figures/results/benchmark.json`` (the notebooks' results schema: a row that is a method with its
default options under ``accuracy[puzzle][output]``, a row with options of its own under ``variants[row]``;
each cell a :func:`~fusionkit.lab.results.run_summary` over data seeds x seeds: mean, std, every run
and a 95% t-interval of the mean), ``figures/results/benchmark.md`` (mean ± std [interval] table) and
``figures/benchmark_heatmap.png``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from fusionkit.data.atomic import atomic_write_text
from fusionkit.registry import Registry
from fusionkit.training.trainer import TrainConfig

__all__ = ["BenchEntry", "BenchSettings", "BENCH_ENTRIES", "register_bench_entry", "block_entry", "QUICK", "TEACHING",
           "run_benchmark", "markdown_table", "final_output", "results_layout"]


@dataclass(frozen=True)
class BenchEntry:
    """One row of the benchmark: a method of :mod:`fusionkit.methods` with model options. Its name
    is the method's, followed by the options that make it a variant: ``spatial(fusion=sum)``.

    ``mechanism`` says what the fusion can see, which is what explains its row of the table.
    ``epochs_scale`` multiplies the benchmark's fine-tuning epochs for methods whose second stage
    learns new recurrent weights from scratch (CMMP's LSTMs need more steps than a 1x1 conv)."""

    name: str
    method: str
    mechanism: str
    options: dict = field(default_factory=dict)
    epochs_scale: float = 1.0


BENCH_ENTRIES = Registry("benchmark entry")


def register_bench_entry(entry: BenchEntry) -> BenchEntry:
    return BENCH_ENTRIES.register(entry.name)(entry)


register_bench_entry(BenchEntry(
    "late", "late", "two towers, softmax scores averaged: each stream decides alone, no pixel or segment is shared"))
register_bench_entry(BenchEntry(
    "spatial(fusion=sum)", "spatial", "motion features added to appearance features at the same pixel after the last stage "
    "(Feichtenhofer Eq. 2): registered, but the sum is linear, so a pixel's 'colour' and 'motion' are not conjoined "
    "until the layers above", {"fusion": "sum", "head_hidden": 128}))
register_bench_entry(BenchEntry(
    "spatial(fusion=conv)", "spatial", "stacked maps + learned 1x1 conv at the same pixel (Feichtenhofer Eq. 3-4): registered "
    "and learned per pixel; segments still averaged (no order)", {"fusion": "conv", "head_hidden": 128}))
register_bench_entry(BenchEntry(
    "conv_fusion", "conv_fusion", "conv fusion over space and the T segments (3D conv + 3D pool, Feichtenhofer "
    "Sec. 3.3-3.4): registered and sees segment order"))
register_bench_entry(BenchEntry(  # hinge="batch": the committed benchmark's cmmp row was trained with it
    "cmmp", "cmmp", "per-segment pooled features exchanged by LSTM messages (Wang et al. Eq. 1-2): sees segment "
    "order, pools space away first (no registration)", {"hinge": "batch"}, epochs_scale=2.0))
register_bench_entry(BenchEntry(
    "ccs(embedding_dim=64)", "ccs", "embedded-Gaussian correlation of every appearance position with every motion position "
    "(Zhang et al. Eq. 1-3): content-only, no positions; segments averaged", {"embedding_dim": 64}))
register_bench_entry(BenchEntry(
    "cma(position_frequencies=3)", "cma", "attention from RGB positions to flow positions (Chi et al. Eq. 1-5) with positional terms on "
    "queries and keys (ours, not the paper's): can register; segments averaged",
    {"fusion_options": {"position_frequencies": 3}}))

DEFAULT_ENTRIES = ("late", "spatial(fusion=sum)", "spatial(fusion=conv)", "conv_fusion", "cmmp",
                   "ccs(embedding_dim=64)", "cma(position_frequencies=3)")


def block_entry(block: str) -> BenchEntry:
    """A benchmark row for any registered fusion block (a student's included): spatial fusion with
    it after the last stage, fine-tuned from the separately trained streams like ``conv``."""
    from fusionkit.fusion import FUSIONS

    cls = FUSIONS.lookup(block)
    summary = (cls.__doc__ or "").strip().split("\n")[0] or "registered fusion block"
    return BenchEntry(f"spatial(fusion={block})", "spatial", f"{summary} (spatial fusion after the last stage)",
                      {"fusion": block, "head_hidden": 128})


def get_entry(name: str) -> BenchEntry:
    """A registered benchmark entry; else a method by its name (its default options); else a
    spatial-fusion row for a registered fusion block (by its name, or as ``spatial(fusion=NAME)``)."""
    if name in BENCH_ENTRIES:
        return BENCH_ENTRIES.lookup(name)
    from fusionkit.fusion import FUSIONS
    from fusionkit.methods import get_method, list_methods

    if name in list_methods():  # a method's name is its row, with the method's own defaults
        return BenchEntry(name, name, get_method(name).summary)

    block = name[len("spatial(fusion="):-1] if name.startswith("spatial(fusion=") and name.endswith(")") else name
    if block in FUSIONS:  # a block with a registered row of its own (sum, conv) gets that row
        row = f"spatial(fusion={block})"
        return BENCH_ENTRIES.lookup(row) if row in BENCH_ENTRIES else block_entry(block)
    raise KeyError(f"unknown benchmark entry {name!r}: entries are {sorted(BENCH_ENTRIES)}, and any registered "
                   f"fusion block ({sorted(FUSIONS)}) or method ({list_methods()}) can be benchmarked by name")


@dataclass(frozen=True)
class BenchSettings:
    """Sizes and schedules of one benchmark run (the same for every entry).

    ``seeds``: the training seeds; ``data_seeds``: the renders of each puzzle (each data seed its
    own videos); every (data seed, seed) is a run. ``videos_per_class`` and ``test_groups`` (groups
    of 3 clips per class held out for testing, :func:`fusionkit.data.puzzles.make_puzzles`) make the
    test split: the default 48 videos per class with 9 test groups is 21 training videos per class
    (as the 30 with the default 3 test groups were) and 27 test videos per class, 108 per puzzle, so
    one video is under 1 point of accuracy (it was 2.8 with 36)."""

    puzzles: tuple[str, ...] = ("appearance", "motion", "conjunction", "registration", "order")
    seeds: tuple[int, ...] = (0, 1, 2)
    data_seeds: tuple[int, ...] = (0,)
    videos_per_class: int = 48
    test_groups: int | None = 9  # None: make_puzzles' default (about 30% of the groups)
    frames: int = 24
    size: int = 32  # half the notebooks' 64: a quarter of the compute (docs/performance.md: cost at 32 vs 64)
    segments: int = 3
    new_length: int = 5
    epochs: int = 16  # the separately trained streams (and methods trained from scratch)
    finetune_epochs: int = 16  # fusion methods started from them
    batch_size: int = 8
    lr: float = 3e-3
    dropout: float = 0.3
    flow_backend: str = "dis"

    def train_config(self, epochs: int, seed: int, device: str) -> TrainConfig:
        return TrainConfig(epochs=epochs, batch_size=self.batch_size, optimizer="adamw", lr=self.lr,
                           weight_decay=5e-4, seed=seed, device=device, progress=False)

    def key(self, entries: tuple[str, ...]) -> str:
        """Identifies the settings a job result was computed with (resume only reuses matching ones)."""
        text = json.dumps({**asdict(self), "puzzles": None, "seeds": None, "data_seeds": None, "entries": entries},
                          sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


TEACHING = BenchSettings()
QUICK = BenchSettings(puzzles=("conjunction", "registration", "order"), seeds=(0,), videos_per_class=4, test_groups=None,
                      frames=12, size=32, new_length=3, epochs=1, finetune_epochs=1)  # `order` at 12 frames: L <= 3


def final_output(model) -> str:
    """The output a method predicts with: its ``fused`` role."""
    return model.output_roles()["fused"]


def import_plugins(plugins: tuple[str, ...]) -> None:
    """Import modules (``pkg.mod``) or files (``path/to/blocks.py``) that register fusion blocks, so
    that a student's block is known by name here and in every worker process. Blocks defined in a
    notebook exist only in its own process: benchmark them with ``workers=1``."""
    import importlib
    import importlib.util
    import sys

    for plugin in plugins:
        if plugin.endswith(".py"):
            path = Path(plugin).resolve()
            if not path.is_file():
                raise FileNotFoundError(f"plugin file {plugin!r} not found (give the path of a .py file that "
                                        f"registers fusion blocks, or an importable module name)")
            name = f"fusionkit_plugin_{path.stem}"
            if name not in sys.modules:
                spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module
                spec.loader.exec_module(module)
        else:
            importlib.import_module(plugin)


def _run_job(job: tuple) -> dict:
    """One (puzzle, data seed, seed): the streams, then every entry; returns accuracy, seconds (of
    training and testing, as measured when trained) and whether it came from the run cache, per entry."""
    import torch

    from fusionkit.training.evaluate import classification_metrics
    from fusionkit.lab.experiments import puzzle_datasets
    from fusionkit.lab.run_cache import cached_run
    from fusionkit.methods import get_method

    puzzle, data_seed, seed, settings, entry_names, data_dir, device, threads, plugins, cache = job
    import_plugins(plugins)
    if threads:  # one per worker process: the processes are the parallelism
        torch.set_num_threads(threads)
    train_set, test_set, num_classes = puzzle_datasets(
        puzzle, data_dir, videos_per_class=settings.videos_per_class, frames=settings.frames, size=settings.size,
        segments=settings.segments, test_segments=settings.segments, new_length=settings.new_length,
        flow_backend=settings.flow_backend, data_seed=data_seed, test_groups=settings.test_groups)
    result = {"puzzle": puzzle, "data_seed": data_seed, "seed": seed, "accuracy": {}, "seconds": {}, "output": {},
              "cached": {}}

    def train(entry: BenchEntry, init_from=None):
        method = get_method(entry.method)
        epochs = settings.epochs if method.pretrain is None else round(settings.finetune_epochs * entry.epochs_scale)
        config = replace(settings.train_config(epochs, seed, device), **method.train_defaults)
        # finetune="all": the puzzles' from-scratch towers fine-tune every layer (the committed table did; see
        # fusionkit.methods.conv_fusion for why the paper's "above_fusion" is not used here)
        run = cached_run(entry.method, train_set, num_classes, eval_sets={"test": test_set},
                         eval_batch_size=settings.batch_size, config=config, init_from=init_from, cache=cache,
                         dropout=settings.dropout, **{"finetune": "all", **entry.options})
        scores, output = run.scores["test"], final_output(run.model)
        result["accuracy"][entry.name] = classification_metrics(scores.probs[output], scores.labels)["top1"]
        result["seconds"][entry.name] = run.seconds
        result["output"][entry.name] = output
        result["cached"][entry.name] = run.hit
        return run.model

    streams = train(BENCH_ENTRIES.lookup("late"))
    for name in entry_names:
        if name != "late":
            entry = get_entry(name)
            train(entry, init_from=streams if get_method(entry.method).pretrain == "late" else None)
    return result


def run_benchmark(entries: tuple[str, ...] = DEFAULT_ENTRIES, settings: BenchSettings = TEACHING,
                  data_dir: str | os.PathLike = "data", work_dir: str | os.PathLike = "build/bench",
                  workers: int = 2, device: str = "auto", resume: bool = False, progress: bool = True,
                  plugins: tuple[str, ...] = (), cache: bool | None = None) -> dict:
    """Train every entry on every puzzle, data seed and seed; return ``{"accuracy": {puzzle: {entry:
    run_summary}}, "seconds": {entry: total}, "outputs": {entry: output name}, "settings": ...,
    "mechanisms": ..., "cached_runs": how many trained entries came from the run cache}``.

    ``late`` always runs (the other methods start from its streams). ``workers`` processes share
    the cores with one torch thread each. Every finished job is saved in ``work_dir``; with ``resume``
    those with the same settings and entries are reused (after changing code, don't resume; the run
    cache, on unless ``cache=False`` or ``$FUSIONKIT_RUN_CACHE=off``, tells code changes apart by
    itself). ``plugins``: modules or ``.py`` files registering extra fusion blocks (see
    :func:`import_plugins`)."""
    from fusionkit.data.parallel import run_jobs
    from fusionkit.data.puzzles import get_puzzle, prepare_puzzle
    from fusionkit.lab.results import run_summary

    import_plugins(tuple(plugins))
    # unknown names fail before any training; a block's plain name becomes its row's, spatial(fusion=NAME)
    entries = tuple(dict.fromkeys(get_entry(name).name for name in ("late", *entries)))
    for puzzle in settings.puzzles:  # render once, in this process, before the workers read it
        for data_seed in settings.data_seeds:
            prepare_puzzle(puzzle, data_dir, backend=settings.flow_backend, videos_per_class=settings.videos_per_class,
                           frames=settings.frames, size=settings.size, seed=data_seed, workers=workers,
                           progress=progress, test_groups=settings.test_groups)
    jobs_dir = Path(work_dir) / "jobs" / settings.key(entries)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    todo, done = [], []
    runs = [(d, s) for d in settings.data_seeds for s in settings.seeds]
    for puzzle in settings.puzzles:
        for data_seed, seed in runs:
            path = jobs_dir / _job_file(puzzle, data_seed, seed)
            if resume and path.exists():
                done.append(json.loads(path.read_text()))
            else:
                todo.append((puzzle, data_seed, seed, settings, entries, str(data_dir), device,
                             1 if workers > 1 else None, tuple(plugins), cache))
    if todo:
        start = time.perf_counter()
        fresh = run_jobs(_save_job, [(job, str(jobs_dir)) for job in todo], workers=workers, desc="benchmark jobs",
                         progress=progress, unit="job")
        done += fresh
        wall = time.perf_counter() - start
    else:
        wall = 0.0
    by_run = {(r["puzzle"], r["data_seed"], r["seed"]): r for r in done}
    accuracy = {p: {e: run_summary([by_run[p, d, s]["accuracy"][e] for d, s in runs], runs) for e in entries}
                for p in settings.puzzles}
    return {"accuracy": accuracy,
            "seconds": {e: sum(r["seconds"][e] for r in done) for e in entries},
            "cached_runs": sum(sum(r["cached"].values()) for r in done),
            "wall_seconds": wall,
            "outputs": done[0]["output"] if done else {},
            "mechanisms": {e: get_entry(e).mechanism for e in entries},
            "settings": asdict(settings), "workers": workers,
            "chance": min(1 / len(get_puzzle(p).classes) for p in settings.puzzles)}


def _job_file(puzzle: str, data_seed: int, seed: int) -> str:
    return f"{puzzle}_data{data_seed}_seed{seed}.json"


def _save_job(job_and_dir: tuple) -> dict:
    job, jobs_dir = job_and_dir
    result = _run_job(job)
    atomic_write_text(Path(jobs_dir) / _job_file(result["puzzle"], result["data_seed"], result["seed"]),
                      json.dumps(result))
    return result


def markdown_table(accuracy: dict) -> str:
    """``accuracy[puzzle][entry] = seed_summary`` as a markdown table: entries as rows, puzzles as
    columns, cells ``mean ± std``, followed by the 95% interval ``[low, high]`` where the summary has
    one (:func:`~fusionkit.lab.results.run_summary` over two runs or more); the best mean of each
    column in bold."""
    puzzles = list(accuracy)
    entries = list(next(iter(accuracy.values())))
    best = {p: max(accuracy[p][e]["mean"] for e in entries) for p in puzzles}
    lines = ["| method | " + " | ".join(puzzles) + " |", "|---|" + "---|" * len(puzzles)]
    for e in entries:
        cells = []
        for p in puzzles:
            s = accuracy[p][e]
            text = f"{s['mean']:.2f} ± {s['std']:.2f}"
            if s.get("ci95"):
                text += f" [{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"
            cells.append(f"**{text}**" if abs(s["mean"] - best[p]) < 1e-9 else text)
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def results_layout(report: dict) -> tuple[dict, dict]:
    """``(accuracy, variants)`` of the results schema: a row that is a method with its own defaults
    under ``accuracy[puzzle][output]``, a row with options of its own under ``variants[row]``."""
    accuracy, variants = {}, {}
    for entry in report["mechanisms"]:
        method, output = get_entry(entry).method, report["outputs"][entry]
        target = accuracy if entry == method else variants.setdefault(entry, {})
        for puzzle, by_entry in report["accuracy"].items():
            target.setdefault(puzzle, {})[output] = by_entry[entry]
    return accuracy, variants


def write_benchmark(report: dict, results_dir: str | os.PathLike = "figures/results",
                    figures_dir: str | os.PathLike = "figures", name: str = "benchmark") -> dict[str, Path]:
    """Write the report as ``<results_dir>/<name>.json`` (results schema), ``<name>.md`` and the
    heatmap ``<figures_dir>/<name>_heatmap.png``; return the paths. The backend is left as it is
    (matplotlib picks a non-interactive one where there is no display): a notebook calling this
    keeps its inline figures, and only the heatmap's own figure is closed."""
    import matplotlib.pyplot as plt

    from fusionkit.lab.results import save_results
    from fusionkit.viz.plots import plot_benchmark_heatmap, save_figure

    accuracy, variants = results_layout(report)
    json_path = save_results(name, params=report["settings"], accuracy=accuracy, variants=variants,
                             extra={k: report[k] for k in ("seconds", "wall_seconds", "outputs", "mechanisms", "workers", "chance",
                                                           "cached_runs")},
                             results_dir=results_dir)
    md_path = Path(results_dir) / f"{name}.md"
    atomic_write_text(md_path, markdown_table(report["accuracy"]))
    by_entry = {e: {p: report["accuracy"][p][e] for p in report["accuracy"]} for e in report["mechanisms"]}
    settings = report["settings"]
    title = (f"test top-1, mean ± std over {len(settings['data_seeds'])} render(s) x {len(settings['seeds'])} "
             f"seed(s)")
    ax = plot_benchmark_heatmap(by_entry, title=title, chance=report["chance"])
    figure_path = save_figure(ax.figure, f"{name}_heatmap", figures_dir)
    plt.close(ax.figure)
    return {"json": json_path, "markdown": md_path, "heatmap": figure_path}
