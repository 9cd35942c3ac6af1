"""Where does a CMA query look? Attention maps of cross-modality attention units, drawn as in
Chi et al. 2019, "Two-Stream Video Classification with Cross-Modality Attention", Fig. 5 / §5.4:
the attention map of one query location over the *other* stream's positions, drawn over the RGB
frame, with arrows from the query to the most attended key positions.

Pipeline:

- :func:`attention_units` names the :class:`~fusionkit.methods.cma.CrossModalityAttention` units of a
  model, e.g. ``"stage2.1/rgb<-flow"`` (RGB queries attending over flow keys, Fig. 1) and
  ``"stage2.1/flow<-rgb"``; a non-local block's units are ``"rgb<-rgb"`` / ``"flow<-flow"``.
- :func:`record_attention` runs the model once with ``keep_attention`` switched on for the chosen
  units and returns an :class:`AttentionRecord` per unit: the softmax weights ``[N, L_q, L_k]``
  (N = B*T snippets), the query grid and the key grid (after the 2x2 max-pool of §3.2).
- :func:`query_attention` cuts out one query's row as a map over the key grid;
  :func:`top_positions` lists its most attended keys; :func:`image_to_grid` /
  :func:`grid_to_image` convert between frame pixels and grid cells.
- :func:`plot_attention_arrows` draws one panel of Fig. 5, :func:`attention_figure` a grid of them,
  and :func:`attention_explorer` an ipywidgets explorer whose logic is :func:`explorer_view`.

Pixel coordinates follow matplotlib's ``imshow``: pixel (x, y) has its centre at integer (x, y), so
an ``H x W`` frame spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. A grid of ``Hg x Wg`` cells is
assumed to tile the frame evenly (true up to rounding for the strided conv maps of the towers).
Keys are pooled with floor mode: a source map of odd size leaves its last row/column out of every
key, so the key grid then covers slightly less than the frame (:meth:`AttentionRecord.key_extent`).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusionkit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize
from fusionkit.fusion import FusionChain
from fusionkit.methods.cma import CMABlock, CrossModalityAttention, NonLocalBlock

__all__ = [
    "AttentionRecord", "attention_units", "record_attention", "query_attention", "image_to_grid", "grid_to_image",
    "top_positions", "key_cells_on", "attention_on", "own_cell_attention", "denormalize_rgb", "plot_attention_arrows", "attention_figure", "ExplorerState", "ExplorerView",
    "AttentionSource", "explorer_view", "plot_explorer_view", "attention_explorer",
]

Index = tuple[int, ...]


# --------------------------------------------------------------------------------------------
# Naming and recording the attention units
# --------------------------------------------------------------------------------------------
def _block_units(block: nn.Module, prefix: str) -> list[tuple[str, CrossModalityAttention]]:
    """(name, unit) pairs of one fusion block; duplicate names are resolved by the caller."""
    join = (lambda s: f"{prefix}/{s}") if prefix else (lambda s: s)
    if isinstance(block, FusionChain):
        return [pair for sub in block.blocks for pair in _block_units(sub, prefix)]
    if isinstance(block, (CMABlock, NonLocalBlock)):
        cross = isinstance(block, CMABlock)
        pairs = []
        if block.rgb_attention is not None:
            pairs.append((join("rgb<-flow" if cross else "rgb<-rgb"), block.rgb_attention))
        if block.flow_attention is not None:
            pairs.append((join("flow<-rgb" if cross else "flow<-flow"), block.flow_attention))
        return pairs
    if isinstance(block, CrossModalityAttention):
        return [(prefix or "attention", block)]
    # any other module (e.g. a student's block): its attention units under their module paths
    return [(join(name), m) for name, m in block.named_modules() if isinstance(m, CrossModalityAttention)]


def attention_units(model: nn.Module) -> dict[str, CrossModalityAttention]:
    """The :class:`CrossModalityAttention` units of ``model``, by readable name (Chi et al. Fig. 5).

    For a :class:`~fusionkit.models.two_stream.TwoStreamNet`, ``"<position>/<target><-<source>"``:
    ``"stage1.1/rgb<-flow"`` (RGB queries over flow keys, Fig. 1) and ``"stage1.1/flow<-rgb"`` for a
    CMA block, ``"stage1.1/rgb<-rgb"`` / ``"stage1.1/flow<-flow"`` for a non-local block, and
    ``"temporal/..."`` for a temporal fusion block. :class:`FusionChain` s are walked; should a chain
    hold two units of the same direction, they are told apart by the block's index in the chain
    (``"stage1.1[0]/rgb<-rgb"``). A bare fusion block gives names without the position prefix
    (``"rgb<-flow"``), a bare unit ``"attention"``.
    """
    fusion_blocks = getattr(model, "fusion_blocks", None)
    if isinstance(fusion_blocks, nn.ModuleDict):
        blocks = [(key.replace(":", "."), block) for key, block in fusion_blocks.items()]
        if getattr(model, "temporal_fusion", None) is not None:
            blocks.append(("temporal", model.temporal_fusion))
    else:
        blocks = [("", model)]
    units: dict[str, CrossModalityAttention] = {}
    for position, block in blocks:
        pairs = _block_units(block, position)
        names = [name for name, _ in pairs]
        if len(set(names)) < len(names) and isinstance(block, FusionChain):  # disambiguate by chain index
            pairs = [pair for i, sub in enumerate(block.blocks)
                     for pair in _block_units(sub, f"{position}[{i}]" if position else f"[{i}]")]
        for name, unit in pairs:
            if name in units:
                raise RuntimeError(f"attention_units: two units are both named {name!r}")
            units[name] = unit
    return units


@dataclass
class AttentionRecord:
    """The attention of one unit in one forward pass (Eq. 1's softmax weights, Chi et al. §3.1).

    Attributes:
        weights: ``[N, L_q, L_k]`` softmax weights on the CPU; each row sums to 1. N = B*T snippets
            for 2D units (sample ``b * num_segments + t``), N = B for a temporal (3D) unit.
        query_shape: the query grid ((H, W) or (T, H, W)), the target map's positions, row-major.
        key_shape: the key grid after the spatial 2x2 max-pool (§3.2), row-major.
        source_shape: the source map's grid before pooling (None if unknown).
        num_segments: T, for a 2D unit of a two-stream network (None for a bare block, and for a
            temporal unit, whose rows are the B videos and whose segments lie on the time axis).
    """

    weights: torch.Tensor
    query_shape: tuple[int, ...]
    key_shape: tuple[int, ...]
    source_shape: tuple[int, ...] | None = None
    num_segments: int | None = None

    @property
    def num_samples(self) -> int:
        return int(self.weights.shape[0])

    def sample_index(self, video: int, segment: int) -> int:
        """Row of ``weights`` of snippet ``segment`` of batch element ``video`` (segments are folded
        into the batch as ``video * T + segment``)."""
        t = self.num_segments or 1
        if not 0 <= segment < t:
            raise ValueError(f"segment {segment} out of range: valid segments are 0..{t - 1}")
        return _check_range("sample", video * t + segment, self.num_samples)

    def key_extent(self, image_size: tuple[int, int]) -> tuple[float, float]:
        """(height, width) in pixels of the part of an ``image_size`` frame the key grid covers,
        from the top-left corner: the whole frame unless floor-mode pooling of an odd-sized source
        map left its last row/column out (a 7x7 source gives 3x3 keys covering 6/7 of it)."""
        h, w = image_size
        if self.source_shape is None:
            return float(h), float(w)
        (hs, ws), (hk, wk) = self.source_shape[-2:], self.key_shape[-2:]
        fh, fw = (1 if hk == hs else 2), (1 if wk == ws else 2)  # 2x2 pooled keys, or unpooled
        return h * min(hs, hk * fh) / hs, w * min(ws, wk * fw) / ws


def _model_device(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def _select_units(all_units: Mapping[str, CrossModalityAttention], units: str | Sequence[str] | None) -> list[str]:
    if not all_units:
        raise ValueError("this model has no CrossModalityAttention units (build it with a 'cma' or 'nonlocal' block)")
    chosen = list(all_units) if units is None else [units] if isinstance(units, str) else list(units)
    unknown = [u for u in chosen if u not in all_units]
    if unknown:
        raise ValueError(f"unknown attention unit(s) {unknown}; the model has {list(all_units)}")
    if not chosen:
        raise ValueError(f"no attention unit chosen; the model has {list(all_units)}")
    return chosen


def record_attention(model: nn.Module, rgb: torch.Tensor, flow: torch.Tensor,
                     units: str | Sequence[str] | None = None) -> dict[str, AttentionRecord]:
    """Run ``model`` once and return the attention of the chosen units (Chi et al. Fig. 5, §5.4).

    ``rgb`` / ``flow``: one dataset item's ``[T, 3, H, W]`` / ``[T, 2L, H, W]`` or a batch
    ``[B, T, ...]`` for a two-stream network (N = B*T in the records); for a bare fusion block or
    unit, its inputs as they are. ``units``: names from :func:`attention_units` (default: all).

    The model runs in eval mode under ``no_grad`` with ``keep_attention`` on for the chosen units
    only; afterwards every unit's ``keep_attention`` and stored ``last_*`` attributes and the model's
    train/eval mode are as before, also when the forward raises.
    """
    all_units = attention_units(model)
    chosen = _select_units(all_units, units)
    two_stream = isinstance(getattr(model, "fusion_blocks", None), nn.ModuleDict)
    num_segments = None
    if two_stream:
        if rgb.dim() != flow.dim() or rgb.dim() not in (4, 5):
            raise ValueError(f"expected one item rgb [T, 3, H, W] / flow [T, 2L, H, W] or a batch [B, T, ...], got "
                             f"{tuple(rgb.shape)} and {tuple(flow.shape)}")
        if rgb.dim() == 4:
            rgb, flow = rgb.unsqueeze(0), flow.unsqueeze(0)
        num_segments = int(rgb.shape[1])
    device = _model_device(model)
    rgb, flow = rgb.to(device), flow.to(device)

    saved = {name: (u.keep_attention, u.last_attention, u.last_query_shape, u.last_key_shape)
             for name, u in all_units.items()}
    sources: dict[str, tuple[int, ...]] = {}

    def capture_source(name: str):
        def hook(module, inputs):
            sources[name] = tuple(inputs[1].shape[2:])
        return hook

    handles = [all_units[name].register_forward_pre_hook(capture_source(name)) for name in chosen]
    was_training = model.training
    records: dict[str, AttentionRecord] = {}
    try:
        for name, unit in all_units.items():
            unit.keep_attention = name in chosen
            unit.last_attention = unit.last_query_shape = unit.last_key_shape = None
        model.eval()
        with torch.no_grad():
            model(rgb, flow)
        for name in chosen:
            unit = all_units[name]
            if unit.last_attention is None:
                raise RuntimeError(f"attention unit {name!r} did not run in this forward pass "
                                   f"(is its tower truncated before it?)")
            query_shape = tuple(unit.last_query_shape)
            records[name] = AttentionRecord(unit.last_attention.detach().cpu(), query_shape,
                                            tuple(unit.last_key_shape), sources.get(name),
                                            num_segments if len(query_shape) == 2 else None)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
        for name, unit in all_units.items():
            unit.keep_attention, unit.last_attention, unit.last_query_shape, unit.last_key_shape = saved[name]
    return records


# --------------------------------------------------------------------------------------------
# Reading the maps
# --------------------------------------------------------------------------------------------
def _check_range(what: str, value: Any, size: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if not 0 <= int(value) < size:
        raise ValueError(f"{what} {value} out of range: valid values are 0..{size - 1}")
    return int(value)


def query_attention(record: AttentionRecord, sample: int, query_yx: Sequence[int]) -> np.ndarray:
    """Attention of one query over the key grid (the map of Chi et al. Fig. 5): ``[Hk, Wk]`` (or
    ``[Tk, Hk, Wk]`` for 3D keys), non-negative, summing to 1.

    ``sample``: row of the batch, ``0..N-1`` (``record.sample_index(video, segment)``).
    ``query_yx``: the query cell in query-grid coordinates, ``(y, x)``, or ``(t, y, x)`` for a 3D
    query grid. Raises ValueError naming the valid range for anything out of range.
    """
    sample = _check_range("sample", sample, record.num_samples)
    query = tuple(query_yx)
    axes = ("t", "y", "x")[-len(record.query_shape):]
    if len(query) != len(record.query_shape):
        raise ValueError(f"query_yx must have {len(record.query_shape)} coordinates ({', '.join(axes)}) for the "
                         f"query grid {record.query_shape}, got {query_yx!r}")
    index = [_check_range(f"query {axis}", q, n) for axis, q, n in zip(axes, query, record.query_shape)]
    row = int(np.ravel_multi_index(index, record.query_shape))
    return record.weights[sample, row].numpy().reshape(record.key_shape)


def _spatial(grid_shape: Sequence[int]) -> tuple[int, int]:
    if len(grid_shape) not in (2, 3):
        raise ValueError(f"grid_shape must be (H, W) or (T, H, W), got {tuple(grid_shape)}")
    return int(grid_shape[-2]), int(grid_shape[-1])


def image_to_grid(point_xy: Sequence[float], image_size: tuple[int, int], grid_shape: Sequence[int]) -> tuple[int, int]:
    """The grid cell ``(y, x)`` holding pixel ``point_xy = (x, y)`` of an ``image_size = (H, W)``
    frame, for a grid of ``(Hg, Wg)`` cells tiling the frame (of a ``(T, Hg, Wg)`` grid only the
    spatial part is used). Points outside ``[-0.5, W - 0.5] x [-0.5, H - 0.5]`` raise ValueError."""
    x, y = float(point_xy[0]), float(point_xy[1])
    h, w = image_size
    hg, wg = _spatial(grid_shape)
    if not (-0.5 <= x <= w - 0.5 and -0.5 <= y <= h - 0.5):
        raise ValueError(f"point (x={x}, y={y}) lies outside the {h}x{w} frame: valid x in [-0.5, {w - 0.5}], "
                         f"y in [-0.5, {h - 0.5}]")
    gy = min(int(math.floor((y + 0.5) * hg / h)), hg - 1)
    gx = min(int(math.floor((x + 0.5) * wg / w)), wg - 1)
    return gy, gx


def grid_to_image(index: Sequence[int], grid_shape: Sequence[int], image_size: tuple[float, float]) -> tuple[float, float]:
    """Pixel ``(x, y)`` of the centre of grid cell ``index = (y, x)`` (or ``(t, y, x)``; t is
    ignored) of a ``grid_shape`` grid tiling an ``image_size = (H, W)`` frame. The inverse of
    :func:`image_to_grid` on cell centres."""
    hg, wg = _spatial(grid_shape)
    if len(index) not in (2, 3):
        raise ValueError(f"index must be (y, x) or (t, y, x), got {tuple(index)}")
    gy = _check_range("grid y", index[-2], hg)
    gx = _check_range("grid x", index[-1], wg)
    h, w = image_size
    return -0.5 + (gx + 0.5) * w / wg, -0.5 + (gy + 0.5) * h / hg


def key_cells_on(mask: np.ndarray, record: AttentionRecord) -> np.ndarray:
    """Which key cells look at a region: ``mask`` is a boolean ``[H, W]`` frame (e.g. the pixels of
    a moving sprite); the result is a boolean ``[Hk, Wk]`` map of the key cells whose pixel area
    (the 2x2 window the key pooled, :meth:`AttentionRecord.key_extent`) holds any of its pixels."""
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be a [H, W] frame, got shape {mask.shape}")
    hk, wk = _spatial(record.key_shape)
    eh, ew = record.key_extent(mask.shape)
    cells = np.zeros((hk, wk), bool)
    for i in range(hk):
        for j in range(wk):
            rows = slice(int(math.floor(i * eh / hk)), int(math.ceil((i + 1) * eh / hk)))
            cols = slice(int(math.floor(j * ew / wk)), int(math.ceil((j + 1) * ew / wk)))
            cells[i, j] = mask[rows, cols].any()
    return cells


def attention_on(record: AttentionRecord, sample: int, query_yx: Sequence[int], cells: np.ndarray) -> float:
    """The share of one query's attention that falls on the key ``cells`` (a boolean ``[Hk, Wk]``
    map, e.g. from :func:`key_cells_on`; for 3D keys it applies at every time step)."""
    amap = query_attention(record, sample, query_yx)
    return float(amap[..., np.asarray(cells, bool)].sum())


def own_cell_attention(record: AttentionRecord) -> float:
    """How local the attention is: the mean weight a query gives to the key cell at its own place
    (same frame position and, for 3D grids, the same time step), over all queries and samples.
    1 = each query looks only at its own cell; ``1 / L_k`` = uniform attention."""
    if len(record.query_shape) != len(record.key_shape):
        raise ValueError(f"query grid {record.query_shape} and key grid {record.key_shape} differ in dimensions")
    size = (1000, 1000)  # any frame: cell centres are compared in the same pixel frame
    extent = record.key_extent(size)
    hk, wk = _spatial(record.key_shape)
    own = []
    for index in np.ndindex(*record.query_shape):
        x, y = grid_to_image(index, record.query_shape, size)
        ky = min(int((y + 0.5) * hk / extent[0]), hk - 1)
        kx = min(int((x + 0.5) * wk / extent[1]), wk - 1)
        key = (*index[:-2], ky, kx)
        own.append(np.ravel_multi_index(key, record.key_shape))
    rows = torch.arange(int(np.prod(record.query_shape)))
    return float(record.weights[:, rows, torch.tensor(own)].mean())


def top_positions(attention_map: np.ndarray, k: int) -> list[tuple[Index, float]]:
    """The ``k`` most attended positions of a map, ``[(grid index, weight), ...]`` by decreasing
    weight (ties by row-major order); all of them if the map has fewer than ``k``."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    values = np.asarray(attention_map)
    flat = values.ravel()
    order = np.argsort(-flat, kind="stable")[:k]
    return [(tuple(int(i) for i in np.unravel_index(j, values.shape)), float(flat[j])) for j in order]


