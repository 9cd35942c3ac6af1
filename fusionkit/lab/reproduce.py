"""``fusionkit reproduce``: train every buildable row of a paper's table and write ours beside the paper's.

    fusionkit reproduce feichtenhofer2016 --table 1 --dataset puzzles:registration [--recipe teaching]
                        [--seeds 0 1] [--quick] [--epochs E]

writes ``reproductions/<paper>-table<N>.json`` and ``.md``: each row of the paper's table
(:mod:`fusionkit.methods.tables`) with our number (mean ± std over the seeds, in percent, the
output the column reads) beside the paper's, the paper's claimed orderings and whether ours follow
them, the rows that cannot be built and why, and the wall time.

How the rows are trained: each method's recipe (:mod:`fusionkit.methods.training_recipes`,
``teaching`` on the puzzles); the separately trained streams (``late``) are trained once per seed
with the table's method's stream recipe and every row of a method fine-tuned from streams starts
from them (``init_from``), as each paper does; rows that are the streams themselves (softmax
averaging, the two-stream baseline) read that same run. Rows with the same method and options (the
``-R`` and ``-S`` rows of one CMA network) share one run; rows that are iterations of one run (CMA
Table 1) are read from its history at the end of each iteration.

``--quick``: 4 videos per class, 12 frames of 32 px, one epoch a phase: seconds per row, for the
test suite (the numbers mean nothing). ``--epochs``: every phase's epochs, to fit a budget (recorded
in the file).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from fusionkit.data.atomic import atomic_write_text
from fusionkit.lab.results import seed_summary

__all__ = ["reproduce", "QUICK_DATA", "markdown_report", "format_cell"]

QUICK_DATA = {"videos_per_class": 4, "frames": 12, "size": 32, "new_length": 3, "segments": 3, "test_segments": 3}
DATA_KEYS = ("videos_per_class", "frames", "size", "new_length", "segments", "test_segments")
REAL_DATASETS = ("ucf101", "hmdb51")
# what each puzzle's label needs (the README's puzzle table): how to read a table's rows on it
PUZZLE_NEEDS = {
    "appearance": "the label is the sprite's shape: the RGB stream alone solves it, no fusion needed",
    "motion": "the label is the direction of motion: the flow stream alone solves it, no fusion needed",
    "conjunction": "the label is colour x left/right: RGB sees the colour, flow the direction; any fusion, late "
                   "fusion included, suffices",
    "registration": "the label is which of two colours moves, and where to: only fusion that keeps the streams "
                    "registered pixel by pixel solves it; late fusion stays near 50%",
    "order": "the label is the order of a there-and-back motion: flow sees the axis only, so only fusion across "
             "the segments (in time) solves it",
}


@dataclass
class _Source:
    """Where the videos come from: a puzzle (rendered on demand) or UCF-101 / HMDB-51 folders."""

    dataset: str
    data: dict
    data_dir: str = "data"
    root: str | None = None
    flow_root: str | None = None
    split: int = 1
    _sets: dict = field(default_factory=dict)

    @property
    def puzzle(self) -> str | None:
        return self.dataset.split(":", 1)[1] if self.dataset.startswith("puzzles:") else None

    def datasets(self):
        """(train set, test set, number of classes), built once."""
        if "sets" not in self._sets:
            d = self.data
            if self.puzzle is not None:
                from fusionkit.lab.experiments import puzzle_datasets

                self._sets["sets"] = puzzle_datasets(self.puzzle, self.data_dir, videos_per_class=d["videos_per_class"],
                                                     frames=d["frames"], size=d["size"], segments=d["segments"],
                                                     test_segments=d["test_segments"], new_length=d["new_length"])
            else:
                from fusionkit.data.dataset import build_dataset
                from fusionkit.data.splits import load_split

                common = dict(split=self.split, new_length=d["new_length"], input_size=d.get("input_size"))
                train = build_dataset(self.dataset, self.root, self.flow_root, "train", num_segments=d["segments"],
                                      **common)
                test = build_dataset(self.dataset, self.root, self.flow_root, "test", num_segments=d["test_segments"],
                                     ten_crop=bool(d.get("ten_crop")), **common)
                self._sets["sets"] = (train, test, len(load_split(self.dataset, self.root, self.split).classes))
        return self._sets["sets"]


def _experiment(source: _Source, method: str, seeds, config, backbone: str, init_from=None, track_test=False,
                **kwargs):
    """Train ``method`` once per seed and test it (a :class:`fusionkit.lab.experiments.PuzzleRun`)."""
    from fusionkit.lab.experiments import PuzzleRun, puzzle_experiment

    d = source.data
    if source.puzzle is not None:
        return puzzle_experiment(method, source.puzzle, seeds=seeds, config=config, data_dir=source.data_dir,
                                 videos_per_class=d["videos_per_class"], frames=d["frames"], size=d["size"],
                                 segments=d["segments"], test_segments=d["test_segments"], new_length=d["new_length"],
                                 backbone=backbone, init_from=init_from, track_test=track_test, **kwargs)
    from fusionkit.methods import run_method
    from fusionkit.training.evaluate import classification_metrics, predict

    train_set, test_set, num_classes = source.datasets()
    run, per_output = PuzzleRun({}, [], [], []), {}
    for i, seed in enumerate(seeds):
        model, history, _ = run_method(method, train_set, None, num_classes, backbone=backbone,
                                       config=replace(config, seed=seed), init_from=init_from[i] if init_from else None,
                                       val_set=test_set if track_test else None, **kwargs)
        scores = predict(model, test_set, batch_size=config.batch_size, device=config.device)
        for output, probs in scores.probs.items():
            per_output.setdefault(output, []).append(classification_metrics(probs, scores.labels)["top1"])
        run.scores.append(scores)
        run.histories.append(history)
        run.models.append(model)
    run.accuracy = {output: seed_summary(v) for output, v in per_output.items()}
    return run


def _config(recipe, train_videos: int, phase: str, quick: bool, epochs: int | None, overrides: dict | None = None,
            device: str = "auto"):
    config = recipe.pretrain_config(train_videos) if phase == "pretrain" else recipe.config(train_videos)
    if config is None:  # a method without a streams phase: its own config trains the streams
        config = recipe.config(train_videos)
    changes = {"device": device, "progress": False}
    if quick:
        changes["epochs"] = 1
    elif epochs is not None:
        changes["epochs"] = epochs
    for key, value in (overrides or {}).items():
        changes[key] = {**config.extra, **value} if key == "extra" else value
    return replace(config, **changes)


def _allowed(method: str, options: dict) -> dict:
    """The options ``method`` takes (a recipe's model options for one method, given to another)."""
    from fusionkit.methods import method_options

    valid = method_options(method)
    return {k: v for k, v in options.items() if k in valid}


def _percent(summary: dict | None) -> dict | None:
    if summary is None:
        return None
    return {"mean": round(100 * summary["mean"], 2), "std": round(100 * summary["std"], 2),
            "seeds": [round(100 * s, 2) for s in summary["seeds"]]}


def _at_iteration(histories: list[list[dict]], iteration: int) -> dict[str, dict]:
    """Per output, the test top-1 over seeds at the end of ``iteration`` (from track_test histories)."""
    per_output: dict[str, list[float]] = {}
    for history in histories:
        records = [h for h in history if h.get("iteration") == iteration and "val" in h]
        if not records:
            raise ValueError(f"the run has no tested epoch of iteration {iteration} (it ran "
                             f"{max((h.get('iteration', 0) for h in history), default=0)})")
        for output, value in records[-1]["val"].items():
            per_output.setdefault(output, []).append(value)
    return {output: seed_summary(v) for output, v in per_output.items()}


def _top5(run) -> dict[str, dict] | None:
    """Top-5 per output over seeds, when there are more than 5 classes (else None: top-5 would be 1)."""
    from fusionkit.training.evaluate import classification_metrics

    if not run.scores or next(iter(run.scores[0].probs.values())).shape[1] <= 5:
        return None
    per_output: dict[str, list[float]] = {}
    for scores in run.scores:
        for output, probs in scores.probs.items():
            per_output.setdefault(output, []).append(classification_metrics(probs, scores.labels)["top5"])
    return {output: seed_summary(v) for output, v in per_output.items()}


def reproduce(paper: str, number: int, dataset: str = "puzzles:registration", recipe: str = "teaching",
              seeds=(0, 1), quick: bool = False, epochs: int | None = None, backbone: str = "tiny",
              data_dir: str | os.PathLike = "data", out_dir: str | os.PathLike | None = "reproductions",
              root: str | None = None, flow_root: str | None = None, split: int = 1, device: str = "auto",
              note: str = "", progress: bool = True) -> dict:
    """Train every buildable row of table ``number`` of ``paper`` on ``dataset`` (``puzzles:<name>``,
    or ``ucf101`` / ``hmdb51`` with ``root`` and ``flow_root``) over ``seeds``, each row with its
    method's ``recipe``; write ``<out_dir>/<paper>-table<N>.json`` and ``.md`` (unless ``out_dir`` is
    None) and return the report (the JSON's content)."""
    import torch

    from fusionkit import __version__
    from fusionkit.lab.machine import machine_description
    from fusionkit.methods import get_method
    from fusionkit.methods.tables import PAPERS, check_claim, get_table
    from fusionkit.methods.training_recipes import get_recipe
    from fusionkit.training.runtime import resolve_device

    started, wall = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    table = get_table(paper, number)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    if dataset.startswith("puzzles:"):
        from fusionkit.data.puzzles import PUZZLES

        if dataset.split(":", 1)[1] not in PUZZLES:
            raise ValueError(f"unknown puzzle {dataset.split(':', 1)[1]!r}; the puzzles are {sorted(PUZZLES)}")
    elif dataset in REAL_DATASETS:
        if not root or not flow_root:
            raise ValueError(f"--dataset {dataset} needs --root (videos and split files) and --flow-root "
                             f"(`fusionkit extract-flow` output)")
    else:
        raise ValueError(f"unknown dataset {dataset!r}; use puzzles:<name>, ucf101 or hmdb51")

    main_recipe = get_recipe(table.recipe_method, recipe)
    data = {"videos_per_class": 30, "frames": 24, "size": 64, "segments": 3, "test_segments": 3, "new_length": 5}
    data.update({k: v for k, v in main_recipe.data.items() if k in (*DATA_KEYS, "input_size", "ten_crop")})
    if quick:
        data.update(QUICK_DATA)
    source = _Source(dataset, data, str(data_dir), root, flow_root, split)
    train_set, _, num_classes = source.datasets()
    train_videos = len(train_set)

    def say(text: str) -> None:
        if progress:
            print(text, flush=True)

    model_defaults = dict(main_recipe.model)
    model_defaults.update(table.network)
    recipes_used = {table.recipe_method: main_recipe}

    # ---- the separately trained streams, once per backbone -------------------------------------------
    late_runs: dict[str, dict] = {}

    def late_run(row_backbone: str) -> dict:
        if row_backbone not in late_runs:
            streams = main_recipe if main_recipe.pretrain is not None else get_recipe("late", recipe)
            if streams is not main_recipe:
                recipes_used.setdefault("late", streams)
            config = _config(streams, train_videos, "pretrain", quick, epochs, device=device)
            say(f"[{table.key}] late (the separately trained streams), backbone {row_backbone}, seeds {list(seeds)}")
            t0 = time.perf_counter()
            run = _experiment(source, "late", seeds, config, row_backbone, **_allowed("late", model_defaults))
            late_runs[row_backbone] = {"run": run, "seconds": time.perf_counter() - t0, "config": config}
        return late_runs[row_backbone]

    # ---- every buildable row, rows with the same run trained once --------------------------------
    runs: dict[str, dict] = {}
    results = []
    for row in table.rows:
        entry = {"name": row.name, "method": row.method, "options": _jsonable(row.options), "paper": dict(row.paper),
                 "paper_parameters": row.parameters, "extra": dict(row.extra), "note": row.note,
                 "buildable": row.buildable, "reason": row.reason, "ours": {}, "outputs": {}}
        results.append(entry)
        if not row.buildable:
            entry["status"] = "not buildable"
            continue
        row_backbone = row.options.get("backbone", backbone)
        try:
            options = table.resolve(row, row_backbone) if table.resolve else dict(row.options)
        except ValueError as e:
            entry.update(status=f"not buildable on backbone {row_backbone}", reason=str(e))
            continue
        options.pop("backbone", None)
        entry["backbone"] = row_backbone
        key = json.dumps({"run": row.run_key(), "backbone": row_backbone, "resolved": _jsonable(options)},
                         sort_keys=True, default=repr)
        if row.method == "late" and not options:
            shared = late_run(row_backbone)
            entry["run"] = "late (the streams the other rows start from)"
        elif key in runs:
            shared = runs[key]
            entry["run"] = f"shared with {shared['first']!r}"
        else:
            method = get_method(row.method)
            r = get_recipe(row.method, recipe)
            recipes_used.setdefault(row.method, r)
            config = _config(r, train_videos, "train", quick, epochs, dict(row.train), device=device)
            kwargs = {**_allowed(row.method, {**dict(r.model), **table.network}), **options}
            init = None
            if method.pretrain == "late" or options.get("finetune") == "classifier":
                init = late_run(row_backbone)["run"].models
                # what is fine-tuned: the row's own choice (Chi et al. §5.7: the classifiers), else the recipe's
                kwargs["finetune"] = options.get("finetune") or r.finetune or method.finetune
            say(f"[{table.key}] {row.name}: {row.method}({', '.join(f'{k}={v}' for k, v in options.items())}), "
                f"seeds {list(seeds)}")
            t0 = time.perf_counter()
            run = _experiment(source, row.method, seeds, config, row_backbone, init_from=init,
                              track_test=row.at_iteration is not None, **kwargs)
            shared = runs[key] = {"run": run, "seconds": time.perf_counter() - t0, "first": row.name, "config": config}
            entry["run"] = "trained"
            entry["seconds"] = round(shared["seconds"], 1)
        run = shared["run"]
        model = run.models[0]
        roles = model.output_roles()
        accuracy = _at_iteration(run.histories, row.at_iteration) if row.at_iteration else run.accuracy
        top5 = None if row.at_iteration else _top5(run)
        for column in table.columns:
            role = table.role(row, column)
            output = roles.get(role)
            entry["outputs"][column.key] = output
            if output is None:
                entry["ours"][column.key] = None
            elif column.metric == "top5":
                entry["ours"][column.key] = _percent(top5.get(output)) if top5 else None
            else:
                entry["ours"][column.key] = _percent(accuracy.get(output))
        entry["status"] = "ran"
        if row.at_iteration:
            entry["at_iteration"] = row.at_iteration
        counted = table.count_parameters(row, model) if table.count_parameters else \
            sum(p.numel() for p in model.parameters()) / 1e6
        entry["our_parameters"] = round(float(counted), 4)
        entry["train"] = {k: getattr(shared["config"], k) for k in ("epochs", "iterations", "batch_size", "lr", "optimizer",
                                                                    "lr_schedule")}
        if row.train:
            entry["train"]["row"] = _jsonable(dict(row.train))

    # ---- the claims, on the paper's numbers and on ours -------------------------------------------
    by_name = {e["name"]: e for e in results}

    def ours(row: str, column: str):
        cell = by_name[row]["ours"].get(column)
        return None if cell is None else (cell["mean"], cell["std"])

    claims = [{**check_claim(c, ours), "paper": check_claim(c, table.paper_value)["holds"]} for c in table.claims]
    seconds = time.perf_counter() - wall
    report = {
        "paper": table.paper, "citation": PAPERS[table.paper].citation, "table": table.number, "label": table.display_name,
        "title": table.title,
        "dataset": dataset, "recipe": recipe, "quick": quick, "seeds": list(seeds), "backbone": backbone,
        "epochs_override": epochs, "note": note, "table_note": table.note,
        "data": data, "train_videos": train_videos, "num_classes": num_classes,
        "columns": [{"key": c.key, "name": c.name, "dataset": c.dataset, "role": c.role, "metric": c.metric}
                    for c in table.columns],
        "parameter_unit": table.parameter_unit,
        "baseline": {b: {"accuracy": {k: _percent(v) for k, v in r["run"].accuracy.items()},
                         "seconds": round(r["seconds"], 1), "epochs": r["config"].epochs}
                     for b, r in late_runs.items()},
        "rows": results, "claims": claims,
        "recipes": {m: r.as_dict() for m, r in recipes_used.items()},
        "seconds": round(seconds, 1), "started": started, "fusionkit": __version__, "code": code_state(),
        "machine": machine_description(resolve_device(device)), "torch_threads": torch.get_num_threads(),
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / f"{table.key}.json", json.dumps(_jsonable(report), indent=1))
        atomic_write_text(out / f"{table.key}.md", markdown_report(report))
        report["files"] = [str(out / f"{table.key}.json"), str(out / f"{table.key}.md")]
    say(f"[{table.key}] done in {seconds / 60:.1f} min")
    return report


def code_state() -> dict:
    """The git commit the library ran from and the library files changed since (uncommitted), when
    it runs from a git checkout: which code made a reproduction's numbers."""
    import subprocess

    package = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=package, capture_output=True,
                                 text=True, timeout=10, check=True).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "uncommitted": sorted(line[3:] for line in changed)}


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float):
        return x
    if x is None or isinstance(x, (bool, int, str)):
        return x
    return repr(x)


