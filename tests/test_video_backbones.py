"""3D backbones for 3D-CMA (Chi et al. §5.6): torchvision's r3d_18 / r2plus1d_18 cut into stages,
and the two-stream network running them on clips."""
import pytest
import torch
import torchvision

from fusionkit.models.backbones import get_backbone, pretrained_weights_file
from fusionkit.methods import build_model
from tests.test_backbones import _randomise_bn_buffers, _save_weights, hub_cache  # noqa: F401  (fixture)

FLOW_CHANNELS = 10


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_stages_match_torchvision_and_flow_stem_is_cross_modality_initialised(name, hub_cache):  # noqa: F811
    torch.manual_seed(0)
    reference = getattr(torchvision.models.video, name)().eval()
    _randomise_bn_buffers(reference)
    _save_weights(reference.state_dict(), name, hub_cache)
    rgb = get_backbone(name, pretrained=True).eval()
    assert rgb.dims == 3 and rgb.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        outputs = rgb.forward_stages(x)
        y = reference.stem(x)
        torch.testing.assert_close(outputs["stem"], y, rtol=0, atol=0)
        for i in range(1, 5):
            y = getattr(reference, f"layer{i}")(y)
            torch.testing.assert_close(outputs[f"stage{i}"], y, rtol=0, atol=0)
            assert y.shape[1] == rgb.stage_channels[f"stage{i}"]
            assert 32 // y.shape[-1] == rgb.stage_strides[f"stage{i}"]
        torch.testing.assert_close(reference.fc(reference.avgpool(rgb(x)).flatten(1)), reference(x))
    flow = get_backbone(name, in_channels=FLOW_CHANNELS, pretrained=True)
    w = reference.stem[0].weight  # [O, 3, kt, kh, kw]
    torch.testing.assert_close(flow.stages["stem"][0].weight, w.mean(1, keepdim=True).repeat(1, FLOW_CHANNELS, 1, 1, 1))


def test_a_3d_backbone_wants_clips():
    with pytest.raises(ValueError, match=r"\[N, 3, T, H, W\] \(a clip\)"):
        get_backbone("r3d_18")(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("name", ["r3d_18", "r2plus1d_18"])
def test_offline_request_for_kinetics_weights_says_what_to_put_where(name, hub_cache):  # noqa: F811
    path = pretrained_weights_file(name)
    with pytest.raises(RuntimeError) as info:
        get_backbone(name, pretrained=True)
    assert path.name in str(info.value) and str(hub_cache) in str(info.value)


def test_one_3d_cma_block_on_a_3d_backbone():
    """§5.6: CMA blocks whose inputs are 3D maps. One block after the first residual block of res4
    (stage3.0): queries and keys range over time and space; identity at init, so the network first
    predicts exactly as two separate 3D towers."""
    torch.manual_seed(0)
    cma = build_model("cma", 5, backbone="r2plus1d_18", new_length=2, positions=["stage3.0"]).eval()
    late = build_model("late", 5, backbone="r2plus1d_18", new_length=2).eval()
    late.load_state_dict({k: v for k, v in cma.state_dict().items() if not k.startswith("fusion_blocks")})
    rgb, flow = torch.randn(2, 4, 3, 32, 32), torch.randn(2, 4, 4, 32, 32)  # [B, T, C, H, W] as the dataset gives
    unit = cma.fusion_blocks["stage3:0"].rgb_attention
    unit.keep_attention = True
    with torch.no_grad():
        a, b = cma(rgb, flow), late(rgb, flow)
    torch.testing.assert_close(a["cma-R"], b["rgb"], rtol=0, atol=0)
    torch.testing.assert_close(a["cma-F"], b["flow"], rtol=0, atol=0)
    assert a["cma-R"].shape == (2, 5)
    # res4 of a 4-frame 32x32 clip is [256, 1, 4, 4] (T halves at stage2 and stage3); keys are pooled 2x2 in space
    assert unit.last_query_shape == (1, 4, 4) and unit.last_key_shape == (1, 2, 2)
    assert unit.last_attention.shape == (2, 16, 4)
    with torch.no_grad():  # after training moves BN's gamma the block mixes in the other stream
        unit.bn.weight.fill_(1.0)
        assert not torch.equal(cma(rgb, flow)["cma-R"], b["rgb"])


@pytest.mark.parametrize("fusion", ["conv3d_pool3d", "pool3d", "pool2d"])
def test_temporal_fusion_is_refused_on_3d_towers(fusion):
    with pytest.raises(ValueError, match="already see the T snippets as a clip"):
        build_model("conv_fusion", 4, backbone="r3d_18", new_length=2, fusion=fusion)
