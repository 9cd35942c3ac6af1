"""The two-stream network, late fusion, consensus, and the fusion-block contract."""
import pytest
import torch

from fusionkit.fusion import FUSIONS, FusionBlock, build_fusion, register_fusion
from fusionkit.models.two_stream import TwoStreamNet, late_fusion
from fusionkit.methods import build_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _inputs(b=2, t=3, l=2, size=32):
    return torch.randn(b, t, 3, size, size), torch.randn(b, t, 2 * l, size, size)


def test_outputs_are_named_per_stream_and_fused():
    model = build_model("late", 5, backbone="tiny", new_length=2).eval()
    out = model(*_inputs())
    assert set(out) == {"rgb", "flow", "late"} and out.fused == "late"
    assert out.roles == {"rgb": "rgb", "flow": "flow", "fused": "late"} and out.heads == ["rgb", "flow"]
    assert all(v.shape == (2, 5) for v in out.values())


def test_late_fusion_is_the_weighted_average_of_softmax_scores():
    r, f = torch.randn(4, 6), torch.randn(4, 6)
    expected = 0.3 * torch.softmax(r, -1) + 0.7 * torch.softmax(f, -1)
    torch.testing.assert_close(late_fusion(r, f, 0.3).exp(), expected)
    # log-probabilities: softmax of them gives them back, so cross-entropy and argmax apply directly
    torch.testing.assert_close(late_fusion(r, f, 0.3).softmax(-1), expected)
    with pytest.raises(ValueError, match="rgb_weight"):
        late_fusion(r, f, 1.5)


def test_model_fused_output_uses_its_weight():
    model = build_model("late", 3, backbone="tiny", new_length=2, rgb_weight=0.25).eval()
    out = model(*_inputs(size=16))
    torch.testing.assert_close(out["late"], late_fusion(out["rgb"], out["flow"], 0.25))


def test_consensus_averages_the_snippets_scores():
    """Folding T snippets into the batch gives the mean of running each snippet on its own."""
    model = build_model("late", 4, backbone="tiny", new_length=2).eval()
    rgb, flow = _inputs(b=2, t=3)
    out = model(rgb, flow)
    per_snippet = torch.stack([model.rgb_head(model.rgb_tower(rgb[:, k])) for k in range(3)], 1)
    torch.testing.assert_close(out["rgb"], per_snippet.mean(1), rtol=1e-5, atol=1e-5)
    per_snippet = torch.stack([model.flow_head(model.flow_tower(flow[:, k])) for k in range(3)], 1)
    torch.testing.assert_close(out["flow"], per_snippet.mean(1), rtol=1e-5, atol=1e-5)


def test_wrong_input_shapes_are_explained():
    model = build_model("late", 4, backbone="tiny", new_length=2)
    rgb, flow = _inputs(l=3)
    with pytest.raises(ValueError, match="2L = 4 flow channels"):
        model(rgb, flow)
    with pytest.raises(ValueError, match=r"\[B, T, 3, H, W\]"):
        model(rgb[:, 0], flow[:, 0])


def test_unknown_model_lists_the_registered_ones():
    with pytest.raises(KeyError, match="late"):
        build_model("nope", 4)


# --- fusion blocks ---------------------------------------------------------------------------
class Recorder(FusionBlock):
    """Adds the flow map into the RGB map and remembers the shapes it saw."""

    def __init__(self, rgb_channels, flow_channels):
        super().__init__(rgb_channels, flow_channels)
        self.seen = []

    def fuse(self, rgb, flow):
        self.seen.append((tuple(rgb.shape), tuple(flow.shape)))
        return rgb + flow, flow


