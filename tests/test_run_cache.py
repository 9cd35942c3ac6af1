"""The run cache (fusionkit.lab.run_cache): a hit is what training returns, every part of the key
misses when changed (the source included), a killed or failed write leaves no entry, a corrupt
entry is retrained, and the cache can be turned off and cleared."""
import json
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fusionkit.data.atomic import TMP_DIR_PREFIX
from fusionkit.lab import run_cache
from fusionkit.lab.experiments import puzzle_datasets, puzzle_experiment
from fusionkit.lab.run_cache import cached_run, run_key, run_key_parts
from fusionkit.methods import build_model
from fusionkit.training.trainer import TrainConfig

PUZZLE = dict(videos_per_class=4, frames=12, size=32, new_length=3, segments=2, test_segments=2)
CONFIG = TrainConfig(epochs=1, batch_size=4, progress=False, device="cpu")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("run-cache-data")


@pytest.fixture(scope="module")
def frozen_source(tmp_path_factory):
    """A copy of the package's .py files: the key hashes it, so that other edits to the checkout
    while the tests run cannot change the key, and a test can change it."""
    copy = tmp_path_factory.mktemp("source") / "fusionkit"
    shutil.copytree(run_cache.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch, frozen_source):
    monkeypatch.setenv("FUSIONKIT_BUILD", str(tmp_path / "build"))
    monkeypatch.delenv(run_cache.CACHE_ENV, raising=False)
    monkeypatch.setattr(run_cache, "PACKAGE_DIR", frozen_source)
    return tmp_path / "build" / "run-cache"


def datasets(data_dir, puzzle="conjunction", **changes):
    p = {**PUZZLE, **changes}
    return puzzle_datasets(puzzle, data_dir, **p)


