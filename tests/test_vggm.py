"""VGG-M-2048 (fusionkit.models.vggm, fusionkit.methods.conv_fusion.parameter_counts): stage shapes at 224 x 224, the head, the registry, the
pretrained error, and the layer and parameter counts of Feichtenhofer et al.'s Tables 1 and 2,
checked against sums hand-computed here from the layer shapes and against the paper's numbers."""
from __future__ import annotations

import pytest
import torch

from fusionkit.models import StagedBackbone, get_backbone, list_backbones
from fusionkit.methods.conv_fusion.parameter_counts import (MISMATCHED_ROWS, PAPER_COUNTS, TOLERANCE,
                                                            format_parameter_table, fusion_parameter_counts)
from fusionkit.models.vggm import RELU_STAGE, VGGMHead, vggm_feature_sizes


# --- parameters hand-computed from the layer shapes (independent of the module) -----------------
def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def fc(cin: int, cout: int) -> int:
    return cin * cout + cout


def conv_stack(cin: int) -> list[int]:
    """conv1 .. conv5 of VGG-M-2048 for cin input channels."""
    return [conv(7, cin, 96), conv(5, 96, 256), conv(3, 256, 512), conv(3, 512, 512), conv(3, 512, 512)]


K = 101                       # UCF-101
RGB = sum(conv_stack(3))      # 6,528,640
FLOW = sum(conv_stack(20))    # 6,608,608: L = 10 flow fields, 2L = 20 channels
FC6, FC7, FC8 = fc(6 * 6 * 512, 4096), fc(4096, 2048), fc(2048, K)  # pool5 is 6 x 6 x 512 at 224
HEAD = FC6 + FC7 + FC8
FUSE512 = conv(1, 1024, 512)  # Eq. (4): 1 x 1 x 2D x D filters + D biases, D = 512

EXPECTED = {  # name: (layers, parameters)
    "T1 sum@softmax": (16, RGB + FLOW + 2 * HEAD),
    "T1 max@ReLU5": (13, RGB + FLOW + HEAD),
    "T1 concat@ReLU5": (13, RGB + FLOW + fc(6 * 6 * 1024, 4096) + FC7 + FC8),
    "T1 bilinear@ReLU5": (10, RGB + FLOW),
    "T1 sum@ReLU5": (13, RGB + FLOW + HEAD),
    "T1 conv@ReLU5": (14, RGB + FLOW + FUSE512 + HEAD),
    "T2 conv@ReLU2": (11, RGB + sum(conv_stack(20)[:2]) + conv(1, 512, 256) + HEAD),
    "T2 conv@ReLU3": (12, RGB + sum(conv_stack(20)[:3]) + FUSE512 + HEAD),
    "T2 conv@ReLU4": (13, RGB + sum(conv_stack(20)[:4]) + FUSE512 + HEAD),
    "T2 conv@ReLU5": (14, RGB + FLOW + FUSE512 + HEAD),
    "T2 conv@ReLU5+FC8": (17, RGB + FLOW + 2 * HEAD + FUSE512),
    "T2 conv@ReLU3+ReLU5+FC6": (17, RGB + FLOW + 2 * FC6 + 2 * FUSE512 + conv(1, 8192, 4096) + FC7 + FC8),
}
# Rows where our exact count is NOT within 0.5% of the paper (explained in fusion_parameter_counts):
EXPECTED_MISMATCHES = {"T1 bilinear@ReLU5", "T2 conv@ReLU3+ReLU5+FC6"}


@pytest.fixture(scope="module")
def counts() -> dict[str, dict]:
    return fusion_parameter_counts()


# --- the network ---------------------------------------------------------------------------------
def test_stage_shapes_at_224():
    """ReLU1..ReLU5 at 224 x 224 for a 20-channel flow tower; conv5 is 13 x 13 x 512 (Sec. 3.5)."""
    torch.manual_seed(0)
    net = get_backbone("vggm2048", in_channels=20)
    with torch.no_grad():
        outputs = net.forward_stages(torch.randn(1, 20, 224, 224))
    assert {k: tuple(v.shape[1:]) for k, v in outputs.items()} == {
        "stem": (96, 109, 109), "stage1": (256, 26, 26), "stage2": (512, 13, 13),
        "stage3": (512, 13, 13), "stage4": (512, 13, 13)}
    assert [RELU_STAGE[k] for k in range(1, 6)] == net.stage_names
    assert [list(net.stages[RELU_STAGE[k]].named_children())[-1][0] for k in range(1, 6)] == \
        [f"relu{k}" for k in range(1, 6)]
    assert net.stage_channels == {"stem": 96, "stage1": 256, "stage2": 512, "stage3": 512, "stage4": 512}
    assert net.stage_strides["stage4"] == 16
    with torch.device("meta"):
        assert VGGMHead(512, K).layers.fc6.in_features == 6 * 6 * 512
    head = VGGMHead(512, K, fc6=64, fc7=32, dropout=0.85).eval()  # narrow fc layers: a fast forward
    with torch.no_grad():
        assert head(outputs["stage4"]).shape == (1, K)