def test_blocks_run_between_stages_on_folded_snippets():
    probe = TwoStreamNet(4, backbone="tiny", new_length=2)
    c = probe.rgb_tower.stage_channels
    model = TwoStreamNet(4, backbone="tiny", new_length=2,
                         fusion_blocks={"stage2": Recorder(c["stage2"], c["stage2"]), "stage1.0": Recorder(c["stage1"], c["stage1"])})
    model(*_inputs(b=2, t=3, size=32))
    s = 32 // probe.rgb_tower.stage_strides["stage2"]
    assert model.fusion_blocks["stage2"].seen == [((6, c["stage2"], s, s),) * 2]
    # "stage1.0" runs after the first child of stage1, which already has the stage's stride
    s = 32 // probe.rgb_tower.stage_strides["stage1"]
    assert model.fusion_blocks["stage1:0"].seen == [((6, c["stage1"], s, s),) * 2]


def test_a_fusion_block_changes_the_rgb_result_only_where_it_feeds_in():
    torch.manual_seed(1)
    plain = TwoStreamNet(4, backbone="tiny", new_length=2).eval()
    c = plain.rgb_tower.stage_channels["stage2"]
    fused = TwoStreamNet(4, backbone="tiny", new_length=2, fusion_blocks={"stage2": Recorder(c, c)}).eval()
    fused.load_state_dict(plain.state_dict(), strict=False)
    inputs = _inputs(size=16)
    a, b = plain(*inputs), fused(*inputs)
    # the appearance tower now carries the fused features: the outputs take the method's name, by role
    assert a.roles == {"rgb": "rgb", "flow": "flow", "fused": "late"}
    assert b.roles == {"rgb": "late-R", "flow": "late-F", "fused": "late-S"} == fused.output_roles()
    assert set(b) == {"late-R", "late-F", "late-S"} and b.heads == ["late-R", "late-F"] and b.fused == "late-S"
    torch.testing.assert_close(a["flow"], b["late-F"])
    assert not torch.allclose(a["rgb"], b["late-R"])
    torch.testing.assert_close(b["late-S"], late_fusion(b["late-R"], b["late-F"], 0.5))


def test_bad_fusion_positions_are_rejected():
    with pytest.raises(ValueError, match="no stage 'stage9'"):
        TwoStreamNet(4, fusion_blocks={"stage9": Recorder(8, 8)})
    with pytest.raises(ValueError, match="has children"):
        TwoStreamNet(4, fusion_blocks={"stage1.7": Recorder(64, 64)})


def test_block_built_for_the_wrong_channels_says_how_to_fix_it():
    block = Recorder(16, 16)
    with pytest.raises(ValueError, match="pass rgb_channels=32"):
        block(torch.randn(2, 32, 8, 8), torch.randn(2, 16, 8, 8))


def test_blocks_check_spatial_size_and_their_own_outputs():
    class Shrinks(FusionBlock):
        def fuse(self, rgb, flow):
            return rgb[..., :2, :2], flow

    class ReturnsOne(FusionBlock):
        def fuse(self, rgb, flow):
            return rgb

    x = torch.randn(2, 8, 4, 4)
    with pytest.raises(ValueError, match="same spatial size"):
        Recorder(8, 8)(x, torch.randn(2, 8, 2, 2))
    with pytest.raises(ValueError, match="changed the feature shapes"):
        Shrinks(8, 8)(x, x)
    with pytest.raises(TypeError, match="tuple"):
        ReturnsOne(8, 8)(x, x)
    with pytest.raises(NotImplementedError):
        FusionBlock(8, 8)(x, x)


def test_registry_builds_blocks_by_name_and_refuses_duplicates():
    @register_fusion("test_sum_block")
    class SumBlock(FusionBlock):
        def fuse(self, rgb, flow):
            return rgb + flow, flow

    try:
        block = build_fusion("test_sum_block", rgb_channels=4, flow_channels=4)
        x, y = torch.ones(1, 4, 2, 2), 2 * torch.ones(1, 4, 2, 2)
        torch.testing.assert_close(block(x, y)[0], 3 * torch.ones(1, 4, 2, 2))
        with pytest.raises(ValueError, match="already registered"):
            register_fusion("test_sum_block")(Recorder)
        with pytest.raises(KeyError, match="test_sum_block"):
            build_fusion("missing_block", rgb_channels=4, flow_channels=4)
    finally:
        FUSIONS.pop("test_sum_block")