def denormalize_rgb(rgb: torch.Tensor | np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """A normalised RGB frame ``[3, H, W]`` (as :class:`~fusionkit.data.transforms.Normalize`
    leaves it) back to an ``[H, W, 3]`` float image in [0, 1] for display."""
    x = torch.as_tensor(rgb).detach().float().cpu()
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected one frame [3, H, W], got {tuple(x.shape)}")
    x = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    return x.clamp(0, 1).permute(1, 2, 0).numpy()


# --------------------------------------------------------------------------------------------
# Drawing (Fig. 5)
# --------------------------------------------------------------------------------------------
def _as_image(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """An ``[H, W, 3]`` float image in [0, 1] (uint8 scaled; ``[3, H, W]`` tensors transposed)."""
    image = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"frame must be [H, W, 3] (float in [0, 1] or uint8), got shape {image.shape}")
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    return np.clip(image.astype(np.float32), 0, 1)


def _upsample(attention_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a 2D map to ``size = (h, w)``."""
    x = torch.as_tensor(np.asarray(attention_map, dtype=np.float32))[None, None]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def plot_attention_arrows(ax, frame: np.ndarray | torch.Tensor, attention_map: np.ndarray,
                          query_xy_pixels: Sequence[float], k: int = 3, *,
                          extent_hw: tuple[float, float] | None = None, alpha: float = 0.5, cmap: str = "viridis",
                          arrow_color: str = "white", query_color: str = "red", show_weights: bool = True,
                          title: str | None = None):
    """One panel of Chi et al. Fig. 5 (§5.4): ``frame`` with the attention map of a query upsampled
    to the frame as a translucent heatmap, the query marked, and arrows from the query to the
    ``k`` most attended key positions (arrow width grows with the weight).

    Args:
        ax: the matplotlib Axes to draw on (returned).
        frame: ``[H, W, 3]`` float in [0, 1] or uint8 (``[3, H, W]`` is transposed).
        attention_map: ``[Hk, Wk]`` over the key grid (:func:`query_attention`). A 3D map
            ``[Tk, Hk, Wk]`` is shown summed over time; its arrows are labelled with the key's t.
        query_xy_pixels: the query point ``(x, y)`` in frame pixels.
        extent_hw: the pixel (height, width) the key grid covers from the top-left corner
            (:meth:`AttentionRecord.key_extent`); default: the whole frame.
    Arrows are annotations with gid ``"attention-arrow"``, the query marker has gid ``"attention-query"``,
    the weights are texts with gid ``"attention-weight"``, each written on the side of its key that
    faces the frame's centre so it stays inside the panel. The heatmap is ``viridis`` by default
    (Chi et al. draw jet, whose red and blue would pass for the puzzles' red and blue sprites).
    """
    image = _as_image(frame)
    h, w = image.shape[:2]
    values = np.asarray(attention_map, dtype=np.float32)
    if values.ndim not in (2, 3):
        raise ValueError(f"attention_map must be [Hk, Wk] or [Tk, Hk, Wk], got shape {values.shape}")
    spatial = values if values.ndim == 2 else values.sum(axis=0)
    eh, ew = extent_hw if extent_hw is not None else (h, w)
    heat = _upsample(spatial, (max(1, round(eh)), max(1, round(ew))))
    ax.imshow(image, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.imshow(heat, cmap=cmap, alpha=alpha, vmin=0.0, vmax=max(float(heat.max()), 1e-12),
              extent=(-0.5, ew - 0.5, eh - 0.5, -0.5))
    qx, qy = float(query_xy_pixels[0]), float(query_xy_pixels[1])
    top = top_positions(values, k)
    w_max = max(top[0][1], 1e-12)
    for index, weight in top:
        kx, ky = grid_to_image(index, values.shape, (eh, ew))
        ax.annotate("", xy=(kx, ky), xytext=(qx, qy), gid="attention-arrow",
                    arrowprops=dict(arrowstyle="-|>", color=arrow_color, lw=1.0 + 2.0 * weight / w_max,
                                    shrinkA=0, shrinkB=0, mutation_scale=12))
        if show_weights:
            label = f"{weight:.2f}" if values.ndim == 2 else f"{weight:.2f} (t={index[0]})"
            # towards the centre of the frame (y grows downwards), a few points off the key
            right, low = kx > (w - 1) / 2, ky > (h - 1) / 2
            ax.annotate(label, (kx, ky), xytext=(-3 if right else 3, 3 if low else -3), textcoords="offset points",
                        color=arrow_color, fontsize=7, ha="right" if right else "left",
                        va="bottom" if low else "top", gid="attention-weight")
    ax.plot([qx], [qy], marker="o", markersize=7, markerfacecolor=query_color, markeredgecolor="white",
            linestyle="none", gid="attention-query")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=8)
    return ax


def attention_figure(records: Mapping[str, AttentionRecord], frame: np.ndarray | torch.Tensor | Mapping[str, Any],
                     queries_xy: Sequence[Sequence[float]], sample: int = 0, units: Sequence[str] | None = None,
                     k: int = 3, query_t: int = 0, panel_size: float = 2.6, query_names: Sequence[str] | None = None,
                     title: str | None = None, **plot_kwargs):
    """Fig. 5 as a grid: one row per unit, one column per query point, each panel drawn by
    :func:`plot_attention_arrows`. Returns the matplotlib Figure.

    Each column is titled once (``query_names``, default the query cell), each row is labelled
    with its unit on the left, and ``title`` goes above them all, so no panel carries a long title
    that runs into its neighbour's.

    Args:
        records: from :func:`record_attention`.
        frame: the frame all panels are drawn on (``[H, W, 3]``), or a mapping unit -> frame (e.g.
            the flow colour image for ``flow<-rgb`` units).
        queries_xy: query points ``(x, y)`` in frame pixels; each is snapped to the centre of the
            query-grid cell holding it, the position the map belongs to.
        sample: the row of the batch (``record.sample_index(video, segment)``).
        units: the records to draw, in order (default: all).
        query_t: the query's time index for units with a 3D query grid.
    """
    import matplotlib.pyplot as plt

    names = list(records) if units is None else list(units)
    missing = [u for u in names if u not in records]
    if missing:
        raise ValueError(f"no record for unit(s) {missing}; recorded: {list(records)}")
    if not names or not queries_xy:
        raise ValueError("attention_figure needs at least one unit and one query point")
    if query_names is not None and len(query_names) != len(queries_xy):
        raise ValueError(f"{len(query_names)} query names for {len(queries_xy)} query points")
    fig, axes = plt.subplots(len(names), len(queries_xy), squeeze=False, layout="constrained",
                             figsize=(panel_size * len(queries_xy) + 0.4, panel_size * len(names) + 0.4))
    for row, name in enumerate(names):
        record = records[name]
        image = _as_image(frame[name] if isinstance(frame, Mapping) else frame)
        size = image.shape[:2]
        for col, point in enumerate(queries_xy):
            cell = image_to_grid(point, size, record.query_shape)
            query = cell if len(record.query_shape) == 2 else (query_t, *cell)
            amap = query_attention(record, sample, query)
            centre = grid_to_image(cell, record.query_shape, size)
            plot_attention_arrows(axes[row, col], image, amap, centre, k, extent_hw=record.key_extent(size),
                                  **plot_kwargs)
            if row == 0:
                axes[row, col].set_title(query_names[col] if query_names is not None else f"query {tuple(query)}",
                                         fontsize=8)
        axes[row, 0].set_ylabel(name, fontsize=8)
    if title is not None:
        fig.suptitle(title, fontsize=9)
    return fig


# --------------------------------------------------------------------------------------------
# Explorer (ipywidgets); the logic is in plain functions
# --------------------------------------------------------------------------------------------
@dataclass
class ExplorerState:
    """What the explorer shows: a video of the dataset, one of its snippets (segment), a unit, the
    query point in frame pixels, how many arrows, and the background (``"rgb"`` frame as in Fig. 5,
    or the snippet's first ``"flow"`` field colour-coded)."""

    video: int = 0
    segment: int = 0
    unit: str = ""
    x: float = 0.0
    y: float = 0.0
    k: int = 3
    background: str = "rgb"


class ExplorerView(NamedTuple):
    """What :func:`explorer_view` computes for a state: the background ``frame [H, W, 3]`` in [0, 1],
    the query's ``attention_map`` over the key grid, the query cell's centre ``query_xy`` (pixels)
    and ``query_index`` (query-grid cell), the ``top`` k ``(key index, weight)``, their pixel
    centres ``top_xy``, the pixel ``key_extent`` of the key grid, and a ``title``."""

    frame: np.ndarray
    attention_map: np.ndarray
    query_xy: tuple[float, float]
    query_index: Index
    top: list[tuple[Index, float]]
    top_xy: list[tuple[float, float]]
    key_extent: tuple[float, float]
    title: str


def _dataset_normalisation(dataset) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of the dataset transform's :class:`Normalize` step, else ImageNet's."""
    transform = getattr(dataset, "transform", None)
    for step in [transform, *getattr(transform, "transforms", [])]:
        if isinstance(step, Normalize):
            return tuple(step.mean), tuple(step.std)
    return IMAGENET_MEAN, IMAGENET_STD


@dataclass
class VideoSource:
    """A model and a dataset of two-stream items with per-video results computed on demand and kept
    for the ``cache_size`` most recent keys (the explorers' sources extend it). ``mean`` / ``std``:
    RGB normalisation to undo for display (default: the dataset transform's :class:`Normalize`
    step, else ImageNet's)."""

    model: nn.Module
    dataset: Any
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    cache_size: int = 8
    _cache: OrderedDict = field(default_factory=OrderedDict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mean is None or self.std is None:
            mean, std = _dataset_normalisation(self.dataset)
            self.mean = self.mean if self.mean is not None else mean
            self.std = self.std if self.std is not None else std

    def __len__(self) -> int:
        return len(self.dataset)

    def cached(self, video: int, key: Any, compute: Callable[[dict], Any]) -> tuple[dict, Any]:
        """``(item, compute(item))`` for dataset item ``video``, cached under ``key`` (LRU)."""
        video = _check_range("video", video, len(self.dataset))
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        item = self.dataset[video]
        entry = (item, compute(item))
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry


@dataclass
class AttentionSource(VideoSource):
    """A :class:`VideoSource` whose per-video result is the attention of every unit
    (:func:`record_attention`), recorded once per video."""

    units: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.units = _select_units(attention_units(self.model), self.units)

    def item(self, video: int) -> tuple[dict, dict[str, AttentionRecord]]:
        """The dataset item of ``video`` and its recorded attention (cached)."""
        return self.cached(video, video, lambda item: record_attention(self.model, item["rgb"], item["flow"], self.units))

    def frame(self, item: dict, segment: int, background: str = "rgb") -> np.ndarray:
        """The ``[H, W, 3]`` background of one snippet: the un-normalised RGB frame, or the colour
        coding of its first flow field (:func:`~fusionkit.viz.plots.flow_to_colour`)."""
        if background == "rgb":
            return denormalize_rgb(item["rgb"][segment], self.mean, self.std)
        if background == "flow":
            from fusionkit.viz.plots import flow_to_colour

            field_ = torch.as_tensor(item["flow"][segment][:2]).permute(1, 2, 0).cpu().numpy()
            return flow_to_colour(field_).astype(np.float32) / 255.0
        raise ValueError(f"background must be 'rgb' or 'flow', got {background!r}")


def explorer_view(source: AttentionSource, state: ExplorerState) -> ExplorerView:
    """Everything the explorer draws for ``state`` (the callbacks only call this and
    :func:`plot_explorer_view`): the query pixel is snapped to its query-grid cell, whose attention
    row (:func:`query_attention`) is returned with its top-k keys in grid and pixel coordinates.
    Out-of-range videos, segments, units or points raise ValueError."""
    item, records = source.item(state.video)
    if state.unit not in records:
        raise ValueError(f"unknown unit {state.unit!r}; recorded units: {list(records)}")
    record = records[state.unit]
    segments = int(item["rgb"].shape[0])
    segment = _check_range("segment", state.segment, segments)
    frame = source.frame(item, segment, state.background)
    size = frame.shape[:2]
    cell = image_to_grid((state.x, state.y), size, record.query_shape)
    if len(record.query_shape) == 2:  # snippets folded into the batch: one row per segment
        sample, query = segment, cell
    else:  # a temporal unit: one row per video, the segments along the query grid's time axis
        sample, query = 0, (min(segment * record.query_shape[0] // segments, record.query_shape[0] - 1), *cell)
    amap = query_attention(record, sample, query)
    extent = record.key_extent(size)
    top = top_positions(amap, state.k)
    top_xy = [grid_to_image(index, amap.shape, extent) for index, _ in top]
    video_id = item.get("video_id", state.video)
    title = f"{video_id}  segment {segment}  {state.unit}  query {tuple(query)}"
    return ExplorerView(frame, amap, grid_to_image(cell, record.query_shape, size), tuple(query), top, top_xy,
                        extent, title)


def plot_explorer_view(view: ExplorerView, k: int | None = None, ax=None, **plot_kwargs):
    """Draw an :class:`ExplorerView` with :func:`plot_attention_arrows`; returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    return plot_attention_arrows(ax, view.frame, view.attention_map, view.query_xy, k or len(view.top),
                                 extent_hw=view.key_extent, title=view.title, **plot_kwargs)


def attention_explorer(model: nn.Module, dataset, units: Sequence[str] | None = None, k: int = 3,
                       mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
    """An ipywidgets explorer of Fig. 5: sliders for the video and the segment (snippet), a unit
    dropdown, x/y sliders for the query point (frame pixels), a k slider, an RGB/flow background
    toggle and an Output with the figure. Builds headless (papermill) without a browser.

    Returns the ``VBox``; ``box.source`` is the :class:`AttentionSource` (recorded attention cached
    per video), ``box.controls`` the widgets by name, ``box.state()`` the current
    :class:`ExplorerState`, and ``box.refresh()`` redraws.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    source = AttentionSource(model, dataset, mean=mean, std=std, units=None if units is None else list(units))
    item, _ = source.item(0)
    segments, (height, width) = int(item["rgb"].shape[0]), tuple(item["rgb"].shape[-2:])
    controls = {
        "video": widgets.IntSlider(value=0, min=0, max=len(source) - 1, description="video"),
        "segment": widgets.IntSlider(value=0, min=0, max=segments - 1, description="segment"),
        "unit": widgets.Dropdown(options=source.units, value=source.units[0], description="unit"),
        "x": widgets.IntSlider(value=width // 2, min=0, max=width - 1, description="query x"),
        "y": widgets.IntSlider(value=height // 2, min=0, max=height - 1, description="query y"),
        "k": widgets.IntSlider(value=k, min=1, max=10, description="arrows"),
        "background": widgets.ToggleButtons(options=["rgb", "flow"], value="rgb", description="background"),
    }
    output = widgets.Output()

    def state() -> ExplorerState:
        c = controls
        return ExplorerState(c["video"].value, c["segment"].value, c["unit"].value, c["x"].value, c["y"].value,
                             c["k"].value, c["background"].value)

    def refresh(*_) -> None:
        with output:
            output.clear_output(wait=True)
            try:
                view = explorer_view(source, state())
            except ValueError as error:  # e.g. a point outside a smaller video's frame
                print(error)
                return
            fig, ax = plt.subplots(figsize=(5, 5))
            plot_explorer_view(view, ax=ax)
            display(fig)
            plt.close(fig)

    for control in controls.values():
        control.observe(refresh, names="value")
    box = widgets.VBox([widgets.HBox([controls["video"], controls["segment"], controls["unit"]]),
                        widgets.HBox([controls["x"], controls["y"], controls["k"]]), controls["background"], output])
    box.source, box.controls, box.state, box.refresh = source, controls, state, refresh
    refresh()
    return box
