"""Evaluation: per-stream and fused accuracy, multi-segment / multi-crop testing, weight sweeps.

Testing as TSN does it: 25 evenly spaced snippets per video (``num_segments=25`` in a test-mode
dataset) and optionally 10 crops each (4 corners and the centre, and their mirror images:
:class:`fusionkit.data.transforms.TenCrop`); the scores of all snippets and crops are averaged by
the network's consensus.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fusionkit.training.runtime import autocast, make_loader, resolve_device, to_device


@dataclass
class Scores:
    """Per-video class probabilities of every model output, with labels, video ids and the outputs'
    roles (``{"rgb": ..., "flow": ..., "fused": ...}``, :class:`~fusionkit.models.two_stream.TwoStreamOutput`)."""

    probs: dict[str, np.ndarray]  # output name -> [N, K]
    labels: np.ndarray  # [N]
    video_ids: list[str]
    roles: dict[str, str] = field(default_factory=lambda: {"rgb": "rgb", "flow": "flow"})

    def streams(self) -> tuple[str, str]:
        """The (appearance, motion) outputs: what a fusion weight weighs. ValueError when the model
        has no such pair (a truncated motion tower: nothing to weigh)."""
        if not {"rgb", "flow"} <= set(self.roles):
            raise ValueError(f"these scores have no pair of per-stream outputs (roles {self.roles}); a model whose "
                             f"motion tower is truncated at the fusion point has only its fused prediction")
        return self.roles["rgb"], self.roles["flow"]

    def fused(self, rgb_weight: float, rgb: str | None = None, flow: str | None = None) -> np.ndarray:
        """Late fusion of two outputs' probabilities with RGB weight ``w``: w p_rgb + (1 - w) p_flow
        (by default of the per-stream outputs, :meth:`streams`)."""
        if rgb is None or flow is None:
            found = self.streams()
            rgb, flow = rgb or found[0], flow or found[1]
        return rgb_weight * self.probs[rgb] + (1 - rgb_weight) * self.probs[flow]


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, batch_size: int = 8, device: str | torch.device = "auto",
            num_workers: int = 0) -> Scores:
    """Run ``model`` over ``dataset`` in eval mode and collect every output's probabilities."""
    device = resolve_device(device) if isinstance(device, str) else device
    model.to(device).eval()
    probs: dict[str, list[np.ndarray]] = {}
    labels, ids, roles = [], [], {}
    for batch in make_loader(dataset, batch_size, False, 0, num_workers, device):
        batch = to_device(batch, device)
        with autocast(device):
            out = model(batch["rgb"], batch["flow"])
        roles = getattr(out, "roles", roles)
        for name, scores in out.items():
            # score-level fusions return log-probabilities, which softmax maps back to themselves, or averaged
            # class scores (Feichtenhofer's FC8 average, score_fusion="logits"), whose softmax is taken as any logits'
            probs.setdefault(name, []).append(scores.float().softmax(-1).cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        ids.extend(batch["video_id"])
    return Scores({k: np.concatenate(v) for k, v in probs.items()}, np.concatenate(labels), ids, roles)


def confusion_matrix(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[K, K]`` counts; row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm


def classification_metrics(probs: np.ndarray, labels: np.ndarray) -> dict:
    """top-1, top-5 (top-K when there are fewer than 5 classes), mean class accuracy, confusion matrix."""
    k = probs.shape[1]
    ranked = np.argsort(-probs, axis=1)
    top5 = min(5, k)
    cm = confusion_matrix(ranked[:, 0], labels, k)
    per_class = np.diag(cm) / np.maximum(cm.sum(1), 1)
    present = cm.sum(1) > 0
    return {"top1": float((ranked[:, 0] == labels).mean()),
            f"top{top5}": float((ranked[:, :top5] == labels[:, None]).any(1).mean()),
            "mean_class": float(per_class[present].mean()), "confusion": cm.tolist()}


def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = 8, device: str | torch.device = "auto",
             num_workers: int = 0) -> dict[str, dict]:
    """Metrics of every model output (``rgb``, ``flow``, the fused one) on ``dataset``."""
    scores = predict(model, dataset, batch_size, device, num_workers)
    return {name: classification_metrics(p, scores.labels) for name, p in scores.probs.items()}


def evaluation_report(model: nn.Module, dataset: Dataset, batch_size: int = 8, device: str | torch.device = "auto",
                      num_workers: int = 0, ten_crop: bool = False) -> dict:
    """What ``eval*.json`` holds, one schema for ``fusionkit train`` and ``fusionkit evaluate``:
    ``{"segments", "ten_crop", "roles", "metrics": {output: metrics}, "fusion_weight_sweep"}``, the
    sweep over the per-stream outputs (None when the motion tower was truncated: nothing to weigh)."""
    scores = predict(model, dataset, batch_size, device, num_workers)
    sweep = fusion_weight_sweep(scores) if {"rgb", "flow"} <= set(scores.roles) else None
    return {"segments": getattr(dataset, "num_segments", None), "ten_crop": ten_crop, "roles": scores.roles,
            "metrics": {name: classification_metrics(p, scores.labels) for name, p in scores.probs.items()},
            "fusion_weight_sweep": sweep}


def fusion_weight_sweep(scores: Scores, weights=None, rgb: str | None = None, flow: str | None = None) -> dict:
    """Top-1 of late fusion as a function of the RGB weight w in [0, 1] (w = 0: flow alone)."""
    weights = np.linspace(0, 1, 21) if weights is None else np.asarray(weights, float)
    top1 = [float((scores.fused(w, rgb, flow).argmax(1) == scores.labels).mean()) for w in weights]
    return {"rgb_weight": [round(float(w), 6) for w in weights], "top1": top1}