def states_equal(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_hit_returns_what_training_returns(data_dir, private_cache):
    first = puzzle_experiment("late", "conjunction", seeds=[0], config=CONFIG, data_dir=data_dir, **PUZZLE)
    second = puzzle_experiment("late", "conjunction", seeds=[0], config=CONFIG, data_dir=data_dir, **PUZZLE)
    assert first.cached == [False] and second.cached == [True]
    assert len(list(private_cache.iterdir())) == 1
    assert second.accuracy == first.accuracy and second.histories == first.histories
    assert states_equal(first.models[0], second.models[0])
    assert second.models[0].training == first.models[0].training
    for output, probs in first.scores[0].probs.items():
        np.testing.assert_array_equal(second.scores[0].probs[output], probs)
    assert second.scores[0].video_ids == first.scores[0].video_ids and second.scores[0].roles == first.scores[0].roles
    # and training again without the cache gives the same numbers (what the hit stands for)
    fresh = puzzle_experiment("late", "conjunction", seeds=[0], config=CONFIG, data_dir=data_dir, cache=False, **PUZZLE)
    assert fresh.cached == [False] and fresh.accuracy == first.accuracy and states_equal(fresh.models[0], first.models[0])
    # a fusion method started from the cached streams keys on their weights and hits too
    fused = [puzzle_experiment("spatial", "conjunction", seeds=[0], config=CONFIG, data_dir=data_dir, fusion="sum",
                               init_from=run.models, **PUZZLE) for run in (first, second)]
    assert [f.cached for f in fused] == [[False], [True]] and fused[0].accuracy == fused[1].accuracy


def _parts(data_dir, **change):
    """run_key_parts of a base request with one part changed."""
    train_set, test_set, classes = change.pop("sets", None) or datasets(data_dir)
    request = dict(method="late", backbone="tiny", config=CONFIG, init_from=None, val_set=None,
                   eval_sets={"test": test_set}, eval_batch_size=4, method_kwargs={"dropout": 0.3})
    request.update(change)
    return run_key_parts(request.pop("method"), train_set, classes, **request)


def _other_init(seed):
    torch.manual_seed(seed)
    return build_model("late", 4, new_length=3)


KEY_CHANGES = {
    "method": lambda d: dict(method="spatial"),
    "options": lambda d: dict(method_kwargs={"dropout": 0.5}),
    "option added": lambda d: dict(method_kwargs={"dropout": 0.3, "head_hidden": 128}),
    "backbone": lambda d: dict(backbone="resnet18"),
    "seed": lambda d: dict(config=replace(CONFIG, seed=1)),
    "lr": lambda d: dict(config=replace(CONFIG, lr=0.02)),
    "epochs": lambda d: dict(config=replace(CONFIG, epochs=2)),
    "batch size": lambda d: dict(config=replace(CONFIG, batch_size=8)),
    "optimizer": lambda d: dict(config=replace(CONFIG, optimizer="adamw")),
    "lr schedule": lambda d: dict(config=replace(CONFIG, lr_schedule="step")),
    "schedule extra": lambda d: dict(config=replace(CONFIG, extra={"adversarial_weight": 0.1})),
    # the same values, but stated: a method's training defaults no longer fill that field
    "explicit field": lambda d: dict(config=CONFIG.set(classes_per_batch=0)),
    "render seed": lambda d: dict(sets=datasets(d, data_seed=1)),
    "videos per class": lambda d: dict(sets=datasets(d, videos_per_class=5)),
    "frames": lambda d: dict(sets=datasets(d, frames=14)),
    "size": lambda d: dict(sets=datasets(d, size=64)),
    "flow backend": lambda d: dict(sets=datasets(d, flow_backend="farneback")),
    "segments": lambda d: dict(sets=datasets(d, segments=3)),
    "snippet length": lambda d: dict(sets=datasets(d, new_length=2)),
    "puzzle": lambda d: dict(sets=datasets(d, "registration")),
    "test set": lambda d: dict(eval_sets={"test": datasets(d, test_segments=3)[1]}),
    "evaluation batch": lambda d: dict(eval_batch_size=8),
    "validation set": lambda d: dict(val_set=datasets(d)[1]),
    "init_from": lambda d: dict(init_from=_other_init(0)),
}


@pytest.mark.parametrize("part", sorted(KEY_CHANGES))
def test_a_change_in_any_part_of_the_key_misses(data_dir, part):
    base = run_key(_parts(data_dir))
    assert run_key(_parts(data_dir)) == base  # the same request: the same key
    assert run_key(_parts(data_dir, **KEY_CHANGES[part](data_dir))) != base


def test_init_from_is_keyed_by_the_weights(data_dir):
    a, b, a_again = _other_init(0), _other_init(1), _other_init(0)
    keys = [run_key(_parts(data_dir, init_from=m)) for m in (a, b, a_again)]
    assert keys[0] != keys[1] and keys[0] == keys[2]


def test_a_change_in_the_source_or_thread_count_misses(data_dir, frozen_source):
    base = run_key(_parts(data_dir))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert run_key(_parts(data_dir)) != base
    finally:
        torch.set_num_threads(threads)
    path = frozen_source / "training" / "trainer.py"
    text = path.read_text()
    try:
        path.write_text(text + "\n# a change\n")
        assert run_key(_parts(data_dir)) != base
    finally:
        path.write_text(text)
    assert run_key(_parts(data_dir)) == base


def test_a_source_change_retrains(data_dir, frozen_source):
    train_set, test_set, classes = datasets(data_dir)
    kwargs = dict(eval_sets={"test": test_set}, config=CONFIG)
    assert not cached_run("late", train_set, classes, **kwargs).hit
    assert cached_run("late", train_set, classes, **kwargs).hit
    path = frozen_source / "methods" / "late.py"
    text = path.read_text()
    try:
        path.write_text(text + "\n# a change\n")
        assert not cached_run("late", train_set, classes, **kwargs).hit
    finally:
        path.write_text(text)


def test_blocks_registered_from_outside_the_package_are_keyed_by_their_source(tmp_path):
    from fusionkit.lab.bench import import_plugins

    plugin = tmp_path / "cache_blocks.py"
    plugin.write_text("from fusionkit.fusion import FusionBlock, register_fusion\n"
                      "@register_fusion('run_cache_test_gate')\n"
                      "class CacheGate(FusionBlock):\n"
                      "    def fuse(self, rgb, flow):\n"
                      "        return rgb * flow.sigmoid(), flow\n")
    import_plugins((str(plugin),))
    sources = run_cache._foreign_sources()
    assert any("class CacheGate" in text and "fusion:run_cache_test_gate:CacheGate" in text
               for text in sources.values())


def test_a_helper_beside_a_plugin_block_is_part_of_its_key(tmp_path):
    """The block calls a function of its file: editing that function alone changes the key."""
    from fusionkit.lab.bench import import_plugins

    def plugin(scale: str) -> Path:
        path = tmp_path / f"helper_blocks_{scale.replace('.', '_')}.py"
        path.write_text("from fusionkit.fusion import FusionBlock, register_fusion\n"
                        f"def mix(rgb, flow):\n    return rgb + {scale} * flow\n"
                        "@register_fusion('run_cache_test_helper')\n"
                        "class HelperBlock(FusionBlock):\n"
                        "    def fuse(self, rgb, flow):\n"
                        "        return mix(rgb, flow), flow\n")
        return path

    import_plugins((str(plugin("0.5")),))
    before = run_cache._foreign_sources()
    from fusionkit.fusion import FUSIONS
    dict.pop(FUSIONS, "run_cache_test_helper")
    import_plugins((str(plugin("2.0")),))
    after = run_cache._foreign_sources()
    assert before != after and any("2.0 * flow" in text for text in after.values())


def test_a_block_defined_without_a_source_file_makes_runs_uncacheable(monkeypatch):
    """A notebook cell's block lives in __main__, which has no file: its cells cannot be traced."""
    import types

    from fusionkit.fusion import FusionBlock, register_fusion

    cell = types.ModuleType("notebook_cell_module")  # like a kernel's __main__: no __file__
    monkeypatch.setitem(sys.modules, "notebook_cell_module", cell)
    exec("from fusionkit.fusion import FusionBlock\n"
         "class CellBlock(FusionBlock):\n"
         "    def fuse(self, rgb, flow):\n"
         "        return rgb + flow, flow\n", cell.__dict__)
    cell.CellBlock.__module__ = "notebook_cell_module"
    register_fusion("run_cache_test_cell")(cell.CellBlock)
    with pytest.raises(run_cache.Uncacheable, match=r"fusion 'run_cache_test_cell' is defined in notebook_cell_module, "
                                                    r"whose source cannot be read .* put it in a \.py file"):
        run_cache._foreign_sources()


def test_a_request_without_identity_is_trained_not_cached(data_dir, private_cache, monkeypatch):
    train_set, test_set, classes = datasets(data_dir)

    def no_identity(*args, **kwargs):
        raise run_cache.Uncacheable("a block defined where its source cannot be read")

    monkeypatch.setattr(run_cache, "run_key_parts", no_identity)
    with pytest.warns(RuntimeWarning, match="without caching it: a block defined"):
        run = cached_run("late", train_set, classes, eval_sets={"test": test_set}, config=CONFIG)
    assert not run.hit and run.key is None and not private_cache.exists()
    with pytest.raises(run_cache.Uncacheable, match="has no identity"):
        run_cache._canonical({"block": object()})


def test_a_failed_write_leaves_no_entry(data_dir, private_cache, monkeypatch):
    train_set, test_set, classes = datasets(data_dir)

    def killed(*args):
        raise KeyboardInterrupt("killed while writing the scores")

    monkeypatch.setattr(run_cache, "_save_scores", killed)
    with pytest.raises(KeyboardInterrupt):
        cached_run("late", train_set, classes, eval_sets={"test": test_set}, config=CONFIG)
    assert list(private_cache.iterdir()) == []  # neither an entry nor a partial folder


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_killed_writers_partial_entry_is_ignored_and_removed(data_dir, private_cache):
    train_set, test_set, classes = datasets(data_dir)
    kwargs = dict(eval_sets={"test": test_set}, config=CONFIG)
    key = run_key(run_key_parts("late", train_set, classes, backbone="tiny", config=CONFIG, init_from=None,
                                val_set=None, eval_sets={"test": test_set}, eval_batch_size=CONFIG.batch_size,
                                method_kwargs={}))
    private_cache.mkdir(parents=True)
    killed = private_cache / f"{TMP_DIR_PREFIX}{key}.abc"  # a SIGKILLed write: half a checkpoint, no entry.json
    killed.mkdir()
    (killed / "checkpoint.pt").write_bytes(b"\x80\x02half")
    (killed / run_cache.WRITER_FILE).write_text(f"{platform.node()} {_dead_pid()}")
    busy = private_cache / f"{TMP_DIR_PREFIX}{key}.def"  # another process writing the same run right now
    busy.mkdir()
    (busy / run_cache.WRITER_FILE).write_text(f"{platform.node()} {os.getpid()}")
    run = cached_run("late", train_set, classes, **kwargs)
    assert not run.hit and run.key == key
    assert not killed.exists() and busy.exists()
    assert run_cache.entry_problem(private_cache / key) is None
    assert cached_run("late", train_set, classes, **kwargs).hit


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete a file", "no entry.json"])
def test_a_corrupt_entry_is_retrained_never_trusted(data_dir, private_cache, damage):
    train_set, test_set, classes = datasets(data_dir)
    kwargs = dict(eval_sets={"test": test_set}, config=CONFIG)
    first = cached_run("late", train_set, classes, **kwargs)
    entry = private_cache / first.key
    checkpoint = entry / "checkpoint.pt"
    data = checkpoint.read_bytes()
    if damage == "flip a byte":
        checkpoint.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    elif damage == "truncate":
        (entry / "history.json").write_text("[")
    elif damage == "delete a file":
        (entry / "scores-test.npz").unlink()
    else:
        (entry / run_cache.ENTRY_FILE).unlink()
    assert run_cache.entry_problem(entry) is not None
    with pytest.warns(RuntimeWarning, match="is corrupt"):
        again = cached_run("late", train_set, classes, **kwargs)
    assert not again.hit and run_cache.entry_problem(entry) is None
    assert states_equal(again.model, first.model)
    assert cached_run("late", train_set, classes, **kwargs).hit


def test_turning_it_off_and_clearing_it(data_dir, private_cache, monkeypatch, capsys):
    train_set, test_set, classes = datasets(data_dir)
    kwargs = dict(eval_sets={"test": test_set}, config=CONFIG)
    assert not cached_run("late", train_set, classes, cache=False, **kwargs).hit and not private_cache.exists()
    monkeypatch.setenv(run_cache.CACHE_ENV, "off")
    assert not run_cache.cache_enabled() and run_cache.cache_enabled(True)
    cached_run("late", train_set, classes, **kwargs)
    assert not private_cache.exists()
    monkeypatch.delenv(run_cache.CACHE_ENV)
    run = cached_run("late", train_set, classes, **kwargs)
    assert run_cache.info()["entries"] == 1 and run_cache.info()["bytes"] > 0
    assert run_cache.main(["info"]) == 0 and "1 entries" in capsys.readouterr().out
    assert run_cache.main(["clear"]) == 0 and "removed 1 entries" in capsys.readouterr().out
    assert run_cache.info()["entries"] == 0 and not (private_cache / run.key).exists()


def test_entry_records_what_determined_it(data_dir, private_cache):
    train_set, test_set, classes = datasets(data_dir, data_seed=1)
    run = cached_run("late", train_set, classes, eval_sets={"test": test_set}, config=CONFIG)
    record = json.loads((private_cache / run.key / run_cache.ENTRY_FILE).read_text())
    parts = record["parts"]
    assert parts["train_set"]["puzzle"]["seed"] == 1 and parts["train_set"]["puzzle"]["puzzle"] == "conjunction"
    assert parts["train_set"]["backend"] == "dis" and parts["config"]["device"] == "cpu"
    assert "progress" not in parts["config"] and parts["config"]["seed"] == 0
    assert set(record["files"]) >= {"checkpoint.pt", "history.json", "run.json", "scores-test.npz"}
    with pytest.raises(ValueError, match="identifiers"):
        cached_run("late", train_set, classes, eval_sets={"../x": test_set}, config=CONFIG)


def test_runs_lists_what_was_trained_with_its_seconds(data_dir, private_cache, capsys):
    train_set, test_set, classes = datasets(data_dir, data_seed=1)
    late = cached_run("late", train_set, classes, eval_sets={"test": test_set}, config=CONFIG)
    fused = cached_run("spatial", train_set, classes, eval_sets={"test": test_set}, config=replace(CONFIG, seed=3),
                       init_from=late.model, fusion="sum")
    partial = private_cache / f"{run_cache.TMP_DIR_PREFIX}x"  # a partial write, even one with its entry.json, is not a run
    shutil.copytree(private_cache / late.key, partial)
    rows = run_cache.runs()
    assert [r["method"] for r in rows] == ["late", "spatial"] and [r["key"] for r in rows] == [late.key, fused.key]
    assert rows[1]["options"]["fusion"] == "sum" and rows[1]["seed"] == 3 and rows[0]["seed"] == 0
    assert all(r["puzzle"] == "conjunction" and r["data_seed"] == 1 and r["epochs"] == CONFIG.epochs for r in rows)
    assert [r["seconds"] for r in rows] == [late.seconds, fused.seconds] and all(r["seconds"] > 0 for r in rows)
    assert run_cache.main(["runs"]) == 0
    out = capsys.readouterr().out
    assert "  spatial(fusion=sum)  conjunction 32px render 1  1 epochs, seed 3" in out and "  late  conjunction" in out
    assert out.splitlines()[-1].startswith("2 runs, ")


def test_an_entry_that_does_not_load_is_retrained(data_dir, private_cache, monkeypatch):
    import fusionkit.methods

    train_set, test_set, classes = datasets(data_dir)
    kwargs = dict(eval_sets={"test": test_set}, config=CONFIG)
    first = cached_run("late", train_set, classes, **kwargs)

    def unloadable(*args, **kwargs):
        raise TypeError("an option did not survive JSON")

    monkeypatch.setattr(fusionkit.methods, "load_run", unloadable)
    with pytest.warns(RuntimeWarning, match="does not load: TypeError: an option did not survive JSON"):
        again = cached_run("late", train_set, classes, **kwargs)
    assert not again.hit and again.key == first.key and states_equal(again.model, first.model)