def test_feature_sizes_and_small_input():
    assert vggm_feature_sizes(224) == {"conv1": 109, "pool1": 54, "conv2": 26, "pool2": 13,
                                       "conv3": 13, "conv4": 13, "conv5": 13, "pool5": 6}
    net, head = get_backbone("vggm2048"), VGGMHead(512, 4, input_size=64).eval()
    with torch.no_grad():
        feat = net(torch.randn(2, 3, 64, 64))  # the puzzles' size: conv5 3 x 3, pool5 1 x 1
        assert feat.shape == (2, 512, vggm_feature_sizes(64)["conv5"], 3)
        assert head(feat).shape == (2, 4)
        with torch.device("meta"):
            head224 = VGGMHead(512, 4)
        with pytest.raises(ValueError, match="input_size"):
            head224(feat)  # a head built for 224 x 224 on a 64 x 64 tower: caught before any compute


def test_one_tower_is_imagenet_vgg_m_2048():
    """One tower and its head for ImageNet's 1000 classes: 92,469,864 parameters."""
    expected = RGB + FC6 + FC7 + fc(2048, 1000)
    assert expected == 92_469_864
    with torch.device("meta"):
        tower, head = get_backbone("vggm2048"), VGGMHead(512, 1000)
    assert [m.weight.shape[1] for m in tower.modules() if isinstance(m, torch.nn.Conv2d)][0] == 3
    assert sum(p.numel() for p in tower.parameters()) + sum(p.numel() for p in head.parameters()) == expected


def test_registry_and_flow_input():
    assert "vggm2048" in list_backbones()
    net = get_backbone("vggm2048", in_channels=20)
    assert isinstance(net, StagedBackbone) and net.in_channels == 20 and net.out_channels == 512
    assert net.stages["stem"].conv1.weight.shape == (96, 20, 7, 7)
    with pytest.raises(ValueError, match="2L"):
        net(torch.zeros(1, 3, 64, 64))


def test_pretrained_raises_a_clear_error():
    with pytest.raises(NotImplementedError, match="imagenet-vgg-m-2048.mat") as err:
        get_backbone("vggm2048", in_channels=20, pretrained=True)
    assert "torchvision" in str(err.value) and "pretrained=False" in str(err.value)


# --- Tables 1 and 2 ------------------------------------------------------------------------------
def test_counts_equal_hand_computed_sums(counts):
    assert list(counts) == list(PAPER_COUNTS) == list(EXPECTED)
    assert {k: (r["layers"], r["parameters"]) for k, r in counts.items()} == EXPECTED
    assert counts["T1 bilinear@ReLU5"]["svm_parameters"] == fc(512 * 512, K)
    assert counts["T2 conv@ReLU2"]["fusion_parameters"] == conv(1, 512, 256)


def test_counts_match_the_paper(counts):
    assert set(MISMATCHED_ROWS) == EXPECTED_MISMATCHES
    for name, row in counts.items():
        assert row["layers"] == row["paper_layers"] == PAPER_COUNTS[name][2], name
        assert row["matches"] == (name not in EXPECTED_MISMATCHES), (name, row["rel_diff"])
        if name not in EXPECTED_MISMATCHES:
            assert abs(row["rel_diff"]) <= TOLERANCE == 0.005, (name, row["rel_diff"])


def test_documented_explanations_of_the_mismatches(counts):
    # Bilinear: the paper's 6.61M is one conv stack, the flow tower's (2L = 20 inputs); both are 13.14M.
    assert round(FLOW / 1e6, 2) == PAPER_COUNTS["T1 bilinear@ReLU5"][3] == 6.61
    assert round(RGB / 1e6, 2) != 6.61 and counts["T1 bilinear@ReLU5"]["parameters"] == RGB + FLOW
    # The paper's conv fusion adds 0.26-0.27M over sum fusion: D*D + D, half of Eq. (4)'s 2D*D + D.
    for conv_row, sum_row in [(97.58, 97.31), (97.57, 97.31), (181.68, 181.42)]:
        assert abs((conv_row - sum_row) * 1e6 - (512 * 512 + 512)) < 0.011e6
    assert FUSE512 == 2 * 512 * 512 + 512
    # Counted so, ReLU3 + ReLU5 + FC6 reproduces the paper's 190.06M.
    row = counts["T2 conv@ReLU3+ReLU5+FC6"]
    assert row["parameters_paper_convention"] == row["parameters"] - 2 * 512 * 512 - 4096 * 4096
    assert abs(row["rel_diff_paper_convention"]) < 0.001


def test_hypotheses_on_the_input_channels(counts):
    """flow_channels=3 is further from the paper; both conv1 with 20 inputs + D*D + D fits Table 1."""
    rgb3 = fusion_parameter_counts(flow_channels=3)
    assert abs(rgb3["T1 sum@softmax"]["rel_diff"]) > abs(counts["T1 sum@softmax"]["rel_diff"])
    both20 = fusion_parameter_counts(rgb_channels=20)
    for name in ["T1 sum@softmax", "T1 max@ReLU5", "T1 concat@ReLU5", "T1 sum@ReLU5", "T1 conv@ReLU5",
                 "T2 conv@ReLU5", "T2 conv@ReLU5+FC8"]:
        row = both20[name]
        assert abs(row["parameters_paper_convention"] - row["paper_parameters"] * 1e6) < 0.01e6, name


def test_format_parameter_table(counts):
    table = format_parameter_table(counts)
    assert len(table.splitlines()) == len(counts) + 3
    assert "T1 sum@softmax" in table and "181.34" in table and "181.42" in table and "+SVM 26.48" in table
    assert table.count("(no match)") == len(EXPECTED_MISMATCHES)
