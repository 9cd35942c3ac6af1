"""fusionkit: two-stream (RGB + optical flow) action recognition, from videos to fused predictions.

Typical use: ``fusionkit make-puzzles`` or your own videos in the UCF-101 / HMDB-51 layout,
``fusionkit extract-flow``, ``fusionkit train --method NAME [--option KEY=VALUE ...]``,
``fusionkit evaluate RUN``. ``fusionkit methods`` lists the methods and their options.
"""
from __future__ import annotations

import argparse
import ast
import sys


def _make_puzzles(args) -> int:
    from fusionkit.data.puzzles import PUZZLES, make_puzzles

    names = sorted(PUZZLES) if args.puzzle == "all" else [args.puzzle]
    for name in names:
        out = make_puzzles(name, f"{args.out}/{name}" if args.puzzle == "all" else args.out,
                           videos_per_class=args.videos_per_class, frames=args.frames, size=args.size,
                           seed=args.seed, workers=args.workers, progress=not args.quiet)
        print(f"wrote puzzle {name!r} to {out}")
    return 0


def _extract_flow(args) -> int:
    from fusionkit.data.flow import extract_flow

    report = extract_flow(args.root, args.out, backend=args.backend, workers=args.workers, progress=not args.quiet)
    print(report)
    return 1 if report.failed else 0


def _dataset_paths(args) -> tuple[str, str]:
    """(video root, flow cache) for --dataset: puzzles are rendered and extracted on demand."""
    if args.dataset.startswith("puzzles:"):
        from fusionkit.data.puzzles import prepare_puzzle

        root, cache = prepare_puzzle(args.dataset.split(":", 1)[1], args.root or "data", backend=args.flow_backend,
                                     workers=args.flow_workers, progress=not args.quiet)
        return str(root), str(cache)
    if not args.root or not args.flow_root:
        raise ValueError(f"--dataset {args.dataset} needs --root (the videos and split files) and --flow-root "
                         f"(the output of `fusionkit extract-flow --root <videos> --out <flow-root>`)")
    return args.root, args.flow_root


def _train(args) -> int:
    """Also under ``torchrun --nproc_per_node N -m fusionkit.cli train ...`` (one process per GPU;
    see :class:`fusionkit.training.trainer.Trainer`): the processes join their group first, so that rank 0
    alone prepares the data and reports, and leave it at the end."""
    from fusionkit.training import distributed
    from fusionkit.training.runtime import resolve_device

    distributed.init_distributed(resolve_device(args.device))  # nothing to do outside torchrun
    try:
        return _train_in_group(args, distributed.is_main_process())
    finally:
        distributed.cleanup()


def _train_in_group(args, main_process: bool) -> int:
    from fusionkit.data.dataset import build_dataset
    from fusionkit.training.distributed import main_process_first
    from fusionkit.methods import run_method
    from fusionkit.training.trainer import TrainConfig

    args.quiet = args.quiet or not main_process  # one set of progress bars, rank 0's
    options = _method_options(args.method, args.option or [])  # refused before any data is prepared
    with main_process_first():  # puzzles are rendered and their flow extracted once, not by every process
        root, cache = _dataset_paths(args)
    common = dict(split=args.split, new_length=args.new_length, input_size=args.input_size)
    train_set = build_dataset(args.dataset, root, cache, "train", num_segments=args.segments, **common)
    test_set = build_dataset(args.dataset, root, cache, "test", num_segments=args.test_segments, **common)
    from fusionkit.data.splits import load_split

    classes = load_split(args.dataset, root, args.split).classes
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                         weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, seed=args.seed,
                         device=args.device, num_workers=args.loader_workers, progress=not args.quiet,
                         iterations=args.iterations)
    if main_process:
        _write_dataset_info(args, root, cache, classes)
    model, history, metrics = run_method(args.method, train_set, test_set, len(classes), backbone=args.backbone,
                                         config=config, out_dir=args.out, resume=args.resume,
                                         pretrained=args.pretrained, **options)
    if main_process:
        _print_metrics({"metrics": metrics, "roles": model.output_roles()})
        print(f"run saved to {args.out}")
    return 0


