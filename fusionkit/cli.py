"""fusionkit: two-stream (RGB + optical flow) action recognition, from videos to fused predictions.

Typical use: ``fusionkit make-puzzles`` or your own videos in the UCF-101 / HMDB-51 layout,
``fusionkit extract-flow``, ``fusionkit train --method NAME [--option KEY=VALUE ...]``,
``fusionkit evaluate RUN``. ``fusionkit methods`` lists the methods and their options.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import logging
import sys
import warnings


# The registered methods, listed here so that `fusionkit train --help` needs no torch import
# (tests/test_cli_hardening.py checks this equals fusionkit.methods.list_methods()).
METHOD_HELP = {
    "ccs": "cooperative cross-stream network, connection block + ranking losses (Zhang et al. 2019)",
    "cma": "cross-modality attention, branches trained in turn (Chi et al. 2019)",
    "cmmp": "cross-modal message passing, adversarial objective (Wang et al. 2018)",
    "conv_fusion": "3D conv fusion and 3D pooling at the last stage (Feichtenhofer et al. 2016)",
    "late": "the streams trained separately, softmax scores averaged (Simonyan & Zisserman 2014)",
    "nonlocal": "non-local blocks in each tower (CMA's same-modality case)",
    "spatial": "the motion stream fused into the appearance tower at one position (Feichtenhofer et al. 2016)",
}
# Methods that start from separately trained streams (Method.pretrain): their second phase trains at --finetune-lr.
FROM_TRAINED_STREAMS = ("cma", "cmmp", "conv_fusion", "spatial")
# Files of a run folder (besides eval*.json) that `train` refuses to overwrite without --resume/--overwrite.
RUN_FILES = ("run.json", "dataset.json", "checkpoint.pt", "history.json", "pretrain_history.json")
# The CLI's training defaults, for real footage; the API's TrainConfig keeps its own (sgd, 0.01).
DEFAULT_OPTIMIZER, DEFAULT_LR, FINETUNE_LR_FACTOR = "adamw", 1e-3, 0.1


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

    with warnings.catch_warnings():  # the report below lists the truncated videos
        warnings.filterwarnings("ignore", message=r"\d+ video\(s\) decode to fewer frames", category=RuntimeWarning)
        report = extract_flow(args.root, args.out, backend=args.backend, workers=args.workers,
                              progress=not args.quiet, verify=args.verify)
    print(report)
    if report.failed:
        print(f"fusionkit extract-flow: {len(report.failed)} video(s) FAILED (why, above): fix or replace each, then "
              f"rerun this command (it redoes only what is missing or broken); `fusionkit train --skip-bad` trains "
              f"on the others", file=sys.stderr)
    return 1 if report.failed else 0


def _check_train_inputs(args) -> None:
    """Refuse what cannot work before anything is prepared or written."""
    from pathlib import Path

    if args.resume and args.overwrite:
        raise ValueError("--resume continues the run in --out and --overwrite deletes it: give one of them")
    if args.split_dir is not None and not Path(args.split_dir).is_dir():
        raise FileNotFoundError(f"--split-dir {args.split_dir} is not a folder (the folder holding the split files)")
    if args.dataset.startswith("puzzles:"):
        from fusionkit.data.puzzles import PUZZLES

        name = args.dataset.split(":", 1)[1]
        if name not in PUZZLES:
            raise ValueError(f"unknown puzzle {name!r}; the puzzles are {', '.join(sorted(PUZZLES))}")
        return
    if args.dataset not in ("ucf101", "hmdb51"):
        raise ValueError(f"unknown dataset {args.dataset!r}; use ucf101, hmdb51 or puzzles:<name>")
    if not args.root or not args.flow_root:
        root = args.root or "<videos>"
        raise ValueError(f"--dataset {args.dataset} needs --root (the videos and split files) and --flow-root "
                         f"(the output of `fusionkit extract-flow --root {root} --out <flow-root>`)")
    if not Path(args.root).is_dir():
        raise FileNotFoundError(f"--root {args.root} is not a folder: give the folder holding the class folders of "
                                f"videos (<root>/<Class>/<video>.avi) and the split files")
    if not Path(args.flow_root).is_dir():
        raise FileNotFoundError(f"--flow-root {args.flow_root} does not exist: extract the frames and flow first, "
                                f"`fusionkit extract-flow --root {args.root} --out {args.flow_root}`")


def _existing_run(out) -> list[str]:
    """The run files already in ``out`` (run.json, checkpoint, history, evaluations)."""
    from pathlib import Path

    out = Path(out)
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir()
                  if p.is_file() and (p.name in RUN_FILES or (p.name.startswith("eval") and p.suffix == ".json")))


def _refuse_existing_run(args) -> None:
    import json
    from pathlib import Path

    files = _existing_run(args.out)
    if not files or args.resume or args.overwrite:
        return
    state = "a finished run" if "eval.json" in files else "a started run (not evaluated: interrupted, or still running)"
    epochs = ""
    with contextlib.suppress(OSError, ValueError):
        epochs = f", {len(json.loads((Path(args.out) / 'history.json').read_text()))} epochs trained"
    raise FileExistsError(f"--out {args.out} already holds {state} ({', '.join(files)}{epochs}); nothing was changed. "
                          f"Pass --resume to continue it from its checkpoint (a larger --epochs trains on), or "
                          f"--overwrite to delete these files and train anew, or choose another --out")


def _clear_run(out) -> list[str]:
    from pathlib import Path

    files = _existing_run(out)
    for name in files:
        (Path(out) / name).unlink()
    return files


def _dataset_paths(args) -> tuple[str, str]:
    """(video root, flow cache) for --dataset: puzzles are rendered and extracted on demand."""
    if args.dataset.startswith("puzzles:"):
        from fusionkit.data.puzzles import prepare_puzzle

        root, cache = prepare_puzzle(args.dataset.split(":", 1)[1], args.root or "data", backend=args.flow_backend,
                                     workers=args.flow_workers, progress=not args.quiet)
        return str(root), str(cache)
    return args.root, args.flow_root


def _datasets(args, root: str, cache: str):
    """Check every video of the split first (all problems at once), then build the train and test
    sets from the videos that passed: (train set, test set, class names, the check's report)."""
    from fusionkit.data.dataset import DatasetError, build_dataset, check_dataset
    from fusionkit.data.splits import load_split

    split = load_split(args.dataset, root, args.split, args.split_dir)
    report = check_dataset(args.dataset, root, cache, args.split, new_length=args.new_length, check="sizes",
                           annotations=args.split_dir, raise_problems=False)
    if report.problems:
        usable = {r.path for r in report.usable}
        empty = [name for name in ("train", "test") if not any(r.path in usable for r in getattr(split, name))]
        if not args.skip_bad:
            raise DatasetError(f"{report}\nRepair them as above and rerun, or pass --skip-bad to train and test on the "
                               f"other {len(usable)} videos, leaving these out.", report.problems)
        if empty:
            raise DatasetError(f"{report}\n--skip-bad leaves no video to {' or '.join(empty)} on: repair them as above.",
                               report.problems)
    common = dict(split=args.split, new_length=args.new_length, input_size=args.input_size,
                  annotations=args.split_dir, checked=report, skip_bad=args.skip_bad, warn=False)
    train_set = build_dataset(args.dataset, root, cache, "train", num_segments=args.segments, **common)
    test_set = build_dataset(args.dataset, root, cache, "test", num_segments=args.test_segments, **common)
    return train_set, test_set, split.classes, report


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def dataset_summary(args, classes, train_set, test_set, report) -> str:
    """What `fusionkit train` prints before training: videos, classes, frames, what was left out
    (--skip-bad) and what is truncated."""
    names = ", ".join(classes) if len(classes) <= 10 else f"{', '.join(classes[:5])}, ... {classes[-1]}"
    lines = [f"dataset {args.dataset} (split {args.split}): {len(classes)} classes ({names}); "
             f"{len(train_set)} videos for training, {len(test_set)} for testing"]
    frames = [m["frames"] for m in train_set.meta + test_set.meta]
    if frames:
        spread = f"{min(frames)}" if min(frames) == max(frames) else \
            f"{min(frames)}-{max(frames)} (mean {sum(frames) / len(frames):.0f})"
        lines.append(f"  frames per video: {spread}; snippets of 1 RGB frame and {args.new_length} flow fields, "
                     f"{args.segments} per video in training, {args.test_segments} in testing")
    checked = str(report)
    if report.problems:
        checked = f"left out (--skip-bad): {checked}"
    lines.append(_indent(checked))
    return "\n".join(lines)


def _train(args) -> int:
    """Also under ``torchrun --nproc_per_node N -m fusionkit.cli train ...`` (one process per GPU;
    see :class:`fusionkit.training.trainer.Trainer`): the processes join their group first, so that rank 0
    alone prepares the data and reports, and leave it at the end."""
    options = _method_options(args.method, args.option or [])  # refused before any data is prepared
    _check_train_inputs(args)
    _refuse_existing_run(args)
    from fusionkit.training import distributed
    from fusionkit.training.runtime import resolve_device

    distributed.init_distributed(resolve_device(args.device))  # nothing to do outside torchrun
    try:
        return _train_in_group(args, distributed.is_main_process(), options)
    finally:
        distributed.cleanup()


def _train_in_group(args, main_process: bool, options: dict) -> int:
    from dataclasses import replace

    from fusionkit.methods import get_method, run_method
    from fusionkit.training.distributed import main_process_first
    from fusionkit.training.trainer import TrainConfig

    args.quiet = args.quiet or not main_process  # one set of progress bars, rank 0's
    recipe = _recipe_flags(args) if getattr(args, "recipe", None) else None  # --recipe: its data settings
    with main_process_first():  # puzzles are rendered and their flow extracted once, not by every process
        root, cache = _dataset_paths(args)
    train_set, test_set, classes, report = _datasets(args, root, cache)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, optimizer=args.optimizer, lr=args.lr,
                         weight_decay=args.weight_decay, lr_schedule=args.lr_schedule, seed=args.seed,
                         device=args.device, num_workers=args.loader_workers, progress=not args.quiet,
                         iterations=args.iterations)
    method = get_method(args.method)
    pretrain_config = None
    if method.pretrain is not None:  # phase 1 trains the streams at --lr, phase 2 the method at --finetune-lr
        pretrain_config = config
        finetune_lr = args.finetune_lr if args.finetune_lr is not None else args.lr * FINETUNE_LR_FACTOR
        config = replace(config, lr=finetune_lr)
    if recipe is not None:  # --recipe: its configs, the training flags given over them
        config, pretrain_config = _recipe_configs(args, *recipe, len(train_set), method.pretrain is not None)
    if main_process:
        print(dataset_summary(args, classes, train_set, test_set, report))
        if args.overwrite and _existing_run(args.out):
            print(f"--overwrite: deleted {', '.join(_clear_run(args.out))} from {args.out}")
        _write_dataset_info(args, root, cache, classes, train_set, test_set, report)
        print(_training_plan(args, method, config, pretrain_config))
    model, history, metrics = run_method(args.method, train_set, test_set, len(classes), backbone=args.backbone,
                                         config=config, pretrain_config=pretrain_config, out_dir=args.out,
                                         resume=args.resume, pretrained=args.pretrained,
                                         recipe=getattr(args, "recipe", None), **options)
    if main_process:
        import json
        from pathlib import Path

        rising = [h["epoch"] for h in history if h.get("rising_loss")]
        if rising:
            print(f"fusionkit train: warning: the training loss rose epoch after epoch (flagged rising_loss at "
                  f"epoch(s) {', '.join(map(str, rising))} in history.json): the run diverged; train again with a "
                  f"lower --lr{' / --finetune-lr' if method.pretrain else ''}", file=sys.stderr)
        checkpoint = Path(args.out) / "checkpoint.pt"
        stale = [p.name for p in sorted(Path(args.out).glob("eval_*.json"))
                 if checkpoint.is_file() and p.stat().st_mtime < checkpoint.stat().st_mtime]
        if args.resume and stale:
            print(f"fusionkit train: note: {', '.join(stale)} evaluated the run before it was resumed: run "
                  f"`fusionkit evaluate {args.out}` with their settings again", file=sys.stderr)
        eval_path = Path(args.out) / "eval.json"
        report = json.loads(eval_path.read_text()) if eval_path.is_file() else {"metrics": metrics}
        print(f"test set, {args.test_segments} snippets per video:")
        _print_metrics({**report, "roles": model.output_roles()}, model)
        print(f"run saved to {args.out} (run.json, checkpoint.pt, history.json"
              f"{', pretrain_history.json' if method.pretrain else ''}, eval.json; "
              f"`fusionkit evaluate {args.out}` tests it again)")
    return 0


