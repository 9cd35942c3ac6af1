"""Seeds x data seeds: puzzle_experiment and the benchmark run every (render, training seed), report
mean, std, every run and a 95% t-interval; the bench's test split; the validation split."""

import numpy as np
import pytest

from fusionkit.cli import main
from fusionkit.data.puzzles import make_puzzles
from fusionkit.data.splits import load_split
from fusionkit.lab import bench
from fusionkit.lab.bench import BenchSettings
from fusionkit.lab.experiments import puzzle_datasets, puzzle_experiment
from fusionkit.lab.results import run_summary, t_interval, validate_results
from fusionkit.training.trainer import TrainConfig

PUZZLE = dict(videos_per_class=4, frames=12, size=32, new_length=3, segments=2, test_segments=2)
CONFIG = TrainConfig(epochs=1, batch_size=4, progress=False, device="cpu")


@pytest.fixture(autouse=True)
def private_run_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONKIT_BUILD", str(tmp_path / "build"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("seeds-data")


def test_t_interval_by_hand():
    # mean .7, sample std .2, n = 3: t_{.975, 2} = 4.302653 -> half width 4.302653 * .2 / sqrt(3) = .496828
    low, high = t_interval([0.5, 0.7, 0.9])
    assert low == pytest.approx(0.7 - 0.496828, abs=1e-6) and high == pytest.approx(0.7 + 0.496828, abs=1e-6)
    assert t_interval([0.8]) is None
    assert t_interval([0.6, 0.6, 0.6]) == pytest.approx([0.6, 0.6])


def test_run_summary_and_its_schema():
    s = run_summary([0.5, 0.7, 0.9, 0.7], [(0, 0), (0, 1), (1, 0), (1, 1)])
    assert s["mean"] == pytest.approx(0.7) and s["std"] == pytest.approx(np.std([0.5, 0.7, 0.9, 0.7]))
    assert s["seeds"] == [0.5, 0.7, 0.9, 0.7] and s["runs"] == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert s["ci95"][0] < 0.7 < s["ci95"][1]
    with pytest.raises(ValueError, match="3 values but 2 runs"):
        run_summary([0.1, 0.2, 0.3], [(0, 0), (0, 1)])
    results = {"notebook": "x", "params": {}, "extra": {}, "accuracy": {"order": {"late": s}}}
    assert validate_results(results) == []
    old = {k: s[k] for k in ("mean", "std", "seeds")}  # committed files: no runs, no interval
    assert validate_results({**results, "accuracy": {"order": {"late": old}}}) == []
    bad_runs = {**s, "runs": [[0, 0]]}
    assert any("['runs'] must hold one" in p for p in validate_results({**results, "accuracy": {"order": {"late": bad_runs}}}))
    bad_ci = {**s, "ci95": [0.8, 0.9]}
    assert any("['ci95'] must be" in p for p in validate_results({**results, "accuracy": {"order": {"late": bad_ci}}}))
    unknown = {**s, "sem": 0.1}
    assert any("run_summary" in p for p in validate_results({**results, "accuracy": {"order": {"late": unknown}}}))


def test_every_render_and_seed_is_a_run(data_dir):
    run = puzzle_experiment("late", "conjunction", seeds=[0, 1], data_seeds=[0, 1], config=CONFIG, data_dir=data_dir,
                            **PUZZLE)
    assert run.runs == [(0, 0), (0, 1), (1, 0), (1, 1)] and len(run.models) == len(run.scores) == 4
    summary = run.accuracy["late"]
    assert summary["runs"] == [[0, 0], [0, 1], [1, 0], [1, 1]] and len(summary["seeds"]) == 4
    assert summary["mean"] == pytest.approx(np.mean(summary["seeds"]))
    assert summary["ci95"] == pytest.approx(t_interval(summary["seeds"]))
    # each data seed is its own render: its own folder, other frames under the same names
    folders = sorted(p.name for p in (data_dir / "puzzles").iterdir())
    assert any(f.endswith("_seed0") for f in folders) and any(f.endswith("_seed1") for f in folders)
    assert run.scores[0].video_ids == run.scores[2].video_ids
    assert not np.array_equal(run.scores[0].probs["rgb"], run.scores[2].probs["rgb"])
    # the default is today's: one render (data seed 0), a run per training seed
    one = puzzle_experiment("late", "conjunction", seeds=[1], config=CONFIG, data_dir=data_dir, **PUZZLE)
    assert one.runs == [(0, 1)] and one.accuracy["late"]["seeds"] == [summary["seeds"][1]]
    with pytest.raises(ValueError, match="init_from has 1 models for 4 runs"):
        puzzle_experiment("spatial", "conjunction", seeds=[0, 1], data_seeds=[0, 1], config=CONFIG, data_dir=data_dir,
                          init_from=run.models[:1], **PUZZLE)
    with pytest.raises(ValueError, match="no runs"):
        puzzle_experiment("late", "conjunction", seeds=[], config=CONFIG, data_dir=data_dir, **PUZZLE)


