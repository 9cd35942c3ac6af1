"""One call that the notebooks and ``fusionkit bench`` share: train a method on a puzzle over
several seeds and summarise per-output test accuracy (the results schema's ``accuracy`` entry)."""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

from fusionkit.data.dataset import TwoStreamDataset, build_dataset
from fusionkit.data.puzzles import get_puzzle, prepare_puzzle
from fusionkit.training.evaluate import Scores, classification_metrics, predict
from fusionkit.methods import run_method
from fusionkit.lab.results import seed_summary
from fusionkit.training.trainer import TrainConfig


@dataclass
class PuzzleRun:
    accuracy: dict  # output name -> seed_summary
    scores: list[Scores]  # test scores per seed (for weight sweeps, confusion matrices)
    histories: list[list[dict]]
    models: list


def puzzle_datasets(puzzle: str, data_dir: str | os.PathLike = "data", videos_per_class: int = 30, frames: int = 24,
                    size: int = 64, segments: int = 3, test_segments: int = 5, new_length: int = 5,
                    flow_backend: str = "dis", workers: int = 1) -> tuple[TwoStreamDataset, TwoStreamDataset, int]:
    """(train set, test set, number of classes) of a puzzle, rendered and its flow extracted once
    (data seed 0) under ``data_dir``."""
    root, cache = prepare_puzzle(puzzle, data_dir, backend=flow_backend, videos_per_class=videos_per_class,
                                 frames=frames, size=size, workers=workers, progress=False)
    name = f"puzzles:{puzzle}"
    # a puzzle's decoded frames and flow fit in memory (tens of MB): decode each video once
    train_set = build_dataset(name, root, cache, "train", num_segments=segments, new_length=new_length, in_memory=True)
    test_set = build_dataset(name, root, cache, "test", num_segments=test_segments, new_length=new_length,
                             in_memory=True)
    return train_set, test_set, len(get_puzzle(puzzle).classes)


def puzzle_experiment(method: str, puzzle: str, seeds=(0, 1), config: TrainConfig | None = None,
                      data_dir: str | os.PathLike = "data", videos_per_class: int = 30, frames: int = 24,
                      size: int = 64, segments: int = 3, test_segments: int = 5, new_length: int = 5,
                      backbone: str = "tiny", flow_backend: str = "dis", workers: int = 1,
                      init_from: list | None = None, track_test: bool = False, **method_kwargs) -> PuzzleRun:
    """Render the puzzle (once; data seed 0), then for each training seed train ``method`` and test it.

    The puzzle's videos are the same for every seed; the seed changes the initialisation, the
    snippet sampling and the augmentation, which is the variation the results report.
    ``init_from``: one trained model per seed to start from (e.g. ``late_run.models`` for fusion
    methods fine-tuned from separately trained streams); ``method_kwargs`` go to
    :func:`fusionkit.methods.run_method` (model options, ``finetune``, ``pretrain_config``).
    ``track_test``: also test after every epoch, so the histories hold the test accuracy of every
    output along training (e.g. at the end of each ``alternate`` iteration, Chi et al. Table 1).
    """
    train_set, test_set, num_classes = puzzle_datasets(
        puzzle, data_dir, videos_per_class=videos_per_class, frames=frames, size=size, segments=segments,
        test_segments=test_segments, new_length=new_length, flow_backend=flow_backend, workers=workers)
    config = config or TrainConfig()
    per_output: dict[str, list[float]] = {}
    run = PuzzleRun({}, [], [], [])
    for i, seed in enumerate(seeds):
        model, history, _ = run_method(method, train_set, None, num_classes, backbone=backbone,
                                       config=replace(config, seed=seed),
                                       init_from=init_from[i] if init_from else None,
                                       val_set=test_set if track_test else None, **method_kwargs)
        scores = predict(model, test_set, batch_size=config.batch_size, device=config.device)
        for output, probs in scores.probs.items():
            per_output.setdefault(output, []).append(classification_metrics(probs, scores.labels)["top1"])
        run.scores.append(scores)
        run.histories.append(history)
        run.models.append(model)
    run.accuracy = {output: seed_summary(v) for output, v in per_output.items()}
    return run