def _training_plan(args, method, config, pretrain_config) -> str:
    def epochs(c) -> str:
        text = f"{c.epochs} epoch{'s' if c.epochs != 1 else ''}"
        return text + (f" x {c.iterations} iterations" if c.schedule == "alternate" else "")

    opt = f"{config.optimizer}, {config.lr_schedule} LR schedule"
    if pretrain_config is None:
        return f"training {args.method} ({method.schedule} schedule), {epochs(config)} at LR {config.lr:g} ({opt})"
    return (f"training {args.method} in two phases ({opt}): 1. the streams ({method.pretrain}), {epochs(pretrain_config)} "
            f"at LR {pretrain_config.lr:g}; 2. {args.method} from them ({method.schedule} schedule), {epochs(config)} "
            f"at LR {config.lr:g} (--finetune-lr)")


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


def _print_metrics(report: dict, model=None) -> None:
    """Accuracy per output, what each output is (its role), and the best weight of the fusion sweep."""
    roles = report.get("roles", {})
    role_of = {name: role for role, name in roles.items()}
    for name, m in report["metrics"].items():
        role = f" ({role_of[name]})" if name in role_of else ""
        print(f"{name + role:>24s}: top-1 {m['top1']:.3f}  mean class {m['mean_class']:.3f}")
    explained = _explain_outputs(roles, getattr(model, "rgb_weight", None))
    if explained:
        print("outputs:\n" + _indent(explained))
    sweep = report.get("fusion_weight_sweep")
    if sweep:
        best = max(range(len(sweep["top1"])), key=lambda i: (sweep["top1"][i], -abs(sweep["rgb_weight"][i] - 0.5)))
        print(f"fusion-weight sweep ({roles.get('fused', 'fused')} = w x {roles.get('rgb')} + (1 - w) x "
              f"{roles.get('flow')}, softmax scores): the best w is {sweep['rgb_weight'][best]:g}, top-1 "
              f"{sweep['top1'][best]:.3f} (w = 0: {sweep['top1'][0]:.3f}, w = 1: {sweep['top1'][-1]:.3f}; every w in "
              f"the JSON)")


