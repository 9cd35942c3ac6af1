"""One call that the notebooks and ``fusionkit bench`` share: train a method on a puzzle over
several seeds and summarise per-output test accuracy (the results schema's ``accuracy`` entry)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

from fusionkit.data.dataset import TwoStreamDataset, build_dataset
from fusionkit.data.puzzles import get_puzzle, prepare_puzzle
from fusionkit.training.evaluate import Scores, classification_metrics
from fusionkit.lab.results import run_summary
from fusionkit.lab.run_cache import cached_run
from fusionkit.training.trainer import TrainConfig


@dataclass
class PuzzleRun:
    accuracy: dict  # output name -> run_summary over every (data seed, seed)
    scores: list[Scores]  # test scores per run (for weight sweeps, confusion matrices)
    histories: list[list[dict]]
    models: list
    runs: list[tuple[int, int]] = field(default_factory=list)  # (data seed, training seed) of each run, in order
    val_accuracy: dict = field(default_factory=dict)  # as accuracy, on the validation split (val_groups > 0)
    val_scores: list[Scores] = field(default_factory=list)
    cached: list[bool] = field(default_factory=list)  # whether each run came from the run cache


def _group(record) -> int:
    """The group of a UCF-101-named video ``<Class>/v_<Class>_gXX_cYY.avi``."""
    return int(record.path.rsplit("_g", 1)[1][:2])


def puzzle_datasets(puzzle: str, data_dir: str | os.PathLike = "data", videos_per_class: int = 30, frames: int = 24,
                    size: int = 64, segments: int = 3, test_segments: int = 5, new_length: int = 5,
                    flow_backend: str = "dis", workers: int = 1, data_seed: int = 0, test_groups: int | None = None,
                    val_groups: int = 0) -> tuple:
    """(train set, test set, number of classes) of a puzzle, rendered from ``data_seed`` and its flow
    extracted once under ``data_dir`` (each data seed, and each ``test_groups``, in folders of its own:
    :func:`fusionkit.data.puzzles.prepare_puzzle`). ``test_groups``: how many groups of 3 clips per
    class are test videos (default about 30%, :func:`fusionkit.data.puzzles.make_puzzles`).

    ``val_groups`` > 0: the last ``val_groups`` groups of the training videos become a validation
    set, tested like the test set (returned fourth: ``(train, test, classes, val)``); choose a fusion
    weight, a learning rate or a number of epochs on it, never on the test videos."""
    root, cache = prepare_puzzle(puzzle, data_dir, backend=flow_backend, videos_per_class=videos_per_class,
                                 frames=frames, size=size, seed=data_seed, workers=workers, progress=False,
                                 test_groups=test_groups)
    name = f"puzzles:{puzzle}"
    # a puzzle's decoded frames and flow fit in memory (tens of MB): decode each video once
    train_set = build_dataset(name, root, cache, "train", num_segments=segments, new_length=new_length, in_memory=True)
    test_set = build_dataset(name, root, cache, "test", num_segments=test_segments, new_length=new_length,
                             in_memory=True)
    num_classes = len(get_puzzle(puzzle).classes)
    if not val_groups:
        return train_set, test_set, num_classes
    groups = sorted({_group(r) for r in train_set.records})
    if not 0 < val_groups < len(groups):
        raise ValueError(f"val_groups={val_groups}: the training videos have {len(groups)} groups; hold out at least "
                         f"one and leave at least one to train on (render more videos per class for more)")
    held_out = set(groups[-val_groups:])

    def subset(records, like):  # sampled and transformed as `like` is (the validation set as the test set)
        return TwoStreamDataset(records, cache, num_segments=like.num_segments, new_length=new_length, train=like.train,
                                transform=like.transform, in_memory=True, root=root)

    val_set = subset([r for r in train_set.records if _group(r) in held_out], test_set)
    train_set = subset([r for r in train_set.records if _group(r) not in held_out], train_set)
    return train_set, test_set, num_classes, val_set


def puzzle_experiment(method: str, puzzle: str, seeds=(0, 1), config: TrainConfig | None = None,
                      data_dir: str | os.PathLike = "data", videos_per_class: int = 30, frames: int = 24,
                      size: int = 64, segments: int = 3, test_segments: int = 5, new_length: int = 5,
                      backbone: str = "tiny", flow_backend: str = "dis", workers: int = 1,
                      init_from: list | None = None, track_test: bool = False, data_seeds=(0,),
                      test_groups: int | None = None, val_groups: int = 0, cache: bool | None = None,
                      **method_kwargs) -> PuzzleRun:
    """For each data seed render the puzzle (once per data seed), then for each training seed train
    ``method`` and test it: every (data seed, seed) is a run, in that order (data seeds outer).

    A data seed renders other videos of the same puzzle (new sprites, paths, backgrounds); a
    training seed changes the initialisation, the snippet sampling and the augmentation. The
    summaries (:func:`fusionkit.lab.results.run_summary`) give the mean, std and a 95% t-interval
    over all runs, with each run's seeds. ``init_from``: one trained model per run, in the same order
    (e.g. ``late_run.models`` of a run with the same seeds and data seeds) for fusion methods
    fine-tuned from separately trained streams; ``method_kwargs`` go to
    :func:`fusionkit.methods.run_method` (model options, ``finetune``, ``pretrain_config``).
    ``track_test``: also test after every epoch, so the histories hold the test accuracy of every
    output along training (e.g. at the end of each ``alternate`` iteration, Chi et al. Table 1).
    ``test_groups`` / ``val_groups``: see :func:`puzzle_datasets`; with ``val_groups`` the
    validation accuracy is in ``val_accuracy`` (and ``val_scores``), the training set smaller.
    ``cache``: reuse identical runs trained before (:mod:`fusionkit.lab.run_cache`; None: unless
    ``$FUSIONKIT_RUN_CACHE=off``); a run from the cache is what training would return.
    """
    config = config or TrainConfig()
    runs = [(int(d), int(s)) for d in data_seeds for s in seeds]
    if not runs:
        raise ValueError(f"no runs: give at least one seed and one data seed (seeds={list(seeds)}, "
                         f"data_seeds={list(data_seeds)})")
    if init_from is not None and len(init_from) != len(runs):
        raise ValueError(f"init_from has {len(init_from)} models for {len(runs)} runs (data seeds x seeds): give one "
                         f"per run, e.g. the .models of a run with the same seeds and data_seeds")
    per_output: dict[str, list[float]] = {}
    val_per_output: dict[str, list[float]] = {}
    run = PuzzleRun({}, [], [], [], runs)
    for data_seed in dict.fromkeys(d for d, _ in runs):
        train_set, test_set, num_classes, *val = puzzle_datasets(
            puzzle, data_dir, videos_per_class=videos_per_class, frames=frames, size=size, segments=segments,
            test_segments=test_segments, new_length=new_length, flow_backend=flow_backend, workers=workers,
            data_seed=data_seed, test_groups=test_groups, val_groups=val_groups)
        eval_sets = {"test": test_set, **({"val": val[0]} if val else {})}
        for i, (d, seed) in enumerate(runs):
            if d != data_seed:
                continue
            result = cached_run(method, train_set, num_classes, eval_sets=eval_sets, backbone=backbone,
                                config=replace(config, seed=seed), init_from=init_from[i] if init_from else None,
                                val_set=test_set if track_test else None, cache=cache, **method_kwargs)
            for name, target in (("test", per_output), ("val", val_per_output)):
                if name in result.scores:
                    scores = result.scores[name]
                    for output, probs in scores.probs.items():
                        target.setdefault(output, []).append(classification_metrics(probs, scores.labels)["top1"])
            run.scores.append(result.scores["test"])
            if val:
                run.val_scores.append(result.scores["val"])
            run.histories.append(result.history)
            run.models.append(result.model)
            run.cached.append(result.hit)
    run.accuracy = {output: run_summary(v, runs) for output, v in per_output.items()}
    run.val_accuracy = {output: run_summary(v, runs) for output, v in val_per_output.items()}
    return run
