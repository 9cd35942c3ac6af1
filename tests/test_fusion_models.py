"""Fusion inside the two-stream network: spatial and conv_fusion (temporal fusion) models, truncation, fine-tuning."""
import pytest
import torch

from fusionkit.methods.recipe import initialise_from
from fusionkit.methods import run_method
from fusionkit.models.two_stream import TwoStreamNet, late_fusion
from fusionkit.methods import build_model
from fusionkit.training.trainer import TrainConfig
from tests.helpers import SyntheticTwoStream


def _inputs(b=2, t=3, l=2, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, t, 3, size, size, generator=g), torch.randn(b, t, 2 * l, size, size, generator=g)


def _build(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model(name, 4, new_length=2, head_hidden=16, **kwargs).eval()


def test_identity_initialised_conv_fusion_equals_sum_fusion_in_the_network():
    conv = _build("spatial", fusion="conv", fusion_options={"init": "identity"})
    summed = _build("spatial", fusion="sum")
    assert type(conv.block_at("stage2")).__name__ == "ConvFusion" and type(summed.block_at("stage2")).__name__ == "SumFusion"
    initialise_from(summed, conv)
    torch.testing.assert_close(conv(*_inputs())["spatial-S"], summed(*_inputs())["spatial-S"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("fusion", ["sum", "max", "concat", "conv", "bilinear"])
def test_spatial_fusion_at_the_last_stage_truncates_the_motion_tower(fusion):
    model = _build("spatial", fusion=fusion)
    out = model(*_inputs())
    # the truncated motion tower has no prediction of its own: only the fused role remains
    assert out.roles == {"fused": "spatial-S"} == model.output_roles()
    assert set(out) == {"spatial-S"} and out.heads == ["spatial-S"] and out.fused == "spatial-S"
    assert model.flow_head is None
    out["spatial-S"].sum().backward()
    # gradients reach both towers below the fusion point
    assert model.rgb_tower.stages["stem"][0].conv.weight.grad.abs().sum() > 0
    assert model.flow_tower.stages["stem"][0].conv.weight.grad.abs().sum() > 0


def test_keeping_the_motion_tower_adds_its_loss_and_the_averaged_prediction():
    model = _build("spatial", fusion="sum", keep_flow_tower=True)
    out = model(*_inputs())
    assert out.roles == {"rgb": "spatial-R", "flow": "spatial-F", "fused": "spatial-S"}
    assert out.heads == ["spatial-R", "spatial-F"] and out.fused == "spatial-S"
    torch.testing.assert_close(out["spatial-S"], late_fusion(out["spatial-R"], out["spatial-F"], 0.5))


def test_fusion_at_an_earlier_stage_feeds_the_rest_of_the_appearance_tower():
    model = _build("spatial", fusion="conv", position="stage1")
    out = model(*_inputs())
    assert set(out) == {"spatial-S"}
    out["spatial-S"].sum().backward()
    # the motion tower stops at the fusion point: its later stages take no part
    assert model.flow_tower.stages["stage2"][0].conv.weight.grad is None
    assert model.rgb_tower.stages["stage2"][0].conv.weight.grad.abs().sum() > 0


def test_blocks_that_change_channels_must_sit_at_the_last_stage():
    with pytest.raises(ValueError, match="changes the channels"):
        _build("spatial", fusion="concat", position="stage1")


def test_truncation_needs_a_single_spatial_fusion():
    from fusionkit.fusion import build_fusion

    with pytest.raises(ValueError, match="truncates the motion tower"):
        TwoStreamNet(4, new_length=2, keep_flow_tower=False,
                     temporal_fusion=build_fusion("conv3d_pool3d", rgb_channels=96, flow_channels=96))


def test_2d_pooling_forgets_the_order_of_segments_and_3d_conv_fusion_does_not():
    rgb, flow = _inputs(t=3)
    reverse = (rgb.flip(1), flow.flip(1))
    pool2d = _build("conv_fusion", fusion="pool2d")
    assert type(pool2d.temporal_fusion).__name__ == "TemporalPool2D"
    torch.testing.assert_close(pool2d(*reverse)["conv_fusion-R"], pool2d(rgb, flow)["conv_fusion-R"], rtol=1e-5, atol=1e-5)
    conv3d = _build("conv_fusion", fusion="conv3d_pool3d", fusion_options={"init": "random"})
    assert type(conv3d.temporal_fusion).__name__ == "Conv3DFusion"
    assert not torch.allclose(conv3d(*reverse)["conv_fusion-R"], conv3d(rgb, flow)["conv_fusion-R"], atol=1e-4)


def test_conv_fusion_is_the_papers_architecture():
    model = _build("conv_fusion")
    out = model(*_inputs())
    assert out.roles == {"rgb": "conv_fusion-R", "flow": "conv_fusion-F", "fused": "conv_fusion-S"}
    assert out.heads == ["conv_fusion-R", "conv_fusion-F"] and out.fused == "conv_fusion-S"
    assert type(model.temporal_fusion).__name__ == "Conv3DFusion"


def test_freezing_below_the_fusion_point_trains_only_what_follows():
    model = _build("spatial", fusion="conv", position="stage1")
    frozen = model.freeze_below_fusion()
    assert frozen == ["stage1", "stem"]
    model.train()
    assert not model.rgb_tower.stages["stem"].training and model.rgb_tower.stages["stage2"].training
    bn = model.rgb_tower.stages["stem"][0].bn
    running = bn.running_mean.clone()
    out = model(*_inputs())
    out["spatial-S"].sum().backward()
    assert bn.running_mean.equal(running)  # frozen BatchNorm keeps its statistics
    assert model.rgb_tower.stages["stem"][0].conv.weight.grad is None
    assert model.fusion_blocks["stage1"].weight.grad is not None
    assert model.rgb_tower.stages["stage2"][0].conv.weight.grad is not None


def test_fine_tuning_starts_from_separately_trained_streams():
    data = SyntheticTwoStream(16, size=32)
    cfg = TrainConfig(epochs=1, batch_size=8, optimizer="adamw", lr=1e-3, progress=False)
    late, _, _ = run_method("late", data, None, 4, config=cfg, head_hidden=16)
    model, _, _ = run_method("spatial", data, None, 4, config=cfg, init_from=late, finetune="above_fusion",
                             head_hidden=16, fusion="conv", position="stage1")
    # frozen layers are exactly the pretrained ones; layers above the fusion point have moved on
    torch.testing.assert_close(model.rgb_tower.stages["stem"][0].conv.weight, late.rgb_tower.stages["stem"][0].conv.weight)
    torch.testing.assert_close(model.flow_tower.stages["stage1"][1].conv.weight,
                               late.flow_tower.stages["stage1"][1].conv.weight)
    assert not torch.allclose(model.rgb_tower.stages["stage2"][0].conv.weight, late.rgb_tower.stages["stage2"][0].conv.weight)
    with pytest.raises(ValueError, match="finetune"):
        run_method("spatial", data, None, 4, config=cfg, init_from=late, finetune="some", head_hidden=16)
