"""How many epochs the benchmark's streams need for `appearance` at the notebooks' 64x64.

Issue 17 asks for the benchmark at 64x64 with `appearance` (an RGB-only puzzle) at 0.9 or more for every
method that keeps an RGB stream. One 64x64 job at the benchmark's schedule (16 stream epochs at lr 3e-3,
``benchmarks/results/bench_appearance_64px_probe.json``) gave late fusion 0.55, while notebook 02's RGB
stream reaches 0.99 in 25 epochs at lr 2e-3. This trains the benchmark's ``late`` entry (the streams
every other entry starts from, :func:`fusionkit.lab.bench.run_benchmark` with the benchmark's data, split
and weight decay; ``--entries`` adds the others, fine-tuned for the benchmark's 16 epochs) on `appearance`
at each ``epochs x lr`` asked for (``epochs``: the streams' and those of methods trained from scratch,
``--finetune-epochs``: the others'), over data seeds x training seeds, and
records each entry's accuracy and seconds: what a 64x64 benchmark would have to change, and what it would
cost. Every job goes through the run cache, so a rerun reads them back: a row's ``seconds`` are then those
its runs took when they were trained (``cached_runs`` counts them), while ``machine`` and ``conditions``
describe this invocation.

    python benchmarks/bench_stream_epochs.py [--epochs 16 25 32] [--lr 3e-3 2e-3] [--seeds 0 1]
                                             [--data-seeds 0 1] [--size 64] [--workers 2] [--entries ...]
                                             [--finetune-epochs N] [--quick]

Results go to ``benchmarks/results/bench_stream_epochs.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

from fusionkit.data.atomic import atomic_write_text
from fusionkit.lab.bench import QUICK, TEACHING, run_benchmark
from fusionkit.lab.machine import finish_conditions, machine_description, measurement_conditions

RESULTS = Path(__file__).parent / "results" / "bench_stream_epochs.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, nargs="+", default=[16, 25, 32])
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-3, 2e-3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--puzzle", default="appearance")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--entries", nargs="+", default=["late"], help="bench entries (late always runs)")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="epochs of the entries fine-tuned from the streams (default: the benchmark's)")
    parser.add_argument("--quick", action="store_true", help="the benchmark's --quick data (4 videos per class, "
                                                                 "12 frames): seconds, for a test")
    parser.add_argument("--data", default="data")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    base = QUICK if args.quick else TEACHING
    finetune_epochs = base.finetune_epochs if args.finetune_epochs is None else args.finetune_epochs

    conditions = measurement_conditions("bench_stream_epochs", processes=args.workers,
                                        threads_per_process=1 if args.workers > 1 else torch.get_num_threads())
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:  # jobs are not resumed: the run cache keeps the runs
        for lr in args.lr:
            for epochs in args.epochs:
                settings = replace(base, puzzles=(args.puzzle,), size=args.size, epochs=epochs, lr=lr,
                                   finetune_epochs=finetune_epochs,
                                   seeds=tuple(args.seeds), data_seeds=tuple(args.data_seeds))
                result = run_benchmark(tuple(args.entries), settings, data_dir=args.data, work_dir=work_dir,
                                       workers=args.workers, progress=False)
                accuracy = result["accuracy"][args.puzzle]
                runs = len(accuracy["late"]["seeds"])
                rows.append({"epochs": epochs, "finetune_epochs": finetune_epochs, "lr": lr, "accuracy": accuracy,
                             "seconds": result["seconds"], "wall_seconds": result["wall_seconds"], "runs": runs,
                             "cached_runs": result["cached_runs"]})
                for entry, summary in accuracy.items():
                    print(f"{args.puzzle} {args.size}x{args.size}, streams {epochs} epochs, lr {lr:g}: {entry} "
                          f"{summary['mean']:.2f} ± {summary['std']:.2f} over {runs} runs "
                          f"({', '.join(f'{a:.2f}' for a in summary['seeds'])}), "
                          f"{result['seconds'][entry] / runs:.0f} s a run", flush=True)
    report = {"puzzle": args.puzzle, "size": args.size, "seeds": args.seeds, "data_seeds": args.data_seeds,
              # the benchmark settings every row shares; what a row sweeps (epochs, lr) is in the row
              "settings": {k: v for k, v in asdict(settings).items()
                           if k not in ("puzzles", "seeds", "data_seeds", "epochs", "lr")},
              "rows": rows, "machine": machine_description(torch.device("cpu")),
              "conditions": finish_conditions(conditions)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(report, indent=1))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