def parse_option(text: str, annotation) -> tuple[str, object]:
    """``KEY=VALUE`` -> (key, value), the value read by the option's type: ``true``/``false`` for
    booleans, numbers, ``none``, Python literals for lists and dicts (``fusion_options={'scale': 1.0}``),
    else the text itself (block names, positions such as ``stage2.1``)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--option {text!r}: expected KEY=VALUE, e.g. --option fusion=bilinear --option position=stage2")
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if value.lower() in ("none", "null"):
        return key, None
    if kind.startswith("bool"):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"--option {key}: expected true or false, got {value!r}")
        return key, value.lower() in ("true", "1", "yes")
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value
    if kind.startswith("str") and not isinstance(parsed, (list, tuple, dict)):
        return key, value  # a name that happens to look like a number stays a name
    return key, parsed


def _method_options(method: str, texts: list[str]) -> dict:
    """The ``--option`` values for ``method``, each parsed by its type; every unknown one is refused
    at once with the valid ones."""
    from fusionkit.methods import get_method, list_methods, method_options

    if method not in list_methods():
        raise ValueError(f"unknown method {method!r}; the methods are {', '.join(list_methods())} "
                         f"(`fusionkit methods` describes them)")
    get_method(method)
    valid = method_options(method)
    parsed = dict(parse_option(t, valid[t.partition("=")[0]].annotation if t.partition("=")[0] in valid else "str")
                  for t in texts)
    unknown = sorted(set(parsed) - set(valid))
    if unknown:
        raise ValueError(f"method {method!r} has no option {', '.join(unknown)}; its options are "
                         f"{', '.join(sorted(valid))} (`fusionkit methods {method}` gives their types and defaults)")
    flagged = sorted(set(parsed) & set(_OPTION_FLAGS))
    if flagged:  # run_method gets these from the flags (new_length from the dataset built with it)
        raise ValueError(f"give {', '.join(f'--{_OPTION_FLAGS[k]}' for k in flagged)} instead of "
                         f"{', '.join(f'--option {k}=...' for k in flagged)}")
    return parsed


# options that `fusionkit train` sets from flags of its own
_OPTION_FLAGS = {"backbone": "backbone", "pretrained": "pretrained", "new_length": "new-length"}


def _print_metrics(report: dict) -> None:
    roles = {name: role for role, name in report.get("roles", {}).items()}
    for name, m in report["metrics"].items():
        role = f" ({roles[name]})" if name in roles else ""
        print(f"{name + role:>24s}: top-1 {m['top1']:.3f}  mean class {m['mean_class']:.3f}")


def _methods(args) -> int:
    from fusionkit.methods import get_method, list_methods, method_options

    names = args.names or list_methods()
    unknown = [n for n in names if n not in list_methods()]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}; the methods are {', '.join(list_methods())}")
    for name in names:
        m = get_method(name)
        print(f"{name}  [schedule {m.schedule}{', from ' + m.pretrain if m.pretrain else ''}]\n    {m.summary}")
        if args.names:  # one method asked for: every option
            print(f"    {m.description}")
            for option in method_options(name).values():
                print(f"      --option {option.describe()}  ({option.kind})")
    return 0


def _write_dataset_info(args, root, cache, classes) -> None:
    import json
    from pathlib import Path

    from fusionkit.data.atomic import atomic_write_text

    atomic_write_text(Path(args.out) / "dataset.json", json.dumps(
        {"dataset": args.dataset, "root": str(Path(root).resolve()), "flow_root": str(Path(cache).resolve()),
         "split": args.split, "classes": classes, "new_length": args.new_length, "input_size": args.input_size,
         "segments": args.segments}, indent=1))


def _evaluate(args) -> int:
    import json
    from pathlib import Path

    from fusionkit.data.atomic import atomic_write_text
    from fusionkit.data.dataset import build_dataset
    from fusionkit.methods import load_run
    from fusionkit.training.evaluate import evaluation_report

    run = Path(args.run_dir)
    model, info = load_run(run)
    test_set = build_dataset(info["dataset"], info["root"], info["flow_root"], "test", split=info["split"],
                             num_segments=args.segments, new_length=info["new_length"],
                             input_size=info["input_size"], ten_crop=args.ten_crop)
    result = evaluation_report(model, test_set, batch_size=args.batch_size, device=args.device,
                               ten_crop=args.ten_crop)
    name = f"eval_{args.segments}seg{'_10crop' if args.ten_crop else ''}.json"
    atomic_write_text(run / name, json.dumps(result, indent=1))
    _print_metrics(result)
    print(f"wrote {run / name}")
    return 0


def _run_notebooks(args) -> int:
    from fusionkit.lab.run_notebooks import run_notebooks

    done = run_notebooks(args.notebooks, args.out, smoke=args.smoke, data_dir=args.data, workers=args.workers)
    print(f"executed {len(done)} notebooks into {args.out}")
    return 0


def _bench(args) -> int:
    from dataclasses import replace

    from fusionkit.lab.bench import DEFAULT_ENTRIES, QUICK, TEACHING, markdown_table, run_benchmark, write_benchmark

    settings = QUICK if args.quick else TEACHING
    overrides = {k: v for k, v in (("puzzles", tuple(args.puzzles or ()) or None),
                                   ("seeds", tuple(range(args.seeds)) if args.seeds else None)) if v}
    settings = replace(settings, **overrides)
    entries = tuple(args.methods or DEFAULT_ENTRIES) + tuple(args.blocks or ())
    report = run_benchmark(entries, settings, data_dir=args.data, work_dir=args.work_dir, workers=args.workers,
                           device=args.device, resume=args.resume, progress=not args.quiet,
                           plugins=tuple(args.plugins or ()))
    paths = write_benchmark(report, results_dir=f"{args.figures}/results", figures_dir=args.figures, name=args.name)
    print(markdown_table(report["accuracy"]))
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fusionkit.data.flow import FLOW_BACKENDS
    from fusionkit.data.puzzles import PUZZLES

    parser = argparse.ArgumentParser(prog="fusionkit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-puzzles", help="render a two-stream puzzle as a UCF-101-style dataset")
    p.add_argument("--puzzle", required=True, choices=[*sorted(PUZZLES), "all"])
    p.add_argument("--out", required=True, help="output folder (with --puzzle all: one subfolder per puzzle)")
    p.add_argument("--videos-per-class", type=int, default=30)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_make_puzzles)

    p = sub.add_parser("extract-flow", help="decode videos, write RGB frames and quantised optical flow (resumable)")
    p.add_argument("--root", required=True, help="dataset root: <root>/<Class>/<video>.avi")
    p.add_argument("--out", required=True, help="cache folder for frames and flow")
    p.add_argument("--backend", default="dis", choices=sorted(FLOW_BACKENDS))
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_extract_flow)

    p = sub.add_parser("train", help="train a method on puzzles, UCF-101 or HMDB-51, then evaluate it")
    p.add_argument("--dataset", required=True, help="puzzles:<name> | ucf101 | hmdb51")
    p.add_argument("--root", help="videos with split files (puzzles: the data folder, default ./data)")
    p.add_argument("--flow-root", help="extract-flow output for --root (made on demand for puzzles)")
    p.add_argument("--flow-backend", default="dis", choices=sorted(FLOW_BACKENDS), help="puzzles only")
    p.add_argument("--split", type=int, default=1)
    # (method and backbone names are checked by the registries, which list the choices: importing
    # them here would load torch for every command)
    p.add_argument("--method", default="late",
                   help="late, spatial, conv_fusion, cmmp, ccs, cma, nonlocal, or a registered plugin (`fusionkit methods`)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a method option, repeatable: --option fusion=bilinear --option position=stage2 "
                        "(`fusionkit methods NAME` lists them with types and defaults)")
    p.add_argument("--backbone", default="tiny", help="a registered backbone: tiny, resnet18, resnet50, vgg16, r3d_18, r2plus1d_18, ...")
    p.add_argument("--pretrained", action="store_true", help="ImageNet weights (downloaded once, if online)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw"])
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "step", "constant"])
    p.add_argument("--iterations", type=int, default=1,
                   help="methods trained branch by branch (cma): iterations of --epochs epochs each")
    p.add_argument("--segments", type=int, default=3, help="TSN segments in training")
    p.add_argument("--test-segments", type=int, default=25)
    p.add_argument("--new-length", type=int, default=5, help="L: flow fields per snippet")
    p.add_argument("--input-size", type=int, default=None, help="crop size (default: puzzle size, or 224)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--flow-workers", type=int, default=2, help="puzzles: processes extracting flow")
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")
    p.add_argument("--out", required=True, help="run folder: checkpoint, history, evaluation")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_train)

    p = sub.add_parser("methods", help="list the methods, or one method's options with their types and defaults")
    p.add_argument("names", nargs="*", help="methods to describe in full (default: one line for each)")
    p.set_defaults(func=_methods)

    p = sub.add_parser("evaluate", help="evaluate a trained run: per-stream and fused accuracy, weight sweep")
    p.add_argument("run_dir")
    p.add_argument("--segments", type=int, default=25)
    p.add_argument("--ten-crop", action="store_true", help="4 corners + centre, and their flips")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_evaluate)

    from fusionkit.lab.run_notebooks import PROJECT_ROOT

    p = sub.add_parser("run-notebooks", help="build the puzzles and their flow, then execute every notebook with papermill")
    p.add_argument("--notebooks", default=str(PROJECT_ROOT / "notebooks"))
    p.add_argument("--out", default=str(PROJECT_ROOT / "build"), help="folder for the executed copies")
    p.add_argument("--data", default=str(PROJECT_ROOT / "data"), help="folder for puzzles and flow")
    p.add_argument("--smoke", action="store_true", help="SMOKE=True: tiny sizes, seconds per notebook")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_run_notebooks)

    p = sub.add_parser("bench", help="train every fusion method on every puzzle over seeds: table + heatmap")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one seed, three puzzles (seconds per job)")
    p.add_argument("--methods", nargs="+", help="benchmark entries (default: late spatial(fusion=sum) spatial(fusion=conv) conv_fusion cmmp "
                        "ccs(embedding_dim=64) cma(position_frequencies=3)); a registered block's name is its spatial(fusion=NAME) row")
    p.add_argument("--blocks", nargs="+", help="registered fusion blocks to add as spatial-fusion rows")
    p.add_argument("--plugins", nargs="+", help="modules or .py files to import first (they register your blocks)")
    p.add_argument("--puzzles", nargs="+", choices=sorted(PUZZLES))
    p.add_argument("--seeds", type=int, help="number of seeds (0, 1, ...); default 3 (--quick: 1)")
    p.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", default="data", help="folder for puzzles and flow")
    p.add_argument("--work-dir", default="build/bench", help="each finished job is saved here")
    p.add_argument("--resume", action="store_true", help="reuse finished jobs in --work-dir (same settings)")
    p.add_argument("--figures", default="figures", help="writes <figures>/results/<name>.json|.md and the heatmap")
    p.add_argument("--name", default="benchmark")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_bench)

    from fusionkit.lab.assignments.commands import add_assignment_parser

    add_assignment_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, KeyError, RuntimeError) as e:
        print(f"fusionkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
