"""CMA attention visualisation (Chi et al. 2019, Fig. 5): naming and recording the units, reading a
query's map, coordinates, the arrow figure and the widget explorer's plain logic."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from fusionkit.data.transforms import Normalize  # noqa: E402
from fusionkit.methods.cma import CMABlock, CrossModalityAttention  # noqa: E402
from fusionkit.methods import build_model  # noqa: E402
from fusionkit.viz.activations import fusion_activations  # noqa: E402
from fusionkit.viz.attention import (  # noqa: E402
    ExplorerState, attention_explorer, attention_figure, attention_units, denormalize_rgb, explorer_view,
    grid_to_image, image_to_grid, plot_attention_arrows, plot_explorer_view, query_attention, record_attention,
    top_positions)
from tests.helpers import SyntheticTwoStream  # noqa: E402

SIZE = 32  # tiny backbone: stage1 maps are 8x8, so the keys are 4x4


def tiny_cma(**kwargs):
    torch.manual_seed(0)
    model = build_model("cma", 4, new_length=2, positions=["stage1.1"], **kwargs)
    with torch.no_grad():
        for unit in attention_units(model).values():
            torch.nn.init.ones_(unit.bn.weight)  # gamma off 0: the blocks are no longer the identity
            unit.theta.weight.mul_(20)  # the untrained stage features are small (~0.02): sharpen the maps
            unit.phi.weight.mul_(20)
    return model.eval()


def inputs(b=2, t=2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, t, 3, SIZE, SIZE, generator=g), torch.randn(b, t, 4, SIZE, SIZE, generator=g)


def arrows(ax):
    return [a for a in ax.texts if a.get_gid() == "attention-arrow"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# -- naming the units ------------------------------------------------------------------------
def test_unit_names_for_cma_nonlocal_chains_and_bare_blocks():
    assert set(attention_units(tiny_cma())) == {"stage1.1/rgb<-flow", "stage1.1/flow<-rgb"}
    chain = tiny_cma(fusion=("nonlocal", "cma"), fusion_options=({"directions": "rgb"}, {}))
    units = attention_units(chain)
    assert set(units) == {"stage1.1/rgb<-rgb", "stage1.1/rgb<-flow", "stage1.1/flow<-rgb"}
    block = chain.fusion_blocks["stage1:1"]
    assert units["stage1.1/rgb<-rgb"] is block.blocks[0].rgb_attention
    assert units["stage1.1/flow<-rgb"] is block.blocks[1].flow_attention
    twice = attention_units(tiny_cma(fusion=("cma", "cma"), fusion_options=({}, {})))
    assert set(twice) == {"stage1.1[0]/rgb<-flow", "stage1.1[0]/flow<-rgb", "stage1.1[1]/rgb<-flow",
                          "stage1.1[1]/flow<-rgb"}
    assert set(attention_units(CMABlock(8, 8, directions="flow"))) == {"flow<-rgb"}
    unit = CrossModalityAttention(8)
    assert attention_units(unit) == {"attention": unit}


# -- recording -------------------------------------------------------------------------------
def test_recorded_attention_matches_an_independent_computation_from_the_block_inputs():
    model = tiny_cma()
    rgb, flow = inputs()
    records = record_attention(model, rgb, flow)
    feats = fusion_activations(model, rgb, flow)["stage1.1"]  # the block's inputs, captured by hooks
    units = attention_units(model)
    for name, (target, source) in {"stage1.1/rgb<-flow": ("rgb", "flow"),
                                   "stage1.1/flow<-rgb": ("flow", "rgb")}.items():
        unit, record = units[name], records[name]
        with torch.no_grad():
            q = F.conv2d(feats[target], unit.theta.weight, unit.theta.bias).flatten(2)           # [N, d, 64]
            k = F.conv2d(F.max_pool2d(feats[source], 2), unit.phi.weight, unit.phi.bias).flatten(2)  # [N, d, 16]
            expected = torch.softmax(torch.einsum("ndq,ndk->nqk", q, k) * unit.effective_scale, dim=-1)
        assert record.weights.shape == (4, 64, 16)  # N = B*T = 4 snippets, 8x8 queries, 4x4 keys
        assert (record.query_shape, record.key_shape, record.source_shape) == ((8, 8), (4, 4), (8, 8))
        assert record.num_segments == 2 and record.sample_index(1, 0) == 2
        torch.testing.assert_close(record.weights.sum(-1), torch.ones(4, 64))
        assert expected.max() > 0.3  # far from uniform (1/16): the check below means something
        for n, (y, x) in [(0, (0, 0)), (1, (3, 5)), (3, (7, 7)), (2, (6, 1))]:
            np.testing.assert_allclose(query_attention(record, n, (y, x)),
                                       expected[n, y * 8 + x].reshape(4, 4).numpy(), rtol=1e-5, atol=1e-6)


def test_one_item_gives_the_rows_of_its_snippets():
    model = tiny_cma()
    rgb, flow = inputs()
    batch = record_attention(model, rgb, flow, units="stage1.1/rgb<-flow")
    item = record_attention(model, rgb[1], flow[1], units=["stage1.1/rgb<-flow"])
    assert list(item) == ["stage1.1/rgb<-flow"]
    torch.testing.assert_close(item["stage1.1/rgb<-flow"].weights, batch["stage1.1/rgb<-flow"].weights[2:4])


def test_hand_built_block_attends_to_the_matching_key():
    """theta = phi = identity, scale 1: the query's feature (5, 0) matches only the key whose pooled
    window holds (5, 0), so its weight is ~1; a zero query attends uniformly."""
    block = CMABlock(2, 2, directions="rgb", inner_channels=2, scale=1.0)
    unit = block.rgb_attention
    with torch.no_grad():
        for conv in (unit.theta, unit.phi):
            conv.weight.copy_(torch.eye(2)[:, :, None, None])
            conv.bias.zero_()
    rgb, flow = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 6, 4)
    rgb[0, 0, 1, 2] = 5.0
    flow[0, 0, 4, 1] = 5.0  # inside the pooling window of key (2, 0)
    record = record_attention(block, rgb, flow)["rgb<-flow"]
    assert (record.query_shape, record.key_shape) == ((4, 4), (3, 2))
    peaked = query_attention(record, 0, (1, 2))
    assert top_positions(peaked, 1)[0][0] == (2, 0) and peaked[2, 0] > 0.999
    np.testing.assert_allclose(query_attention(record, 0, (0, 0)), np.full((3, 2), 1 / 6), rtol=1e-6)


def test_key_extent_leaves_out_what_floor_pooling_drops():
    unit = CrossModalityAttention(4)
    record = record_attention(unit, torch.randn(1, 4, 7, 7), torch.randn(1, 4, 7, 6))["attention"]
    assert record.key_shape == (3, 3) and record.source_shape == (7, 6)
    assert record.key_extent((70, 60)) == pytest.approx((60.0, 60.0))


def test_record_attention_switches_only_the_chosen_units_and_restores_flags_mode_and_state():
    model = tiny_cma().train()
    units = attention_units(model)
    rgb_unit, flow_unit = units["stage1.1/rgb<-flow"], units["stage1.1/flow<-rgb"]
    rgb_unit.keep_attention, sentinel = True, torch.zeros(1)
    rgb_unit.last_attention = sentinel
    seen = {}
    handle = rgb_unit.register_forward_hook(lambda m, i, o: seen.update(flag=m.keep_attention, training=m.training))
    try:
        records = record_attention(model, *inputs(), units="stage1.1/flow<-rgb")
    finally:
        handle.remove()
    assert list(records) == ["stage1.1/flow<-rgb"]
    assert seen == {"flag": False, "training": False}  # off during the run, eval mode
    assert rgb_unit.keep_attention is True and rgb_unit.last_attention is sentinel
    assert flow_unit.keep_attention is False and flow_unit.last_attention is None
    assert model.training

    rgb, flow = inputs()
    with pytest.raises(ValueError):  # the model rejects 3 flow channels; flags must come back anyway
        record_attention(model, rgb, flow[:, :, :3])
    assert rgb_unit.keep_attention is True and flow_unit.keep_attention is False and model.training
    with pytest.raises(ValueError, match="unknown attention unit"):
        record_attention(model, rgb, flow, units="stage2.1/rgb<-flow")


# -- reading maps and coordinates ------------------------------------------------------------
def test_out_of_range_queries_and_samples_name_the_valid_range():
    record = record_attention(tiny_cma(), *inputs())["stage1.1/rgb<-flow"]
    with pytest.raises(ValueError, match=r"sample 4 .*0\.\.3"):
        query_attention(record, 4, (0, 0))
    with pytest.raises(ValueError, match=r"query y 8 .*0\.\.7"):
        query_attention(record, 0, (8, 0))
    with pytest.raises(ValueError, match=r"query x -1 .*0\.\.7"):
        query_attention(record, 0, (0, -1))
    with pytest.raises(ValueError, match="2 coordinates"):
        query_attention(record, 0, (0, 0, 0))
    with pytest.raises(ValueError, match="segment 2 out of range"):
        record.sample_index(0, 2)
    with pytest.raises(ValueError, match="outside the 32x32 frame"):
        image_to_grid((32, 3), (32, 32), (8, 8))


def test_pixel_grid_round_trips_and_borders():
    for grid, image in [((8, 8), (64, 64)), ((3, 5), (37, 50)), ((2, 3, 4), (30, 41))]:
        hg, wg = grid[-2:]
        for gy in range(hg):
            for gx in range(wg):
                x, y = grid_to_image((gy, gx), grid, image)
                assert image_to_grid((x, y), image, grid) == (gy, gx)
    assert grid_to_image((0, 0), (8, 8), (64, 64)) == (3.5, 3.5)  # centre of the 8x8-pixel cell
    assert image_to_grid((-0.5, -0.5), (64, 64), (8, 8)) == (0, 0)
    assert image_to_grid((63.5, 63.5), (64, 64), (8, 8)) == (7, 7)
    assert image_to_grid((8.0, 7.0), (64, 64), (8, 8)) == (0, 1)
    assert grid_to_image((1, 0, 2), (2, 3, 4), (30, 40)) == (24.5, 4.5)  # t is ignored


def test_top_positions_sorted_by_weight():
    amap = np.array([[0.1, 0.4], [0.3, 0.2]])
    assert top_positions(amap, 3) == [((0, 1), 0.4), ((1, 0), 0.3), ((1, 1), 0.2)]
    assert len(top_positions(amap, 10)) == 4
    assert top_positions(np.zeros((2, 2, 2)) + np.arange(8).reshape(2, 2, 2), 1) == [((1, 1, 1), 7.0)]
    with pytest.raises(ValueError):
        top_positions(amap, 0)


def test_denormalize_undoes_normalize():
    rgb = torch.rand(1, 3, 5, 6)
    normed, _ = Normalize()(rgb, torch.zeros(1, 2, 5, 6))
    np.testing.assert_allclose(denormalize_rgb(normed[0]), rgb[0].permute(1, 2, 0).numpy(), atol=1e-6)


# -- figures -----------------------------------------------------------------------------------
def test_plot_attention_arrows_draws_k_arrows_from_the_query_to_the_top_keys():
    fig, ax = plt.subplots()
    frame = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    amap = np.random.default_rng(1).random((4, 4))
    plot_attention_arrows(ax, frame, amap / amap.sum(), (10.0, 20.0), k=3)
    drawn = arrows(ax)
    assert len(drawn) == 3
    top = top_positions(amap, 3)
    for arrow, (index, _) in zip(drawn, top):
        assert arrow.xyann == (10.0, 20.0) and arrow.xy == grid_to_image(index, (4, 4), (32, 32))
    assert len([line for line in ax.lines if line.get_gid() == "attention-query"]) == 1
    fig3, ax3 = plt.subplots()
    plot_attention_arrows(ax3, frame / 255.0, np.random.default_rng(2).random((2, 4, 4)), (3, 3), k=2)
    assert len(arrows(ax3)) == 2
    fig.canvas.draw()
    fig3.canvas.draw()


def test_attention_figure_has_a_panel_per_unit_and_query():
    rgb, flow = inputs()
    records = record_attention(tiny_cma(), rgb, flow)
    frame = denormalize_rgb(rgb[0, 1])
    fig = attention_figure(records, frame, [(5, 5), (20, 10)], sample=records["stage1.1/rgb<-flow"].sample_index(0, 1))
    assert isinstance(fig, matplotlib.figure.Figure)
    assert len(fig.axes) == 4 and all(len(arrows(ax)) == 3 for ax in fig.axes)
    record = records["stage1.1/rgb<-flow"]
    first = arrows(fig.axes[0])[0]  # row 0 = first unit, column 0 = query (5, 5) in cell (1, 1)
    assert first.xyann == (5.5, 5.5)
    key = top_positions(query_attention(record, 1, (1, 1)), 1)[0][0]
    assert first.xy == grid_to_image(key, (4, 4), (32, 32))
    fig.canvas.draw()


def test_attention_figure_titles_apart_and_weights_inside_their_panels():
    rgb, flow = inputs()
    records = record_attention(tiny_cma(), rgb, flow)
    frame = denormalize_rgb(rgb[0, 1])
    # queries in the corners send arrows to keys at the frame's edges, where a label can be clipped
    names = ["query on the moving sprite", "query on the still sprite"]
    fig = attention_figure(records, frame, [(1, 1), (30, 30)], sample=1, k=4, query_names=names,
                           title="CMA (paper): rgb<-flow attention")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes = np.array(fig.axes).reshape(2, 2)
    assert [ax.get_title() for ax in axes[0]] == names and [ax.get_title() for ax in axes[1]] == ["", ""]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == list(records)
    titles = [ax.title.get_window_extent(renderer) for ax in axes[0]] + [fig._suptitle.get_window_extent(renderer)]
    for i, a in enumerate(titles):
        for b in titles[i + 1:]:
            assert not a.overlaps(b)
    labels = [(ax, t) for ax in fig.axes for t in ax.texts if t.get_gid() == "attention-weight"]
    assert len(labels) == 4 * 4
    for ax, text in labels:
        box, panel = text.get_window_extent(renderer), ax.get_window_extent(renderer)
        assert panel.x0 <= box.x0 and box.x1 <= panel.x1 and panel.y0 <= box.y0 and box.y1 <= panel.y1, text.get_text()
    with pytest.raises(ValueError, match="1 query names for 2 query points"):
        attention_figure(records, frame, [(1, 1), (30, 30)], query_names=names[:1])


# -- explorer ----------------------------------------------------------------------------------
def test_explorer_builds_headless_and_explorer_view_follows_the_state():
    model = tiny_cma()
    data = SyntheticTwoStream(n=3, segments=2, new_length=2, size=SIZE)
    box = attention_explorer(model, data)
    assert set(box.controls) == {"video", "segment", "unit", "x", "y", "k", "background"}
    source = box.source
    assert box.controls["unit"].options == ("stage1.1/rgb<-flow", "stage1.1/flow<-rgb")
    box.controls["video"].value = 2  # the callbacks run explorer_view and draw without error
    box.controls["segment"].value = 1
    box.controls["unit"].value = "stage1.1/flow<-rgb"
    box.controls["background"].value = "flow"
    assert box.state() == ExplorerState(2, 1, "stage1.1/flow<-rgb", 16, 16, 3, "flow")
    assert set(source._cache) == {0, 2}

    for state in [ExplorerState(0, 0, "stage1.1/rgb<-flow", 3, 30, 3),
                  ExplorerState(2, 1, "stage1.1/flow<-rgb", 31, 0, 5, "flow")]:
        view = explorer_view(source, state)
        assert view.frame.shape == (SIZE, SIZE, 3) and 0 <= view.frame.min() and view.frame.max() <= 1
        assert view.attention_map.shape == (4, 4) and view.attention_map.sum() == pytest.approx(1, abs=1e-5)
        cell = image_to_grid((state.x, state.y), (SIZE, SIZE), (8, 8))
        assert view.query_index == cell and view.query_xy == grid_to_image(cell, (8, 8), (SIZE, SIZE))
        record = source.item(state.video)[1][state.unit]
        np.testing.assert_array_equal(view.attention_map, query_attention(record, state.segment, cell))
        assert len(view.top) == state.k and view.top == top_positions(view.attention_map, state.k)
        assert view.top_xy == [grid_to_image(i, (4, 4), (SIZE, SIZE)) for i, _ in view.top]
        assert len(arrows(plot_explorer_view(view))) == state.k

    item = data[2]
    direct = record_attention(model, item["rgb"], item["flow"])["stage1.1/flow<-rgb"]
    torch.testing.assert_close(source.item(2)[1]["stage1.1/flow<-rgb"].weights, direct.weights)
    for bad, message in [(dict(video=3), "video 3"), (dict(segment=2), "segment 2"), (dict(unit="x"), "unknown unit"),
                         (dict(x=40), "outside")]:
        state = ExplorerState(0, 0, "stage1.1/rgb<-flow", 1, 1)
        with pytest.raises(ValueError, match=message):
            explorer_view(source, ExplorerState(**{**state.__dict__, **bad}))


# ---- measures used by notebook 06 --------------------------------------------------------------
from fusionkit.viz.attention import AttentionRecord, attention_on, key_cells_on, own_cell_attention  # noqa: E402


def _record(weights, query_shape, key_shape, source_shape=None):
    return AttentionRecord(torch.as_tensor(weights, dtype=torch.float32), query_shape, key_shape, source_shape)


def test_own_cell_attention_is_one_for_local_and_one_over_keys_for_uniform():
    # 4x4 queries over 2x2 keys (a 4x4 source pooled 2x2): query (y, x) belongs to key (y // 2, x // 2)
    local = torch.zeros(1, 16, 4)
    for i in range(16):
        y, x = divmod(i, 4)
        local[0, i, (y // 2) * 2 + x // 2] = 1.0
    assert own_cell_attention(_record(local, (4, 4), (2, 2), (4, 4))) == pytest.approx(1.0)
    assert own_cell_attention(_record(torch.full((2, 16, 4), 0.25), (4, 4), (2, 2), (4, 4))) == pytest.approx(0.25)
    # 3D: the own cell is at the same time step
    local3d = torch.zeros(1, 2 * 4, 2 * 1)
    for t in range(2):
        local3d[0, t * 4:(t + 1) * 4, t] = 1.0
    assert own_cell_attention(_record(local3d, (2, 2, 2), (2, 1, 1), (2, 2, 2))) == pytest.approx(1.0)


def test_key_cells_on_a_mask_and_the_attention_they_get():
    record = _record(torch.tensor([[[0.1, 0.2, 0.3, 0.4]]]), (1, 1), (2, 2), (4, 4))
    mask = np.zeros((8, 8), bool)
    mask[5, 1] = True  # bottom-left quarter of the frame
    cells = key_cells_on(mask, record)
    assert cells.tolist() == [[False, False], [True, False]]
    assert attention_on(record, 0, (0, 0), cells) == pytest.approx(0.3)
    # an odd source (5x5 -> 2x2 keys) leaves its last row/column out: a mask there is on no key
    odd = _record(torch.full((1, 1, 4), 0.25), (1, 1), (2, 2), (5, 5))
    edge = np.zeros((10, 10), bool)
    edge[9, 9] = True
    assert not key_cells_on(edge, odd).any()
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        key_cells_on(np.zeros((2, 8, 8)), record)
