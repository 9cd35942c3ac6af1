"""Cooperative cross-stream network (CCS) of Zhang, Xu, Shen & Shen, "Cooperative Cross-Stream
Network for Discriminative Action Representation" (2019): the connection block (§3.2, Eq. 1-3,
Fig. 3), the shared block's embedding head (§3.3), the ranking losses (Eq. 4-6), the network and the
method. The balanced mini-batch sampler (§4.1) is the data layer's
(:class:`fusionkit.data.sampler.BalancedBatchSampler`), usable by any method.

**Connection block** (:class:`ConnectionBlock`, ``"ccs"``). Appearance map x^f ``[N, C_f, *grid]``,
motion map x^o ``[N, C_o, *grid']``; i runs over the positions of x^f, j over those of x^o (H*W
on a 2D map, T*H*W on a 3D one). One correlation matrix serves both streams:

    S_ij   = phi(x^f_i) . kappa(x^o_j)                          exponent of Eq. 2 (phi, kappa: 1x1 convs)
    x'^f_i = x^f_i + W^f( sum_j softmax_j(S)_ij x^o_j )          Eq. 3, first line
    x'^o_j = x^o_j + W^o( sum_i softmax_i(S)_ij x^f_i )          Eq. 3, second line

Choices where the paper leaves room (no public code exists, so here they are, all of them):

- Embeddings. phi embeds the appearance stream and kappa the motion stream (Eq. 2:
  ``phi(x_i^f)^T kappa(x_j^o)``); the same matrix Y (here S) feeds both lines of Eq. 3.
- Normalisation. Eq. 1 as printed sums g over all pairs (i, j), which is a scalar. We follow the
  non-local block that §3.2 says it follows (Wang et al. 2018, embedded Gaussian): g divided by
  its sum over the positions being aggregated, i.e. a softmax over the motion positions j for the
  appearance output (rows of S) and over the appearance positions i for the motion output
  (columns of S).
- What each stream aggregates. Eq. 3 as printed, ``h^f(Y) = w^f x_i^f y``, is garbled; we read it
  as the *other* stream's features weighted by the correlation, so that each stream receives
  information from the other ("a bridge for information of appearance and motion stream flowing
  to each other", §3.3; "the features learned by the two distinct networks should enhance each
  other", §1). The aggregated features are the other stream's raw features: Fig. 3 and §4.3 name
  only phi, kappa, W^f, W^o, with no value embedding g as in the non-local block.
- No scaling of the exponent: ``e^{phi^T kappa}`` (Eq. 2), Wang et al.'s embedded Gaussian.
  ``scale=None`` divides by sqrt(d) instead, as CMA's Eq. 1 does.
- d, the width of phi and kappa, is not given: default half the smaller stream's channels (Wang
  et al.'s bottleneck).
- No biases: the paper writes ``phi(x) = W_phi x``, ``kappa(x) = W_kappa x`` and W^f, W^o as
  plain products.
- No subsampling: every position meets every position of the other map (cost L_f * L_o per
  sample; Wang et al. optionally max-pool, the paper does not mention it).
- Initialisation (the paper says nothing): W^f and W^o start at zero, so the block is exactly the
  identity at init (``x + 0 == x`` bit for bit). The block has no BN to zero as CMA and Wang et al.
  do; zeroing the last layer of a residual branch has the same effect (Goyal et al. 2017).
  W^f and W^o get non-zero gradients at once; phi and kappa get theirs once W^f / W^o have moved
  off zero (from the second step). phi and kappa keep PyTorch's default conv init (the authors
  used PyTorch and say nothing else).
- The two maps may differ in channels and in grid (the correlation is global); each output has
  its input's shape. 2D and 3D maps use the same 1x1 weights (a 1x1x1 conv on 3D maps).

**Shared block** (:class:`SharedEmbedding`). §3.3: each stream's features "can be transformed into
a D-dimension features vector through aggregation operation", giving z^f and z^o; §4.3 calls it
the "shared features projection layer" / "shared full connection operation". We implement one
fully connected layer whose *single set of weights* is applied to both streams, after averaging
over positions and aggregating the segments. Sharing the layer is what puts both modalities in one
space where Eq. 4 compares them. No normalisation: Eq. 4 and 5 use plain squared Euclidean distances
(``normalize=True`` projects z onto the unit sphere).

**Aggregation over the segments** (:data:`AGGREGATIONS`, the ``aggregation`` option; Fig. 5a, §4.3
"Effect of sequence features aggregation function"): the K segments' features (each averaged over
its positions) become one video feature by element-wise average (``"mean"``, the default and the
best of Fig. 5a on HMDB-51), element-wise maximum (``"max"``), element-wise multiplication
(``"product"``) or concatenation (``"concat"``, K*C features into the shared layer, so the network
is built for ``concat_segments`` segments). The paper aggregates *features* (§3.3: "transformed into a
D-dimension features vector through aggregation operation"), so here the aggregation comes before
the shared layer and the classifiers read the aggregated embedding (:class:`CCSNet`). ``"mean"``
keeps :class:`~fusionkit.models.two_stream.TwoStreamNet`'s consensus (each segment classified, the
scores averaged), which is the same in evaluation: the shared layer and the classifier are affine.
A test with more snippets than ``concat_segments`` concatenates the means of that many consecutive
groups of them (TSN's segments: the test snippets of one segment averaged).

**Losses.** CCS. Each video gives an appearance embedding z^f and a motion embedding z^o (the shared block,
:class:`fusionkit.methods.ccs.SharedEmbedding`); a batch holds ``[B, D]`` of each, row b of both
from the same video, with one label per row:

- :func:`inter_modality_triplet_loss` (Eq. 4, L1): anchors from one modality, the hardest positive
  and hardest negative from the *other* modality in the batch, margin alpha1, both directions.
- :func:`discriminative_embedding_loss` (Eq. 5, L2): per modality, samples pulled to within alpha2
  of their class mean, class means pushed apart beyond alpha3.
- :func:`ccs_losses` / :func:`ccs_objective` (Eq. 6): ``lambda1 L1 + lambda2 L2 + L3``, L3 the
  cross-entropy of each stream's classifier, with the paper's defaults (§4.1).

Choices where the paper leaves room:

- Distances are squared Euclidean (``||.||_2^2`` in Eq. 4 and 5) on the embeddings as given, not
  normalised (the paper normalises nothing); computed as sums of squared differences, which are
  exact and differentiable at zero distance (``cdist(...) ** 2`` is not).
- Batch-hard mining (§3.3: "online triplet sampling on each mini-batch [11]", comparing "the
  distance of a positive appearance-motion pair and the minimum distance of all related negative
  appearance-motion pairs"): for anchor z^f_a, the positive is the farthest z^o of its class and
  the negative the nearest z^o of another class (Hermans et al. 2017), and symmetrically for
  anchors z^o. The anchor's own video counts as a positive (its other modality), so every anchor
  has one. An anchor with no other class in the batch has no negative and contributes nothing.
- Reduction. Eq. 4 and 5 are written as sums. By default (``reduction="mean"``) each sum is
  divided by its number of terms: anchors with a negative for each direction of Eq. 4, samples
  for the compactness term of Eq. 5, ordered class pairs for its separation term. Otherwise
  lambda1 and lambda2 would weigh the ranking losses against the (averaged) cross-entropy by an
  amount that grows with the batch size. ``reduction="sum"`` is Eq. 4 and 5 as printed (the
  separation term of Eq. 5 runs over ordered pairs c_i != c_j, so each pair counts twice).
  A term with nothing to sum is 0 (still part of the graph, so ``backward`` works).
- Class means m_c are the means of the batch's embeddings of class c, per modality, and gradients
  flow through them (nothing is detached; the paper says nothing to the contrary).
- Losses are computed in at least float32, also under bf16 autocast.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from fusionkit.fusion import FusionBlock, build_fusion, conv1x1, register_fusion
from fusionkit.methods.recipe import Method, register_method
from fusionkit.models.two_stream import TwoStreamNet, TwoStreamOutput, late_fusion, probe_backbone
from fusionkit.training.schedules import register_schedule
from fusionkit.training.trainer import TrainConfig

__all__ = ["ConnectionBlock", "SharedEmbedding", "AGGREGATIONS", "CCSNet", "inter_modality_triplet_loss",
           "hardest_pairs", "discriminative_embedding_loss", "ccs_losses", "ccs_objective", "ccs"]

AGGREGATIONS = ("mean", "max", "product", "concat")  # how a video's segments become one feature (Fig. 5a)


@register_fusion("ccs")
class ConnectionBlock(FusionBlock):
    """CCS connection block (§3.2, Eq. 1-3, Fig. 3): each stream attends over the other's positions
    through one shared correlation matrix, and adds what it gathers through a zero-initialised 1x1
    conv (W^f for appearance, W^o for motion). See the module docstring for the choices made.

    Args:
        rgb_channels / flow_channels: C_f and C_o.
        inner_channels: d, the width of phi and kappa; default ``max(1, min(C_f, C_o) // 2)``.
        scale: factor on the exponent phi^T kappa; 1.0 is Eq. 2, None means 1/sqrt(d).
    """

    same_spatial_size = False  # the correlation is global: the grids need not match

    def __init__(self, rgb_channels: int, flow_channels: int, inner_channels: int | None = None,
                 scale: float | None = 1.0):
        super().__init__(rgb_channels, flow_channels)
        d = max(1, min(rgb_channels, flow_channels) // 2) if inner_channels is None else inner_channels
        if min(rgb_channels, flow_channels, d) < 1:
            raise ValueError(f"ConnectionBlock: channels must be positive, got rgb={rgb_channels}, "
                             f"flow={flow_channels}, inner={d}")
        self.inner_channels, self.scale = d, scale
        self.phi = nn.Conv2d(rgb_channels, d, 1, bias=False)              # phi: appearance embedding (Eq. 2)
        self.kappa = nn.Conv2d(flow_channels, d, 1, bias=False)           # kappa: motion embedding (Eq. 2)
        self.w_f = nn.Conv2d(flow_channels, rgb_channels, 1, bias=False)  # W^f: motion -> appearance (Eq. 3)
        self.w_o = nn.Conv2d(rgb_channels, flow_channels, 1, bias=False)  # W^o: appearance -> motion (Eq. 3)
        nn.init.zeros_(self.w_f.weight)  # identity at init (see the module docstring)
        nn.init.zeros_(self.w_o.weight)

    @property
    def effective_scale(self) -> float:
        return 1.0 / math.sqrt(self.inner_channels) if self.scale is None else float(self.scale)

    def correlation(self, rgb: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """S ``[N, L_f, L_o]``: ``S_ij = scale * phi(x^f_i) . kappa(x^o_j)``, the exponent of Eq. 2."""
        q = conv1x1(rgb, self.phi).flatten(2)     # [N, d, L_f]
        k = conv1x1(flow, self.kappa).flatten(2)  # [N, d, L_o]
        return q.transpose(1, 2) @ k * self.effective_scale

    def attention(self, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised embedded Gaussian (Eq. 2 over its sum), both ways, from one S ``[N, L_f, L_o]``:
        ``softmax over j`` (each appearance position's weights on the motion positions; rows sum
        to 1) and ``softmax over i`` (each motion position's weights on the appearance positions;
        columns sum to 1). Positions unflatten row-major to the maps' (H, W) or (T, H, W)."""
        s = self.correlation(rgb, flow)
        return s.softmax(dim=2), s.softmax(dim=1)

    def fuse(self, rgb: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eq. 3: ``x'^f = x^f + W^f(A_f x^o)``, ``x'^o = x^o + W^o(A_o^T x^f)``, both from the inputs."""
        to_rgb, to_flow = self.attention(rgb, flow)
        from_flow = (flow.flatten(2) @ to_rgb.transpose(1, 2)).view(rgb.shape[0], -1, *rgb.shape[2:])  # [N, C_o, *grid_f]
        from_rgb = (rgb.flatten(2) @ to_flow).view(flow.shape[0], -1, *flow.shape[2:])               # [N, C_f, *grid_o]
        return rgb + conv1x1(from_flow, self.w_f), flow + conv1x1(from_rgb, self.w_o)

    def branch_modules(self, branch: str) -> list[nn.Module]:
        """phi and W^f belong to the appearance branch, kappa and W^o to the motion branch (Eq. 3's
        ``h_phi^f`` and ``h_kappa^o``). Note the correlation needs both phi and kappa, so freezing one
        branch still lets the other's outputs depend on the frozen embedding."""
        super().branch_modules(branch)  # validates the name
        return [self.phi, self.w_f] if branch == "rgb" else [self.kappa, self.w_o]

    def extra_repr(self) -> str:
        scale = "1/sqrt(d)" if self.scale is None else repr(self.scale)
        return f"{super().extra_repr()}, inner_channels={self.inner_channels}, scale={scale}"


class SharedEmbedding(nn.Module):
    """The shared block's projection (§3.3): average a stream's features over positions, aggregate
    the segments, then one fully connected layer ``-> D``, the *same* layer for both streams:
    ``z^f = embed(x^f)``, ``z^o = embed(x^o)`` with one module. With the mean, averaging before or
    after the layer gives the same z (the layer is affine); averaging first is cheaper.

    Args:
        channels: C, channels of both streams' final feature maps (they must match to share weights).
        dim: D, the embedding size.
        normalize: divide z by its L2 norm (not in the paper; off by default).
        aggregation: how the segments become one feature (:data:`AGGREGATIONS`; Fig. 5a, see the
            module docstring). ``"concat"`` feeds ``segments * C`` features to the layer.
        segments: the number of segments concatenated (``"concat"`` only).

    ``forward(x, segments=1)``: x is ``[N, C]``, ``[N, C, H, W]`` or ``[N, C, T, H, W]`` with
    ``N = B * segments`` (TSN's snippets folded into the batch, video-major); returns ``[B, D]``.
    """

    def __init__(self, channels: int, dim: int = 128, normalize: bool = False, aggregation: str = "mean",
                 segments: int | None = None):
        super().__init__()
        if channels < 1 or dim < 1:
            raise ValueError(f"SharedEmbedding: channels and dim must be positive, got {channels}, {dim}")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"SharedEmbedding: aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if (aggregation == "concat") != (segments is not None) or (segments is not None and segments < 1):
            raise ValueError(f"SharedEmbedding: aggregation='concat' needs segments (the number of segments "
                             f"concatenated, >= 1) and no other aggregation takes it; got aggregation={aggregation!r}, "
                             f"segments={segments!r}")
        self.channels, self.dim, self.normalize = channels, dim, normalize
        self.aggregation, self.segments = aggregation, segments
        self.fc = nn.Linear(channels * (segments or 1), dim)

    def aggregate(self, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` segment features -> ``[B, C]`` (``[B, segments * C]`` for ``"concat"``)."""
        if self.aggregation == "mean":
            return pooled.mean(1)
        if self.aggregation == "max":
            return pooled.amax(1)
        if self.aggregation == "product":
            return pooled.prod(1)
        if pooled.shape[1] < self.segments:
            raise ValueError(f"SharedEmbedding: aggregation='concat' concatenates {self.segments} segments, but the "
                             f"videos come with {pooled.shape[1]} snippets; sample at least {self.segments}")
        return torch.cat([g.mean(1) for g in torch.tensor_split(pooled, self.segments, dim=1)], dim=1)

    def forward(self, x: torch.Tensor, segments: int = 1) -> torch.Tensor:
        if x.dim() not in (2, 4, 5) or x.shape[1] != self.channels:
            raise ValueError(f"SharedEmbedding: expected [N, {self.channels}], [N, {self.channels}, H, W] or "
                             f"[N, {self.channels}, T, H, W] features, got shape {tuple(x.shape)}")
        if segments < 1 or x.shape[0] % segments:
            raise ValueError(f"SharedEmbedding: {x.shape[0]} feature rows cannot be split into videos of "
                             f"{segments} segments")
        pooled = x.flatten(2).mean(-1) if x.dim() > 2 else x                    # [B*T, C]: average over positions
        z = self.fc(self.aggregate(pooled.view(-1, segments, self.channels)))  # [B, D]: the segments aggregated
        return F.normalize(z, dim=-1) if self.normalize else z

    def extra_repr(self) -> str:
        more = f", aggregation={self.aggregation!r}" if self.aggregation != "mean" else ""
        more += f", segments={self.segments}" if self.segments is not None else ""
        return f"channels={self.channels}, dim={self.dim}, normalize={self.normalize}{more}"


# ---- ranking losses (§3.3, Eq. 4-6) -----------------------------------------------------------
REDUCTIONS = ("mean", "sum")


def _check(z_rgb: torch.Tensor, z_flow: torch.Tensor, labels: torch.Tensor, reduction: str, name: str):
    """Validated float (at least float32) copies of the embeddings, and the labels."""
    if z_rgb.dim() != 2 or z_rgb.shape != z_flow.shape:
        raise ValueError(f"{name}: expected appearance and motion embeddings of one shape [B, D], got "
                         f"{tuple(z_rgb.shape)} and {tuple(z_flow.shape)}")
    if labels.dim() != 1 or labels.shape[0] != z_rgb.shape[0]:
        raise ValueError(f"{name}: expected one label per video, labels of shape [{z_rgb.shape[0]}], got "
                         f"{tuple(labels.shape)}")
    if z_rgb.shape[0] == 0:
        raise ValueError(f"{name}: the batch is empty")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{name}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    dtype = torch.promote_types(z_rgb.dtype, torch.float32)
    return z_rgb.to(dtype), z_flow.to(dtype), labels.to(z_rgb.device)


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[len(a), len(b)]`` matrix of ``||a_i - b_j||_2^2``."""
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)


def _reduce(terms: torch.Tensor, reduction: str, anchor: torch.Tensor) -> torch.Tensor:
    """Sum or mean of ``terms``; 0 (attached to ``anchor``'s graph) when there are none."""
    if terms.numel() == 0:
        return anchor.sum() * 0.0
    return terms.sum() if reduction == "sum" else terms.mean()


# ---- CCS: inter-modality triplet loss (Eq. 4) ------------------------------------------------------

def hardest_pairs(anchors: torch.Tensor, others: torch.Tensor, labels: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-hard mining across modalities: for each anchor a (a row of ``anchors``), the row of
    ``others`` of the same class farthest from it and the row of another class nearest to it.

    Returns ``(d_pos, d_neg, pos_index, neg_index)``, each ``[B]``: the squared distances and the
    chosen rows of ``others``. ``neg_index`` is -1 (and ``d_neg`` +inf) where the batch has no other
    class. Ties go to the lowest index.
    """
    if anchors.dim() != 2 or anchors.shape != others.shape or labels.shape != anchors.shape[:1]:
        raise ValueError(f"hardest_pairs: expected anchors and others [B, D] and labels [B], got "
                         f"{tuple(anchors.shape)}, {tuple(others.shape)} and {tuple(labels.shape)}")
    d = _squared_distances(anchors, others)
    same = labels[:, None] == labels[None, :]
    d_pos, pos_index = d.masked_fill(~same, float("-inf")).max(dim=1)  # never empty: the anchor's own video
    d_neg, neg_index = d.masked_fill(same, float("inf")).min(dim=1)
    neg_index = torch.where(torch.isinf(d_neg), torch.full_like(neg_index, -1), neg_index)
    return d_pos, d_neg, pos_index, neg_index


def inter_modality_triplet_loss(z_rgb: torch.Tensor, z_flow: torch.Tensor, labels: torch.Tensor,
                                margin: float = 0.3, reduction: str = "mean") -> torch.Tensor:
    """L1, Eq. 4: ``sum_a [||z^f_a - z^o_p||^2 - ||z^f_a - z^o_n||^2 + alpha1]_+`` plus the same with
    the modalities swapped (anchors z^o, positives and negatives z^f), with batch-hard p and n
    (:func:`hardest_pairs`). ``z_rgb``, ``z_flow``: ``[B, D]``, row b of both from video b;
    ``labels``: ``[B]``. Anchors without a negative are left out (see the module docstring);
    ``reduction="mean"`` averages each direction over its anchors, ``"sum"`` is Eq. 4 as printed."""
    z_f, z_o, labels = _check(z_rgb, z_flow, labels, reduction, "inter_modality_triplet_loss")
    total = z_f.new_zeros(())
    for anchors, others in ((z_f, z_o), (z_o, z_f)):
        d_pos, d_neg, _, neg_index = hardest_pairs(anchors, others, labels)
        valid = neg_index >= 0
        total = total + _reduce(F.relu(d_pos[valid] - d_neg[valid] + margin), reduction, anchors)
    return total


# ---- CCS: discriminative embedding loss (Eq. 5) ----------------------------------------------------

def _one_modality_embedding_loss(z: torch.Tensor, labels: torch.Tensor, alpha2: float, alpha3: float,
                                 reduction: str) -> torch.Tensor:
    """One bracket of Eq. 5: ``sum_i [||z_i - m_{c_i}||^2 - alpha2]_+ + sum_{c != c'} [alpha3 - ||m_c - m_c'||^2]_+``."""
    classes, inverse = labels.unique(return_inverse=True)
    members = F.one_hot(inverse, len(classes)).to(z.dtype)               # [B, K]
    means = (members.T @ z) / members.sum(0)[:, None]                    # [K, D]: m_c, class means in the batch
    compact = F.relu((z - means[inverse]).pow(2).sum(-1) - alpha2)      # [B]
    between = _squared_distances(means, means)
    off_diagonal = ~torch.eye(len(classes), dtype=torch.bool, device=z.device)
    separate = F.relu(alpha3 - between[off_diagonal])                    # [K (K - 1)]: ordered pairs
    return _reduce(compact, reduction, z) + _reduce(separate, reduction, z)


def discriminative_embedding_loss(z_rgb: torch.Tensor, z_flow: torch.Tensor, labels: torch.Tensor,
                                  alpha2: float = 0.3, alpha3: float = 0.8, reduction: str = "mean") -> torch.Tensor:
    """L2, Eq. 5: for each modality, each sample's squared distance to its class mean beyond alpha2,
    plus each pair of class means closer than alpha3 (squared), with the class means m_c of the
    batch. A batch of one class has no pair term; a class of one video has a zero compactness term.
    ``reduction``: see the module docstring."""
    z_f, z_o, labels = _check(z_rgb, z_flow, labels, reduction, "discriminative_embedding_loss")
    return (_one_modality_embedding_loss(z_f, labels, alpha2, alpha3, reduction)
            + _one_modality_embedding_loss(z_o, labels, alpha2, alpha3, reduction))


# ---- CCS: the whole objective (Eq. 6) --------------------------------------------------------------

def ccs_losses(z_rgb: torch.Tensor, z_flow: torch.Tensor, labels: torch.Tensor, logits: Mapping[str, torch.Tensor],
               lambda1: float = 0.5, lambda2: float = 0.5, alpha1: float = 0.3, alpha2: float = 0.3,
               alpha3: float = 0.8, reduction: str = "mean") -> dict[str, torch.Tensor]:
    """Eq. 6 term by term: ``{"triplet": lambda1 L1, "embedding": lambda2 L2, <name>: CE}`` with one
    cross-entropy (L3) per entry of ``logits`` (each stream's classifier). The sum of the values is
    L. Defaults: lambda1 = lambda2 = 0.5, alpha1 = 0.3, alpha2 = 0.3, alpha3 = 0.8 (§4.1)."""
    if not logits:
        raise ValueError("ccs_losses: give at least one classifier's logits for the cross-entropy L3")
    for name, scores in logits.items():
        if scores.dim() != 2 or scores.shape[0] != labels.shape[0]:
            raise ValueError(f"ccs_losses: logits {name!r} must be [B, K] with B = {labels.shape[0]}, "
                             f"got {tuple(scores.shape)}")
        if name in ("triplet", "embedding"):
            raise ValueError(f"ccs_losses: a classifier may not be named {name!r} (the name of a ranking term)")
    losses = {"triplet": lambda1 * inter_modality_triplet_loss(z_rgb, z_flow, labels, alpha1, reduction),
              "embedding": lambda2 * discriminative_embedding_loss(z_rgb, z_flow, labels, alpha2, alpha3, reduction)}
    losses.update({name: F.cross_entropy(scores, labels) for name, scores in logits.items()})
    return losses


def ccs_objective(**kwargs) -> Callable[[Mapping, torch.Tensor], dict[str, torch.Tensor]]:
    """Eq. 6 as a trainer objective ``(out, labels) -> {name: loss}``. ``out`` is a model output
    with ``out.extras["embeddings"] = {"rgb": z^f, "flow": z^o}`` (``[B, D]`` each) and
    ``out.heads`` naming the classifiers whose cross-entropy is L3. ``kwargs`` go to :func:`ccs_losses`."""
    allowed = {"lambda1", "lambda2", "alpha1", "alpha2", "alpha3", "reduction"}
    if set(kwargs) - allowed:  # checked now, not at the first training step
        raise TypeError(f"ccs_objective: unexpected keyword(s) {sorted(set(kwargs) - allowed)}; "
                        f"the settings of Eq. 4-6 are {sorted(allowed)}")

    def objective(out, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        embeddings = getattr(out, "extras", {}).get("embeddings")
        if not isinstance(embeddings, Mapping) or not {"rgb", "flow"} <= set(embeddings):
            raise KeyError("ccs_objective needs the model's embeddings in out.extras['embeddings'] = "
                           "{'rgb': z_f, 'flow': z_o}; build the model with a CCS shared block")
        return ccs_losses(embeddings["rgb"], embeddings["flow"], labels, {h: out[h] for h in out.heads}, **kwargs)

    return objective


# ---- the network (Fig. 2) ------------------------------------------------------------------------
class CCSNet(TwoStreamNet):
    """The CCS network: a :class:`~fusionkit.models.two_stream.TwoStreamNet` whose shared block
    aggregates each video's segments by ``embedding.aggregation`` (Fig. 5a) before the classifiers.
    With ``"mean"`` it is TwoStreamNet's forward unchanged; otherwise each video's snippets are
    aggregated into one embedding per stream, which each stream's classifier reads."""

    def forward(self, rgb: torch.Tensor, flow: torch.Tensor) -> TwoStreamOutput:
        if self.embedding is None or self.embedding.aggregation == "mean":
            return super().forward(rgb, flow)
        if rgb.dim() != 5 or flow.dim() != 5 or rgb.shape[:2] != flow.shape[:2]:
            raise ValueError(f"expected rgb [B, T, 3, H, W] and flow [B, T, 2L, H, W] with the same B and T, got "
                             f"{tuple(rgb.shape)} and {tuple(flow.shape)}")
        t = rgb.shape[1]
        r, f = self.features(rgb.flatten(0, 1), flow.flatten(0, 1))
        z = {"rgb": self.embedding(r, segments=t), "flow": self.embedding(f, segments=t)}
        rgb_logits, flow_logits = self.rgb_head(z["rgb"][..., None, None]), self.flow_head(z["flow"][..., None, None])
        roles = self.output_roles()
        scores = {roles["rgb"]: rgb_logits, roles["flow"]: flow_logits,
                  roles["fused"]: late_fusion(rgb_logits, flow_logits, self.rgb_weight)}
        return TwoStreamOutput(scores, roles, heads=[roles["rgb"], roles["flow"]], extras={"embeddings": z})


def ccs(num_classes: int, fusion: str | None = "ccs", embedding_dim: int = 128, fusion_options: dict | None = None,
        shared_embedding: bool = True, aggregation: str = "mean", concat_segments: int | None = None,
        **network) -> CCSNet:
    """Cooperative cross-stream network (Fig. 2): the connection block ``fusion`` after the last stage
    (``None`` leaves it out: Table 3's "CS" and baseline rows), then the shared block, one fully
    connected layer embedding both towers' features into D dimensions (:class:`SharedEmbedding`), and
    a classifier per stream on the embeddings. Outputs ``ccs-R``, ``ccs-F``, ``ccs-S``;
    ``out.extras["embeddings"]`` feeds the ranking losses.

    ``shared_embedding=False`` leaves the shared block out, each stream's classifier on its own
    features (Table 3's baseline and CB rows, trained with ``ranking_losses=False``: the ranking
    losses compare the shared embeddings, which this network has none of). With ``fusion=None`` too
    it is the plain two-stream network (outputs ``rgb``, ``flow``, ``ccs``).

    ``aggregation``: how the shared block aggregates a video's segments (:data:`AGGREGATIONS`, Fig. 5a);
    ``"concat"`` needs ``concat_segments``, the number of segments the network is trained on (named apart
    from the datasets' ``segments``, which it must not exceed). Any other than
    ``"mean"`` needs the shared block and a 2D backbone (a 3D one sees the segments as one clip)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"ccs: aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    probe = probe_backbone(**network)
    if aggregation != "mean" and (not shared_embedding or probe.dims == 3):
        raise ValueError(f"ccs: aggregation={aggregation!r} aggregates the segments in the shared block: it needs "
                         f"shared_embedding=True (got {shared_embedding}) and a 2D backbone (got {probe.dims}D)")
    c = probe.out_channels
    blocks = ({probe.stage_names[-1]: build_fusion(fusion, rgb_channels=c, flow_channels=c, **(fusion_options or {}))}
              if fusion is not None else {})
    embedding = SharedEmbedding(c, embedding_dim) if shared_embedding else None
    net = CCSNet(num_classes, fusion_blocks=blocks, keep_flow_tower=True, embedding=embedding, method="ccs", **network)
    if aggregation != "mean" or concat_segments is not None:  # built after the classifiers: "mean" draws the same weights
        net.embedding = SharedEmbedding(c, embedding_dim, aggregation=aggregation, segments=concat_segments)
    return net


# Eq. 6 end to end, its margins and weights from TrainConfig.extra (keyword arguments of ccs_losses)
register_schedule("ccs")(lambda config: ccs_objective(**config.extra))


def configure(config: TrainConfig, ranking_losses: bool = True) -> TrainConfig:
    """``ranking_losses=False``: cross-entropy only (Table 3's baseline and CB rows), each stream on
    its own loss; the margins and weights of Eq. 4-6 are ``TrainConfig.extra``."""
    return config if ranking_losses else replace(config, schedule="separate")


register_method(Method(
    name="ccs", build=ccs, schedule="ccs", train_defaults={"classes_per_batch": 4, "videos_per_class": 4},
    configure=configure,
    description="Cooperative cross-stream network (Zhang et al. 2019): connection block after the last stage, a "
                "shared embedding layer, cross-entropy plus the inter-modality triplet and discriminative "
                "embedding losses (Eq. 4-6), trained end to end on balanced batches (N classes x M videos); "
                "ranking_losses=False trains on cross-entropy only."))


# ---- the paper's ablation tables and the recipes (fusionkit.methods.tables, .training_recipes) -----
def _register_tables_and_recipes() -> None:
    from fusionkit.methods.tables import AblationTable, Claim, Column, register_table, rows
    from fusionkit.methods.training_recipes import TEACHING_DATA, Recipe, register_recipe, teaching_config

    columns = tuple(Column(name, role, dataset) for dataset in ("UCF101", "HMDB51")
                    for name, role in (("RGB", "rgb"), ("Flow", "flow"), ("RGB+Flow", "fused")))
    no_i3d = dict(buildable=False, reason="I3D (the inflated Inception-V1) is not among fusionkit's backbones "
                                          "(r3d_18 and r2plus1d_18 are other 3D networks)")
    plain = {"shared_embedding": False, "ranking_losses": False}  # no shared FC layer, cross-entropy only
    register_table(AblationTable(
        "zhang2019", 3, "Ablation studies: results with different components on UCF-101 and HMDB51 (split 1). CB: only "
                        "the connection block; CS: no connection block, only cross-stream training in the shared "
                        "block; All: both", columns,
        rows(columns,
             ("TSN / Baseline", "ccs", {"fusion": None, **plain}, (85.7, 87.9, 93.5, None, None, 68.5),
              dict(note="the two streams with their own classifiers, no connection block, no shared FC layer, "
                        "cross-entropy only (TSN)")),
             ("TSN / CB", "ccs", dict(plain), (86.3, 87.2, 93.9, 60.5, 62.1, 76.3),
              dict(note="the connection block, no shared FC layer, cross-entropy only")),
             ("TSN / CS", "ccs", {"fusion": None}, (84.9, 85.1, 91.7, 54.4, 61.6, 67.3),
              dict(note="the shared block with the ranking losses (Eq. 6), no connection block")),
             ("TSN / All", "ccs", {}, (87.2, 87.4, 95.3, 61.7, 65.1, 77.2)),
             ("I3D / Baseline", None, {"fusion": None, **plain}, (84.5, 90.6, 93.4, 49.8, 61.9, 66.4), no_i3d),
             ("I3D / CB", None, dict(plain), (86.1, 86.9, 92.7, 53.0, 56.2, 67.6), no_i3d),
             ("I3D / CS", None, {"fusion": None}, (82.4, 83.1, 91.8, 50.9, 52.3, 64.7), no_i3d),
             ("I3D / All", None, {}, (86.7, 87.1, 93.8, 60.1, 62.3, 68.2), no_i3d)),
        claims=(
            Claim("The connection block raises the RGB+Flow accuracy over the baseline (TSN: +0.4 UCF101, +7.8 HMDB51)",
                  (("TSN / CB", ">", "TSN / Baseline"),
                   (("TSN / CB", "HMDB51 RGB+Flow"), ">", ("TSN / Baseline", "HMDB51 RGB+Flow"))),
                  "UCF101 RGB+Flow", source="§4.3"),
            Claim("Cross-stream training without the connection block is worse than the baseline",
                  (("TSN / CS", "<", "TSN / Baseline"),
                   (("TSN / CS", "HMDB51 RGB+Flow"), "<", ("TSN / Baseline", "HMDB51 RGB+Flow"))),
                  "UCF101 RGB+Flow", source="§4.3 ('The performance even becomes worse compared with TSN')"),
            Claim("With the connection block, cross-stream training gives the best results (TSN)",
                  tuple(("TSN / All", ">", other) for other in ("TSN / Baseline", "TSN / CB", "TSN / CS"))
                  + tuple((("TSN / All", "HMDB51 RGB+Flow"), ">", (other, "HMDB51 RGB+Flow"))
                          for other in ("TSN / Baseline", "TSN / CB", "TSN / CS")),
                  "UCF101 RGB+Flow", source="§4.3"),
            Claim("All is best on I3D too", tuple(("I3D / All", ">", other) for other in
                                                  ("I3D / Baseline", "I3D / CB", "I3D / CS")),
                  "UCF101 RGB+Flow", source="Table 3"),
        ),
        recipe_method="ccs",
        note="'We keep all the training conditions the same' (§4.3): every row trains with the recipe's balanced "
             "batches; the ranking losses only where the row has them. The backbone is the run's (tiny on the "
             "puzzles; the paper's TSN rows use BN-Inception)."))

    columns4 = (Column("Accuracy", "fused", "UCF101"),)
    margins = ((0.2, 0.3, 0.8, 96.3), (0.3, 0.3, 0.8, 97.4), (0.3, 0.5, 1.0, 97.1), (0.5, 0.5, 1.0, 95.4),
               (0.8, 0.5, 1.2, 95.5))
    names = [f"alpha1={a1} alpha2={a2} alpha3={a3}" for a1, a2, a3, _ in margins]
    register_table(AblationTable(
        "zhang2019", 4, "The performance of CCS with different model parameter values on UCF-101", columns4,
        rows(columns4, *((name, "ccs", {}, (acc,), dict(train={"extra": {"alpha1": a1, "alpha2": a2, "alpha3": a3}}))
                         for name, (a1, a2, a3, acc) in zip(names, margins))),
        claims=(Claim("alpha1 = alpha2 = 0.3, alpha3 = 0.8 (the paper's choice) gives the best accuracy",
                      tuple((names[1], ">", other) for other in names if other != names[1]), "UCF101 Accuracy",
                      source="§4.3"),),
        recipe_method="ccs",
        note="The margins of Eq. 4-5 (TrainConfig.extra); the paper's 97.4 is CCS + TSN pretrained on ImageNet + "
             "Kinetics (Table 1)."))

    columns5 = (Column("RGB+Flow", "fused", "HMDB51"),)
    aggregations = (("Max", {"aggregation": "max"}), ("Average", {"aggregation": "mean"}),
                    ("Multiplication", {"aggregation": "product"}),
                    ("Concatenation", {"aggregation": "concat", "concat_segments": 3}))
    register_table(AblationTable(
        "zhang2019", 5, "Fig. 5a: the performance of different feature aggregation functions (the element-wise "
                        "maximum, average and multiplication of the segments' features, and their concatenation)",
        columns5,
        rows(columns5, *((name, "ccs", options, (None,),
                          dict(note="3 segments concatenated: the recipes' training segments (a test with more "
                                    "snippets concatenates the means of 3 consecutive groups)")
                          if name == "Concatenation" else {}) for name, options in aggregations)),
        claims=(Claim("The element-wise average of the sequence achieves the best result on HMDB-51",
                      tuple(("Average", ">", other) for other in ("Max", "Multiplication", "Concatenation")),
                      "HMDB51 RGB+Flow", source="§4.3, Fig. 5a"),),
        recipe_method="ccs", label="Fig. 5a",
        note="Fig. 5a only plots the four accuracies (a bar chart; the paper prints no numbers, and the text names "
             "HMDB-51 only): the rows carry no paper numbers, and the claim is the text's. Registered as the "
             "paper's table 5 (the paper has Tables 1-4): fusionkit reproduce zhang2019 --table 5. Each row is the "
             "whole CCS network (All) with the aggregation of the shared block changed (§4.3)."))

    register_recipe(Recipe(
        "ccs", "teaching", teaching_config(20, batch_size=16, classes_per_batch=4, videos_per_class=4),
        model={"dropout": 0.3, "embedding_dim": 64}, data=dict(TEACHING_DATA), source="notebooks/05_ccs.ipynb",
        notes={"batches": "4 classes x 4 videos (the puzzles have 4 classes)",
               "embedding_dim": "64: the tiny towers' last stage has 96 channels"}))
    register_recipe(Recipe(
        "ccs", "paper",
        TrainConfig(epochs=400, batch_size=32, optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4,
                    lr_schedule="step", lr_step=50, classes_per_batch=8, videos_per_class=4,
                    extra={"lambda1": 0.5, "lambda2": 0.5, "alpha1": 0.3, "alpha2": 0.3, "alpha3": 0.8}),
        model={"dropout": 0.8, "embedding_dim": 128},
        data={"segments": 3, "test_segments": 25, "new_length": 5, "input_size": 224,
              "sampling": "three segments, a snippet of 10 frames from each in training (§4.2): read as TSN's 5 x- "
                          "and 5 y-flow images (new_length=5)",
              "test_protocol": "25 frames per video (§4.2), 'fully network testing' in a single pass"},
        source="Zhang et al. 2019 §4.1-4.2",
        notes={"optimizer": "mini-batch SGD, momentum 0.9, weight decay 5e-4 (§4.1)",
               "lr": "1e-3, 'reduce by a factor 10 after 50 epochs' (§4.1): a step every 50 epochs",
               "epochs": "'the maximum epochs are 400' (§4.1)",
               "losses": "lambda1 = lambda2 = 0.5, alpha1 = alpha2 = 0.3, alpha3 = 0.8 (§4.1)",
               "batches": "N classes x M videos, 2 x N x M images (§4.1); N and M not stated: chose 8 x 4",
               "dropout": "not stated: chose TSN's 0.8",
               "embedding_dim": "D not stated: chose 128",
               "backbone": "TSN's BN-Inception (Table 3) is not in fusionkit: use e.g. resnet50 --pretrained; the "
                           "streams are trained jointly from ImageNet, not first separately (§4.3)"}))


_register_tables_and_recipes()
