"""Staged backbones: stage shapes and channels, equality with torchvision's own networks, the
registry, cross-modality initialisation, and pretrained weights from torch.hub's cache. No test
touches the network: downloads are patched to fail as on an offline machine."""
from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck

from fusionkit.models import (
    BACKBONES,
    PRETRAINED_WEIGHTS,
    StagedBackbone,
    cross_modality_init,
    get_backbone,
    list_backbones,
    pretrained_weights_file,
    register_backbone,
)

SIZE = {"tiny": 64, "resnet18": 32, "resnet50": 32, "vgg16": 32}  # small inputs keep the CPU tests fast
FLOW_CHANNELS = 10  # 2L for L = 5 flow fields, as in TSN and CMA


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """torch.hub's cache moved to an empty folder, and every download failing as offline.
    Returns the folder the weights files go in."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert Path(torch.hub.get_dir()) == tmp_path / "torch" / "hub", "torch.hub.set_dir was called elsewhere"

    def offline(url, *args, **kwargs):
        raise URLError(f"[Errno 101] Network is unreachable (test: no download of {url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _randomise_bn_buffers(model: torch.nn.Module) -> None:
    """Non-default running statistics, so that a test sees whether they were loaded."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)


def _save_weights(state: dict[str, torch.Tensor], name: str, checkpoints: Path) -> None:
    """Put ``state`` where a user would put the downloaded weights file of ``name``."""
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state, checkpoints / pretrained_weights_file(name).name)


