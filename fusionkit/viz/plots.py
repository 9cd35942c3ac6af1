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

# One colour per method (and per stream), in every figure: the registry's names, the streams'
# outputs and the fused score. A label is looked up after :func:`palette_key` normalises it.
METHOD_COLOURS = {
    "rgb": "#1f77b4", "flow": "#ff7f0e", "fused": "#2ca02c", "late": "#7f7f7f",
    "sum": "#d62728", "max": "#9467bd", "concat": "#8c564b", "conv": "#e377c2", "bilinear": "#17becf",
    "cmmp": "#bcbd22", "ccs": "#393b79", "cma": "#e6550d", "nonlocal": "#637939",
    "pool2d": "#843c39", "pool3d": "#7b4173", "conv3d_pool3d": "#3182bd",
}
# the names the notebooks give the same things
PALETTE_ALIASES = {"two-stream": "late", "two-stream (late)": "late", "late fusion": "late", "non-local": "nonlocal",
                   "rgb + flow": "fused", "spatial": "conv", "conv_fusion": "conv3d_pool3d"}
# labels that are none of the above (ablation rows, variants) take these, in order, skipping any a
# figure already uses
EXTRA_COLOURS = ("#31a354", "#fd8d3c", "#6baed6", "#e7ba52", "#de9ed6", "#ad494a", "#756bb1", "#000000")


ROLE_SUFFIXES = {"-r": "rgb", "-f": "flow"}  # a method's per-stream outputs take the stream's colour; "-s" its own


def palette_key(label: str) -> str:
    """The :data:`METHOD_COLOURS` key of a plotted label: lower case, aliases resolved, a method's
    output named by its role suffix (``cma-R`` is the RGB stream's colour, ``cma-F`` the flow's,
    ``cma-S``, the fused score, the method's own), and a variant whose first word is a method
    (``CMA iter1``, ``conv after stem``) that method. Labels that name nothing in the palette come
    back normalised but unknown."""
    key = label.strip().lower()
    key = PALETTE_ALIASES.get(key, key)
    if key not in METHOD_COLOURS and key[-2:] in ("-r", "-f", "-s") and key[:-2] in METHOD_COLOURS:
        key = ROLE_SUFFIXES.get(key[-2:], key[:-2])
    first = PALETTE_ALIASES.get(key.split(" ")[0], key.split(" ")[0])
    if key not in METHOD_COLOURS and first in METHOD_COLOURS:  # a variant named after its method: "CMA iter1"
        key = first
    return key


def method_colours(labels: Iterable[str]) -> dict[str, str]:
    """The colour of each label in one figure: its method's :data:`METHOD_COLOURS` entry, or for a
    label that names no method (or one whose colour an earlier label of the figure took) the next
    of :data:`EXTRA_COLOURS` not already in the figure: two labels of one figure never share a colour."""
    labels = list(dict.fromkeys(labels))
    colours: dict[str, str] = {}
    for label in labels:
        colour = METHOD_COLOURS.get(palette_key(label))
        if colour is not None and colour not in colours.values():
            colours[label] = colour
    spare = [c for c in EXTRA_COLOURS if c not in colours.values()]
    unknown = [label for label in labels if label not in colours]
    if len(unknown) > len(spare):
        raise ValueError(f"{len(unknown)} labels name no method in METHOD_COLOURS and only {len(spare)} spare colours "
                         f"are left; name them after methods, or plot fewer at once: {unknown}")
    colours.update(zip(unknown, spare))
    return colours


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


def flow_wheel(size: int = 65, max_magnitude: float = 1.0) -> np.ndarray:
    """The key of :func:`flow_to_colour`: ``[size, size, 3]`` uint8, the colour of the flow
    ``(dx, dy)`` that points from the centre to each pixel (image axes: x right, y down), at
    ``max_magnitude`` on the circle's edge; white outside the circle. Built by :func:`flow_to_colour`
    itself, so the key cannot disagree with the figures it explains."""
    if size < 3:
        raise ValueError(f"the wheel needs at least 3 pixels across, got size={size}")
    r = (size - 1) / 2
    dy, dx = np.mgrid[0:size, 0:size].astype(np.float32) - r
    field = np.stack([dx, dy], -1) / r * max_magnitude
    wheel = flow_to_colour(field, max_magnitude)
    wheel[np.hypot(dx, dy) > r] = 255
    return wheel