def test_validation_split_holds_out_training_groups(data_dir):
    sizes = dict(PUZZLE, videos_per_class=9)  # 3 groups of 3 clips: group 1 tests, 2-3 train
    train_all, test_set, _ = puzzle_datasets("conjunction", data_dir, **sizes)
    train_set, test_again, classes, val_set = puzzle_datasets("conjunction", data_dir, val_groups=1, **sizes)
    assert [r.path for r in test_again.records] == [r.path for r in test_set.records]
    assert {r.path for r in train_set.records} | {r.path for r in val_set.records} == {r.path for r in train_all.records}
    assert all("_g03_" in r.path for r in val_set.records) and not any("_g03_" in r.path for r in train_set.records)
    assert not val_set.train and val_set.num_segments == test_set.num_segments and train_set.train
    run = puzzle_experiment("late", "conjunction", seeds=[0], config=CONFIG, data_dir=data_dir, val_groups=1, **sizes)
    assert set(run.val_accuracy) == set(run.accuracy) and len(run.val_scores) == 1
    assert run.val_scores[0].video_ids == [r.video_id for r in val_set.records]
    with pytest.raises(ValueError, match="val_groups=2: the training videos have 2 groups"):
        puzzle_datasets("conjunction", data_dir, val_groups=2, **sizes)


def test_bench_test_split_has_100_videos_and_the_old_training_size(tmp_path):
    teaching = bench.TEACHING
    new = make_puzzles("motion", tmp_path / "new", teaching.videos_per_class, frames=4, size=32,
                       test_groups=teaching.test_groups, progress=False)
    old = make_puzzles("motion", tmp_path / "old", 30, frames=4, size=32, progress=False)  # the benchmark's before
    new_split, old_split = load_split("puzzles:motion", new), load_split("puzzles:motion", old)
    assert len(new_split.test) >= 100 and 100 / len(new_split.test) <= 1  # one video at most 1 point
    assert len(new_split.train) == len(old_split.train) == 4 * 21
    assert len(old_split.test) == 36


def test_bench_runs_every_render_and_seed(tmp_path):
    settings = BenchSettings(puzzles=("conjunction",), seeds=(0, 1), data_seeds=(0, 1), videos_per_class=4,
                             test_groups=None, frames=12, size=32, new_length=3, epochs=1, finetune_epochs=1)
    report = bench.run_benchmark(("late",), settings, data_dir=tmp_path / "data", work_dir=tmp_path / "work", workers=1,
                                 device="cpu", progress=False)
    cell = report["accuracy"]["conjunction"]["late"]
    assert cell["runs"] == [[0, 0], [0, 1], [1, 0], [1, 1]] and len(cell["seeds"]) == 4 and cell["ci95"] is not None
    jobs = sorted(p.name for p in (tmp_path / "work" / "jobs").rglob("*.json"))
    assert jobs == [f"conjunction_data{d}_seed{s}.json" for d in (0, 1) for s in (0, 1)]
    assert report["cached_runs"] == 0
    again = bench.run_benchmark(("late",), settings, data_dir=tmp_path / "data", work_dir=tmp_path / "work2",
                                workers=1, device="cpu", progress=False)
    assert again["accuracy"] == report["accuracy"] and again["cached_runs"] == 4  # every run from the run cache
    assert "[" in bench.markdown_table(report["accuracy"])  # the interval in the table


def test_bench_command_takes_explicit_seed_lists(tmp_path, monkeypatch):
    seen = {}

    def capture(entries, settings, **kwargs):
        seen.update(settings=settings, cache=kwargs["cache"])
        raise SystemExit(0)

    monkeypatch.setattr(bench, "run_benchmark", capture)
    with pytest.raises(SystemExit):
        main(["bench", "--seeds", "0", "2", "5", "--data-seeds", "0", "1", "--test-groups", "4", "--size", "64", "--no-cache",
              "--data", str(tmp_path), "--quiet"])
    s = seen["settings"]
    assert s.seeds == (0, 2, 5) and s.data_seeds == (0, 1) and s.test_groups == 4 and s.size == 64
    assert seen["cache"] is False
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--data", str(tmp_path), "--quiet"])
    assert seen["settings"] == bench.QUICK and seen["cache"] is None
    assert bench.TEACHING.seeds == (0, 1, 2) and bench.TEACHING.data_seeds == (0,)