# --- structure: every backbone, RGB and flow towers ---------------------------------------------
@pytest.mark.parametrize("in_channels", [3, FLOW_CHANNELS])
@pytest.mark.parametrize("name", ["tiny", "resnet18", "resnet50", "vgg16"])
def test_stages_shapes_and_composition(name, in_channels):
    torch.manual_seed(0)
    backbone = get_backbone(name, in_channels=in_channels).eval()
    size = SIZE[name]
    x = torch.randn(2, in_channels, size, size)
    assert backbone.in_channels == in_channels
    assert backbone.stage_names == ["stem"] + [f"stage{i}" for i in range(1, len(backbone.stages))]
    assert list(backbone.stages) == backbone.stage_names
    with torch.no_grad():
        outputs = backbone.forward_stages(x)
        assert list(outputs) == backbone.stage_names
        for stage, out in outputs.items():
            stride = backbone.stage_strides[stage]
            assert out.shape == (2, backbone.stage_channels[stage], size // stride, size // stride), stage
        y = x
        for stage in backbone.stage_names:  # stage by stage, as the two-stream network runs it
            y = backbone.run_stage(stage, y)
        torch.testing.assert_close(backbone(x), y, rtol=0, atol=0)
        torch.testing.assert_close(outputs[backbone.stage_names[-1]], y, rtol=0, atol=0)
    assert backbone.out_channels == backbone.stage_channels[backbone.stage_names[-1]]


@pytest.mark.parametrize("name", ["tiny", "resnet18", "vgg16"])
def test_gradient_reaches_every_parameter(name):
    torch.manual_seed(0)
    backbone = get_backbone(name, in_channels=FLOW_CHANNELS)
    backbone(torch.randn(2, FLOW_CHANNELS, SIZE[name], SIZE[name])).square().mean().backward()
    for pname, p in backbone.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_wrong_input_channels_are_explained():
    backbone = get_backbone("tiny", in_channels=FLOW_CHANNELS)
    with pytest.raises(ValueError, match=r"\[N, 10, H, W\].*\(1, 3, 64, 64\).*2L"):
        backbone(torch.randn(1, 3, 64, 64))
    with pytest.raises(KeyError, match="stage9.*stem"):
        backbone.run_stage("stage9", torch.randn(1, 16, 64, 64))


def test_tiny_is_small_and_ends_at_8x8():
    backbone = get_backbone("tiny")
    assert sum(p.numel() for p in backbone.parameters()) < 200_000
    assert backbone(torch.randn(1, 3, 64, 64)).shape == (1, 96, 8, 8)
    narrow = get_backbone("tiny", widths=(8, 16, 24, 32))
    assert narrow.stage_names == ["stem", "stage1", "stage2", "stage3"]
    assert narrow.stage_channels == {"stem": 8, "stage1": 16, "stage2": 24, "stage3": 32}
    assert narrow(torch.randn(1, 3, 64, 64)).shape == (1, 32, 4, 4)


def test_tiny_has_no_pretrained_weights():
    with pytest.raises(ValueError, match="'tiny'.*no pretrained weights"):
        get_backbone("tiny", pretrained=True)
    with pytest.raises(ValueError, match="no pretrained weights"):
        pretrained_weights_file("tiny")


@pytest.mark.parametrize("name, block, depths", [("resnet18", BasicBlock, [2, 2, 2, 2]),
                                                   ("resnet50", Bottleneck, [3, 4, 6, 3])])
def test_resnet_stages_are_sequences_of_residual_blocks(name, block, depths):
    backbone = get_backbone(name)
    assert [n for n, _ in backbone.stages["stem"].named_children()] == ["conv1", "bn1", "relu", "maxpool"]
    for i, depth in enumerate(depths, 1):
        stage = backbone.stages[f"stage{i}"]
        assert isinstance(stage, torch.nn.Sequential) and len(stage) == depth
        assert all(type(b) is block for b in stage)


# --- registry -----------------------------------------------------------------------------------
def test_registry():
    assert {"tiny", "resnet18", "resnet50", "vgg16"} <= set(list_backbones())
    with pytest.raises(KeyError, match=r"'resnet1000'.*resnet18.*tiny.*vgg16"):
        get_backbone("resnet1000")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("tiny")(lambda in_channels=3, pretrained=False: None)


def test_a_students_backbone_plugs_in():
    @register_backbone("two_convs")
    def two_convs(in_channels: int = 3, pretrained: bool = False, width: int = 4) -> StagedBackbone:
        stages = [torch.nn.Conv2d(in_channels, width, 3, padding=1), torch.nn.Conv2d(width, 2 * width, 3, 2, 1)]
        return StagedBackbone(stages, [width, 2 * width], [1, 2], in_channels)

    try:
        backbone = get_backbone("two_convs", in_channels=FLOW_CHANNELS, width=6)
        assert "two_convs" in list_backbones()
        assert backbone.stage_channels == {"stem": 6, "stage1": 12}
        assert backbone(torch.randn(1, FLOW_CHANNELS, 16, 16)).shape == (1, 12, 8, 8)
    finally:
        BACKBONES.pop("two_convs")


# --- equality with torchvision, through pretrained loading -------------------------------------
@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_matches_torchvision_and_flow_tower_is_cross_modality_initialised(name, hub_cache):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)().eval()
    _randomise_bn_buffers(reference)
    _save_weights(reference.state_dict(), name, hub_cache)

    rgb = get_backbone(name, pretrained=True).eval()
    # the same tensors, in torchvision's order (the classifier fc is not part of the backbone)
    expected = [v for k, v in reference.state_dict().items() if not k.startswith("fc.")]
    assert len(rgb.state_dict()) == len(expected)
    for ours, theirs in zip(rgb.state_dict().values(), expected):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)

    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outputs = rgb.forward_stages(x)
        y = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        torch.testing.assert_close(outputs["stem"], y)
        for i in range(1, 5):
            y = getattr(reference, f"layer{i}")(y)
            torch.testing.assert_close(outputs[f"stage{i}"], y)
        torch.testing.assert_close(reference.fc(torch.flatten(reference.avgpool(rgb(x)), 1)), reference(x))

    flow = get_backbone(name, in_channels=FLOW_CHANNELS, pretrained=True)
    w = reference.conv1.weight
    by_hand = w.mean(dim=1, keepdim=True).repeat(1, FLOW_CHANNELS, 1, 1)
    torch.testing.assert_close(flow.stages["stem"].conv1.weight, by_hand)
    rest = [(k, v) for k, v in flow.state_dict().items() if k != "stages.stem.conv1.weight"]
    assert len(rest) == len(expected) - 1
    for (key, ours), theirs in zip(rest, expected[1:]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=key)


