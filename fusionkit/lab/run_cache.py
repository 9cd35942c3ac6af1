"""A content-addressed cache of trained runs: each (method, options, training, data, seed, code) is
trained once and reused by every notebook, benchmark job or re-run cell that asks for it again.

Notebooks 02-07 and ``fusionkit bench`` train the same ``late`` streams on the same puzzles, and a
student re-running a cell retrains what they already have. :func:`cached_run` trains a method
(:func:`fusionkit.methods.run_method`) and tests it (:func:`fusionkit.training.evaluate.predict`),
or returns what an earlier identical call stored: the model's state, its history and its test
scores, exactly what training would give.

**The key** (:func:`run_key_parts`) is everything that determines a run:

- the method, its model and training options (``finetune``, ``pretrain_config``, ``dropout``, ...),
  the backbone and the number of classes;
- every field of the :class:`~fusionkit.training.trainer.TrainConfig` that affects training (all
  but ``progress``), which of them the caller set (``explicit``: a method's training defaults fill
  only the others), with ``device`` resolved (``auto`` is CUDA on one machine, the CPU on another);
- the datasets' identity (:func:`dataset_identity`): the training set, the set tested after every
  epoch (``val_set``, which a ``plateau`` schedule reads) and the test set: their videos and
  labels, sampling (segments, snippet length, strides), transform, and the frames and flow they are
  read from: a puzzle's ``puzzle.json`` (puzzle, render seed, videos per class, frames, size, test
  groups, render version), the flow backend, and the flow cache's manifest (every video's
  ``meta.json``: its files and their sizes), which is also what identifies a real dataset;
- the weights it starts from (``init_from``): a hash of that model's state dict, which is the
  identity of the run that trained it and stays right for a model changed since or trained
  outside the cache;
- the code: a hash of every ``.py`` file of the fusionkit package, so any change to the library
  misses, and the whole source file of every module that registers fusion blocks, methods or
  schedules from outside it (a student's plugin file, helpers beside the block included; a block
  defined in a notebook cell has no file, so while it is registered runs are trained, not cached,
  with a warning that says how to cache them); the versions of torch and numpy
  and torch's number of CPU threads (reductions on several threads can round differently).

**Entries** live in ``<FUSIONKIT_BUILD or <project>/build>/run-cache/<key>/`` (:func:`cache_dir`):
the run folder :func:`~fusionkit.methods.run_method` writes (``run.json``, ``checkpoint.pt``,
``history.json``), the scores on each evaluation set (``scores-<name>.npz`` and ``.json``) and last
``entry.json``: the key's parts, the training seconds, and the size and SHA-256 of every file. An
entry is built in a ``.partial-*`` folder renamed into place when complete
(:func:`fusionkit.data.atomic.atomic_directory`), so a run killed mid-write leaves no entry; the
partial folder names the process writing it, and the next call deletes it once that process is
gone (not while another process, a benchmark worker, is still writing it). Every hit checks every file against ``entry.json``; an entry that fails (a file missing,
truncated or changed) is deleted and the run trained again, never trusted.

**Turning it off, clearing it.** ``cache=False`` (:func:`cached_run`, ``puzzle_experiment``) or
``FUSIONKIT_RUN_CACHE=off`` in the environment trains every time. ``python -m fusionkit.lab.run_cache
clear`` (or deleting the folder) empties it; ``python -m fusionkit.lab.run_cache info`` shows its
size, ``... runs`` every trained run with the seconds it took. Entries are never evicted: a
tiny-backbone run on a puzzle takes a few MB.

**Why our own.** No well-kept library caches torch training runs keyed by content and source
hash. The nearest, ``joblib.Memory`` (installed: joblib 1.6), keys a function call by pickling its
arguments and hashing its own function's source only, not the code it calls (a change in
``fusionkit.training`` would return a stale run); it would hash a whole ``TwoStreamDataset``
(its decoded frames) instead of its identity, and an ``init_from`` model by pickle, where a state
dict's tensors are what matter; and it pickles the return value (a model whose class a student
defined in a notebook cell pickles by reference and may not load). So it would not do.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import platform
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusionkit.data.atomic import TMP_DIR_PREFIX, atomic_directory
from fusionkit.lab.paths import project_dir

CACHE_ENV = "FUSIONKIT_RUN_CACHE"  # "off" (or 0, false, no): train every time
CACHE_OFF_VALUES = ("off", "0", "false", "no")
ENTRY_FILE = "entry.json"  # written last: lists every other file with its size and SHA-256
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the fusionkit package whose source is hashed
NOT_TRAINING_FIELDS = ("progress",)  # TrainConfig fields that change what is printed, not what is trained


class Uncacheable(Exception):
    """Something a run depends on has no identity the cache can record (then it is trained, not cached)."""


@dataclass
class CachedRun:
    """What :func:`cached_run` returns: the trained model, its history (one dict per epoch), its
    scores on each evaluation set by name (:class:`~fusionkit.training.evaluate.Scores`), the key,
    whether it came from the cache, and the seconds its training and testing took when trained."""

    model: object
    history: list[dict]
    scores: dict
    key: str | None
    hit: bool
    seconds: float


def cache_enabled(cache: bool | None = None) -> bool:
    """``cache`` if given, else on unless ``$FUSIONKIT_RUN_CACHE`` is ``off`` (``0``, ``false``, ``no``)."""
    if cache is not None:
        return bool(cache)
    return os.environ.get(CACHE_ENV, "").strip().lower() not in CACHE_OFF_VALUES


def cache_dir() -> Path:
    """``$FUSIONKIT_BUILD/run-cache``, else ``<project>/build/run-cache`` (:func:`~fusionkit.lab.paths.project_dir`)."""
    return Path(project_dir("build/run-cache"))


# ---- the key -------------------------------------------------------------------------------------
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_hash(package_dir: str | os.PathLike | None = None) -> str:
    """SHA-256 over the relative path and bytes of every ``.py`` file under ``package_dir``
    (default: the fusionkit package, :data:`PACKAGE_DIR`)."""
    digest = hashlib.sha256()
    root = Path(package_dir if package_dir is not None else PACKAGE_DIR)
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _foreign_sources() -> dict[str, str]:
    """The source of every module that defines a registered fusion block, method (its builder and
    configure function) or schedule outside the fusionkit package, by module name, with what each
    registers. The whole file, not the block's class alone: a helper function beside it in the same
    file is part of what it computes (modules that file imports in turn are not followed). Uncacheable
    when a module has no source file to read: a block defined in a notebook cell lives in
    ``__main__``, whose other cells it may call and which cannot be traced."""
    from fusionkit.fusion import FUSIONS
    from fusionkit.methods.recipe import METHODS
    from fusionkit.training.schedules import SCHEDULES

    registered: dict[str, list[tuple[str, str, str]]] = {}  # module -> (kind, name, qualname) it registers
    for kind, registry in (("fusion", FUSIONS), ("method", METHODS), ("schedule", SCHEDULES)):
        registry._load()
        for name, obj in sorted(dict.items(registry)):
            parts = [obj.build, obj.configure] if kind == "method" else [obj]
            for part in parts:
                module = getattr(part, "__module__", None) or ""
                if part is None or module == "fusionkit" or module.startswith("fusionkit."):
                    continue
                registered.setdefault(module, []).append((kind, name, getattr(part, "__qualname__", "")))
    return {f"module:{module}": "".join(f"{kind}:{name}:{qualname}\n" for kind, name, qualname in parts)
            + _module_source(module, f"{parts[0][0]} {parts[0][1]!r}") for module, parts in registered.items()}


def _module_source(module: str, what: str) -> str:
    try:  # TypeError for a module without a file (a notebook kernel's __main__) or none loaded
        return inspect.getsource(sys.modules.get(module))
    except (OSError, TypeError) as e:
        raise Uncacheable(f"{what} is defined in {module}, whose source cannot be read ({e}): in a notebook cell "
                          f"or an interactive session the cells its code calls cannot be traced, so its runs are "
                          f"trained, not cached; to cache them, put it in a .py file and import it (or give the "
                          f"file to `fusionkit bench --plugins`)") from None


def state_hash(model) -> str:
    """SHA-256 of a model's state dict: every tensor's name, dtype, shape and bytes, in order."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _canonical(x):
    """``x`` as JSON-able data that two equal requests share (Uncacheable for what has no identity)."""
    from torch import nn

    from fusionkit.training.trainer import TrainConfig

    if isinstance(x, TrainConfig):
        return {"TrainConfig": config_identity(x)}
    if isinstance(x, nn.Module):
        return {"state": state_hash(x)}
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {type(x).__qualname__: _canonical(dataclasses.asdict(x))}
    if isinstance(x, dict):
        return {str(k): _canonical(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [_canonical(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, Path):
        return str(x)
    raise Uncacheable(f"{type(x).__name__} {x!r} has no identity to key a run by")


def config_identity(config) -> dict:
    """A TrainConfig's fields that affect training, which ones were set, and the device it resolves to."""
    from fusionkit.training.runtime import resolve_device

    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name not in NOT_TRAINING_FIELDS and f.name != "explicit"}
    fields["device"] = str(resolve_device(config.device))
    return {**_canonical(fields), "explicit": sorted(config.explicit)}


def dataset_identity(dataset) -> dict | None:
    """What determines a :class:`~fusionkit.data.dataset.TwoStreamDataset`'s samples: its videos and
    labels, sampling, transform, and the store it reads: the flow cache's extract-flow record and
    manifest (every video's ``meta.json``), and a puzzle root's ``puzzle.json`` (render seed, sizes)."""
    if dataset is None:
        return None
    from fusionkit.data.flow import META_FILE, read_cache_info

    store = dataset.store
    identity = {
        "videos": [[r.path, int(r.label)] for r in dataset.records],
        "sampling": _canonical({k: getattr(dataset, k) for k in
                                ("num_segments", "new_length", "train", "sampling", "stride", "test_stride",
                                 "flow_bound")}),
        "transform": repr(getattr(dataset, "transform", None)),
        "store": type(store).__qualname__,
    }
    root = Path(store.root)
    info = read_cache_info(root) if (root / "extract-flow.json").is_file() else {}
    identity["backend"] = info.get("backend")
    manifest = hashlib.sha256()
    for record in dataset.records:
        meta = root / record.video_id / META_FILE
        if not meta.is_file():
            raise Uncacheable(f"{meta} is missing: the frames of {record.video_id} have no manifest to identify them "
                              f"(a store written by `fusionkit extract-flow` has one per video)")
        manifest.update(record.video_id.encode() + b"\0" + meta.read_bytes() + b"\0")
    identity["manifest"] = manifest.hexdigest()
    videos_root = getattr(store, "videos_root", None)
    puzzle = Path(videos_root) / "puzzle.json" if videos_root is not None else None
    identity["puzzle"] = json.loads(puzzle.read_text()) if puzzle is not None and puzzle.is_file() else None
    return identity


def run_key_parts(method: str, train_set, num_classes: int, *, backbone: str, config, init_from, val_set,
                  eval_sets: dict, eval_batch_size: int, method_kwargs: dict) -> dict:
    """Everything that determines a run, by part (see the module docstring); Uncacheable when a
    part has no identity (an option that is an arbitrary object, a block whose source is unknown)."""
    import torch

    from fusionkit.training.trainer import TrainConfig

    return {
        "method": method,
        "options": _canonical(method_kwargs),
        "backbone": backbone,
        "num_classes": int(num_classes),
        "config": config_identity(config if config is not None else TrainConfig()),
        "train_set": dataset_identity(train_set),
        "val_set": dataset_identity(val_set),
        "eval_sets": {name: dataset_identity(d) for name, d in sorted(eval_sets.items())},
        "eval_batch_size": int(eval_batch_size),
        "init_from": state_hash(init_from) if init_from is not None else None,
        "code": {"fusionkit": source_hash(), "registered": _foreign_sources(), "torch": torch.__version__,
                 "numpy": np.__version__, "threads": torch.get_num_threads()},
    }


def run_key(parts: dict) -> str:
    """The hex SHA-256 of ``parts`` as canonical JSON (sorted keys)."""
    return _sha256(json.dumps(parts, sort_keys=True, separators=(",", ":")).encode())


# ---- entries -------------------------------------------------------------------------------------
def _file_manifest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256(p.read_bytes())}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ENTRY_FILE}


