"""Fusion positions (:class:`fusionkit.models.positions.Position`): parsing, formatting, module-dict
keys, ordering along the network, and the checks against a tower's stages."""
import pytest
import torch

from fusionkit.fusion import build_fusion
from fusionkit.models.positions import Position, order_positions
from fusionkit.models.two_stream import TwoStreamNet, channels_at, probe_backbone

STAGES = ["stem", "stage1", "stage2", "stage3"]
CHILDREN = {"stem": 2, "stage1": 2, "stage2": 4, "stage3": 6}


@pytest.mark.parametrize("text, stage, child", [("stage3", "stage3", None), ("stage3.1", "stage3", 1),
                                                ("stem.0", "stem", 0), ("stage2.12", "stage2", 12)])
def test_parse_and_format_round_trip(text, stage, child):
    p = Position.parse(text)
    assert p == Position(stage, child) and (p.stage, p.child) == (stage, child)
    assert str(p) == text
    assert Position.parse(p) is p  # a Position is taken as it is
    assert Position.parse(str(p)) == p and hash(Position.parse(text)) == hash(p)  # frozen: usable as a dict key


def test_module_dict_keys_have_no_dots_and_map_back():
    assert Position("stage3", 1).key == "stage3:1" and Position("stage3").key == "stage3"
    for p in (Position("stage3", 1), Position("stage3"), Position("stem", 0)):
        assert "." not in p.key and Position.from_key(p.key) == p


@pytest.mark.parametrize("bad", ["", ".1", "stage3.", "stage3.x", "stage3.-1", "stage3.1.2", "stage3.1a"])
def test_malformed_positions_are_refused_with_the_expected_form(bad):
    with pytest.raises(ValueError, match=r"expected 'STAGE' or 'STAGE.CHILD'") as info:
        Position.parse(bad)
    assert repr(bad) in str(info.value)


def test_order_is_by_stage_then_child_with_the_stage_end_last():
    positions = ["stage3", "stage2.3", "stem", "stage2", Position("stage2", 0), "stage1.1", "stage3.0"]
    ordered = order_positions(positions, STAGES)
    assert [str(p) for p in ordered] == ["stem", "stage1.1", "stage2.0", "stage2.3", "stage2", "stage3.0", "stage3"]
    assert all(isinstance(p, Position) for p in ordered)
    # a stage's children come before the end of the stage, and every child of stageK before stageK+1
    assert Position("stage2", 3).sort_key(STAGES) < Position("stage2").sort_key(STAGES) < Position("stage3", 0).sort_key(STAGES)
    assert order_positions([], STAGES) == []


def test_check_accepts_every_point_of_the_tower():
    for stage, n in CHILDREN.items():
        Position(stage).check(STAGES, CHILDREN)
        for i in range(n):
            Position(stage, i).check(STAGES, CHILDREN)


def test_check_names_the_stages_and_the_children_there_are():
    with pytest.raises(ValueError, match=r"fusion position 'stage9': no stage 'stage9'; stages are \['stem', 'stage1'"):
        Position("stage9").check(STAGES, CHILDREN)
    with pytest.raises(ValueError, match=r"fusion position 'stage9.0': no stage 'stage9'"):
        Position.parse("stage9.0").check(STAGES, CHILDREN)
    with pytest.raises(ValueError, match=r"fusion position 'stage2.4': stage 'stage2' has children 0..3"):
        Position("stage2", 4).check(STAGES, CHILDREN)
    # a Position built directly (not parsed) with a negative child is no point of the tower either
    with pytest.raises(ValueError, match=r"stage 'stage2' has children 0..3"):
        Position("stage2", -1).check(STAGES, CHILDREN)


def test_the_network_takes_positions_as_strings_or_positions_and_reports_them_in_order():
    probe = probe_backbone("tiny")
    c1, c2 = channels_at(probe, "stage1.0"), channels_at(probe, Position("stage2"))
    assert (c1, c2) == (probe.stage_channels["stage1"], probe.stage_channels["stage2"])
    blocks = {"stage2": build_fusion("sum", rgb_channels=c2, flow_channels=c2),
              Position("stage1", 0): build_fusion("sum", rgb_channels=c1, flow_channels=c1)}
    model = TwoStreamNet(4, new_length=2, fusion_blocks=blocks)
    assert model.positions == [Position("stage1", 0), Position("stage2")]
    assert set(model.fusion_blocks) == {"stage1:0", "stage2"}
    assert model.block_at("stage1.0") is blocks[Position("stage1", 0)] and model.block_at(Position("stage2")) is blocks["stage2"]
    out = model(torch.randn(1, 1, 3, 16, 16), torch.randn(1, 1, 4, 16, 16))
    assert out["late-R"].shape == (1, 4)


def test_the_network_refuses_positions_its_tower_lacks():
    block = build_fusion("sum", rgb_channels=32, flow_channels=32)
    with pytest.raises(ValueError, match="no stage 'stage7'"):
        TwoStreamNet(4, new_length=2, fusion_blocks={"stage7": block})
    with pytest.raises(ValueError, match="has children"):
        TwoStreamNet(4, new_length=2, fusion_blocks={Position("stage1", -1): block})
    with pytest.raises(ValueError, match="expected 'STAGE' or 'STAGE.CHILD'"):
        TwoStreamNet(4, new_length=2, fusion_blocks={"stage1.first": block})
