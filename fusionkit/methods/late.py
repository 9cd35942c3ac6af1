"""The original two-stream network (Simonyan & Zisserman 2014): late fusion of two towers.

An appearance tower on single RGB frames and a motion tower on stacks of L flow fields, trained
separately, their softmax scores averaged with weight ``rgb_weight`` (the ``late`` output,
:func:`fusionkit.models.two_stream.late_fusion`). The fusion methods start from these streams.
"""
from __future__ import annotations

from fusionkit.methods.recipe import Method, register_method
from fusionkit.models.two_stream import TwoStreamNet


def late(num_classes: int, rgb_weight: float = 0.5, **network) -> TwoStreamNet:
    """Two towers, no fusion inside; outputs ``rgb``, ``flow`` and ``late`` = w p_rgb + (1 - w) p_flow."""
    return TwoStreamNet(num_classes, rgb_weight=rgb_weight, method="late", **network)


register_method(Method(
    name="late", build=late, schedule="separate",
    description="Two-stream network (Simonyan & Zisserman 2014): RGB and flow towers trained separately, "
                "softmax scores averaged with weight rgb_weight."))
