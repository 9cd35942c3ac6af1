"""CCS ranking losses (Zhang et al. 2019, §3.3, Eq. 4-6): hand-computed values on tiny batches, and
brute-force loop implementations written here from the equations (values and gradients). Float64.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fusionkit.methods.ccs import (ccs_losses, ccs_objective, discriminative_embedding_loss, hardest_pairs, inter_modality_triplet_loss)
from fusionkit.models.two_stream import TwoStreamOutput

# A 1-D toy batch: videos 0 and 1 of class 0, video 2 of class 1 (values worked out in the tests).
LABELS = torch.tensor([0, 0, 1])
Z_RGB = torch.tensor([[0.0], [2.0], [5.0]], dtype=torch.float64)
Z_FLOW = torch.tensor([[1.0], [0.0], [1.0]], dtype=torch.float64)


def _batch(seed=0, b=12, d=5, classes=4, spread=1.0, noise=0.5):
    """Embeddings around random class centres (``spread``) with ``noise``: some hinges active, some not."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(b) % classes
    centres = torch.randn(classes, d, generator=g, dtype=torch.float64) * spread
    z_rgb = (centres[labels] + noise * torch.randn(b, d, generator=g, dtype=torch.float64)).requires_grad_()
    z_flow = (centres[labels] + noise * torch.randn(b, d, generator=g, dtype=torch.float64)).requires_grad_()
    return z_rgb, z_flow, labels


def _sq(a, b):
    return sum((a[k] - b[k]) ** 2 for k in range(len(a)))


def _brute_triplet(z_rgb, z_flow, labels, margin, reduction):
    """Eq. 4 with batch-hard mining, anchor by anchor."""
    total = 0.0
    for anchors, others in ((z_rgb, z_flow), (z_flow, z_rgb)):
        terms = []
        for a in range(len(labels)):
            pos = [_sq(anchors[a], others[j]) for j in range(len(labels)) if labels[j] == labels[a]]
            neg = [_sq(anchors[a], others[j]) for j in range(len(labels)) if labels[j] != labels[a]]
            if neg:
                terms.append(torch.clamp(max(pos) - min(neg) + margin, min=0))
        if terms:
            total = total + (sum(terms) if reduction == "sum" else sum(terms) / len(terms))
    return total


def _brute_embedding(z_rgb, z_flow, labels, alpha2, alpha3, reduction):
    """Eq. 5: per modality, sample-to-class-mean and class-mean-to-class-mean hinges."""
    total = 0.0
    classes = sorted(set(labels.tolist()))
    for z in (z_rgb, z_flow):
        means = {c: sum(z[i] for i in range(len(labels)) if labels[i] == c) / int((labels == c).sum())
                 for c in classes}
        compact = [torch.clamp(_sq(z[i], means[int(labels[i])]) - alpha2, min=0) for i in range(len(labels))]
        separate = [torch.clamp(alpha3 - _sq(means[c], means[e]), min=0) for c in classes for e in classes if c != e]
        for terms in (compact, separate):
            if terms:
                total = total + (sum(terms) if reduction == "sum" else sum(terms) / len(terms))
    return total


# ---- Eq. 4 ----------------------------------------------------------------------------------------

def test_hardest_pairs_by_hand():
    # appearance anchors vs motion: d(f0, o) = [1, 0, 1], d(f1, o) = [1, 4, 1], d(f2, o) = [16, 25, 16]
    d_pos, d_neg, pos, neg = hardest_pairs(Z_RGB, Z_FLOW, LABELS)
    assert pos.tolist() == [0, 1, 2] and neg.tolist() == [2, 2, 0]
    assert d_pos.tolist() == [1.0, 4.0, 16.0] and d_neg.tolist() == [1.0, 1.0, 16.0]
    # motion anchors vs appearance: d(o0, f) = [1, 1, 16] (a tie: the first is taken), d(o2, f) = [1, 1, 16]
    d_pos, d_neg, pos, neg = hardest_pairs(Z_FLOW, Z_RGB, LABELS)
    assert pos.tolist() == [0, 1, 2] and neg.tolist() == [2, 2, 0]
    assert d_pos.tolist() == [1.0, 4.0, 16.0] and d_neg.tolist() == [16.0, 25.0, 1.0]