def add_flow_key(ax, max_magnitude: float | None = None, size: float = 0.3, where: str = "below"):
    """A colour-wheel key (:func:`flow_wheel`) beside an image axes that shows flow colour-coded,
    outside the image so it hides nothing: ``"below"`` its lower right corner (panels side by side)
    or ``"right"`` of it (panels stacked), labelled with the speed at full saturation
    (``max_magnitude`` px, as passed to :func:`flow_to_colour`). Returns the inset Axes."""
    places = {"below": [1 - size, -size - 0.03, size, size], "right": [1.03, 0.0, size, size]}
    if where not in places:
        raise ValueError(f"where must be one of {sorted(places)}, not {where!r}")
    key = ax.inset_axes(places[where])
    key.imshow(flow_wheel(), extent=(-1, 1, 1, -1))
    key.set_xticks([])
    key.set_yticks([])
    for side in key.spines.values():
        side.set_visible(False)
    text = "flow key" if max_magnitude is None else f"flow key: edge {max_magnitude:g} px"
    if where == "below":
        key.set_ylabel(text, fontsize=SMALL - 1, rotation=0, ha="right", va="center")
    else:
        key.set_title(text, fontsize=SMALL - 1)
    return key


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


def legend_outside(ax, handles=None, labels=None, companions: Sequence = (), pad: float = 4.0, **kwargs):
    """A legend to the right of everything ``ax`` draws (its tick labels, axis labels and those of
    ``companions``, e.g. a ``twinx`` axes), so it hides no data and no tick. The gap is measured on
    the drawn figure and kept in points from the axes' right edge (plus ``pad`` points), so it holds
    when a later ``tight_layout`` resizes the axes. Returns the Legend."""
    from matplotlib.transforms import ScaledTranslation

    fig = ax.figure
    fig.canvas.draw()  # tick labels and axis labels at their drawn places
    renderer = fig.canvas.get_renderer()
    edge = ax.get_window_extent(renderer).x1
    right = max(a.get_tightbbox(renderer, for_layout_only=False).x1 for a in (ax, *companions))
    inches = (max(right - edge, 0.0) / fig.dpi) + pad / 72
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    kwargs.setdefault("fontsize", SMALL)
    return ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), borderaxespad=0.0,
                     bbox_transform=ax.transAxes + ScaledTranslation(inches, 0, fig.dpi_scale_trans), **kwargs)


def _labels_collide(texts, pad: float = 2.0) -> bool:
    """Whether any two of the drawn ``texts`` overlap (their boxes, ``pad`` pixels apart)."""
    texts = [t for t in texts if t.get_text()]
    if not texts:
        return False
    fig = texts[0].figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = sorted((t.get_window_extent(renderer) for t in texts), key=lambda b: b.x0)
    return any(b.x0 < a.x1 + pad and a.y0 < b.y1 and b.y0 < a.y1 for a, b in zip(boxes, boxes[1:]))


def epochs_to(curve: Sequence[float], threshold: float = 0.9) -> int | None:
    """The first epoch (1-based) at which ``curve`` (accuracy per epoch) reaches ``threshold``, or
    None if it never does: the speed measure that still ranks methods that all end at 1.00."""
    for epoch, value in enumerate(curve, start=1):
        if value >= threshold:
            return epoch
    return None


def plot_learning_curves(curves: Mapping[str, Sequence[Sequence[float]]], ax=None, title: str = "",
                         threshold: float | None = 0.9, chance: float | None = None,
                         ylabel: str = "top-1 (validation)", legend: bool = True):
    """Accuracy per epoch, one line per entry (``curves[label]`` = one curve per seed): the mean
    over seeds with a +-1 std band, in the method's colour (:func:`method_colours`). With
    ``threshold``, a dashed line at it and each label's mean :func:`epochs_to` it over seeds in the
    legend ("never" when a seed does not reach it)."""
    ax = _axes(ax)
    colours = method_colours(curves)
    for label, runs in curves.items():
        values = np.asarray(runs, float)
        if values.ndim != 2 or values.shape[1] == 0:
            raise ValueError(f"curves[{label!r}] must be one non-empty accuracy curve per seed, got shape {values.shape}")
        epochs = np.arange(1, values.shape[1] + 1)
        text = label
        if threshold is not None:
            reached = [epochs_to(run, threshold) for run in values]
            text += (f" ({np.mean(reached):.1f} ep. to {threshold:g})" if None not in reached
                     else f" (not {threshold:g} in {values.shape[1]} ep.)")
        ax.plot(epochs, values.mean(0), color=colours[label], marker=".", label=text)
        if len(values) > 1:
            ax.fill_between(epochs, values.mean(0) - values.std(0), values.mean(0) + values.std(0),
                            color=colours[label], alpha=0.15, lw=0)
    if threshold is not None:
        ax.axhline(threshold, color="black", lw=0.6, ls="--")
    if chance is not None:
        ax.axhline(chance, **CHANCE_STYLE, label="chance")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    if legend:
        ax.figure.tight_layout()
        legend_outside(ax)
    return ax