def format_cell(cell: dict | None) -> str:
    """Our number as ``mean ± std`` (percent), or a dash."""
    if cell is None:
        return "–"
    return f"{cell['mean']:.1f} ± {cell['std']:.1f}" if len(cell.get("seeds", [])) > 1 else f"{cell['mean']:.1f}"


def _verdict(holds) -> str:
    return {True: "yes", False: "**no**", None: "not checked"}[holds]


def markdown_report(report: dict) -> str:
    """The report as Markdown: rows with ours beside the paper's, the claims, what was not built."""
    columns = report["columns"]
    seeds = report["seeds"]
    lines = [f"# {report['citation']}, {report.get('label') or 'Table ' + str(report['table'])}", "",
             f"*{report['title']}.*", "",
             f"Ours: `{report['dataset']}`, recipe `{report['recipe']}`{' (--quick: tiny sizes, numbers meaningless)' if report['quick'] else ''}, "
             f"backbone `{report['backbone']}`, {len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))}), "
             f"{report['train_videos']} training videos, {report['num_classes']} classes; percent top-1, "
             f"mean ± std over the seeds. Paper: its dataset per column. "
             f"Wall time **{report['seconds'] / 60:.1f} min** ({report['machine'].get('cpu_count')} CPU cores, "
             f"{report['torch_threads']} torch threads, load at start {report['machine'].get('load_average_at_start')}).", ""]
    puzzle = report["dataset"].split(":", 1)[1] if report["dataset"].startswith("puzzles:") else None
    if puzzle in PUZZLE_NEEDS:
        lines += [f"On `{puzzle}` {PUZZLE_NEEDS[puzzle]}; the paper's orderings were measured on real videos, where "
                  f"every cue is weaker, so a puzzle shows what a mechanism can do, not the paper's margins.", ""]
    if report.get("epochs_override") is not None:
        lines += [f"Every phase trained {report['epochs_override']} epochs (--epochs), not the recipe's.", ""]
    if report.get("note"):
        lines += [f"Note: {report['note']}", ""]
    header = ["row", "ours: model"]
    for c in columns:
        header += [f"{c['key']} (paper)", f"ours ({c['role'] or 'row'})"]
    paper_counts = any(r["paper_parameters"] is not None for r in report["rows"])
    header += ([f"params paper ({report['parameter_unit']})"] if paper_counts else []) + \
        [f"params ours ({report['parameter_unit']})"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        if row["status"] != "ran":
            what = f"not built: {row['status']}"
        else:
            options = ", ".join(f"{k}={v}" for k, v in row["options"].items())
            what = f"`{row['method']}({options})`" + (f" iter {row['at_iteration']}" if row.get("at_iteration") else "")
        cells = [row["name"], what]
        for c in columns:
            paper = row["paper"].get(c["key"])
            cells += ["–" if paper is None else f"{paper:g}", format_cell(row["ours"].get(c["key"]))]
        extra = row.get("extra", {}).get("#parameters")
        if paper_counts:
            cells.append(extra or ("–" if row["paper_parameters"] is None else f"{row['paper_parameters']:g}"))
        cells.append("–" if row.get("our_parameters") is None else f"{row['our_parameters']:.3g}")
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("baseline"):
        lines += [""]
        for backbone, b in report["baseline"].items():
            acc = ", ".join(f"{k} {format_cell(v)}" for k, v in b["accuracy"].items())
            lines.append(f"The separately trained streams the fine-tuned rows start from (`late`, {backbone}, "
                         f"{b['epochs']} epochs, {b['seconds']:.0f} s): {acc}.")
    lines += ["", "## The paper's claims", "", "| claim | paper | ours | relations (ours) |", "|---|---|---|---|"]
    for claim in report["claims"]:
        relations = "; ".join(
            f"{r['a']} {'≈' if r['op'] == '~' else r['op']} {r['b']}: "
            + ("–" if r["a_value"] is None or r["b_value"] is None else f"{r['a_value']:.1f} vs {r['b_value']:.1f}")
            + ("" if r["holds"] is None else (" ✓" if r["holds"] else " ✗"))
            + (" (within the seeds' spread)" if r.get("within_noise") else "")
            for r in claim["relations"])
        ours = _verdict(claim["holds"]) + ("" if claim["resolved"] or claim["holds"] is None else ", not resolved by the seeds")
        lines.append(f"| {claim['text']} ({claim['source']}) | {_verdict(claim['paper'])} | {ours} | {relations} |")
    missing = [r for r in report["rows"] if r["status"] != "ran"]
    if missing:
        lines += ["", "## Rows not built", ""]
        lines += [f"- **{r['name']}** ({r['status']}): {r['reason']}" for r in missing]
    notes = [r for r in report["rows"] if r.get("note")]
    if notes or report.get("table_note"):
        lines += ["", "## How the rows are read", ""]
        if report.get("table_note"):
            lines.append(f"- {report['table_note']}")
        lines += [f"- {r['name']}: {r['note']}" for r in notes]
    lines += ["", "## Recipes", ""]
    for method, recipe in report["recipes"].items():
        train = recipe["train"]
        lines.append(f"- `{method}` ({recipe['name']}, {recipe['source']}): {train['optimizer']} lr {train['lr']:g}, "
                     f"batch {train['batch_size']}, {train['epochs']} epochs"
                     + (f", streams {recipe['pretrain']['epochs']} epochs" if recipe.get("pretrain") else "")
                     + (f", fine-tunes {recipe['finetune']}" if recipe.get("finetune") else "")
                     + (f", model {recipe['model']}" if recipe["model"] else ""))
    trained = [r for r in report["rows"] if r.get("seconds") is not None]
    code = report.get("code") or {}
    if code:
        lines += ["", f"Code: commit `{code['commit'][:10]}`" + (
            f", with uncommitted changes to {', '.join(f'`{f}`' for f in code['uncommitted'])}"
            if code["uncommitted"] else "") + "."]
    lines += ["", "## Time", "", f"{report['seconds'] / 60:.1f} min in all, started {report['started']}"
              + "".join(f"; streams ({b}) {v['seconds']:.0f} s" for b, v in report.get("baseline", {}).items())
              + "".join(f"; {r['name']} {r['seconds']:.0f} s" for r in trained) + ".", ""]
    return "\n".join(lines)
