"""Course assignments: students extend fusion blocks; instructors release and autograde them.

The student contract
--------------------
A new fusion block is a subclass of :class:`fusionkit.fusion.FusionBlock` registered under a name::

    import torch
    from torch import nn

    from fusionkit.fusion import FusionBlock, register_fusion

    # a toy block: y = x^a + alpha * x^b, sum fusion (Eq. 1) that learns how much motion to add per channel
    @register_fusion("scaled_sum")
    class ScaledSum(FusionBlock):
        starts_as = "identity"  # optional claim, checked: "identity", a registered block's name, or None

        def __init__(self, rgb_channels: int, flow_channels: int):
            super().__init__(rgb_channels, flow_channels)
            if rgb_channels != flow_channels:
                raise ValueError("scaled_sum adds channel d of flow to channel d of rgb: needs equal widths")
            self.alpha = nn.Parameter(torch.zeros(rgb_channels))  # zero: the block starts as the identity

        def fuse(self, rgb, flow):  # [N, C, H, W] or [N, C, T, H, W] -> the same shapes
            alpha = self.alpha.view(-1, *[1] * (rgb.dim() - 2))
            return rgb + alpha * flow, flow

1. **Override ``fuse(rgb, flow) -> (rgb, flow)``, not ``forward``**: ``FusionBlock.forward`` checks
   the shapes going in and out and then calls ``fuse``, so a wrong shape fails with a message that
   says which and why. The RGB output is the fused map (it feeds the appearance tower); return the
   flow map unchanged unless the block fuses both ways.
2. **Build from ``rgb_channels`` and ``flow_channels``** (keywords; more options may follow with
   defaults) and call ``super().__init__(rgb_channels, flow_channels)`` first.
3. **Keep the shapes** (or set ``keeps_shape = False`` and say the new width in ``out_channels``),
   work on 2D and 3D maps (``fusionkit.fusion.conv1x1`` applies a 1x1 conv to both), compute
   in the inputs' dtype, never modify the inputs in place.
4. **Claim how it starts, if it does**: ``starts_as = "identity"`` (it returns its inputs at
   initialisation, like CMA's zero-initialised BN) or the name of the block it equals at
   initialisation (``"sum"`` for conv fusion's ``[I I]`` filters, Feichtenhofer et al. §3.5).
   Fine-tuning from separately trained streams then starts exactly where they are.
5. **Register it** with ``@register_fusion("name")``. From then on, without touching library code,
   it is built into any two-stream network by name, trained by the trainer and compared with the
   library's blocks on a puzzle::

       from fusionkit.methods import build_model
       model = build_model("spatial", num_classes=4, fusion="scaled_sum", position="stage2", backbone="tiny")

       from fusionkit.lab.experiments import puzzle_experiment
       late = puzzle_experiment("late", "registration", seeds=[0, 1])
       mine = puzzle_experiment("spatial", "registration", seeds=[0, 1], init_from=late.models,
                                fusion="scaled_sum", head_hidden=128, finetune="all")
       mine.accuracy["scaled_sum"]   # {"mean", "std", "seeds"}: the results schema's entry

   and, with the class in a file, every puzzle at once:
   ``fusionkit bench --plugins my_blocks.py --blocks scaled_sum``.

:func:`check_block` (:mod:`fusionkit.lab.assignments.check`) runs a block through this contract, one
scored check at a time, and says what to change when a check fails; the assignment notebooks in
``notebooks/assignments/`` use it and ``fusionkit assignment grade`` scores it.

Instructors
-----------
``fusionkit assignment release SRC.ipynb OUT_DIR`` writes the student version of a solution
notebook marked up in nbgrader's format; ``fusionkit assignment grade SUBMISSION.ipynb --out
report.json`` executes a submission with papermill, restores the locked test cells (hidden tests
included), runs them and the block checker, and writes a JSON score report
(:mod:`fusionkit.lab.assignments.notebooks`, which also says why nbgrader itself is not used).
"""
from __future__ import annotations

import importlib

# Imported on first use (PEP 562), so that `fusionkit --help` does not load torch through here.
_EXPORTS = {
    "check_block": "check", "CheckReport": "check", "CheckResult": "check", "CHECKS": "check",
    "register_check": "check", "TrainingCheck": "check", "CheckFailed": "check",
    "release_notebook": "notebooks", "grade_notebook": "notebooks", "assignment_check_options": "notebooks",
    "add_assignment_parser": "commands",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
