"""Class activation maps of a two-stream network through the grad-cam library (pytorch-grad-cam).

The library explains a model that takes *one* input tensor ``[N, C, H, W]`` and returns class
scores ``[N, K]``. A two-stream network takes two tensors, RGB snippets and flow stacks, and folds
the T snippets of a video into its batch. :class:`SingleInputTwoStream` bridges the two: it takes
one video's snippets with RGB and flow stacked on the channel axis, ``[T, 3 + 2L, H, W]``, and
returns the chosen output's scores ``[1, K]``. The tower layer the CAM is read from then holds
``[T, C, h, w]`` activations (one row per snippet), so the library returns one map per snippet:
a strip over the T segments. We write only this adapter; the CAM methods (Grad-CAM, Grad-CAM++,
XGrad-CAM, ...) are the library's.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

__all__ = ["SingleInputTwoStream", "two_stream_cam"]


class SingleInputTwoStream(nn.Module):
    """``[T, 3 + 2L, H, W]`` (one video: RGB channels first, then the flow stack) -> ``[1, K]``,
    the scores of ``output`` of a two-stream ``model``."""

    def __init__(self, model: nn.Module, output: str):
        super().__init__()
        self.model, self.output = model, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] <= 3:
            raise ValueError(f"expected one video's snippets [T, 3 + 2L, H, W], got {tuple(x.shape)}")
        out = self.model(x[None, :, :3], x[None, :, 3:])
        if self.output not in out:
            raise KeyError(f"the model has no output {self.output!r}; its outputs are {list(out)}")
        return out[self.output]


def two_stream_cam(model: nn.Module, rgb: torch.Tensor, flow: torch.Tensor, output: str, stream: str = "rgb",
                   layer: nn.Module | None = None, method=None, target_class: int | None = None) -> np.ndarray:
    """CAMs ``[T, H, W]`` in [0, 1] of one video (``rgb [T, 3, H, W]``, ``flow [T, 2L, H, W]``): where in
    each snippet ``stream``'s tower finds evidence for ``target_class`` (default: the predicted class)
    in the scores of ``output``.

    ``layer``: the tower layer to read (default: the last stage of ``stream``'s tower).
    ``method``: a grad-cam class (default ``pytorch_grad_cam.GradCAM``; e.g. ``GradCAMPlusPlus``,
    ``XGradCAM``)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if stream not in ("rgb", "flow"):
        raise ValueError(f"stream must be 'rgb' or 'flow', got {stream!r}")
    tower = model.rgb_tower if stream == "rgb" else model.flow_tower
    layer = layer if layer is not None else tower.stages[tower.stage_names[-1]]
    wrapped = SingleInputTwoStream(model, output).eval()
    x = torch.cat([rgb, flow], dim=1).to(next(model.parameters()).device)
    targets = None if target_class is None else [ClassifierOutputTarget(int(target_class))]
    with (method or GradCAM)(model=wrapped, target_layers=[layer]) as cam:
        return cam(input_tensor=x, targets=targets)