def _explain_outputs(roles: dict, rgb_weight: float | None = None) -> str:
    """One line per output: what it predicts from (``roles``: role -> output name)."""
    separate = roles.get("rgb") == "rgb"
    lines = []
    if "rgb" in roles:
        lines.append(f"{roles['rgb']}: the appearance (RGB) tower's prediction" +
                     (", the stream alone" if separate else ", after the method's fusion (or attention) "
                                                                 "blocks in it"))
    if "flow" in roles:
        lines.append(f"{roles['flow']}: the motion (optical-flow) tower's prediction" +
                     (", the stream alone" if separate else ""))
    if "fused" in roles and {"rgb", "flow"} <= set(roles):
        weight = f"{rgb_weight:g}" if rgb_weight is not None else "w"
        lines.append(f"{roles['fused']}: the fused prediction, the method's answer: the softmax scores of "
                     f"{roles['rgb']} (weight {weight}) and {roles['flow']} averaged")
    elif "fused" in roles:
        lines.append(f"{roles['fused']}: the fused prediction, the only one: the motion tower is cut at the fusion "
                     f"point and its features fused into the appearance tower")
    return "\n".join(lines)


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


def _write_dataset_info(args, root, cache, classes, train_set, test_set, report) -> None:
    import json
    from pathlib import Path

    from fusionkit.data.atomic import atomic_write_text

    atomic_write_text(Path(args.out) / "dataset.json", json.dumps(
        {"dataset": args.dataset, "root": str(Path(root).resolve()), "flow_root": str(Path(cache).resolve()),
         "split": args.split, "split_dir": str(Path(args.split_dir).resolve()) if args.split_dir else None,
         "classes": classes, "new_length": args.new_length, "input_size": args.input_size, "segments": args.segments,
         "videos": {"train": len(train_set), "test": len(test_set)}, "skip_bad": args.skip_bad,
         "left_out": report.left_out, "truncated": report.truncated}, indent=1))


