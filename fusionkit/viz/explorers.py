"""ipywidgets explorers for the notebooks, built so that the logic is plain functions
that tests call directly, the widget callbacks only read the controls, call them and draw, and
every explorer builds and draws once without a browser (headless papermill runs it as a cell).

- CAM scrubber (:func:`cam_explorer`): a video's T segments with the CAM of the RGB tower on the
  frame and of the motion tower on the flow colour image, side by side; sliders for the video and
  the segment, a dropdown for the method. Logic: :class:`CamSource` (CAMs computed once per video
  and method, then cached) and :func:`cam_view`.
- Fusion-weight slider (:func:`fusion_weight_explorer`): the top-1 of ``w p_rgb + (1 - w) p_flow``
  as w moves, from per-stream scores predicted once (:class:`~fusionkit.training.evaluate.Scores`); Chi et
  al.'s fusion-weight study (Fig. 3) made interactive. Logic: :func:`fused_accuracy` and
  :func:`weight_view`, fusing exactly as :mod:`fusionkit.training.evaluate` does.
- CMA query picker (:func:`attention_explorer`, Chi et al. Fig. 5): from :mod:`fusionkit.viz.attention`,
  re-exported here so the notebooks find every explorer in one module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from torch import nn

from fusionkit.training.evaluate import Scores, fusion_weight_sweep
from fusionkit.viz.attention import (AttentionSource, ExplorerState, ExplorerView, VideoSource, _check_range,
                                     attention_explorer, explorer_view, plot_explorer_view)
from fusionkit.viz.cam import CAM_FLOOR, VideoCAMs, cam_overlay, get_cam_method, snippet_images, video_cams
from fusionkit.viz.plots import plot_weight_sweep

__all__ = [
    "CamState", "CamView", "CamSource", "cam_view", "plot_cam_view", "cam_explorer",
    "fused_accuracy", "WeightView", "weight_view", "plot_weight_view", "fusion_weight_explorer",
    "AttentionSource", "ExplorerState", "ExplorerView", "explorer_view", "plot_explorer_view", "attention_explorer",
]


def _show(output, draw) -> None:
    """Redraw an ``ipywidgets.Output`` with the figure ``draw()`` returns; a ValueError (e.g. an
    out-of-range choice) is printed there instead of breaking the widget."""
    import matplotlib.pyplot as plt
    from IPython.display import display

    with output:
        output.clear_output(wait=True)
        try:
            fig = draw()
        except ValueError as error:
            print(error)
            return
        display(fig)
        plt.close(fig)


def _redraw_on_change(controls: Mapping, output, draw):
    """Wire every control to redraw ``output`` with ``draw()`` when its value changes; return the
    redraw callback (an explorer calls it once to draw its first view)."""

    def refresh(*_) -> None:
        _show(output, draw)

    for control in controls.values():
        control.observe(refresh, names="value")
    return refresh


# --------------------------------------------------------------------------------------------
# (a) CAM scrubber
# --------------------------------------------------------------------------------------------
@dataclass
class CamState:
    """What the CAM scrubber shows: a video of the dataset, one of its segments, a CAM method."""

    video: int = 0
    segment: int = 0
    method: str = "gradcam"


class CamView(NamedTuple):
    """What :func:`cam_view` computes: the RGB frame and the flow colour image of one segment with
    their towers' CAMs overlaid (``[H, W, 3]`` uint8 each), the maps themselves, and a title."""

    rgb: np.ndarray
    flow: np.ndarray
    rgb_cam: np.ndarray
    flow_cam: np.ndarray
    title: str


@dataclass
class CamSource(VideoSource):
    """A model and a dataset of two-stream items whose CAMs (:func:`~fusionkit.viz.cam.video_cams`,
    both streams, every segment) are computed once per (video, method) and kept for the
    ``cache_size`` most recent ones, so scrubbing through the segments costs nothing.

    ``output``: the explained output (default: the model's fused one); ``target_class``: the class
    explained (default: the predicted one); ``mean`` / ``std``: the RGB normalisation to undo
    (default: the dataset transform's, else ImageNet's); ``class_names`` for the titles.
    """

    output: str | None = None
    target_class: int | None = None
    class_names: Sequence[str] | None = None
    cache_size: int = 16

    def cams(self, video: int, method: str = "gradcam") -> tuple[dict, VideoCAMs]:
        """The dataset item of ``video`` and its CAMs by ``method`` (cached)."""
        get_cam_method(method)  # an unknown name fails here, listing the known ones
        return self.cached(video, (video, method), lambda item: video_cams(
            self.model, item["rgb"], item["flow"], self.output, method, self.target_class))

    def class_name(self, label: int) -> str:
        return self.class_names[label] if self.class_names is not None else f"class {label}"