def entry_problem(entry: Path) -> str | None:
    """Why the entry folder cannot be trusted (None when every file matches ``entry.json``)."""
    try:
        recorded = json.loads((entry / ENTRY_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{ENTRY_FILE} is missing or unreadable ({type(e).__name__})"
    for name, want in recorded.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["size"]:
            return f"{name} is {path.stat().st_size} bytes, {want['size']} when written"
        if _sha256(path.read_bytes()) != want["sha256"]:
            return f"{name} changed since it was written (SHA-256 differs)"
    return None


def _save_scores(folder: Path, name: str, scores) -> None:
    np.savez(folder / f"scores-{name}.npz", labels=scores.labels, **{f"probs/{k}": v for k, v in scores.probs.items()})
    (folder / f"scores-{name}.json").write_text(json.dumps({"outputs": list(scores.probs),
                                                            "video_ids": list(scores.video_ids), "roles": scores.roles}))


def _load_scores(folder: Path, name: str):
    from fusionkit.training.evaluate import Scores

    info = json.loads((folder / f"scores-{name}.json").read_text())
    with np.load(folder / f"scores-{name}.npz") as arrays:
        return Scores({k: arrays[f"probs/{k}"] for k in info["outputs"]}, arrays["labels"], info["video_ids"],
                      info["roles"])


def _load_entry(entry: Path, device) -> CachedRun:
    from fusionkit.methods import load_run

    model, _ = load_run(entry, device="cpu")
    record = json.loads((entry / ENTRY_FILE).read_text())
    model.to(device).train(record["training_mode"])
    history = json.loads((entry / "history.json").read_text())
    scores = {name: _load_scores(entry, name) for name in record["eval_sets"]}
    return CachedRun(model, history, scores, entry.name, True, record["seconds"])


WRITER_FILE = ".writer"  # in a partial entry: the pid and host writing it (deleted before the rename)
ORPHAN_SECONDS = 60  # a partial entry without a writer file this old was left by a killed write


def _writer_alive(partial: Path) -> bool:
    try:
        host, pid = (partial / WRITER_FILE).read_text().split()
    except (OSError, ValueError):  # not written yet (a writer that just started) or killed before writing it
        return time.time() - partial.stat().st_mtime < ORPHAN_SECONDS
    if host != platform.node():
        return True  # another machine's write on a shared disk: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_partial_entries(root: str | os.PathLike | None = None) -> int:
    """Delete the ``.partial-*`` folders that killed writes left in the cache (not those another
    process is writing now: each names its writer); return how many."""
    root = Path(root) if root is not None else cache_dir()
    removed = 0
    for partial in root.glob(f"{TMP_DIR_PREFIX}*") if root.is_dir() else ():
        if partial.is_dir() and not _writer_alive(partial):
            shutil.rmtree(partial, ignore_errors=True)
            removed += 1
    return removed


def cached_run(method: str, train_set, num_classes: int, *, eval_sets: dict | None = None,
               eval_batch_size: int | None = None, backbone: str = "tiny", config=None, init_from=None, val_set=None,
               cache: bool | None = None, **method_kwargs) -> CachedRun:
    """Train ``method`` on ``train_set`` (:func:`fusionkit.methods.run_method`, same arguments) and
    test it on each of ``eval_sets`` (``{"test": test_set, ...}``;
    :func:`~fusionkit.training.evaluate.predict` with ``eval_batch_size``, default the config's
    batch size), or return the stored result of an identical earlier call.

    ``cache``: False trains every time; None (default) caches unless ``$FUSIONKIT_RUN_CACHE=off``.
    A run whose key cannot be formed (see :func:`run_key_parts`) is trained with a warning saying why.
    """
    from fusionkit.methods import run_method
    from fusionkit.training.evaluate import predict
    from fusionkit.training.runtime import resolve_device
    from fusionkit.training.trainer import TrainConfig

    config = config if config is not None else TrainConfig()
    eval_sets = dict(eval_sets or {})
    bad = sorted(name for name in eval_sets if not str(name).isidentifier())
    if bad:
        raise ValueError(f"evaluation set names must be identifiers (they name files), not {bad}")
    eval_batch_size = eval_batch_size or config.batch_size
    device = resolve_device(config.device)

    def train(out_dir=None) -> CachedRun:
        start = time.perf_counter()
        model, history, _ = run_method(method, train_set, None, num_classes, backbone=backbone, config=config,
                                       init_from=init_from, val_set=val_set, out_dir=out_dir, **method_kwargs)
        scores = {name: predict(model, d, batch_size=eval_batch_size, device=device) for name, d in eval_sets.items()}
        return CachedRun(model, history, scores, None, False, time.perf_counter() - start)

    if not cache_enabled(cache):
        return train()
    try:
        parts = run_key_parts(method, train_set, num_classes, backbone=backbone, config=config, init_from=init_from,
                              val_set=val_set, eval_sets=eval_sets, eval_batch_size=eval_batch_size,
                              method_kwargs=method_kwargs)
    except Uncacheable as e:
        warnings.warn(f"run cache: training {method} without caching it: {e}", RuntimeWarning, stacklevel=2)
        return train()
    key = run_key(parts)
    entry = cache_dir() / key
    remove_partial_entries(entry.parent)
    if entry.is_dir():
        problem = entry_problem(entry)
        if problem is None:
            try:
                return _load_entry(entry, device)
            except Exception as e:  # intact files that do not load (a model whose options do not survive JSON)
                problem = f"it does not load: {type(e).__name__}: {e}"
        warnings.warn(f"run cache: entry {entry} is corrupt ({problem}); training it again", RuntimeWarning,
                      stacklevel=2)
        shutil.rmtree(entry, ignore_errors=True)
    with atomic_directory(entry) as tmp:  # a concurrent identical write that finished first is kept
        (tmp / WRITER_FILE).write_text(f"{platform.node()} {os.getpid()}")
        run = train(out_dir=tmp)
        for name, scores in run.scores.items():
            _save_scores(tmp, name, scores)
        (tmp / WRITER_FILE).unlink()
        files = _file_manifest(tmp)
        (tmp / ENTRY_FILE).write_text(json.dumps({"key": key, "parts": parts, "seconds": run.seconds,
                                                  "training_mode": run.model.training, "eval_sets": list(run.scores),
                                                  "files": files}, indent=1))
    run.key = key
    return run


def clear(root: str | os.PathLike | None = None) -> int:
    """Delete every entry (and partial write) of the cache; return how many folders were removed."""
    root = Path(root) if root is not None else cache_dir()
    if not root.is_dir():
        return 0
    removed = 0
    for entry in root.iterdir():
        if entry.is_dir():
            shutil.rmtree(entry)
            removed += 1
    return removed


def info(root: str | os.PathLike | None = None) -> dict:
    """``{"path", "entries", "bytes"}`` of the cache."""
    root = Path(root) if root is not None else cache_dir()
    entries = [e for e in root.iterdir() if e.is_dir() and not e.name.startswith(TMP_DIR_PREFIX)] if root.is_dir() else []
    size = sum(p.stat().st_size for e in entries for p in e.rglob("*") if p.is_file())
    return {"path": str(root), "entries": len(entries), "bytes": size}


def runs(root: str | os.PathLike | None = None) -> list[dict]:
    """One row per complete entry, oldest first: when it was written (``entry.json``'s time), the
    method and its options, the puzzle and size it trained on (``None`` for a real dataset), its
    epochs (x iterations), seed, torch threads and the seconds its training and testing took. The
    rows of a ``make run`` say which trainings its time went to (docs/performance.md)."""
    root = Path(root) if root is not None else cache_dir()
    rows = []
    for entry in root.glob(f"*/{ENTRY_FILE}") if root.is_dir() else []:
        if entry.parent.name.startswith(TMP_DIR_PREFIX):
            continue
        record = json.loads(entry.read_text())
        parts, config = record["parts"], record["parts"]["config"]
        puzzle = (parts["train_set"] or {}).get("puzzle") or {}
        rows.append({"written": entry.stat().st_mtime, "key": record["key"], "method": parts["method"],
                     "options": parts["options"], "puzzle": puzzle.get("puzzle"), "size": puzzle.get("size"),
                     "data_seed": puzzle.get("seed"), "epochs": config["epochs"] * max(1, config.get("iterations", 1)),
                     "seed": config["seed"], "threads": parts["code"].get("threads"), "seconds": record["seconds"]})
    return sorted(rows, key=lambda row: row["written"])


def main(argv: list[str] | None = None) -> int:
    """``python -m fusionkit.lab.run_cache {info,clear,runs}``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m fusionkit.lab.run_cache",
                                     description="the cache of trained runs (see fusionkit.lab.run_cache)")
    parser.add_argument("action", choices=("info", "clear", "runs"),
                        help="info: size; clear: delete every entry; runs: every trained run with its seconds")
    args = parser.parse_args(argv)
    if args.action == "clear":
        print(f"removed {clear()} entries from {cache_dir()}")
    elif args.action == "runs":
        rows = runs()
        for row in rows:
            options = ",".join(f"{k}={v}" for k, v in sorted(row["options"].items()) if k not in ("dropout",))
            print(f"{time.strftime('%H:%M:%S', time.localtime(row['written']))}  {row['seconds']:7.1f} s  "
                  f"{row['method']}{f'({options})' if options else ''}  {row['puzzle'] or 'real data'}"
                  + (f" {row['size']}px render {row['data_seed']}" if row["puzzle"] else "")
                  + f"  {row['epochs']} epochs, seed {row['seed']}, {row['threads']} threads")
        print(f"{len(rows)} runs, {sum(r['seconds'] for r in rows) / 60:.1f} min of training and testing")
    else:
        report = info()
        print(f"{report['path']}: {report['entries']} entries, {report['bytes'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