def _evaluate(args) -> int:
    import json
    from pathlib import Path

    from fusionkit.data.atomic import atomic_write_text
    from fusionkit.data.dataset import build_dataset
    from fusionkit.methods import load_run
    from fusionkit.training.evaluate import evaluation_report

    run = Path(args.run_dir)
    model, info = load_run(run)
    if not info:
        raise FileNotFoundError(f"{run} has no dataset.json: `fusionkit evaluate` evaluates runs of `fusionkit train`")
    test_set = build_dataset(info["dataset"], info["root"], info["flow_root"], "test", split=info["split"],
                             num_segments=args.segments, new_length=info["new_length"],
                             input_size=info["input_size"], ten_crop=args.ten_crop, annotations=info.get("split_dir"),
                             skip_bad=info.get("skip_bad", False), warn=False)
    if test_set.left_out:
        print(f"left out {len(test_set.left_out)} test videos that cannot be used (the run was trained with --skip-bad):"
              f"\n{_indent(str(test_set.report))}")
    result = evaluation_report(model, test_set, batch_size=args.batch_size, device=args.device,
                               ten_crop=args.ten_crop)
    name = f"eval_{args.segments}seg{'_10crop' if args.ten_crop else ''}.json"
    atomic_write_text(run / name, json.dumps(result, indent=1))
    print(f"{len(test_set)} test videos, {args.segments} snippets per video{', ten crops each' if args.ten_crop else ''}:")
    _print_metrics(result, model)
    print(f"wrote {run / name} (also top-5, confusion matrices and the whole fusion-weight sweep)")
    return 0


def _book(args) -> int:
    from fusionkit.lab.book import build_book, execute_smoke

    if args.smoke:
        print(f"executing the series at SMOKE=True into {args.out}/smoke (a test book: its numbers mean nothing)")
    executed, figures = execute_smoke(f"{args.out}/smoke") if args.smoke else (args.executed, args.figures)
    index, book = build_book(args.out, executed, figures)
    for warning in book.warnings:
        print(f"fusionkit book: warning: {warning}", file=sys.stderr)
    for name, cells in book.removed_solutions.items():
        print(f"{name}: {cells} solution cell{'s' * (cells > 1)} left out")
    for page, paths in book.unlinked.items():
        print(f"{page}: links to {', '.join(sorted(set(paths)))} shown as paths (files of the repository, not the book)")
    print(f"wrote the book to {index.parent}; open {index}")
    return 0


def _run_notebooks(args) -> int:
    from fusionkit.lab.run_notebooks import run_notebooks

    done = run_notebooks(args.notebooks, args.out, smoke=args.smoke, data_dir=args.data, workers=args.workers,
                         threads=args.threads, keep_going=args.keep_going, only=args.only)
    print(f"executed {len(done)} notebooks into {args.out}")
    return 0


def _bench(args) -> int:
    from dataclasses import replace

    from fusionkit.lab.bench import DEFAULT_ENTRIES, QUICK, TEACHING, markdown_table, run_benchmark, write_benchmark

    settings = QUICK if args.quick else TEACHING
    overrides = {k: tuple(v) for k, v in (("puzzles", args.puzzles), ("seeds", args.seeds),
                                          ("data_seeds", args.data_seeds)) if v}
    overrides.update({k: getattr(args, k) for k in ("test_groups", "size") if getattr(args, k) is not None})
    settings = replace(settings, **overrides)
    entries = tuple(args.methods or DEFAULT_ENTRIES) + tuple(args.blocks or ())
    report = run_benchmark(entries, settings, data_dir=args.data, work_dir=args.work_dir, workers=args.workers,
                           device=args.device, resume=args.resume, progress=not args.quiet,
                           plugins=tuple(args.plugins or ()), cache=False if args.no_cache else None)
    paths = write_benchmark(report, results_dir=f"{args.figures}/results", figures_dir=args.figures, name=args.name)
    print(markdown_table(report["accuracy"]))
    print("\n".join(f"wrote {p}" for p in paths.values()))
    return 0


# ---- `fusionkit reproduce` and `fusionkit train --recipe` (the papers' tables and recipes) ----------
RECIPE_TRAIN_FLAGS = ("epochs", "batch_size", "optimizer", "lr", "weight_decay", "lr_schedule", "iterations")
RECIPE_DATA_FLAGS = ("segments", "test_segments", "new_length", "input_size")