@pytest.fixture(scope="module")
def torchvision_vgg16_features() -> torch.nn.Sequential:
    torch.manual_seed(0)
    features = torchvision.models.vgg16().features.eval()  # builds the 124M-parameter classifier too (~3 s)
    with torch.no_grad():
        for m in features:
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_()  # torchvision initialises biases to zero; a test must see them loaded
    return features


def test_vgg16_matches_torchvision_features_up_to_relu5_3(hub_cache, torchvision_vgg16_features):
    reference = torchvision_vgg16_features
    # a weights file holds the classifier too; the backbone ignores it
    state = {f"features.{k}": v for k, v in reference.state_dict().items()} | {"classifier.0.weight": torch.zeros(1)}
    _save_weights(state, "vgg16", hub_cache)

    rgb = get_backbone("vgg16", pretrained=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        outputs = rgb.forward_stages(x)
        # each stage ends at a block's last ReLU: features[3] relu1_2, [8] relu2_2, ..., [29] relu5_3
        for stage, end in zip(rgb.stage_names, [4, 9, 16, 23, 30]):
            torch.testing.assert_close(outputs[stage], reference[:end](x), msg=stage)
        torch.testing.assert_close(reference[30](rgb(x)), reference(x))  # pool5 is left to the head
    assert [n for n, _ in rgb.stages["stage4"].named_children()][-1] == "relu5_3"

    flow = get_backbone("vgg16", in_channels=FLOW_CHANNELS, pretrained=True)
    w, b = reference[0].weight, reference[0].bias
    by_hand = w.mean(dim=1, keepdim=True).repeat(1, FLOW_CHANNELS, 1, 1)
    torch.testing.assert_close(flow.stages["stem"].conv1_1.weight, by_hand)
    torch.testing.assert_close(flow.stages["stem"].conv1_1.bias, b, rtol=0, atol=0)
    torch.testing.assert_close(flow.stages["stage4"].conv5_3.weight, reference[28].weight, rtol=0, atol=0)


# --- cross-modality initialisation and offline behaviour ----------------------------------------
def test_cross_modality_init():
    w = torch.randn(8, 3, 7, 7)
    out = cross_modality_init(w, FLOW_CHANNELS)
    assert out.shape == (8, FLOW_CHANNELS, 7, 7)
    for c in range(FLOW_CHANNELS):  # every input channel gets the mean of the R, G and B filters
        torch.testing.assert_close(out[:, c], (w[:, 0] + w[:, 1] + w[:, 2]) / 3)
    with pytest.raises(ValueError):
        cross_modality_init(w, 0)
    with pytest.raises(ValueError):
        cross_modality_init(w[0], 2)


def test_flow_tower_without_pretraining_is_not_replicated():
    conv = get_backbone("resnet18", in_channels=FLOW_CHANNELS).stages["stem"].conv1
    assert conv.weight.shape == (64, FLOW_CHANNELS, 7, 7)
    assert not torch.equal(conv.weight[:, 0], conv.weight[:, 1])  # fresh random filters per channel


def test_weights_file_is_in_torch_hub_cache(hub_cache):
    assert pretrained_weights_file("resnet18") == hub_cache / "resnet18-f37072fd.pth"
    for name, weights in PRETRAINED_WEIGHTS.items():
        assert weights.url.endswith("/" + pretrained_weights_file(name).name)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "vgg16"])
def test_offline_pretrained_request_says_what_to_put_where(name, hub_cache):
    path = pretrained_weights_file(name)
    with pytest.raises(RuntimeError) as info:
        get_backbone(name, in_channels=FLOW_CHANNELS, pretrained=True)
    message = str(info.value)
    assert path.name in message and str(hub_cache) in message and PRETRAINED_WEIGHTS[name].url in message
    assert "Network is unreachable" in message
    assert not path.exists()  # no half-written file left in the cache
