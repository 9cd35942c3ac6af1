"""Typed output roles of every method, the one options vocabulary of build_model, and the fusion
registry's provider (the blocks live in fusionkit.methods, the contract in fusionkit.fusion)."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from fusionkit.methods import build_model, get_method, list_methods, method_options, run_method
from fusionkit.models.two_stream import ROLES, TwoStreamOutput, late_fusion, output_names
from fusionkit.training.trainer import TrainConfig
from tests.helpers import SyntheticTwoStream

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["ccs", "cma", "cmmp", "conv_fusion", "late", "nonlocal", "spatial"]


def _inputs(b=2, t=2, l=2, size=64):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, t, 3, size, size, generator=g), torch.randn(b, t, 2 * l, size, size, generator=g)


def _check_roles(model, out, name):
    """What every output must satisfy: roles name outputs, the fused role is there, heads follow roles."""
    assert isinstance(out, TwoStreamOutput)
    assert "fused" in out.roles and set(out.roles) <= set(ROLES)
    assert out.roles == model.output_roles()
    assert set(out) == set(out.roles.values())  # every output has a role, every role an output
    assert out.fused == out.roles["fused"]
    assert all(v.shape == (2, 4) for v in out.values())
    if "rgb" in out.roles:  # both towers kept: one classifier each, the fused score is their late fusion
        assert set(out.roles) == {"rgb", "flow", "fused"}
        assert out.heads == [out.roles["rgb"], out.roles["flow"]]
        torch.testing.assert_close(out[out.fused], late_fusion(out[out.roles["rgb"]], out[out.roles["flow"]],
                                                               model.rgb_weight))
    else:  # the motion tower truncated at the fusion point: the fused tower is the only classifier
        assert out.roles == {"fused": f"{name}-S"} and out.heads == [out.fused]


def test_the_methods_are_the_seven_of_the_papers():
    assert list_methods() == METHODS
    for removed in ("temporal", "cmmp_noal", "ccs_ce"):
        with pytest.raises(KeyError, match=f"unknown method '{removed}'"):
            get_method(removed)


@pytest.mark.parametrize("name", list_methods())
def test_every_method_names_its_outputs_by_role(name):
    torch.manual_seed(0)
    model = build_model(name, 4, new_length=2).eval()
    with torch.no_grad():
        out = model(*_inputs())
    _check_roles(model, out, name)
    if name == "late":
        assert out.roles == {"rgb": "rgb", "flow": "flow", "fused": "late"}
    elif name == "spatial":  # default keep_flow_tower=False
        assert out.roles == {"fused": "spatial-S"} and model.flow_head is None
    else:
        assert out.roles == {"rgb": f"{name}-R", "flow": f"{name}-F", "fused": f"{name}-S"}


@pytest.mark.parametrize("name, options, roles", [
    ("spatial", dict(keep_flow_tower=True), ("spatial-R", "spatial-F", "spatial-S")),
    ("spatial", dict(fusion="sum", position="stage1"), ("spatial-S",)),
    ("conv_fusion", dict(fusion="pool2d"), ("conv_fusion-R", "conv_fusion-F", "conv_fusion-S")),
    ("conv_fusion", dict(fusion="pool3d", spatial_fusion=None), ("conv_fusion-R", "conv_fusion-F", "conv_fusion-S")),
    ("cmmp", dict(messages="identity", fusion="sum"), ("cmmp-R", "cmmp-F", "cmmp-S")),
    ("ccs", dict(fusion=None), ("ccs-R", "ccs-F", "ccs-S")),
    ("cma", dict(fusion="nonlocal"), ("cma-R", "cma-F", "cma-S")),
    ("cma", dict(fusion=("nonlocal", "cma"), fusion_options=({"directions": "rgb"}, {})), ("cma-R", "cma-F", "cma-S")),
    ("nonlocal", dict(directions="rgb"), ("nonlocal-R", "nonlocal-F", "nonlocal-S")),
    ("late", dict(rgb_weight=0.25), ("rgb", "flow", "late")),
])
def test_variants_keep_the_methods_names(name, options, roles):
    """An option changes the network, never the names: the outputs are the method's (not its block's)."""
    torch.manual_seed(0)
    model = build_model(name, 4, new_length=2, **options).eval()
    with torch.no_grad():
        out = model(*_inputs())
    _check_roles(model, out, name)
    expected = dict(zip(("rgb", "flow", "fused"), roles)) if len(roles) == 3 else {"fused": roles[0]}
    assert out.roles == expected


def test_output_names():
    assert output_names("late", separate_streams=True) == {"rgb": "rgb", "flow": "flow", "fused": "late"}
    assert output_names("cma", separate_streams=False) == {"rgb": "cma-R", "flow": "cma-F", "fused": "cma-S"}
    assert output_names("spatial", separate_streams=False, flow_kept=False) == {"fused": "spatial-S"}


def test_an_output_refuses_roles_that_name_no_output_or_lack_the_fused_one():
    scores = {"a": torch.zeros(1, 2), "b": torch.zeros(1, 2)}
    out = TwoStreamOutput(scores, {"rgb": "a", "fused": "b"}, heads=["a"])
    assert out.roles == {"rgb": "a", "fused": "b"} and out.fused == "b" and out.heads == ["a"] and out.extras == {}
    for roles in ({"rgb": "a", "flow": "b"}, {"fused": "c"}, {"fused": "a", "audio": "b"}):
        with pytest.raises(ValueError, match="roles must map"):
            TwoStreamOutput(scores, roles)


# ---- one options vocabulary ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_methods())
def test_build_model_refuses_an_unknown_option_listing_the_valid_ones(name):
    valid = sorted(method_options(name))
    with pytest.raises(ValueError) as info:
        build_model(name, 4, new_length=2, not_an_option=1)
    message = str(info.value)
    assert f"method {name!r} has no option not_an_option" in message
    assert f"its options are: {', '.join(valid)}" in message
    assert {"backbone", "new_length", "dropout", "rgb_weight"} <= set(valid)


@pytest.mark.parametrize("name, old", [
    ("spatial", {"fusion_kwargs": {}}), ("conv_fusion", {"temporal": "pool2d"}),
    ("conv_fusion", {"temporal_kwargs": {}}), ("ccs", {"connection": False}), ("ccs", {"connection_kwargs": {}}),
    ("cma", {"block": "nonlocal"}), ("cma", {"block_kwargs": {}}), ("late", {"fused_name": "x"}),
    ("cma", {"branch_names": True}),
])
def test_the_old_option_names_are_refused(name, old):
    with pytest.raises(ValueError, match=f"has no option {next(iter(old))}; its options are: "):
        build_model(name, 4, new_length=2, **old)


def test_several_unknown_options_are_named_together():
    with pytest.raises(ValueError, match="method 'cma' has no options block, block_kwargs; its options are: backbone"):
        build_model("cma", 4, block="nonlocal", block_kwargs={})


@pytest.mark.parametrize("name, option, training", [("cmmp", "adversarial", {"adversarial", "hinge"}),
                                                     ("ccs", "ranking_losses", {"ranking_losses"})])
def test_training_options_are_listed_but_belong_to_run_method(name, option, training):
    assert method_options(name)[option].kind == "training" and method_options(name)[option].default is True
    assert {k for k, o in method_options(name).items() if o.kind == "training"} == training
    with pytest.raises(ValueError, match=f"\\['{option}'\\] is a training option of '{name}'"):
        build_model(name, 4, new_length=2, **{option: False})


def test_run_method_refuses_an_unknown_option_before_training():
    with pytest.raises(ValueError, match="method 'spatial' has no option fusion_kwargs; its options are: "):
        run_method("spatial", SyntheticTwoStream(4), None, 4, config=TrainConfig(epochs=1, progress=False),
                   fusion_kwargs={})


# ---- the fusion registry's provider ------------------------------------------------------------------
def _fresh(script: str) -> str:
    """Run ``script`` in a new interpreter (nothing of fusionkit imported yet); its stdout."""
    source = f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(script)
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_build_fusion_finds_the_papers_blocks_when_only_fusionkit_fusion_is_imported():
    out = _fresh("""
        import torch
        from fusionkit.fusion import FUSIONS, build_fusion
        assert "fusionkit.methods" not in sys.modules  # the core does not import upwards at import time
        block = build_fusion("conv", rgb_channels=4, flow_channels=4)  # reading the registry loads its provider
        assert "fusionkit.methods" in sys.modules
        rgb, flow = block(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3))
        assert rgb.shape == (2, 4, 3, 3) and flow.shape == (2, 4, 3, 3)
        print(type(block).__module__, type(block).__name__, block.registered_name)
        print(",".join(sorted(FUSIONS)))
    """).splitlines()
    assert out[0] == "fusionkit.methods.conv_fusion.spatial_blocks ConvFusion conv"
    assert {"sum", "max", "concat", "conv", "bilinear", "pool2d", "pool3d", "conv3d_pool3d", "cmmp", "ccs", "cma",
            "nonlocal"} <= set(out[1].split(","))


def test_a_students_block_registered_first_cannot_take_a_built_in_name():
    out = _fresh("""
        from fusionkit.fusion import FUSIONS, FusionBlock, build_fusion, register_fusion

        @register_fusion("student_sum")  # registering from outside the provider loads the built-ins first
        class StudentSum(FusionBlock):
            def fuse(self, rgb, flow):
                return rgb + flow, flow

        try:
            @register_fusion("conv")
            class Clash(FusionBlock):
                def fuse(self, rgb, flow):
                    return rgb, flow
        except ValueError as error:
            print(error)
        print(type(build_fusion("conv", rgb_channels=2, flow_channels=2)).__name__,
              type(build_fusion("student_sum", rgb_channels=2, flow_channels=2)).__name__)
    """).splitlines()
    assert out == ["a fusion block named 'conv' is already registered ('ConvFusion')", "ConvFusion StudentSum"]