def _train_flag_defaults() -> dict:
    """The train command's flag defaults, to tell the flags given on the command line from the rest."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a.default for a in sub.choices["train"]._actions}


def _recipe_flags(args):
    """``train --recipe``: the recipe's data settings where the dataset flags were left at their
    defaults. Returns (the recipe, the flags given on the command line)."""
    from fusionkit.methods.training_recipes import get_recipe

    recipe = get_recipe(args.method, args.recipe)
    given = {k for k, d in _train_flag_defaults().items() if hasattr(args, k) and getattr(args, k) != d}
    for flag in RECIPE_DATA_FLAGS:
        if flag in recipe.data and flag not in given:
            setattr(args, flag, recipe.data[flag])
    return recipe, given


def _recipe_configs(args, recipe, given: set, train_videos: int, has_streams: bool):
    """The recipe's (config, streams config), with the training flags given on the command line over
    them (--lr: the streams' LR and --finetune-lr the method's, for a method started from streams)."""
    from dataclasses import replace

    run = dict(seed=args.seed, device=args.device, num_workers=args.loader_workers, progress=not args.quiet)
    flags = {flag: getattr(args, flag) for flag in RECIPE_TRAIN_FLAGS if flag in given}
    config, streams = recipe.config(train_videos), recipe.pretrain_config(train_videos)
    if has_streams:
        if streams is not None:
            streams = replace(streams, **flags, **run)
        flags.pop("lr", None)
        if getattr(args, "finetune_lr", None) is not None:
            flags["lr"] = args.finetune_lr
    return replace(config, **flags, **run), streams


def _reproduce(args) -> int:
    from fusionkit.lab.reproduce import format_cell, reproduce
    from fusionkit.methods.tables import TABLES, paper_id

    if args.table is None:  # list the paper's tables
        paper = paper_id(args.paper)
        for key in sorted(k for k in TABLES if k.startswith(paper + "-")):
            t = TABLES[key]
            print(f"table {t.number}: {t.title} ({len(t.buildable)} of {len(t.rows)} rows buildable)")
        print(f"`fusionkit reproduce {paper} --table N --dataset puzzles:NAME` runs one")
        return 0
    out = args.out or ("build/reproductions" if args.quick else "reproductions")
    report = reproduce(args.paper, args.table, args.dataset, recipe=args.recipe, seeds=args.seeds, quick=args.quick,
                       epochs=args.epochs, backbone=args.backbone, data_dir=args.data, out_dir=out, root=args.root,
                       flow_root=args.flow_root, split=args.split, device=args.device, note=args.note or "",
                       progress=not args.quiet)
    for row in report["rows"]:
        cells = "  ".join(f"{k}: ours {format_cell(v)} / paper {row['paper'].get(k, '-')}" for k, v in row["ours"].items())
        print(f"{row['name']:34s} {cells if row['status'] == 'ran' else row['status'] + ': ' + row['reason']}")
    for claim in report["claims"]:
        verdict = {True: "follows", False: "does NOT follow", None: "not checked"}[claim["holds"]]
        print(f"claim: {claim['text']}: ours {verdict}")
    print(f"{report['seconds'] / 60:.1f} min; wrote " + " and ".join(report["files"]))
    return 0


def _add_reproduce_parser(command) -> None:
    p = command("reproduce", "train every buildable row of a paper's ablation table, ours beside the paper's numbers",
                description="Train every row of a paper's table that fusionkit can build (each with its method's "
                            "recipe, the fine-tuned rows from one set of separately trained streams per seed) and write "
                            "<out>/<paper>-table<N>.json and .md: our number (mean +- std over the seeds) beside the "
                            "paper's, the paper's claimed orderings and whether ours follow them, the rows that cannot "
                            "be built and why, and the wall time.")
    p.add_argument("paper", help="feichtenhofer2016 (conv_fusion), wang2018 (cmmp), zhang2019 (ccs) or chi2019 (cma)")
    p.add_argument("--table", type=int, help="the table's number (without it: list the paper's tables)")
    p.add_argument("--dataset", default="puzzles:registration", help="puzzles:<name>, ucf101 or hmdb51 (with --root "
                                                                     "and --flow-root)")
    p.add_argument("--recipe", default="teaching", choices=["teaching", "paper"],
                   help="the methods' recipes: teaching (the notebooks' CPU settings) or paper")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one epoch a phase: seconds per row (a smoke test; "
                                                        "writes to build/reproductions unless --out)")
    p.add_argument("--epochs", type=int, help="every phase's epochs instead of the recipe's (to fit a time budget; "
                                              "recorded in the files)")
    p.add_argument("--backbone", default="tiny", help="the towers' backbone (rows that name one use theirs)")
    p.add_argument("--data", default="data", help="puzzles: the folder for the rendered videos and their flow")
    p.add_argument("--root", help="ucf101 / hmdb51: the videos and split files")
    p.add_argument("--flow-root", help="ucf101 / hmdb51: `fusionkit extract-flow`'s output for --root")
    p.add_argument("--split", type=int, default=1, choices=[1, 2, 3], help="ucf101 / hmdb51: the official split")
    p.add_argument("--out", help="folder for the files (default: reproductions, --quick: build/reproductions)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else the CPU), cpu, cuda, ...")
    p.add_argument("--note", help="a line for the files (e.g. why fewer seeds or epochs than the recipe's)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_reproduce)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and epilogs as written; every option's default after its help (but not None / False)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


TRAIN_EPILOG = """\
your own videos (UCF-101 / HMDB-51 layout; README "Your own videos"):
  ucf101: <root>/<Class>/<video>.avi, split files classInd.txt, trainlist0N.txt, testlist0N.txt in
          <root>/ucfTrainTestlist/ (as the official UCF101TrainTestSplits zip unpacks) or in <root>
  hmdb51: <root>/<class>/<video>.avi, split files <class>_test_splitN.txt (1 train, 2 test, 0 unused) in
          <root>/testTrainMulti_7030_splits/ (as the official test_train_splits.rar unpacks) or in <root>
  split files anywhere else: --split-dir DIR
  first `fusionkit extract-flow --root <root> --out <cache>`, then `fusionkit train --dataset ucf101 --root <root>
  --flow-root <cache> ...`. Every video is checked before training; all problems are reported at once, each kind
  with the command that repairs it (or --skip-bad trains on the rest).

