"""Plots shared by the notebooks, in one style: flow colour coding, training curves, fusion-weight
sweeps, accuracy bars. Each function draws on a given (or new) matplotlib Axes and returns it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


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


def _axes(ax):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def plot_history(history: list[dict], ax=None, title: str = ""):
    """Training loss per epoch and training accuracy of each output."""
    ax = _axes(ax)
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["loss"] for h in history], "k-", label="loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    acc_ax = ax.twinx()
    for name in history[0].get("train", {}):
        acc_ax.plot(epochs, [h["train"][name] for h in history], "--", label=f"train acc {name}")
    acc_ax.set_ylim(0, 1.02)
    acc_ax.set_ylabel("accuracy")
    lines = ax.get_legend_handles_labels()[0] + acc_ax.get_legend_handles_labels()[0]
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="center right")
    ax.set_title(title)
    return ax


def plot_weight_sweep(sweeps: dict[str, dict], ax=None, title: str = "", chance: float | None = None):
    """Top-1 against the RGB weight w of ``w p_rgb + (1 - w) p_flow``, one line per entry."""
    ax = _axes(ax)
    for label, sweep in sweeps.items():
        ax.plot(sweep["rgb_weight"], sweep["top1"], marker=".", label=label)
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xlabel("RGB weight w (0 = flow only, 1 = RGB only)")
    ax.set_ylabel("top-1")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7)
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
        ax.axhline(chance, color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xticks(range(len(groups)), groups, rotation=20)
    ax.set_ylabel("top-1 (test)")
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    # below the axes, so it never hides a bar
    ax.legend(fontsize=7, ncols=min(len(outputs) + 1, 6), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    return ax


def save_figure(fig, name: str, figures_dir: str | os.PathLike = "figures") -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` (150 dpi, tight)."""
    path = Path(figures_dir) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path
