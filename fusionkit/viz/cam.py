"""Class activation maps of a two-stream network through the grad-cam library (pytorch-grad-cam).

The library explains a model that takes *one* input tensor and returns class scores ``[N, K]``. A
two-stream network takes two tensors, RGB snippets and flow stacks. :class:`SingleInputTwoStream`
bridges the two: it takes one video with RGB and flow stacked on the channel axis and returns the
chosen output's scores ``[1, K]``. What the tower layer then holds decides the kind of CAM:

- 2D towers (TSN-style): the T snippets are folded into the batch, so the layer holds
  ``[T, C, h, w]`` and the library computes one map per snippet, each with its own channel weights
  and scaled to [0, 1] on its own: a strip over the T segments.
- 3D towers (``r3d_18``, ``r2plus1d_18``): the snippets form one clip, the layer holds
  ``[1, C, t, h, w]``, and the library's 3D path (``BaseCAM`` weights 5D activations over
  (t, h, w) and resizes the ``[t, h, w]`` map to the clip with ``scipy.ndimage.zoom``) gives one
  map over the whole clip, scaled to [0, 1] as a whole.

Either way :func:`two_stream_cam` returns ``[T, H, W]``. We write only this adapter, the choice of
layer and the drawing; the CAM methods are the library's, chosen by name (:data:`CAM_METHODS`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from pytorch_grad_cam import (EigenCAM, EigenGradCAM, GradCAM, GradCAMElementWise, GradCAMPlusPlus, HiResCAM,
                              LayerCAM, XGradCAM)
from pytorch_grad_cam.base_cam import BaseCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from fusionkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from fusionkit.registry import Registry

__all__ = ["CAM_METHODS", "STREAMS", "get_cam_method", "cam_target_layer", "SingleInputTwoStream", "two_stream_cam",
           "VideoCAMs", "video_cams", "cam_overlay", "snippet_images", "plot_cam_strip"]

STREAMS = ("rgb", "flow")

# The library's methods by the names its own cam.py example uses. Only methods that read the
# activations (and gradients) of one forward pass are listed: score- and ablation-based ones
# (ScoreCAM, AblationCAM) re-run the model on a batch of masked copies of the input, which the
# adapter would read as more snippets of the same video; FullGrad sums over every layer's biases of
# the whole network rather than one tower. Register another method with
# ``CAM_METHODS.register("name")(cls)``.
CAM_METHODS = Registry("CAM method")
for _name, _cls in {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "hirescam": HiResCAM,
                    "layercam": LayerCAM, "gradcamelementwise": GradCAMElementWise, "eigencam": EigenCAM,
                    "eigengradcam": EigenGradCAM}.items():
    CAM_METHODS.register(_name)(_cls)


def get_cam_method(method: str | type[BaseCAM] | None = None) -> type[BaseCAM]:
    """The grad-cam class for ``method``: a name from :data:`CAM_METHODS` (case-insensitive), a
    ``BaseCAM`` subclass (returned as it is), or None for Grad-CAM. An unknown name raises KeyError
    listing the known ones."""
    if method is None:
        return GradCAM
    if isinstance(method, str):
        return CAM_METHODS.lookup(method.lower())
    if isinstance(method, type) and issubclass(method, BaseCAM):
        return method
    raise TypeError(f"method must be a name from {sorted(CAM_METHODS)} or a pytorch_grad_cam BaseCAM subclass, "
                    f"got {method!r}")


def _tower(model: nn.Module, stream: str):
    if stream not in STREAMS:
        raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    return model.rgb_tower if stream == "rgb" else model.flow_tower


def _last_position(model: nn.Module, stream: str) -> str:
    """The last point ``stream``'s tower reaches: its last stage, except a motion tower truncated at
    a spatial fusion (``keep_flow_tower=False``, Feichtenhofer et al. Fig. 2 left), which stops at
    the fusion point; a CAM read after it would see a layer that never runs."""
    if stream == "flow" and not model.keep_flow_tower:
        # TwoStreamNet allows exactly one fusing block when it truncates the motion tower
        return next(key.replace(":", ".") for key, block in model.fusion_blocks.items() if block.fuses_streams)
    return _tower(model, stream).stage_names[-1]


def cam_target_layer(model: nn.Module, stream: str = "rgb", layer: str | nn.Module | None = None) -> nn.Module:
    """The module of ``stream``'s tower a CAM reads, for any method.

    ``layer``: None for the default, the last stage the tower runs (the last stage, or the fusion
    point of a truncated motion tower), the coarsest and most class-specific maps, as Grad-CAM
    reads the last conv layer; a stage name (``"stage1"``) or a stage's child (``"stage1.1"``,
    e.g. a residual block); or a module, returned as it is. A stage that a fusion block sits
    *inside* is run child by child, so its own module never runs: its last child is returned
    instead (the same output). Unknown names raise ValueError listing the tower's stages.
    """
    if isinstance(layer, nn.Module):
        return layer
    tower = _tower(model, stream)
    position = layer if layer is not None else _last_position(model, stream)
    stage, _, child = position.partition(".")
    if stage not in tower.stages:
        raise ValueError(f"the {stream} tower has no layer {position!r}; its stages are {tower.stage_names} "
                         f"(name a stage's child as e.g. '{tower.stage_names[-1]}.0')")
    children = list(tower.stages[stage].children())
    if child:
        if not child.isdigit() or int(child) >= len(children):
            raise ValueError(f"the {stream} tower's stage {stage!r} has children 0..{len(children) - 1}, "
                             f"got {position!r}")
        return children[int(child)]
    if any(key.startswith(f"{stage}:") for key in model.fusion_blocks):
        return children[-1]
    return tower.stages[stage]


class SingleInputTwoStream(nn.Module):
    """One input tensor -> the ``[1, K]`` scores of ``output`` (default: the model's fused output).

    The input is one video, RGB channels first, then the flow stack (:meth:`stack` builds it):
    ``[T, 3 + 2L, H, W]`` (the snippets) for 2D towers, ``[1, 3 + 2L, T, H, W]`` (one clip) for 3D
    towers. The input is made to require a gradient, so that a layer's output carries one even when
    every layer before it is frozen (``freeze_below_fusion``, ``train_branch``)."""

    def __init__(self, model: nn.Module, output: str | None = None):
        super().__init__()
        self.model, self.output = model, output

    @property
    def clip(self) -> bool:
        """Whether the towers are 3D (take the snippets as one clip)."""
        return self.model.rgb_tower.dims == 3

    def stack(self, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """``rgb [T, 3, H, W]`` and ``flow [T, 2L, H, W]`` (one dataset item) -> the input tensor."""
        if rgb.dim() != 4 or flow.dim() != 4 or rgb.shape[0] != flow.shape[0] or rgb.shape[1] != 3:
            raise ValueError(f"expected one video: rgb [T, 3, H, W] and flow [T, 2L, H, W], got {tuple(rgb.shape)} "
                             f"and {tuple(flow.shape)}")
        x = torch.cat([rgb, flow], dim=1)
        return x.transpose(0, 1)[None] if self.clip else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clip:
            if x.dim() != 5 or x.shape[0] != 1 or x.shape[1] <= 3:
                raise ValueError(f"3D towers: expected one clip [1, 3 + 2L, T, H, W], got {tuple(x.shape)}")
        elif x.dim() != 4 or x.shape[1] <= 3:
            raise ValueError(f"expected one video's snippets [T, 3 + 2L, H, W], got {tuple(x.shape)}")
        if torch.is_grad_enabled() and not x.requires_grad:
            x = x.detach().requires_grad_(True)
        if self.clip:  # [1, C, T, H, W] -> [1, T, C, H, W]
            rgb, flow = x[:, :3].transpose(1, 2), x[:, 3:].transpose(1, 2)
        else:
            rgb, flow = x[None, :, :3], x[None, :, 3:]
        out = self.model(rgb, flow)
        name = self.output if self.output is not None else out.fused
        if name not in out:
            raise KeyError(f"the model has no output {name!r}; its outputs are {list(out)}")
        return out[name]


def two_stream_cam(model: nn.Module, rgb: torch.Tensor, flow: torch.Tensor, output: str | None = None,
                   stream: str = "rgb", layer: str | nn.Module | None = None,
                   method: str | type[BaseCAM] | None = "gradcam", target_class: int | None = None) -> np.ndarray:
    """CAMs ``[T, H, W]`` in [0, 1] of one video (``rgb [T, 3, H, W]``, ``flow [T, 2L, H, W]``): where
    ``stream``'s tower finds evidence for ``target_class`` (default: the predicted class) in the
    scores of ``output`` (default: the model's fused output).

    ``layer``: see :func:`cam_target_layer` (default: the last stage the tower runs).
    ``method``: a name from :data:`CAM_METHODS` (``"gradcam"``, ``"gradcam++"``, ``"xgradcam"``,
    ``"layercam"``, ``"eigencam"``, ...) or a grad-cam class. EigenCAM uses no gradients, so its map
    does not depend on the class. 2D towers give one map per snippet, each scaled on its own; 3D
    towers one map over the clip (module docstring). The model's train/eval mode is restored.
    """
    cam_class = get_cam_method(method)
    target_layer = cam_target_layer(model, stream, layer)
    wrapped = SingleInputTwoStream(model, output)
    x = wrapped.stack(rgb, flow).to(next(model.parameters()).device)
    targets = None
    if target_class is not None:
        if not 0 <= int(target_class) < model.num_classes:
            raise ValueError(f"target_class {target_class} out of range: the model has classes 0..{model.num_classes - 1}")
        targets = [ClassifierOutputTarget(int(target_class))]
    was_training = model.training
    # not a `with` block: BaseCAM.__exit__ swallows IndexErrors (printing them) and returns None
    cam = cam_class(model=wrapped, target_layers=[target_layer])
    try:
        maps = cam(input_tensor=x, targets=targets)
    except Exception as error:
        if getattr(cam, "outputs", None) is None:  # the forward pass itself failed
            raise
        recorded = cam.activations_and_grads
        if not recorded.activations:
            raise RuntimeError(f"the CAM layer {type(target_layer).__name__} did not run in the forward pass; choose "
                               f"a layer the {stream} tower reaches (default: cam_target_layer(model, {stream!r}))"
                               ) from error
        if recorded.gradients or not cam.uses_gradients:
            raise
        # the output does not depend on this tower (e.g. the flow CAM of the "rgb" output): every
        # gradient is zero, and so is the map of a gradient-based method; the library, finding no
        # gradient at all, fails instead
        t, (h, w) = rgb.shape[0], rgb.shape[-2:]
        maps = np.zeros((1, t, h, w) if wrapped.clip else (t, h, w), np.float32)
    finally:
        cam.activations_and_grads.release()
        model.train(was_training)
    return maps[0] if wrapped.clip else maps


@dataclass
class VideoCAMs:
    """Both streams' CAMs ``[T, H, W]`` of one video, for one output, method and class;
    ``probability``: the output's softmax score of that class (None when not known)."""

    rgb: np.ndarray
    flow: np.ndarray
    target_class: int
    output: str
    method: str
    probability: float | None = None


def video_cams(model: nn.Module, rgb: torch.Tensor, flow: torch.Tensor, output: str | None = None,
               method: str | type[BaseCAM] = "gradcam", target_class: int | None = None,
               layers: dict[str, str | nn.Module] | None = None) -> VideoCAMs:
    """The CAMs of both streams (:func:`two_stream_cam`) for the same class: ``target_class``, or
    the class ``output`` predicts (found once, so both maps explain the same decision), with that
    class's softmax score. ``layers``: optional ``{"rgb": layer, "flow": layer}``."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        out = model(rgb[None].to(device), flow[None].to(device))
    model.train(was_training)
    output = output if output is not None else out.fused
    if output not in out:
        raise KeyError(f"the model has no output {output!r}; its outputs are {list(out)}")
    if target_class is None:
        target_class = int(out[output].argmax(-1))
    # score-level fusions return log-probabilities; softmax maps them back to themselves (as predict does)
    probability = float(out[output].float().softmax(-1)[0, target_class])
    layers = layers or {}
    maps = {stream: two_stream_cam(model, rgb, flow, output, stream, layers.get(stream), method, target_class)
            for stream in STREAMS}
    name = method if isinstance(method, str) else get_cam_method(method).__name__
    return VideoCAMs(maps["rgb"], maps["flow"], target_class, output, name, probability)


CAM_CMAP = "viridis"  # the CAM drawn on its own, 0..1 (no red or blue that could pass for a sprite)
CAM_FLOOR = 0.2  # brightness cam_overlay leaves where the CAM is 0


def cam_overlay(image: np.ndarray, cam: np.ndarray, floor: float = CAM_FLOOR) -> np.ndarray:
    """The image lit by a ``[H, W]`` CAM in [0, 1]: each pixel's colour times ``floor + (1 - floor) *
    cam``, as ``[H, W, 3]`` uint8 (the image: ``[H, W, 3]``, float in [0, 1] or uint8).

    Where the evidence is the frame keeps its own colours, so a red sprite stays red and a blue one
    blue; the rest fades towards black. This departs from the library's ``show_cam_on_image``, whose
    jet colour map paints red and blue over the frame and hides which sprite is which (the puzzles'
    classes are those colours)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {image.shape}")
    if image.shape[:2] != np.shape(cam):
        raise ValueError(f"the CAM {np.shape(cam)} and the image {image.shape[:2]} differ in size")
    if not 0 <= floor <= 1:
        raise ValueError(f"floor must be in [0, 1], got {floor}")
    image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else np.clip(image, 0, 1).astype(np.float32)
    light = floor + (1 - floor) * np.clip(np.asarray(cam, np.float32), 0, 1)
    return np.round(image * light[..., None] * 255).astype(np.uint8)


def snippet_images(rgb: torch.Tensor, flow: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> tuple[np.ndarray, np.ndarray]:
    """What one snippet looks like: its RGB frame ``[3, H, W]`` un-normalised, and its flow stack
    ``[2L, H, W]``'s first field colour-coded (the field the frame is aligned with, as the
    attention explorer shows it); both ``[H, W, 3]`` float in [0, 1]."""
    from fusionkit.viz.attention import denormalize_rgb
    from fusionkit.viz.plots import flow_stack_to_colour

    return denormalize_rgb(rgb, mean, std), flow_stack_to_colour(flow).astype(np.float32) / 255.0


CAM_ROWS = ("frame", "cam", "lit")  # per stream: the raw image, the CAM on its own, the image lit by it


def plot_cam_strip(rgb: torch.Tensor, flow: torch.Tensor, cams: VideoCAMs, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD, class_names: Sequence[str] | None = None,
                   true_class: int | None = None, streams: Sequence[str] = STREAMS, panel_size: float = 1.5,
                   fig=None, floor: float = CAM_FLOOR):
    """A strip over the T segments of one video, three rows per stream in ``streams``: the raw
    image (RGB frame, or the flow's first field colour-coded), the CAM on its own (``CAM_CMAP``,
    0..1, with a colour bar) and the image lit by it (:func:`cam_overlay`, the frame's own colours
    where the evidence is). The title names the explained class, its score and, with
    ``true_class``, the truth; the flow rows carry the colour-wheel key.

    ``fig``: a Figure or SubFigure to draw into (e.g. one of ``fig.subfigures``), else a new one.
    Returns it; ``fig.cam_axes[stream][row]`` lists the row's Axes (``CAM_ROWS``), each panel's
    picture being ``ax.images[0]``."""
    import matplotlib.pyplot as plt

    from fusionkit.viz.plots import SMALL, add_flow_key

    t = int(rgb.shape[0])
    unknown = [s for s in streams if s not in STREAMS]
    if unknown or not streams:
        raise ValueError(f"streams must be some of {STREAMS}, got {list(streams)}")
    if cams.rgb.shape[0] != t or cams.flow.shape[0] != t:
        raise ValueError(f"the video has {t} snippets but the CAMs {cams.rgb.shape[0]} (rgb) and "
                         f"{cams.flow.shape[0]} (flow)")
    rows = len(streams) * len(CAM_ROWS)
    if fig is None:
        fig = plt.figure(figsize=(panel_size * t + 1.6, panel_size * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, t, squeeze=False)
    images = [snippet_images(rgb[i], flow[i], mean, std) for i in range(t)]
    names = {"rgb": "RGB", "flow": "flow"}
    fig.cam_axes = {}
    for k, stream in enumerate(streams):
        block = axes[k * len(CAM_ROWS):(k + 1) * len(CAM_ROWS)]
        fig.cam_axes[stream] = {row: list(block[j]) for j, row in enumerate(CAM_ROWS)}
        maps = getattr(cams, stream)
        for i in range(t):
            picture = images[i][0 if stream == "rgb" else 1]
            block[0, i].imshow(picture)
            shown = block[1, i].imshow(maps[i], cmap=CAM_CMAP, vmin=0, vmax=1)
            block[2, i].imshow(cam_overlay(picture, maps[i], floor))
        for j, row in enumerate(("", "CAM", "lit by CAM")):
            block[j, 0].set_ylabel(f"{names[stream]} {row}".strip(), fontsize=SMALL)
        fig.colorbar(shown, ax=list(block[1]), shrink=0.9, pad=0.02).set_label("CAM", fontsize=SMALL)
        if stream == "flow":
            add_flow_key(block[0, -1], where="right")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    for i in range(t):
        axes[0, i].set_title(f"segment {i}", fontsize=SMALL)

    def name(c):
        return class_names[c] if class_names is not None else f"class {c}"

    score = f" (p = {cams.probability:.2f})" if cams.probability is not None else ""
    truth = f"; true class {name(true_class)}" if true_class is not None else ""
    fig.suptitle(f"{cams.method} on {cams.output!r}: evidence for {name(cams.target_class)}{score}{truth}",
                 fontsize=SMALL + 1)
    return fig