methods (`fusionkit methods NAME` lists one's options, given as --option KEY=VALUE):
""" + "\n".join(f"  {name:12s} {text}" for name, text in METHOD_HELP.items())


def build_parser() -> argparse.ArgumentParser:
    from fusionkit.data.flow import FLOW_BACKENDS
    from fusionkit.data.puzzles import PUZZLES

    parser = argparse.ArgumentParser(prog="fusionkit", description=__doc__, formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=kwargs.pop("description", help),
                              formatter_class=HelpFormatter, **kwargs)

    backends = ("optical-flow estimator: dis (OpenCV's DIS, fast), farneback (OpenCV), tvl1 (the papers' TV-L1, "
                "OpenCV contrib), tvl1-torch (the same TV-L1 in PyTorch, batched, on CUDA when present)")

    p = command("make-puzzles", "render a two-stream puzzle as a UCF-101-style dataset")
    p.add_argument("--puzzle", required=True, choices=[*sorted(PUZZLES), "all"], help="which puzzle")
    p.add_argument("--out", required=True, help="output folder (with --puzzle all: one subfolder per puzzle)")
    p.add_argument("--videos-per-class", type=int, default=30, help="videos of each of the 4 classes")
    p.add_argument("--frames", type=int, default=24, help="frames per video")
    p.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed of the rendering")
    p.add_argument("--workers", type=int, default=1, help="processes rendering videos")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_make_puzzles)

    p = command("extract-flow", "decode videos, write RGB frames and quantised optical flow (resumable, self-repairing)",
                description="Decode every video of --root (<root>/<Class>/<video>.avi) and write its RGB frames and "
                            "optical flow, quantised to JPEGs, under --out. Rerunning it resumes: finished videos "
                            "are checked against the sizes recorded when they were written (--verify: decoded) and "
                            "skipped, damaged ones extracted again (reported as REPAIRED). A video that cannot be "
                            "read is reported FAILED (exit status 1) and the others go on; one that decodes to fewer "
                            "frames than its container promises is used as far as it decodes and reported TRUNCATED.")
    p.add_argument("--root", required=True, help="dataset root: <root>/<Class>/<video>.avi")
    p.add_argument("--out", required=True, help="cache folder for frames and flow (the --flow-root of train)")
    p.add_argument("--backend", default="dis", choices=sorted(FLOW_BACKENDS), help=backends)
    p.add_argument("--workers", type=int, default=1, help="processes, one video each at a time (up to one per CPU "
                                                          "core; tvl1-torch on one GPU: 1-2)")
    p.add_argument("--verify", action="store_true", help="also decode every JPEG of the videos already done (about "
                                                         "as long as reading the cache once), not only check sizes")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_extract_flow)

    p = command("train", "train a method on puzzles, UCF-101 or HMDB-51, then evaluate it", epilog=TRAIN_EPILOG)
    p.add_argument("--dataset", required=True, help="puzzles:<name> (rendered and extracted on demand), ucf101 or "
                                                    "hmdb51 (your videos, see below)")
    p.add_argument("--root", help="ucf101 / hmdb51: the videos, <root>/<Class>/<video>.avi, with the split files "
                                  "(see below); puzzles: the data folder (default ./data)")
    p.add_argument("--flow-root", help="ucf101 / hmdb51: the frames and flow, `fusionkit extract-flow`'s --out for "
                                       "--root (puzzles: made on demand)")
    p.add_argument("--split-dir", metavar="DIR", help="the folder holding the split files, if not where --root's "
                                                      "layout puts them (see below)")
    p.add_argument("--split", type=int, default=1, choices=[1, 2, 3],
                   help="the official split: ucf101 trainlist0N.txt / testlist0N.txt, hmdb51 <class>_test_splitN.txt "
                        "(puzzles have split 1 only)")
    p.add_argument("--skip-bad", action="store_true", help="train and test on the videos that can be used, leaving "
                                                           "out (and listing) those that cannot")
    p.add_argument("--flow-backend", default="dis", choices=sorted(FLOW_BACKENDS), help="puzzles only: " + backends)
    p.add_argument("--method", default="late", metavar="METHOD",
                   help="the method (listed below, or a registered plugin; `fusionkit methods` describes them)")
    p.add_argument("--option", action="append", metavar="KEY=VALUE",
                   help="a method option, repeatable: --option fusion=bilinear --option position=stage2 "
                        "(`fusionkit methods NAME` lists them with types and defaults)")
    p.add_argument("--backbone", default="tiny", help="a registered backbone: tiny (CPU-sized, for the puzzles), "
                                                      "resnet18, resnet50, vgg16, r3d_18, r2plus1d_18, vggm2048, ...")
    p.add_argument("--pretrained", action="store_true", help="ImageNet (3D: Kinetics-400) weights for the backbone, "
                                                             "downloaded once if online")
    p.add_argument("--epochs", type=int, default=10, help="epochs of each phase: the streams' and the method's "
                                                          "(cma: of each iteration)")
    p.add_argument("--batch-size", type=int, default=16, help="videos per batch (under torchrun: the global batch)")
    p.add_argument("--optimizer", default=DEFAULT_OPTIMIZER, choices=["sgd", "adamw"],
                   help="sgd (momentum 0.9, as TSN) or adamw")
    p.add_argument("--lr", type=float, default=DEFAULT_LR,
                   help="learning rate (of the streams, for methods that start from them). The default, AdamW at "
                        "1e-3, trains every method stably on real footage; SGD at 0.01 (the Python API's TrainConfig "
                        "default, kept for the notebooks' numbers) made conv_fusion's fusion phase diverge there. The "
                        "puzzles' recipes: --optimizer adamw --lr 0.002")
    p.add_argument("--finetune-lr", type=float, default=None,
                   help=f"learning rate of the second phase of the methods that start from separately trained "
                        f"streams ({', '.join(FROM_TRAINED_STREAMS)}): their new fusion layers are trained with "
                        f"layers that are already trained, as the papers do, at a lower rate (Feichtenhofer et al.: "
                        f"1e-3 after 1e-2; Wang et al.: a tenth); default: {FINETUNE_LR_FACTOR:g} x --lr")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="L2 weight decay (AdamW: decoupled)")
    p.add_argument("--lr-schedule", default="cosine", choices=["cosine", "step", "constant", "plateau"],
                   help="LR over each phase's epochs: cosine decay, x0.1 steps at each third, or constant")
    p.add_argument("--iterations", type=int, default=1,
                   help="methods trained branch by branch (cma): iterations of --epochs epochs each")
    p.add_argument("--segments", type=int, default=3, help="TSN segments in training: one snippet each per video")
    p.add_argument("--test-segments", type=int, default=25, help="snippets per video in testing, evenly spaced")
    p.add_argument("--new-length", type=int, default=5, help="L: flow fields per snippet (the motion tower takes 2L "
                                                             "channels)")
    p.add_argument("--input-size", type=int, default=None, help="crop size (default: the puzzle's frame size, or 224)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, snippets and batches")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else the CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--flow-workers", type=int, default=2, help="puzzles only: processes extracting the flow of a "
                                                               "puzzle rendered on demand (real datasets: extract-flow "
                                                               "--workers)")
    p.add_argument("--loader-workers", type=int, default=2, help="DataLoader processes decoding frames and flow while "
                                                                 "the model trains (0: in the main process)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint (an "
                                                         "interrupted epoch is re-run to the same result)")
    p.add_argument("--overwrite", action="store_true", help="delete the run already in --out (checkpoint, history, "
                                                            "evaluations) and train anew")
    p.add_argument("--out", required=True, help="run folder: run.json, dataset.json, checkpoint.pt, history.json, "
                                                "eval.json (an existing run is refused without --resume or "
                                                "--overwrite)")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch lines (the dataset "
                                                        "summary, warnings and results still print)")
    p.add_argument("--recipe", choices=["teaching", "paper"],
                   help="train with the method's recipe (fusionkit.methods.training_recipes): its optimizer, LR schedule, "
                        "epochs or iterations, batch, dropout, segments and snippet length; the flags given on "
                        "the command line win over it")
    p.set_defaults(func=_train)

    p = command("methods", "list the methods, or one method's options with their types and defaults")
    p.add_argument("names", nargs="*", help="methods to describe in full (default: one line for each)")
    p.set_defaults(func=_methods)

    p = command("evaluate", "evaluate a trained run: each output's accuracy and the best fusion weight",
                description="Test a run of `fusionkit train` again, e.g. with more snippets or ten crops. Prints each "
                            "output's top-1 and mean-class accuracy, what each output is, and the best RGB weight of "
                            "the fusion-weight sweep; writes RUN_DIR/eval_<N>seg[_10crop].json with those, top-5, the "
                            "confusion matrices and the whole sweep.")
    p.add_argument("run_dir", help="the --out of `fusionkit train`")
    p.add_argument("--segments", type=int, default=25, help="snippets per video, evenly spaced")
    p.add_argument("--ten-crop", action="store_true", help="4 corners + centre, and their flips")
    p.add_argument("--batch-size", type=int, default=8, help="videos per batch")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else the CPU), cpu, cuda, ...")
    p.set_defaults(func=_evaluate)

    from fusionkit.lab.run_notebooks import KERNEL_THREADS, PROJECT_ROOT

    p = command("run-notebooks", "build the puzzles and their flow, then execute every notebook with papermill")
    p.add_argument("--notebooks", default=str(PROJECT_ROOT / "notebooks"), help="folder of the notebooks")
    p.add_argument("--out", default=str(PROJECT_ROOT / "build"), help="folder for the executed copies")
    p.add_argument("--data", default=str(PROJECT_ROOT / "data"), help="folder for puzzles and flow")
    p.add_argument("--smoke", action="store_true", help="SMOKE=True: tiny sizes, seconds per notebook")
    p.add_argument("--workers", type=int, default=2, help="processes preparing the puzzles")
    p.add_argument("--threads", type=int, default=KERNEL_THREADS,
                   help=f"torch CPU threads per notebook kernel (default {KERNEL_THREADS}, the committed results' "
                        "machine: another count rounds differently and gives other numbers)")
    p.add_argument("--only", nargs="+", metavar="NOTEBOOK", help="run just these (e.g. 04_cmmp a1_conv_fusion); "
                                                                  "writes no timing record: that is the whole series'")
    p.add_argument("--keep-going", action="store_true", help="after a failing notebook, run the rest (the failures "
                                                             "are reported at the end; no timing record is written)")
    p.set_defaults(func=_run_notebooks)

    p = command("book", "render the executed notebooks (make run's, in build/) as a static HTML site, without "
                        "executing them: the series, the benchmark, the figures, the assignments' student versions")
    p.add_argument("--executed", default=str(PROJECT_ROOT / "build"), help="folder of the executed notebooks")
    p.add_argument("--figures", default=str(PROJECT_ROOT / "figures"), help="figures and results of that run")
    p.add_argument("--out", default=str(PROJECT_ROOT / "build" / "book"), help="writes <out>/src (Sphinx source) "
                                                                                "and <out>/html (the site)")
    p.add_argument("--smoke", action="store_true", help="first execute the series at SMOKE=True into <out>/smoke "
                                                        "and build from those (minutes; to test the book)")
    p.set_defaults(func=_book)

    p = command("bench", "train every fusion method on every puzzle over seeds: table + heatmap")
    p.add_argument("--quick", action="store_true", help="tiny sizes, one seed, three puzzles (seconds per job)")
    p.add_argument("--methods", nargs="+", help="benchmark entries (default: late spatial(fusion=sum) spatial(fusion=conv) conv_fusion cmmp "
                        "ccs(embedding_dim=64) cma(position_frequencies=3)); a registered block's name is its spatial(fusion=NAME) row")
    p.add_argument("--blocks", nargs="+", help="registered fusion blocks to add as spatial-fusion rows")
    p.add_argument("--plugins", nargs="+", help="modules or .py files to import first (they register your blocks)")
    p.add_argument("--puzzles", nargs="+", choices=sorted(PUZZLES), help="puzzles to benchmark (default: all)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds, e.g. --seeds 0 1 2 (default 0 1 2; --quick: 0)")
    p.add_argument("--data-seeds", type=int, nargs="+",
                   help="renders of each puzzle, e.g. --data-seeds 0 1; every (data seed, seed) is a run (default 0)")
    p.add_argument("--test-groups", type=int, help="groups of 3 clips per class held out for testing (default 9 of 16: "
                        "27 test videos per class; --quick: about 30%%)")
    p.add_argument("--size", type=int, help="frame size (default 32; the notebooks' 64 costs about 2.5x per job: "
                        "docs/performance.md)")
    p.add_argument("--no-cache", action="store_true", help="train every run, without the run cache "
                        "(python -m fusionkit.lab.run_cache clear empties it)")
    p.add_argument("--workers", type=int, default=2, help="processes, one torch thread each")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else the CPU), cpu, cuda, ...")
    p.add_argument("--data", default="data", help="folder for puzzles and flow")
    p.add_argument("--work-dir", default="build/bench", help="each finished job is saved here")
    p.add_argument("--resume", action="store_true", help="reuse finished jobs in --work-dir (same settings)")
    p.add_argument("--figures", default="figures", help="writes <figures>/results/<name>.json|.md and the heatmap")
    p.add_argument("--name", default="benchmark", help="file name of the results")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_bench)

    _add_reproduce_parser(command)

    from fusionkit.lab.assignments.commands import add_assignment_parser

    add_assignment_parser(sub)
    return parser


class _LogLines(logging.Handler):
    """The library's log lines as the command's output: per-epoch lines and phases on stdout,
    warnings on stderr as ``fusionkit CMD: warning: ...``."""

    def __init__(self, command: str, level: int):
        super().__init__(level)
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            print(f"fusionkit {self.command}: warning: {record.getMessage()}", file=sys.stderr, flush=True)
        else:
            print(record.getMessage(), flush=True)


def _error_text(e: BaseException) -> str:
    """An error's message; one raised in a DataLoader worker comes with the worker's traceback,
    of which only the last line, the error itself, is kept."""
    text = str(e)
    marker = f"{type(e).__name__}: "
    if "Original Traceback" in text and marker in text:
        text = text[text.rindex(marker) + len(marker):].strip()
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command
    library = logging.getLogger("fusionkit")
    level, propagate, handlers = library.level, library.propagate, list(library.handlers)
    if command == "train":  # its epoch lines and phases (bench's workers, say, keep quiet)
        library.addHandler(_LogLines(command, logging.WARNING if args.quiet else logging.INFO))
        library.setLevel(logging.INFO)
        library.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.showwarning = lambda message, category, *rest, **kw: print(
                f"fusionkit {command}: warning: {message}", file=sys.stderr, flush=True)
            return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError, RuntimeError, FloatingPointError) as e:
        print(f"fusionkit {command}: error: {_error_text(e)}", file=sys.stderr)
        return 2
    finally:
        library.handlers[:] = handlers
        library.setLevel(level)
        library.propagate = propagate


if __name__ == "__main__":
    sys.exit(main())
