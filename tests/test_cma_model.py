"""The CMA network (Chi et al. 2019): the paper's insertion preset, -R/-F/-S outputs, Table 2's count."""
import torch

from fusionkit.models.backbones import get_backbone
from fusionkit.methods import build_model
from fusionkit.methods.cma import cma_positions, rgb_prediction_parameters
from fusionkit.models.two_stream import late_fusion


def test_resnet50_preset_is_five_blocks_every_other_residual_block_of_res3_and_res4():
    assert cma_positions(get_backbone("resnet50")) == ["stage2.1", "stage2.3", "stage3.1", "stage3.3", "stage3.5"]


def test_outputs_are_the_branches_and_their_five_to_one_sum():
    torch.manual_seed(0)
    model = build_model("cma", 4, new_length=2).eval()
    out = model(torch.randn(2, 3, 3, 64, 64), torch.randn(2, 3, 4, 64, 64))
    assert out.roles == {"rgb": "cma-R", "flow": "cma-F", "fused": "cma-S"}
    assert out.heads == ["cma-R", "cma-F"] and out.fused == "cma-S"
    torch.testing.assert_close(out["cma-S"], late_fusion(out["cma-R"], out["cma-F"], 5 / 6))


def test_cma_network_is_the_two_towers_at_init():
    """Every CMA block starts as the identity, so the network first predicts as two separate towers."""
    torch.manual_seed(0)
    cma = build_model("cma", 4, new_length=2).eval()
    late = build_model("late", 4, new_length=2).eval()
    late.load_state_dict({k: v for k, v in cma.state_dict().items() if not k.startswith("fusion_blocks")})
    inputs = (torch.randn(2, 3, 3, 64, 64), torch.randn(2, 3, 4, 64, 64))
    a, b = cma(*inputs), late(*inputs)
    torch.testing.assert_close(a["cma-R"], b["rgb"], rtol=0, atol=0)
    torch.testing.assert_close(a["cma-F"], b["flow"], rtol=0, atol=0)


def test_rgb_prediction_parameters_relative_to_one_resnet50():
    """Table 2: CMA_iter1-R uses 1.8x the parameters of a ResNet-50 (Kinetics, 400 classes); our count
    of what the -R prediction depends on gives 1.87x."""
    with torch.device("meta"):
        model = build_model("cma", 400, backbone="resnet50", new_length=5)
        single = get_backbone("resnet50")
        head = torch.nn.Linear(2048, 400)
    baseline = sum(p.numel() for p in single.parameters()) + sum(p.numel() for p in head.parameters())
    ratio = rgb_prediction_parameters(model) / baseline
    assert 1.75 < ratio < 1.95, ratio
