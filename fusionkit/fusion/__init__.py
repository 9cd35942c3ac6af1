"""Fusion blocks, one file per fusion family, and their registry (:mod:`fusionkit.fusion.base`)."""
from fusionkit.fusion.base import FUSIONS, FusionBlock, build_fusion, register_fusion

__all__ = ["FUSIONS", "FusionBlock", "build_fusion", "register_fusion"]