def test_triplet_by_hand():
    # f -> o: [1 - 1 + .3]+ = .3, [4 - 1 + .3]+ = 3.3, [16 - 16 + .3]+ = .3
    # o -> f: [1 - 16 + .3]+ = 0 (hinge at zero), [4 - 25 + .3]+ = 0, [16 - 1 + .3]+ = 15.3
    total = inter_modality_triplet_loss(Z_RGB, Z_FLOW, LABELS, margin=0.3, reduction="sum")
    torch.testing.assert_close(total, torch.tensor(0.3 + 3.3 + 0.3 + 15.3, dtype=torch.float64))
    mean = inter_modality_triplet_loss(Z_RGB, Z_FLOW, LABELS)  # defaults: margin 0.3, mean per direction
    torch.testing.assert_close(mean, torch.tensor(3.9 / 3 + 15.3 / 3, dtype=torch.float64))


def test_triplet_zero_when_separated():
    z_rgb = torch.tensor([[0.0], [0.1], [3.0]], dtype=torch.float64, requires_grad=True)
    z_flow = torch.tensor([[0.05], [0.0], [3.1]], dtype=torch.float64, requires_grad=True)
    loss = inter_modality_triplet_loss(z_rgb, z_flow, LABELS)
    assert loss.item() == 0.0
    loss.backward()
    assert not z_rgb.grad.any() and not z_flow.grad.any()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triplet_matches_brute_force(seed, reduction):
    z_rgb, z_flow, labels = _batch(seed)
    loss = inter_modality_triplet_loss(z_rgb, z_flow, labels, margin=0.7, reduction=reduction)
    ref = _brute_triplet(z_rgb, z_flow, labels, 0.7, reduction)
    torch.testing.assert_close(loss, ref)
    d_pos, d_neg, _, _ = hardest_pairs(z_rgb.detach(), z_flow.detach(), labels)
    active = int((d_pos - d_neg + 0.7 > 0).sum())
    assert 0 < active < len(labels)  # the batch exercises both sides of the hinge
    grads = torch.autograd.grad(loss, (z_rgb, z_flow))
    ref_grads = torch.autograd.grad(ref, (z_rgb, z_flow))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_triplet_single_class_has_no_negative():
    z_rgb, z_flow, _ = _batch(b=4)
    loss = inter_modality_triplet_loss(z_rgb, z_flow, torch.zeros(4, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()  # part of the graph, with zero gradients
    assert not z_rgb.grad.any()
    _, d_neg, _, neg = hardest_pairs(z_rgb.detach(), z_flow.detach(), torch.zeros(4, dtype=torch.long))
    assert neg.tolist() == [-1] * 4 and torch.isinf(d_neg).all()


# ---- Eq. 5 ----------------------------------------------------------------------------------------

def test_embedding_by_hand():
    # appearance: means m0 = 1, m1 = 5; compactness [1 - .3]+ twice, [0 - .3]+ = 0; separation [.8 - 16]+ = 0
    # motion: means m0 = .5, m1 = 1; compactness [.25 - .3]+ = 0 thrice; separation [.8 - .25]+ = .55 per ordered pair
    total = discriminative_embedding_loss(Z_RGB, Z_FLOW, LABELS, alpha2=0.3, alpha3=0.8, reduction="sum")
    torch.testing.assert_close(total, torch.tensor(1.4 + 1.1, dtype=torch.float64))
    mean = discriminative_embedding_loss(Z_RGB, Z_FLOW, LABELS)  # defaults: alpha2 .3, alpha3 .8, mean
    torch.testing.assert_close(mean, torch.tensor(1.4 / 3 + 0.0 + 0.0 + 0.55, dtype=torch.float64))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("seed", [0, 1])
def test_embedding_matches_brute_force(seed, reduction):
    z_rgb, z_flow, labels = _batch(seed, classes=3, spread=0.2, noise=0.3)  # both hinges: some terms active, some not
    loss = discriminative_embedding_loss(z_rgb, z_flow, labels, alpha2=0.3, alpha3=0.8, reduction=reduction)
    ref = _brute_embedding(z_rgb, z_flow, labels, 0.3, 0.8, reduction)
    torch.testing.assert_close(loss, ref)
    for g, r in zip(torch.autograd.grad(loss, (z_rgb, z_flow), retain_graph=True),
                    torch.autograd.grad(ref, (z_rgb, z_flow))):
        torch.testing.assert_close(g, r)  # gradients flow through the class means too


def test_embedding_single_class_has_no_separation_term():
    z = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    labels = torch.tensor([3, 3])
    # mean 1: compactness [1 - .3]+ = .7 per sample per modality, no pair of classes
    torch.testing.assert_close(discriminative_embedding_loss(z, z, labels, reduction="sum"),
                               torch.tensor(2.8, dtype=torch.float64))


# ---- Eq. 6 ----------------------------------------------------------------------------------------

def test_total_uses_paper_defaults():
    logits = {"ccs-R": torch.randn(3, 2, dtype=torch.float64), "ccs-F": torch.randn(3, 2, dtype=torch.float64)}
    losses = ccs_losses(Z_RGB, Z_FLOW, LABELS, logits)
    assert set(losses) == {"triplet", "embedding", "ccs-R", "ccs-F"}
    torch.testing.assert_close(losses["triplet"], 0.5 * inter_modality_triplet_loss(Z_RGB, Z_FLOW, LABELS, 0.3))
    torch.testing.assert_close(losses["embedding"],
                               0.5 * discriminative_embedding_loss(Z_RGB, Z_FLOW, LABELS, 0.3, 0.8))
    for name, scores in logits.items():
        torch.testing.assert_close(losses[name], F.cross_entropy(scores, LABELS))
    expected = 0.5 * 6.4 + 0.5 * (1.4 / 3 + 0.55) + sum(F.cross_entropy(s, LABELS) for s in logits.values())
    torch.testing.assert_close(sum(losses.values()), expected)


def test_objective_reads_model_output():
    z_rgb, z_flow, labels = _batch(b=8)
    scores = {"ccs-R": torch.randn(8, 4), "ccs-F": torch.randn(8, 4), "ccs-S": torch.randn(8, 4)}
    roles = {"rgb": "ccs-R", "flow": "ccs-F", "fused": "ccs-S"}
    out = TwoStreamOutput(scores, roles, heads=["ccs-R", "ccs-F"],
                          extras={"embeddings": {"rgb": z_rgb, "flow": z_flow}})
    losses = ccs_objective(lambda1=1.0, alpha1=0.5)(out, labels)
    torch.testing.assert_close(losses["triplet"], inter_modality_triplet_loss(z_rgb, z_flow, labels, 0.5))
    # one cross-entropy per classifier (the heads), none on the fused score
    assert set(losses) == {"triplet", "embedding", "ccs-R", "ccs-F"}
    torch.testing.assert_close(losses["ccs-F"], F.cross_entropy(scores["ccs-F"], labels))
    with pytest.raises(KeyError, match="extras"):
        ccs_objective()(TwoStreamOutput(scores, roles, heads=["ccs-R"]), labels)


def test_low_precision_inputs_give_float32():
    z_rgb, z_flow, labels = _batch()
    loss = inter_modality_triplet_loss(z_rgb.bfloat16(), z_flow.bfloat16(), labels)
    assert loss.dtype == torch.float32
    assert discriminative_embedding_loss(z_rgb.bfloat16(), z_flow.bfloat16(), labels).dtype == torch.float32


def test_errors():
    z = torch.zeros(4, 3)
    labels = torch.arange(4)
    for fn in (inter_modality_triplet_loss, discriminative_embedding_loss):
        with pytest.raises(ValueError, match=r"one shape \[B, D\]"):
            fn(z, torch.zeros(4, 2), labels)
        with pytest.raises(ValueError, match=r"one shape \[B, D\]"):
            fn(torch.zeros(4, 3, 1), torch.zeros(4, 3, 1), labels)
        with pytest.raises(ValueError, match="one label per video"):
            fn(z, z, torch.arange(5))
        with pytest.raises(TypeError, match="integer class indices"):
            fn(z, z, labels.float())
        with pytest.raises(ValueError, match="reduction"):
            fn(z, z, labels, reduction="max")
        with pytest.raises(ValueError, match="empty"):
            fn(torch.zeros(0, 3), torch.zeros(0, 3), labels[:0])
    with pytest.raises(ValueError, match="hardest_pairs"):
        hardest_pairs(z, torch.zeros(3, 3), labels)
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        ccs_losses(z, z, labels, {"rgb": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="at least one"):
        ccs_losses(z, z, labels, {})
