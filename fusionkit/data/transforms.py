"""Paired augmentation of an RGB clip and its optical-flow stack.

Spatial fusion compares the two streams pixel by pixel, so both must see the *same* crop, scale
and flip (Feichtenhofer et al. 2016, Sec. 3.1: "registered" correspondences). torchvision's v2
transforms draw their parameters per call and know nothing of flow values, so these draw once per
sample and apply to both, and keep flow a displacement field:

- a horizontal flip mirrors the field *and* negates its x components;
- resizing by a factor s scales the displacements by s (x and y separately), so flow stays in
  pixels of the output image. (MMAction2 and TSN treat flow JPEGs as images and skip this; with
  scale jitter that mislabels the motion's magnitude, which we avoid.)

Layouts: ``rgb`` float tensor ``[T, 3, H, W]`` in [0, 1]; ``flow`` float tensor ``[T, 2L, H, W]``
in pixels, channels interleaved ``x1, y1, x2, y2, ...`` as TSN stacks them.
"""
from __future__ import annotations

import random
from typing import Sequence

import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Pair = tuple[torch.Tensor, torch.Tensor]


def crop(rgb: torch.Tensor, flow: torch.Tensor, top: int, left: int, height: int, width: int) -> Pair:
    return rgb[..., top:top + height, left:left + width], flow[..., top:top + height, left:left + width]


def resize(rgb: torch.Tensor, flow: torch.Tensor, height: int, width: int) -> Pair:
    """Bilinear resize of both; flow displacements scale with the image (x by width ratio, y by height)."""
    h, w = rgb.shape[-2:]
    if (h, w) == (height, width):
        return rgb, flow
    rgb = F.interpolate(rgb, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
    scale = torch.tensor([width / w, height / h], dtype=flow.dtype).repeat(flow.shape[1] // 2)
    return rgb, flow * scale[None, :, None, None]


def hflip(rgb: torch.Tensor, flow: torch.Tensor) -> Pair:
    """Mirror both; the mirrored motion points the other way in x, so flow-x is negated."""
    sign = torch.tensor([-1.0, 1.0], dtype=flow.dtype).repeat(flow.shape[1] // 2)
    return rgb.flip(-1), flow.flip(-1) * sign[None, :, None, None]


class PairedTransform:
    """Base class: ``__call__(rgb, flow) -> (rgb, flow)`` with parameters drawn once for both."""

    def __call__(self, rgb: torch.Tensor, flow: torch.Tensor) -> Pair:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class Compose(PairedTransform):
    def __init__(self, transforms: Sequence[PairedTransform]):
        self.transforms = list(transforms)

    def __call__(self, rgb, flow):
        for t in self.transforms:
            rgb, flow = t(rgb, flow)
        return rgb, flow


class MultiScaleCrop(PairedTransform):
    """TSN's corner-cropping with scale jitter (Wang et al. 2016, Sec. 3.2; MMAction2 MultiScaleCrop):
    crop width and height each drawn from ``scales`` x the short side (aspect change limited by
    ``max_distort``), the crop placed at one of 13 fixed positions (corners, centre, and quarter
    points), then resized to ``size``."""

    def __init__(self, size: int | tuple[int, int], scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66),
                 max_distort: int = 1):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scales = tuple(scales)
        self.max_distort = max_distort

    def __call__(self, rgb, flow):
        h, w = rgb.shape[-2:]
        base = min(h, w)
        sizes = [int(base * s) for s in self.scales]
        pairs = [(cw, ch) for i, ch in enumerate(sizes) for j, cw in enumerate(sizes) if abs(i - j) <= self.max_distort]
        cw, ch = random.choice(pairs)
        dx, dy = (w - cw) / 4, (h - ch) / 4
        positions = [(0, 0), (4, 0), (0, 4), (4, 4), (2, 2), (0, 2), (4, 2), (2, 0), (2, 4),
                     (1, 1), (3, 1), (1, 3), (3, 3)]
        px, py = random.choice(positions)
        rgb, flow = crop(rgb, flow, int(py * dy), int(px * dx), ch, cw)
        return resize(rgb, flow, *self.size)


class RandomHorizontalFlip(PairedTransform):
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, rgb, flow):
        return hflip(rgb, flow) if random.random() < self.p else (rgb, flow)


class ResizeShortSide(PairedTransform):
    def __init__(self, size: int):
        self.size = size

    def __call__(self, rgb, flow):
        h, w = rgb.shape[-2:]
        s = self.size / min(h, w)
        return resize(rgb, flow, round(h * s), round(w * s))


class _FixedCrop(PairedTransform):
    """Crops of a fixed ``size`` (an int for squares, or (height, width))."""

    def __init__(self, size: int | tuple[int, int]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def _fit(self, rgb: torch.Tensor) -> tuple[int, int, int, int]:
        """(frame height, width, crop height, width), checking that the crop fits."""
        h, w = rgb.shape[-2:]
        ch, cw = self.size
        if ch > h or cw > w:
            raise ValueError(f"crop {self.size} is larger than the {h}x{w} frame; resize first")
        return h, w, ch, cw


class CenterCrop(_FixedCrop):
    def __call__(self, rgb, flow):
        h, w, ch, cw = self._fit(rgb)
        return crop(rgb, flow, (h - ch) // 2, (w - cw) // 2, ch, cw)


class TenCrop(_FixedCrop):
    """Multi-crop testing (Simonyan & Zisserman 2014; TSN): the 4 corner crops and the centre crop,
    and their mirror images, stacked along the snippet axis: ``[T, ...]`` -> ``[10 T, ...]``, so the
    network's consensus averages over snippets and crops alike."""

    def __call__(self, rgb, flow):
        h, w, ch, cw = self._fit(rgb)
        corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
        crops = [crop(rgb, flow, top, left, ch, cw) for top, left in corners]
        crops += [hflip(r, f) for r, f in crops]
        return torch.cat([r for r, _ in crops]), torch.cat([f for _, f in crops])


class Normalize(PairedTransform):
    """RGB: (x - mean) / std per channel (ImageNet statistics by default). Flow: divided by
    ``flow_bound`` (the +-20 px storage range), so it lies in [-1, 1] like MMAction2's
    (q - 128) / 128 on the quantised values."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 flow_bound: float = 20.0):
        self.mean, self.std, self.flow_bound = tuple(mean), tuple(std), flow_bound

    def __call__(self, rgb, flow):
        mean = torch.tensor(self.mean, dtype=rgb.dtype)[None, :, None, None]
        std = torch.tensor(self.std, dtype=rgb.dtype)[None, :, None, None]
        return (rgb - mean) / std, flow / self.flow_bound


def train_transform(size: int, flip: bool = True, scales: Sequence[float] = (1.0, 0.875, 0.75, 0.66)) -> Compose:
    """Scale-jittered corner crops and (where the labels allow it) horizontal flips, then normalisation.

    Turn ``flip`` off for data whose label depends on left/right (most puzzles: see
    ``Puzzle.hflip_preserves_label``).
    """
    steps: list[PairedTransform] = [MultiScaleCrop(size, scales)]
    if flip:
        steps.append(RandomHorizontalFlip())
    return Compose([*steps, Normalize()])


def eval_transform(size: int, short_side: int | None = None, ten_crop: bool = False) -> Compose:
    """Resize the short side (default: ``size``), centre crop (or :class:`TenCrop`), normalise."""
    return Compose([ResizeShortSide(short_side or size), TenCrop(size) if ten_crop else CenterCrop(size), Normalize()])
