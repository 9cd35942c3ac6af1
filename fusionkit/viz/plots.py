"""Plots shared by the notebooks, in one style: flow colour coding, training curves, fusion-weight
sweeps, accuracy bars, confusion matrices, per-class gains over late fusion, and the method x puzzle
benchmark heatmap. Each plotting function draws on a given (or new) matplotlib Axes and returns it;
:func:`save_figure` writes the figure to ``figures/``.

One style: accuracies always on a 0..1 axis (heatmaps on the ``ACCURACY_CMAP`` scale from 0 to 1),
signed differences on the diverging ``GAIN_CMAP`` centred on 0, chance as a grey dotted line,
annotations and legends at ``SMALL`` points.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

ACCURACY_CMAP = "viridis"
GAIN_CMAP = "RdBu"  # red = worse than the baseline, blue = better
SMALL = 7  # font size of annotations, legends and tick labels of dense plots
CHANCE_STYLE = dict(color="grey", lw=0.8, ls=":")


def flow_to_colour(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-code a flow field ``[H, W, 2]`` as ``[H, W, 3]`` uint8 RGB: hue = direction, saturation
    = magnitude (white = no motion), the convention of Baker et al.'s Middlebury colour wheel.

    OpenCV has no flow visualiser, so this builds the image through ``cv2.cvtColor(HSV2RGB)``.
    ``max_magnitude``: the magnitude shown fully saturated (default: the field's maximum).
    """
    import cv2

    dx, dy = flow[..., 0].astype(np.float32), flow[..., 1].astype(np.float32)
    magnitude, angle = cv2.cartToPolar(dx, dy, angleInDegrees=True)
    top = max_magnitude if max_magnitude is not None else max(float(magnitude.max()), 1e-6)
    hsv = np.zeros((*flow.shape[:2], 3), np.uint8)
    hsv[..., 0] = (angle / 2).astype(np.uint8)  # OpenCV's 8-bit hue runs 0..179
    hsv[..., 1] = np.clip(magnitude / top * 255, 0, 255).astype(np.uint8)
    hsv[..., 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def flow_stack_to_colour(flow, field: int = 0, max_magnitude: float | None = None) -> np.ndarray:
    """:func:`flow_to_colour` of one field of a snippet's flow stack ``[2L, H, W]`` (channels x1, y1,
    x2, y2, ..., as the dataset stacks them; a tensor or an array): ``[H, W, 3]`` uint8."""
    stack = flow.detach().cpu().numpy() if hasattr(flow, "detach") else np.asarray(flow)
    if stack.ndim != 3 or stack.shape[0] % 2:
        raise ValueError(f"expected a flow stack [2L, H, W], got shape {stack.shape}")
    if not 0 <= field < stack.shape[0] // 2:
        raise ValueError(f"field {field} out of range: the stack holds fields 0..{stack.shape[0] // 2 - 1}")
    return flow_to_colour(stack[2 * field:2 * field + 2].transpose(1, 2, 0), max_magnitude)


def _axes(ax, figsize=(5, 3.5)):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def plot_history(history: list[dict], ax=None, title: str = ""):
    """Training loss per epoch (left axis) and the accuracy of each output (right axis): training
    accuracy dashed, validation accuracy (the trainer's ``"val"`` records, when it had a val set)
    solid in the same colour. Outputs missing from some epochs (e.g. a branch that appears in a
    later phase) leave gaps."""
    ax = _axes(ax)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], "k-", label="loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    acc_ax = ax.twinx()
    names = list(dict.fromkeys(name for h in history for key in ("train", "val") for name in h.get(key, {})))
    for i, name in enumerate(names):
        colour = f"C{i}"
        for key, style in (("train", "--"), ("val", "-")):
            values = [h.get(key, {}).get(name, np.nan) for h in history]
            if not np.all(np.isnan(values)):
                acc_ax.plot(epochs, values, style, color=colour, label=f"{key} acc {name}")
    acc_ax.set_ylim(0, 1.02)
    acc_ax.set_ylabel("accuracy")
    lines = ax.get_legend_handles_labels()[0] + acc_ax.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=SMALL, loc="center right")
    ax.set_title(title)
    return ax


# --------------------------------------------------------------------------------------------
# Fusion-weight sweeps
# --------------------------------------------------------------------------------------------
def weight_sweep(scores, weights=None, rgb: str | None = None, flow: str | None = None) -> dict:
    """:func:`fusionkit.training.evaluate.fusion_weight_sweep` of a :class:`~fusionkit.training.evaluate.Scores`
    over its per-stream outputs (their roles, :meth:`~fusionkit.training.evaluate.Scores.streams`) unless named."""
    from fusionkit.training.evaluate import fusion_weight_sweep

    return fusion_weight_sweep(scores, weights, rgb=rgb, flow=flow)


