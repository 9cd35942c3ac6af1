"""Losses of the fusion methods beyond plain cross-entropy.

This file holds the CCS ranking losses (Zhang, Xu, Shen & Shen 2019, §3.3, Eq. 4-6) and the CMMP
adversarial objective (Wang, Yuan & Wang 2018, Eq. 3-5, :func:`adversarial_objective`), each in its
own section.

CCS. Each video gives an appearance embedding z^f and a motion embedding z^o (the shared block,
:class:`fusionkit.fusion.ccs.SharedEmbedding`); a batch holds ``[B, D]`` of each, row b of both
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

from typing import Callable, Mapping

import torch
import torch.nn.functional as F

__all__ = ["inter_modality_triplet_loss", "hardest_pairs", "discriminative_embedding_loss", "ccs_losses",
           "ccs_objective"]

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


# ---- CMMP: adversarial objective (Wang, Yuan & Wang 2018) --------------------------------------------
def adversarial_objective(out, labels):
    """CMMP's competing objective (Wang et al. 2018, Eq. 3-5): for the appearance network
    ``AL_a = L_a + max(L_a - L_m, 0)`` and for the motion network ``AL_m = L_m + max(L_m - L_a, 0)``,
    with L the cross-entropy of each stream's classifier (``out.heads``: appearance, motion).

    The other stream's loss inside the hinge is a constant (detached): the hinge doubles a
    network's own gradient while it trails the other and vanishes once it is ahead; no network is
    pushed to raise the other's loss. Each AL otherwise back-propagates through everything its
    stream's scores depend on, the message generators and (through them) the other tower included,
    as §3.4 trains "the whole network jointly". For the strict reading, in which each AL reaches only
    its own network's parameters, build :class:`~fusionkit.fusion.cmmp.MessagePassing` with
    ``own_gradients=True`` (why that is not the default: see that module's docstring)."""
    appearance, motion = out.heads
    loss_a = F.cross_entropy(out[appearance], labels)
    loss_m = F.cross_entropy(out[motion], labels)
    return {f"AL_{appearance}": loss_a + torch.relu(loss_a - loss_m.detach()),
            f"AL_{motion}": loss_m + torch.relu(loss_m - loss_a.detach())}

