"""Convolutional two-stream fusion of Feichtenhofer, Pinz & Zisserman, "Convolutional Two-Stream
Network Fusion for Video Action Recognition" (CVPR 2016).

- :mod:`.spatial_blocks`: the spatial fusion functions of §3.1 (sum, max, concat, conv, bilinear; Eq. 1-5).
- :mod:`.temporal_blocks`: temporal fusion over the segments, §3.3 (2D pooling, 3D pooling, 3D conv +
  3D pooling; Eq. 6, with §3.5's initialisation).
- here: the builders and methods. ``spatial`` fuses the motion stream into the appearance tower at
  one position (§3.1-3.2); ``conv_fusion`` is the spatiotemporal architecture of §3.4 (Fig. 4):
  3D conv fusion at the last conv stage into the appearance tower, 3D pooling in both towers, the
  motion tower kept with its own loss, and the two predictions averaged at test. Its ``fusion``
  option picks Table 4's other temporal rows (``pool2d``, ``pool3d``). Both are fine-tuned from
  separately trained streams (``late``).

What is fine-tuned (§3.5): "We only propagate back to the injected fusion layer, since full
backpropagation did not result in an improvement." Both methods therefore default to
``finetune="above_fusion"``: the tower layers below the first fusion point stay frozen (and in eval
mode), the fusion layers and everything after them train. The teaching notebooks and the benchmark
pass ``finetune="all"`` instead, for a measured reason: the paper's towers come from ImageNet and
already carry what fusion needs, the puzzles' tiny towers are trained from scratch on one stream
each, and frozen they lack it. At notebook 03's settings (2 seeds, this machine's CPU, from the
same separately trained streams), ``spatial(fusion=conv)`` at the last stage reached 1.00 +- 0.00 on
`registration` fine-tuning everything and 0.74 +- 0.10 above the fusion point; ``conv_fusion`` on
`order` 1.00 +- 0.00 and 0.96 +- 0.04 (in a third of the time).

Outputs (:func:`fusionkit.models.two_stream.output_names`): ``<method>-R`` is the appearance tower
that the motion stream was fused into, ``<method>-F`` the kept motion tower, ``<method>-S`` their
average (the paper's "+"); with the motion tower truncated (``keep_flow_tower=False``, Fig. 2 left)
``<method>-S`` is the fused tower alone.
"""
from __future__ import annotations

from typing import Sequence

from fusionkit.fusion import build_fusion
from fusionkit.methods.conv_fusion import spatial_blocks, temporal_blocks  # noqa: F401  (register the blocks)
from fusionkit.methods.recipe import Method, register_method
from fusionkit.models.positions import PositionLike
from fusionkit.models.two_stream import TwoStreamNet, channels_at, probe_backbone


def spatial(num_classes: int, fusion: str = "conv", position: PositionLike | None = None,
            keep_flow_tower: bool = False, fusion_options: dict | None = None,
            positions: Sequence[PositionLike] | None = None, **network) -> TwoStreamNet:
    """Spatial fusion (§3.1-3.2): the motion stream fused into the appearance tower by a registered
    block (``sum``, ``max``, ``concat``, ``conv``, ``bilinear``, or a student's) at ``position``
    (default: the end of the last stage, the paper's ReLU5). The motion tower is truncated there
    unless ``keep_flow_tower`` (Table 4's "+"). Fusing at the last stage, give the classifier a
    per-location layer (``head_hidden``, the fc6 analogue) or the fusion stays linear up to pooling.

    ``positions``: fuse at several points instead, one block each (Table 2's multi-layer rows, Fig. 2
    right); the motion tower runs on past each of them, so it needs ``keep_flow_tower=True``."""
    probe = probe_backbone(**network)
    if positions is not None and position is not None:
        raise ValueError("spatial: give position (one fusion point) or positions (several), not both")
    points = list(positions) if positions is not None else [position or probe.stage_names[-1]]
    if not points:
        raise ValueError("spatial: positions is empty; give at least one fusion point")
    if len(points) > 1 and not keep_flow_tower:
        raise ValueError(f"spatial: fusing at {len(points)} positions {[str(p) for p in points]} needs the motion tower "
                         f"after the first of them: pass keep_flow_tower=True (Fig. 2 right)")

    def block(point: PositionLike):
        c = channels_at(probe, point)
        return build_fusion(fusion, rgb_channels=c, flow_channels=c, **(fusion_options or {}))

    return TwoStreamNet(num_classes, fusion_blocks={p: block(p) for p in points}, keep_flow_tower=keep_flow_tower,
                        method="spatial", **network)


def conv_fusion(num_classes: int, fusion: str = "conv3d_pool3d", spatial_fusion: str | None = "conv",
                fusion_options: dict | None = None, **network) -> TwoStreamNet:
    """The spatiotemporal architecture (§3.4, Fig. 4) with temporal fusion ``fusion`` over the T
    segments after the last stage (§3.3, Fig. 3). ``conv3d_pool3d`` fuses the streams itself (Eq. 6);
    the pooling rows of Table 4 (``pool2d``, ``pool3d``) pool each stream, so a spatial fusion block
    (``spatial_fusion``, default ``conv``) first fuses the motion stream into the appearance tower at
    the last stage. Both towers are kept, each with its loss (§3.4)."""
    probe = probe_backbone(**network)
    c = probe.out_channels
    block = build_fusion(fusion, rgb_channels=c, flow_channels=c, **(fusion_options or {}))
    blocks = {}
    if not block.fuses_streams and spatial_fusion is not None:
        blocks[probe.stage_names[-1]] = build_fusion(spatial_fusion, rgb_channels=c, flow_channels=c)
    return TwoStreamNet(num_classes, fusion_blocks=blocks, temporal_fusion=block, keep_flow_tower=True,
                        method="conv_fusion", **network)


register_method(Method(
    name="spatial", build=spatial, schedule="finetune", pretrain="late", finetune="above_fusion",
    description="Spatial fusion (Feichtenhofer et al. 2016, Sec. 3.1-3.2): the motion stream fused into the "
                "appearance tower by sum/max/concat/conv/bilinear at a chosen position, fine-tuned from separately "
                "trained streams above the fusion point (Sec. 3.5; finetune='all' trains every layer, as the "
                "teaching notebooks do with the puzzles' from-scratch towers)."))
register_method(Method(
    name="conv_fusion", build=conv_fusion, schedule="finetune", pretrain="late", finetune="above_fusion",
    description="Feichtenhofer et al. 2016's spatiotemporal architecture (Sec. 3.3-3.4): 3D conv fusion into the "
                "appearance tower at the last conv stage, 3D pooling in both towers, both losses, predictions "
                "averaged at test; fusion=pool2d|pool3d for Table 4's pooling rows. Fine-tuned above the fusion "
                "point (Sec. 3.5; finetune='all' trains every layer)."))

from fusionkit.methods.conv_fusion import recipes, tables  # noqa: E402,F401  (register the recipes and ablation tables)