def _as_sweeps(entry) -> list[dict]:
    """One entry of :func:`plot_weight_sweep` as a list of sweep dicts (one per seed)."""
    from fusionkit.training.evaluate import Scores

    items = entry if isinstance(entry, (list, tuple)) else [entry]
    sweeps = [weight_sweep(x) if isinstance(x, Scores) else x for x in items]
    if not sweeps or any(not isinstance(s, Mapping) or not {"rgb_weight", "top1"} <= set(s) for s in sweeps):
        raise ValueError("each entry must be a fusion_weight_sweep dict ({'rgb_weight', 'top1'}), a Scores, "
                         "or a list of them (one per seed)")
    if any(list(s["rgb_weight"]) != list(sweeps[0]["rgb_weight"]) for s in sweeps):
        raise ValueError("the seeds' sweeps use different weights; sweep them over the same grid")
    return sweeps


def plot_weight_sweep(sweeps: Mapping[str, object], ax=None, title: str = "", chance: float | None = None):
    """Top-1 against the RGB weight w of ``w p_rgb + (1 - w) p_flow``, one line per entry.

    Each entry is what :mod:`fusionkit.training.evaluate` gives: a ``fusion_weight_sweep`` dict (also as
    read back from ``fusionkit evaluate``'s JSON), a :class:`~fusionkit.training.evaluate.Scores` (swept over
    its per-stream outputs, :func:`weight_sweep`), or a list of either, one per seed, drawn as the
    mean with a +-1 std band."""
    ax = _axes(ax)
    for label, entry in sweeps.items():
        runs = _as_sweeps(entry)
        w = np.asarray(runs[0]["rgb_weight"], float)
        top1 = np.asarray([r["top1"] for r in runs], float)
        line, = ax.plot(w, top1.mean(0), marker=".", label=label if len(runs) == 1 else f"{label} ({len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(w, top1.mean(0) - top1.std(0), top1.mean(0) + top1.std(0), color=line.get_color(),
                            alpha=0.2, lw=0)
    if chance is not None:
        ax.axhline(chance, **CHANCE_STYLE, label="chance")
    ax.set_xlabel("RGB weight w (0 = flow only, 1 = RGB only)")
    ax.set_ylabel("top-1")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=SMALL)
    return ax