def cam_view(source: CamSource, state: CamState, floor: float = CAM_FLOOR) -> CamView:
    """Everything the CAM scrubber draws for ``state``: the segment's RGB frame and flow colour image
    lit by the CAMs of their towers (:func:`~fusionkit.viz.cam.cam_overlay`). Out-of-range videos or
    segments raise ValueError."""
    item, cams = source.cams(state.video, state.method)
    segment = _check_range("segment", state.segment, int(item["rgb"].shape[0]))
    frame, flow_image = snippet_images(item["rgb"][segment], item["flow"][segment], source.mean, source.std)
    rgb_cam, flow_cam = cams.rgb[segment], cams.flow[segment]
    label = item.get("label")
    truth = f" (true: {source.class_name(int(label))})" if label is not None else ""
    title = (f"{item.get('video_id', state.video)}  segment {segment}: {cams.method} on {cams.output!r} for "
             f"{source.class_name(cams.target_class)}{truth}")
    return CamView(cam_overlay(frame, rgb_cam, floor), cam_overlay(flow_image, flow_cam, floor),
                   rgb_cam, flow_cam, title)


def plot_cam_view(view: CamView, axes=None):
    """Draw a :class:`CamView`: the RGB overlay and the flow overlay side by side; returns the two Axes."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(6, 3.3))
    for ax, image, name in zip(axes, (view.rgb, view.flow), ("RGB tower", "motion tower")):
        ax.imshow(image)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].figure.suptitle(view.title, fontsize=8)
    return axes


def cam_explorer(model: nn.Module, dataset, output: str | None = None,
                 methods: Sequence[str] = ("gradcam", "gradcam++", "layercam", "eigencam"),
                 class_names: Sequence[str] | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None):
    """An ipywidgets video scrubber: sliders for the video and the segment, a CAM method dropdown,
    and the segment's RGB and flow CAM overlays side by side. Builds and draws once headless.

    Returns the ``VBox``; ``box.source`` is the :class:`CamSource` (CAMs cached per video and
    method), ``box.controls`` the widgets by name, ``box.state()`` the current :class:`CamState`,
    ``box.refresh()`` redraws.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    for method in methods:
        get_cam_method(method)
    source = CamSource(model, dataset, mean=mean, std=std, output=output, class_names=class_names)
    segments = int(source.dataset[0]["rgb"].shape[0])
    controls = {
        "video": widgets.IntSlider(value=0, min=0, max=len(source) - 1, description="video"),
        "segment": widgets.IntSlider(value=0, min=0, max=segments - 1, description="segment"),
        "method": widgets.Dropdown(options=list(methods), value=methods[0], description="method"),
    }
    output_widget = widgets.Output()

    def state() -> CamState:
        return CamState(controls["video"].value, controls["segment"].value, controls["method"].value)

    def draw():
        fig, axes = plt.subplots(1, 2, figsize=(6, 3.3))
        plot_cam_view(cam_view(source, state()), axes)
        fig.tight_layout()
        return fig

    refresh = _redraw_on_change(controls, output_widget, draw)
    box = widgets.VBox([widgets.HBox(list(controls.values())), output_widget])
    box.source, box.controls, box.state, box.refresh = source, controls, state, refresh
    refresh()
    return box


# --------------------------------------------------------------------------------------------
# (b) Fusion-weight slider
# --------------------------------------------------------------------------------------------
def fused_accuracy(rgb_scores: np.ndarray, flow_scores: np.ndarray, labels: np.ndarray, weight: float) -> float:
    """Top-1 of ``weight * rgb_scores + (1 - weight) * flow_scores``: the late fusion of two outputs'
    class probabilities ``[N, K]`` (``Scores.probs[...]``), computed by
    :func:`fusionkit.training.evaluate.fusion_weight_sweep` so the slider and the sweeps agree."""
    if not 0.0 <= float(weight) <= 1.0:
        raise ValueError(f"weight must lie in [0, 1], got {weight}")
    rgb_scores, flow_scores, labels = np.asarray(rgb_scores), np.asarray(flow_scores), np.asarray(labels)
    if rgb_scores.shape != flow_scores.shape or rgb_scores.ndim != 2 or len(labels) != len(rgb_scores):
        raise ValueError(f"expected rgb and flow scores [N, K] for N = {len(labels)} labels, got {rgb_scores.shape} "
                         f"and {flow_scores.shape}")
    scores = Scores({"rgb": rgb_scores, "flow": flow_scores}, labels, [])
    return fusion_weight_sweep(scores, [float(weight)])["top1"][0]


