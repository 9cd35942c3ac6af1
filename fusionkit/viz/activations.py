"""Feature maps inside a two-stream network, for figures such as "what moves where"."""
from __future__ import annotations

import torch

from fusionkit.models.two_stream import TwoStreamNet


@torch.no_grad()
def fusion_activations(model: TwoStreamNet, rgb: torch.Tensor, flow: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Run ``model`` on one batch and return, for every fusion block, its inputs and its fused
    output: ``{position: {"rgb": [N, C, H, W], "flow": ..., "fused": ...}}`` (N = B*T snippets;
    temporal blocks give ``[B, C, T, H, W]``). Uses forward hooks, so the model is unchanged."""
    captured: dict[str, dict[str, torch.Tensor]] = {}
    blocks = {k.replace(":", "."): b for k, b in model.fusion_blocks.items()}
    if model.temporal_fusion is not None:
        blocks["temporal"] = model.temporal_fusion

    def hook(position):
        def record(module, inputs, output):
            captured[position] = {"rgb": inputs[0].detach(), "flow": inputs[1].detach(), "fused": output[0].detach()}
        return record

    handles = [block.register_forward_hook(hook(position)) for position, block in blocks.items()]
    was_training = model.training
    try:
        model.eval()
        model(rgb, flow)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return captured