def plot_history(history: list[dict], ax=None, title: str = "", legend: bool = True):
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
    colours = method_colours(names)
    for name in names:
        for key, style in (("train", "--"), ("val", "-")):
            values = [h.get(key, {}).get(name, np.nan) for h in history]
            if not np.all(np.isnan(values)):
                acc_ax.plot(epochs, values, style, color=colours[name], label=f"{key} acc {name}")
    acc_ax.set_ylim(0, 1.02)
    acc_ax.set_yticks([0, 0.25, 0.5, 0.75, 1])  # fixed: the legend beside them keeps its place when the axes resize
    acc_ax.set_ylabel("accuracy")
    ax.set_title(title)
    if legend:
        ax.figure.tight_layout()
        lines = history_legend_handles(ax)
        legend_outside(ax, lines, [ln.get_label() for ln in lines], companions=[acc_ax])
    return ax


def history_legend_handles(ax) -> list:
    """The lines :func:`plot_history` drew on ``ax`` and its accuracy axes, for one legend (e.g. a
    figure legend shared by a grid of histories)."""
    twins = [a for a in ax.figure.axes if a is not ax and a.bbox.bounds == ax.bbox.bounds]
    return ax.get_legend_handles_labels()[0] + [h for a in twins for h in a.get_legend_handles_labels()[0]]


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


def plot_weight_sweep(sweeps: Mapping[str, object], ax=None, title: str = "", chance: float | None = None,
                      legend: bool = True):
    """Top-1 against the RGB weight w of ``w p_rgb + (1 - w) p_flow``, one line per entry in its
    method's colour (:func:`method_colours`).

    Each entry is what :mod:`fusionkit.training.evaluate` gives: a ``fusion_weight_sweep`` dict (also as
    read back from ``fusionkit evaluate``'s JSON), a :class:`~fusionkit.training.evaluate.Scores` (swept over
    its per-stream outputs, :func:`weight_sweep`), or a list of either, one per seed, drawn as the
    mean with a +-1 std band. The x axis is labelled short (its ends say which stream is alone), so
    panels side by side do not collide; ``legend``: outside, right of the axes."""
    ax = _axes(ax)
    colours = method_colours(sweeps)
    for label, entry in sweeps.items():
        runs = _as_sweeps(entry)
        w = np.asarray(runs[0]["rgb_weight"], float)
        top1 = np.asarray([r["top1"] for r in runs], float)
        line, = ax.plot(w, top1.mean(0), marker=".", color=colours[label],
                        label=label if len(runs) == 1 else f"{label} ({len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(w, top1.mean(0) - top1.std(0), top1.mean(0) + top1.std(0), color=line.get_color(),
                            alpha=0.2, lw=0)
    if chance is not None:
        ax.axhline(chance, **CHANCE_STYLE, label="chance")
    ax.set_xlabel("RGB weight w")
    ax.set_xticks([0, 0.5, 1], ["0\nflow only", "0.5", "1\nRGB only"], fontsize=SMALL)
    ax.set_ylabel("top-1")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    if legend:
        ax.figure.tight_layout()
        legend_outside(ax)
    return ax


def plot_accuracy_bars(accuracy: dict[str, dict[str, dict]], outputs: list[str], ax=None, title: str = "",
                       chance: float | None = None, ylabel: str = "top-1 (test)"):
    """Grouped bars: one group per puzzle/dataset (or per method), one bar per output (mean over
    seeds, std as error), each output in its method's colour (:func:`method_colours`).

    One group: each bar is labelled on the x axis (the group names the axis), no legend. Several
    groups: the groups label the x axis and a legend right of the axes names the outputs, so it
    hides no bar and no tick. Chance is a grey dotted line labelled at its right end."""
    ax = _axes(ax)
    groups = list(accuracy)
    width = 0.8 / len(outputs)
    colours = method_colours(outputs)
    centres = []
    for i, name in enumerate(outputs):
        means = [accuracy[g][name]["mean"] if name in accuracy[g] else np.nan for g in groups]
        stds = [accuracy[g][name]["std"] if name in accuracy[g] else 0 for g in groups]
        x = np.arange(len(groups)) + (i - (len(outputs) - 1) / 2) * width
        centres.append(x)
        ax.bar(x, means, width, yerr=stds, label=name, capsize=2, color=colours[name])
    if chance is not None:
        ax.axhline(chance, **CHANCE_STYLE)
        ax.annotate("chance", (1.0, chance), xycoords=("axes fraction", "data"), xytext=(2, 0),
                    textcoords="offset points", fontsize=SMALL, color="grey", va="center")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    if len(groups) == 1:
        ax.set_xticks([c[0] for c in centres], outputs, fontsize=SMALL)
        ax.set_xlabel(groups[0])
        if _labels_collide(ax.get_xticklabels()):  # upright when side by side would not fit
            ax.tick_params(axis="x", labelrotation=90)
    else:
        ax.set_xticks(range(len(groups)), groups)
        ax.figure.tight_layout()
        legend_outside(ax)
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
