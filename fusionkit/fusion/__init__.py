"""Fusion blocks, one file per fusion family, and their registry (:mod:`fusionkit.fusion.base`).

Importing this package registers every block: ``build_fusion("conv", rgb_channels=..., flow_channels=...)``.
"""
from fusionkit.fusion import ccs, cma, cmmp, spatial, temporal  # noqa: F401  (registers the blocks)
from fusionkit.fusion.base import FUSIONS, FusionBlock, FusionChain, build_fusion, register_fusion

__all__ = ["FUSIONS", "FusionBlock", "FusionChain", "build_fusion", "register_fusion"]