class WeightView(NamedTuple):
    """What :func:`weight_view` computes: the weight, the fused top-1 there, each stream's own top-1
    (w = 1 and w = 0), the whole sweep (for the curve) and a title."""

    weight: float
    top1: float
    rgb_top1: float
    flow_top1: float
    sweep: dict
    title: str


def weight_view(scores: Scores, weight: float, rgb: str | None = None, flow: str | None = None,
                sweep: dict | None = None, label: str = "") -> WeightView:
    """The fused top-1 of ``scores``' per-stream outputs (their roles,
    :meth:`~fusionkit.training.evaluate.Scores.streams`, unless named) at RGB weight ``weight``; ``sweep``:
    a precomputed ``fusion_weight_sweep`` of the same outputs (the explorer computes it once)."""
    if rgb is None or flow is None:
        found = scores.streams()
        rgb, flow = rgb or found[0], flow or found[1]
    missing = [name for name in (rgb, flow) if name not in scores.probs]
    if missing:
        raise ValueError(f"no output(s) {missing} in the scores; they hold {list(scores.probs)}")
    p_rgb, p_flow = scores.probs[rgb], scores.probs[flow]
    top1 = fused_accuracy(p_rgb, p_flow, scores.labels, weight)
    sweep = sweep if sweep is not None else fusion_weight_sweep(scores, rgb=rgb, flow=flow)
    title = f"{label + ': ' if label else ''}w = {weight:.2f} ({rgb}) / {1 - weight:.2f} ({flow}): top-1 {top1:.3f}"
    return WeightView(float(weight), top1, fused_accuracy(p_rgb, p_flow, scores.labels, 1.0),
                      fused_accuracy(p_rgb, p_flow, scores.labels, 0.0), sweep, title)


def plot_weight_view(view: WeightView, ax=None, chance: float | None = None):
    """The sweep curve (:func:`~fusionkit.viz.plots.plot_weight_sweep`) with the current weight
    marked (a vertical line, gid ``"weight-line"``, and a point at the fused top-1); returns the Axes."""
    ax = plot_weight_sweep({"fused": view.sweep}, ax=ax, chance=chance, title=view.title)
    ax.axvline(view.weight, color="black", lw=0.8, ls="--", gid="weight-line")
    ax.plot([view.weight], [view.top1], "o", color="black", gid="weight-point")
    return ax


def fusion_weight_explorer(scores: Scores | Mapping[str, Scores], rgb: str | None = None, flow: str | None = None,
                           weight: float = 0.5, step: float = 0.05, chance: float | None = None):
    """An ipywidgets slider over the RGB weight w that updates the fused top-1 live from scores
    predicted once. ``scores``: one :class:`~fusionkit.training.evaluate.Scores`, or several by name (a
    dropdown picks one, e.g. ``{"late": late_scores, "cma": cma_scores}``); their per-stream outputs
    are found by their roles unless ``rgb``/``flow`` are given. Builds and draws once headless.

    Returns the ``VBox``; ``box.controls`` holds the widgets, ``box.view()`` the current
    :class:`WeightView`, ``box.refresh()`` redraws.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    runs = {"scores": scores} if isinstance(scores, Scores) else dict(scores)
    if not runs:
        raise ValueError("fusion_weight_explorer needs at least one Scores")
    names = {}
    for key, run in runs.items():
        found = run.streams() if rgb is None or flow is None else (rgb, flow)
        names[key] = (rgb or found[0], flow or found[1])
    sweeps = {key: fusion_weight_sweep(run, rgb=names[key][0], flow=names[key][1]) for key, run in runs.items()}
    controls = {
        "weight": widgets.FloatSlider(value=weight, min=0.0, max=1.0, step=step, description="RGB weight",
                                      readout_format=".2f"),
        "scores": widgets.Dropdown(options=list(runs), value=next(iter(runs)), description="model"),
    }
    readout = widgets.HTML()
    output_widget = widgets.Output()

    def view() -> WeightView:
        key = controls["scores"].value
        return weight_view(runs[key], controls["weight"].value, *names[key], sweep=sweeps[key],
                           label=key if len(runs) > 1 else "")

    def draw():
        current = view()
        readout.value = (f"fused top-1 <b>{current.top1:.3f}</b> (RGB alone {current.rgb_top1:.3f}, "
                         f"flow alone {current.flow_top1:.3f})")
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        plot_weight_view(current, ax, chance)
        fig.tight_layout()
        return fig

    refresh = _redraw_on_change(controls, output_widget, draw)
    row = [controls["weight"]] + ([controls["scores"]] if len(runs) > 1 else [])
    box = widgets.VBox([widgets.HBox(row), readout, output_widget])
    box.controls, box.view, box.refresh = controls, view, refresh
    refresh()
    return box
