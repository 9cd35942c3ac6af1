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

How ``-S`` combines the two towers (``score_fusion``, :class:`FeichtenhoferNet`): the paper averages
their FC8 outputs, the class scores before the softmax ("During testing, we average the FC8
predictions for both towers", Table 4's caption; Table 2's "ReLU5 + FC8"): ``score_fusion="logits"``,
which the paper recipe uses. The default, ``"softmax"``, averages the softmax scores as late fusion
does (Simonyan & Zisserman): what the notebooks and the committed numbers were made with.

"Bilinear + SVM" (Table 1, §3.1: bilinear features "usually applied at ReLU5, the fully-connected
layers are removed [15] and power- and L2-normalisation is applied for effective classification with
linear SVMs"): ``spatial``'s training option ``classifier="svm"`` trains the classifiers on the
one-vs-rest squared hinge loss (:func:`squared_hinge_loss`), i.e. a linear L2-SVM (LIBLINEAR's and
scikit-learn ``LinearSVC``'s default primal) when the classifier is one linear layer on frozen features:
``fusion="bilinear", head="pool_linear", head_hidden=None, finetune="classifier"`` (Table 1's row).
Its regulariser is the weight decay: with SGD (L2 added to the gradient) and N training videos it is
``LinearSVC(C=1 / (weight_decay * N))``, the bias regularised too as LIBLINEAR does; with AdamW the
decay is decoupled, a close variant. The SVM is solved by stochastic gradient steps in the trainer
instead of LIBLINEAR's exact solver: the same objective, on the GPU, for features (512^2 per video
on VGG-M) that would not fit a dense in-memory solver at UCF-101's size, with checkpoints and DDP.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import torch
import torch.nn.functional as F

from fusionkit.fusion import build_fusion
from fusionkit.methods.conv_fusion import spatial_blocks, temporal_blocks  # noqa: F401  (register the blocks)
from fusionkit.methods.recipe import Method, register_method
from fusionkit.models.positions import PositionLike
from fusionkit.models.two_stream import TwoStreamNet, TwoStreamOutput, channels_at, probe_backbone
from fusionkit.training.schedules import register_schedule
from fusionkit.training.trainer import TrainConfig

SCORE_FUSIONS = ("softmax", "logits")  # how -S combines the two towers' predictions (FeichtenhoferNet)
CLASSIFIERS = ("softmax", "svm")  # spatial's training option `classifier`: cross-entropy or the linear SVM


class FeichtenhoferNet(TwoStreamNet):
    """The two-stream network of Feichtenhofer et al.'s fused networks: a
    :class:`~fusionkit.models.two_stream.TwoStreamNet` whose ``-S`` prediction (a kept motion tower's
    combined with the fused tower's) is, by ``score_fusion``:

    - ``"softmax"``: ``w softmax(R) + (1 - w) softmax(F)``, as log-probabilities (TwoStreamNet's late
      fusion; the default, what the committed numbers were made with);
    - ``"logits"``: ``w R + (1 - w) F`` on the FC8 outputs, the class scores before the softmax, as
      the paper tests ("we average the FC8 predictions for both towers", Table 4's caption; Table 2's
      "ReLU5 + FC8"). ``w = rgb_weight`` (0.5: the plain average).

    A truncated motion tower leaves one prediction, which neither changes."""

    def __init__(self, num_classes: int, score_fusion: str = "softmax", **kwargs):
        if score_fusion not in SCORE_FUSIONS:
            raise ValueError(f"score_fusion must be one of {SCORE_FUSIONS} (how -S combines the towers' predictions), "
                             f"got {score_fusion!r}")
        super().__init__(num_classes, **kwargs)
        self.score_fusion = score_fusion

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> TwoStreamOutput:
        out = super().forward(rgb, flow)
        if self.score_fusion == "logits" and "rgb" in out.roles:
            w = self.rgb_weight
            out[out.fused] = w * out[out.roles["rgb"]] + (1 - w) * out[out.roles["flow"]]
        return out


def spatial(num_classes: int, fusion: str = "conv", position: PositionLike | None = None,
            keep_flow_tower: bool = False, fusion_options: dict | None = None,
            positions: Sequence[PositionLike] | None = None, score_fusion: str = "softmax",
            **network) -> FeichtenhoferNet:
    """Spatial fusion (§3.1-3.2): the motion stream fused into the appearance tower by a registered
    block (``sum``, ``max``, ``concat``, ``conv``, ``bilinear``, or a student's) at ``position``
    (default: the end of the last stage, the paper's ReLU5). The motion tower is truncated there
    unless ``keep_flow_tower`` (Table 4's "+"). Fusing at the last stage, give the classifier a
    per-location layer (``head_hidden``, the fc6 analogue) or the fusion stays linear up to pooling.

    ``positions``: fuse at several points instead, one block each (Table 2's multi-layer rows, Fig. 2
    right); the motion tower runs on past each of them, so it needs ``keep_flow_tower=True``.
    ``score_fusion``: how ``-S`` combines the two towers when both are kept (:class:`FeichtenhoferNet`)."""
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

    return FeichtenhoferNet(num_classes, fusion_blocks={p: block(p) for p in points}, keep_flow_tower=keep_flow_tower,
                            method="spatial", score_fusion=score_fusion, **network)


def conv_fusion(num_classes: int, fusion: str = "conv3d_pool3d", spatial_fusion: str | None = "conv",
                fusion_options: dict | None = None, score_fusion: str = "softmax", **network) -> FeichtenhoferNet:
    """The spatiotemporal architecture (§3.4, Fig. 4) with temporal fusion ``fusion`` over the T
    segments after the last stage (§3.3, Fig. 3). ``conv3d_pool3d`` fuses the streams itself (Eq. 6);
    the pooling rows of Table 4 (``pool2d``, ``pool3d``) pool each stream, so a spatial fusion block
    (``spatial_fusion``, default ``conv``) first fuses the motion stream into the appearance tower at
    the last stage. Both towers are kept, each with its loss (§3.4); ``score_fusion``: how ``-S``
    combines their predictions at test (:class:`FeichtenhoferNet`; the paper: ``"logits"``)."""
    probe = probe_backbone(**network)
    c = probe.out_channels
    block = build_fusion(fusion, rgb_channels=c, flow_channels=c, **(fusion_options or {}))
    blocks = {}
    if not block.fuses_streams and spatial_fusion is not None:
        blocks[probe.stage_names[-1]] = build_fusion(spatial_fusion, rgb_channels=c, flow_channels=c)
    return FeichtenhoferNet(num_classes, fusion_blocks=blocks, temporal_fusion=block, keep_flow_tower=True,
                            method="conv_fusion", score_fusion=score_fusion, **network)


# ---- "Bilinear + SVM" (Table 1): the linear SVM as a training objective ------------------------------
def squared_hinge_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The one-vs-rest squared hinge loss of a linear L2-SVM: the batch mean of
    ``sum_k max(0, 1 - y_k s_k)^2`` with ``y_k = +1`` for the video's class and -1 for every other,
    ``scores`` ``[B, K]``, ``labels`` ``[B]`` (LIBLINEAR's and ``LinearSVC``'s default loss, one
    binary SVM per class). In at least float32."""
    if scores.dim() != 2 or labels.shape != scores.shape[:1]:
        raise ValueError(f"squared_hinge_loss: expected scores [B, K] and labels [B], got {tuple(scores.shape)} and "
                         f"{tuple(labels.shape)}")
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
    signs = 2 * F.one_hot(labels, scores.shape[1]).to(scores.dtype) - 1
    return F.relu(1 - signs * scores).pow(2).sum(1).mean()


def svm_objective(out, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The ``svm`` schedule's objective: :func:`squared_hinge_loss` for each classifier (``out.heads``)."""
    return {name: squared_hinge_loss(out[name], labels) for name in out.heads}


register_schedule("svm")(lambda config: svm_objective)


def configure(config: TrainConfig, classifier: str = "softmax") -> TrainConfig:
    """``classifier="svm"``: train the classifiers as linear SVMs, on the squared hinge loss (the
    ``svm`` schedule) instead of cross-entropy; Table 1's "Bilinear + SVM" (see the module docstring)."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"spatial: classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    return replace(config, schedule="svm") if classifier == "svm" else config


register_method(Method(
    name="spatial", build=spatial, schedule="finetune", pretrain="late", finetune="above_fusion", configure=configure,
    description="Spatial fusion (Feichtenhofer et al. 2016, Sec. 3.1-3.2): the motion stream fused into the "
                "appearance tower by sum/max/concat/conv/bilinear at a chosen position, fine-tuned from separately "
                "trained streams above the fusion point (Sec. 3.5; finetune='all' trains every layer, as the "
                "teaching notebooks do with the puzzles' from-scratch towers); classifier='svm' trains linear SVMs "
                "on the fused features (Table 1's Bilinear + SVM)."))
register_method(Method(
    name="conv_fusion", build=conv_fusion, schedule="finetune", pretrain="late", finetune="above_fusion",
    description="Feichtenhofer et al. 2016's spatiotemporal architecture (Sec. 3.3-3.4): 3D conv fusion into the "
                "appearance tower at the last conv stage, 3D pooling in both towers, both losses, predictions "
                "averaged at test; fusion=pool2d|pool3d for Table 4's pooling rows. Fine-tuned above the fusion "
                "point (Sec. 3.5; finetune='all' trains every layer)."))

from fusionkit.methods.conv_fusion import recipes, tables  # noqa: E402,F401  (register the recipes and ablation tables)