def plot_accuracy_bars(accuracy: dict[str, dict[str, dict]], outputs: list[str], ax=None, title: str = "",
                       chance: float | None = None):
    """Grouped bars: one group per puzzle/dataset, one bar per output (mean over seeds, std as error)."""
    ax = _axes(ax)
    groups = list(accuracy)
    width = 0.8 / len(outputs)
    for i, name in enumerate(outputs):
        means = [accuracy[g][name]["mean"] if name in accuracy[g] else np.nan for g in groups]
        stds = [accuracy[g][name]["std"] if name in accuracy[g] else 0 for g in groups]
        ax.bar(np.arange(len(groups)) + (i - (len(outputs) - 1) / 2) * width, means, width, yerr=stds,
               label=name, capsize=2)
    if chance is not None:
        ax.axhline(chance, **CHANCE_STYLE, label="chance")
    ax.set_xticks(range(len(groups)), groups, rotation=20)
    ax.set_ylabel("top-1 (test)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    # below the axes, so it never hides a bar
    ax.legend(fontsize=SMALL, ncols=min(len(outputs) + 1, 6), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return ax


# --------------------------------------------------------------------------------------------
# Per-class views
# --------------------------------------------------------------------------------------------
def _class_names(class_names: Sequence[str] | None, k: int) -> list[str]:
    if class_names is None:
        return [str(i) for i in range(k)]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} classes")
    return list(class_names)


def plot_confusion_matrix(confusion, class_names: Sequence[str] | None = None, ax=None, title: str = "",
                          normalize: bool = True, annotate: bool | None = None):
    """Seaborn heatmap of a confusion matrix (rows = true class, columns = predicted, as
    :func:`fusionkit.training.evaluate.confusion_matrix` and ``classification_metrics(...)["confusion"]``
    give it). ``normalize``: each row divided by its count (the share of a class predicted as each
    class; rows without videos stay 0), on the 0..1 accuracy scale. ``annotate``: write the values
    in the cells (default: up to 12 classes)."""
    import seaborn as sns

    cm = np.asarray(confusion, float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"a confusion matrix is [K, K], got shape {cm.shape}")
    names = _class_names(class_names, cm.shape[0])
    values = cm / np.maximum(cm.sum(1, keepdims=True), 1) if normalize else cm
    ax = _axes(ax, figsize=(1.2 + 0.45 * len(names), 0.9 + 0.4 * len(names)))
    annotate = len(names) <= 12 if annotate is None else annotate
    sns.heatmap(values, ax=ax, cmap=ACCURACY_CMAP, vmin=0, vmax=1 if normalize else None, square=True,
                annot=annotate, fmt=".2f" if normalize else ".0f", annot_kws={"fontsize": SMALL},
                xticklabels=names, yticklabels=names, cbar_kws={"label": "share of the class" if normalize else "videos"})
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.tick_params(labelsize=SMALL)
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(title)
    return ax


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Top-1 of each class ``[K]`` from ``[N, K]`` scores (NaN for a class with no video)."""
    from fusionkit.training.evaluate import confusion_matrix

    probs, labels = np.asarray(probs), np.asarray(labels)
    cm = confusion_matrix(probs.argmax(1), labels, probs.shape[1])
    counts = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, np.diag(cm) / counts, np.nan)


def per_class_gain(probs: np.ndarray, baseline_probs: np.ndarray, labels: np.ndarray,
                   class_names: Sequence[str] | None = None) -> dict[str, float]:
    """Per-class top-1 of a method minus that of a baseline (two-stream late fusion), the analogue
    of Chi et al.'s Fig. 4 (CMA's gain per UCF-101 class), sorted from the largest gain to the
    largest loss; classes without a test video are left out.

    ``probs`` / ``baseline_probs``: ``[N, K]`` scores of the same N videos in the same order (e.g.
    ``Scores.probs["cma-S"]`` and ``Scores.probs["late"]`` predicted on the same test set), ``labels``
    their classes."""
    probs, baseline_probs = np.asarray(probs), np.asarray(baseline_probs)
    if probs.shape != baseline_probs.shape or probs.shape[0] != len(labels):
        raise ValueError(f"scores {probs.shape} and baseline {baseline_probs.shape} must both be [N, K] for the "
                         f"{len(labels)} labels")
    names = _class_names(class_names, probs.shape[1])
    gain = per_class_accuracy(probs, labels) - per_class_accuracy(baseline_probs, labels)
    order = [i for i in np.argsort(-gain, kind="stable") if not np.isnan(gain[i])]
    return {names[i]: float(gain[i]) for i in order}


def plot_per_class_gain(gains: Mapping[str, float], ax=None, title: str = "", limit: int | None = None,
                        baseline: str = "late fusion"):
    """Bars of :func:`per_class_gain`, sorted (largest gain on the left), blue for a gain and red
    for a loss (Chi et al. Fig. 4). ``limit``: show only the ``limit`` largest gains and the
    ``limit`` largest losses (for many classes, e.g. UCF-101's 101)."""
    import matplotlib.pyplot as plt

    items = sorted(gains.items(), key=lambda kv: -kv[1])
    if limit is not None and len(items) > 2 * limit:
        items = items[:limit] + items[-limit:]
    ax = _axes(ax, figsize=(max(4.0, 0.35 * len(items) + 1), 3.2))
    values = [v for _, v in items]
    cmap = plt.get_cmap(GAIN_CMAP)
    ax.bar(range(len(items)), values, color=[cmap(0.85) if v >= 0 else cmap(0.15) for v in values])
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(items)), [k for k, _ in items], rotation=60, ha="right", fontsize=SMALL)
    ax.set_ylabel(f"top-1 gain over {baseline}")
    ax.set_xlim(-0.6, len(items) - 0.4)
    ax.set_title(title)
    return ax


def plot_benchmark_heatmap(table: Mapping[str, Mapping[str, Mapping[str, float]]], ax=None, title: str = "",
                           chance: float | None = None):
    """Methods (rows) x puzzles (columns) heatmap of ``table[method][puzzle] = {"mean", "std"}``
    (the results schema's seed summaries), coloured by the mean on the 0..1 accuracy scale and
    annotated "mean +- std"; cells a method lacks stay blank. ``chance``: marked on the colour bar.
    The plotted means are ``ax.collections[0].get_array()``."""
    import seaborn as sns

    methods = list(table)
    puzzles = list(dict.fromkeys(p for m in methods for p in table[m]))
    if not methods or not puzzles:
        raise ValueError("the benchmark table is empty")
    mean = np.full((len(methods), len(puzzles)), np.nan)
    labels = np.full(mean.shape, "", dtype=object)
    for i, m in enumerate(methods):
        for j, p in enumerate(puzzles):
            if p in table[m]:
                cell = table[m][p]
                mean[i, j] = cell["mean"]
                labels[i, j] = f"{cell['mean']:.2f}\n±{cell.get('std', 0.0):.2f}"
    ax = _axes(ax, figsize=(1.5 + 1.1 * len(puzzles), 0.8 + 0.5 * len(methods)))
    sns.heatmap(mean, ax=ax, cmap=ACCURACY_CMAP, vmin=0, vmax=1, annot=labels, fmt="",
                annot_kws={"fontsize": SMALL}, xticklabels=puzzles, yticklabels=methods, linewidths=0.5,
                cbar_kws={"label": "top-1 (test)"})
    if chance is not None:
        ax.collections[0].colorbar.ax.axhline(chance, color="white", lw=1.5)
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(title)
    return ax


def save_figure(fig, name: str, figures_dir: str | os.PathLike = "figures") -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` (150 dpi, tight)."""
    path = Path(figures_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
