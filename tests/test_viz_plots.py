"""The notebooks' plots: each figure builds, and what it draws (read back from the artists) is the
data it was given, or numbers computed by hand."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fusionkit.training.evaluate import Scores, confusion_matrix, fusion_weight_sweep
from fusionkit.viz.plots import (flow_stack_to_colour, flow_to_colour, per_class_accuracy, per_class_gain,
                                 plot_accuracy_bars, plot_benchmark_heatmap, plot_confusion_matrix, plot_history,
                                 plot_per_class_gain, plot_weight_sweep, save_figure, weight_sweep)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_flow_stack_colour_is_the_colour_of_one_field():
    rng = np.random.default_rng(0)
    stack = rng.normal(size=(6, 5, 7)).astype(np.float32)  # L = 3 fields: x1, y1, x2, y2, x3, y3
    np.testing.assert_array_equal(flow_stack_to_colour(stack), flow_to_colour(stack[:2].transpose(1, 2, 0)))
    np.testing.assert_array_equal(flow_stack_to_colour(stack, field=2), flow_to_colour(stack[4:].transpose(1, 2, 0)))
    with pytest.raises(ValueError, match=r"fields 0\.\.2"):
        flow_stack_to_colour(stack, field=3)
    with pytest.raises(ValueError, match=r"\[2L, H, W\]"):
        flow_stack_to_colour(stack[:5])


def test_history_draws_loss_train_and_val_curves():
    history = [{"epoch": 1, "loss": 1.2, "train": {"rgb": 0.3, "late": 0.4}, "val": {"rgb": 0.25, "late": 0.5}},
               {"epoch": 2, "loss": 0.8, "train": {"rgb": 0.6, "late": 0.7}, "val": {"rgb": 0.5, "late": 0.75}},
               {"epoch": 3, "loss": 0.5, "train": {"rgb": 0.8, "late": 0.9}}]  # no val this epoch
    ax = plot_history(history, title="t")
    np.testing.assert_allclose(_lines(ax)["loss"].get_ydata(), [1.2, 0.8, 0.5])
    acc = _lines(ax.figure.axes[1])
    np.testing.assert_allclose(acc["train acc late"].get_ydata(), [0.4, 0.7, 0.9])
    np.testing.assert_allclose(acc["val acc late"].get_ydata(), [0.5, 0.75, np.nan])
    assert acc["val acc rgb"].get_color() == acc["train acc rgb"].get_color() != acc["val acc late"].get_color()
    assert acc["val acc rgb"].get_linestyle() == "-" and acc["train acc rgb"].get_linestyle() == "--"
    only_train = plot_history([{"epoch": 1, "loss": 1.0, "train": {"rgb": 0.5}}])
    assert list(_lines(only_train.figure.axes[-1])) == ["train acc rgb"]


def test_stream_outputs_are_the_models_typed_roles():
    from fusionkit.methods import build_model

    def streams_of(model):
        roles = model.output_roles()
        return Scores({name: np.zeros((1, 4)) for name in roles.values()}, np.zeros(1, int), ["v0"], roles).streams()

    assert streams_of(build_model("late", 4)) == ("rgb", "flow")
    assert streams_of(build_model("cma", 4)) == ("cma-R", "cma-F")
    assert streams_of(build_model("spatial", 4, keep_flow_tower=True)) == ("spatial-R", "spatial-F")
    # roles, not names: outputs named anything are found by their role
    odd = Scores({"a": np.zeros((1, 4)), "b": np.zeros((1, 4))}, np.zeros(1, int), ["v0"],
                 {"rgb": "b", "flow": "a", "fused": "b"})
    assert odd.streams() == ("b", "a")
    with pytest.raises(ValueError, match="no pair of per-stream outputs"):
        streams_of(build_model("spatial", 4))  # a truncated motion tower: only spatial-S


def _scores(rgb_correct, flow_correct, seed=0, names=("rgb", "flow")):
    """Scores where each stream is confident and right on the given videos, and wrong elsewhere."""
    rng = np.random.default_rng(seed)
    labels = np.arange(len(rgb_correct)) % 3
    probs = {}
    for name, correct in zip(names, (rgb_correct, flow_correct)):
        p = rng.uniform(0, 0.1, (len(labels), 3))
        p[np.arange(len(labels)), np.where(correct, labels, (labels + 1) % 3)] = 1.0
        probs[name] = p / p.sum(1, keepdims=True)
    return Scores(probs, labels, [f"v{i}" for i in range(len(labels))], {"rgb": names[0], "flow": names[1]})


def test_weight_sweeps_from_evaluate_outputs_scores_and_seeds():
    a = _scores([1, 1, 0, 0, 1, 0], [0, 1, 1, 1, 0, 0], names=("cma-R", "cma-F"))
    b = _scores([1, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0], seed=1, names=("cma-R", "cma-F"))
    sweep_a = fusion_weight_sweep(a, rgb="cma-R", flow="cma-F")
    assert weight_sweep(a) == sweep_a  # per-stream outputs found by their roles
    ax = plot_weight_sweep({"dict": sweep_a, "scores": a, "seeds": [a, b]}, chance=1 / 3)
    lines = _lines(ax)
    np.testing.assert_allclose(lines["dict"].get_ydata(), sweep_a["top1"])
    np.testing.assert_allclose(lines["scores"].get_ydata(), sweep_a["top1"])
    mean = (np.array(sweep_a["top1"]) + np.array(weight_sweep(b)["top1"])) / 2
    np.testing.assert_allclose(lines["seeds (2 seeds)"].get_ydata(), mean)
    assert len(ax.collections) == 1  # the seeds' std band
    np.testing.assert_allclose(lines["chance"].get_ydata(), [1 / 3, 1 / 3])
    assert sweep_a["top1"][0] == pytest.approx(3 / 6) and sweep_a["top1"][-1] == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="fusion_weight_sweep dict"):
        plot_weight_sweep({"bad": {"top1": [0.5]}})
    with pytest.raises(ValueError, match="same grid"):
        plot_weight_sweep({"x": [sweep_a, fusion_weight_sweep(a, [0, 1], rgb="cma-R", flow="cma-F")]})


def test_accuracy_bars_heights_are_the_means():
    accuracy = {"motion": {"rgb": {"mean": 0.25, "std": 0.0}, "flow": {"mean": 1.0, "std": 0.0}},
                "appearance": {"rgb": {"mean": 0.9, "std": 0.05}}}
    ax = plot_accuracy_bars(accuracy, ["rgb", "flow"])
    heights = [p.get_height() for p in ax.patches]
    np.testing.assert_allclose(heights, [0.25, 0.9, 1.0, np.nan])


def test_confusion_matrix_heatmap_shows_row_shares_with_class_names():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(predictions, labels, 3)
    ax = plot_confusion_matrix(cm.tolist(), ["Left", "Right", "Up"])
    expected = np.array([[2 / 3, 1 / 3, 0], [0, 0.5, 0.5], [0, 0, 1]])
    np.testing.assert_allclose(np.asarray(ax.collections[0].get_array()).reshape(3, 3), expected)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Left", "Right", "Up"]
    assert [t.get_text() for t in ax.texts][:3] == ["0.67", "0.33", "0.00"]
    counts = plot_confusion_matrix(cm, normalize=False)
    np.testing.assert_allclose(np.asarray(counts.collections[0].get_array()).reshape(3, 3), cm)
    with pytest.raises(ValueError, match="2 class names for 3 classes"):
        plot_confusion_matrix(cm, ["a", "b"])


def test_per_class_gain_against_numbers_by_hand():
    # 3 classes; class 2 has no video
    labels = np.array([0, 0, 0, 0, 1, 1])
    method = np.eye(3)[[0, 0, 0, 1, 1, 1]]  # class 0: 3/4, class 1: 2/2
    late = np.eye(3)[[0, 1, 1, 1, 0, 0]]  # class 0: 1/4, class 1: 0/2
    np.testing.assert_allclose(per_class_accuracy(method, labels), [0.75, 1.0, np.nan])
    gains = per_class_gain(method, late, labels, ["Jump", "Run", "Swim"])
    assert list(gains) == ["Run", "Jump"]  # sorted by gain; Swim (no video) left out
    assert gains == pytest.approx({"Run": 1.0, "Jump": 0.5})
    reverse = per_class_gain(late, method, labels)  # losses, class indices as names
    assert list(reverse) == ["0", "1"] and reverse == pytest.approx({"0": -0.5, "1": -1.0})
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        per_class_gain(method[:5], late, labels)


def test_per_class_gain_bars_are_sorted_and_coloured_by_sign():
    gains = {"a": -0.2, "b": 0.4, "c": 0.1, "d": -0.05, "e": 0.0}
    ax = plot_per_class_gain(gains, title="CMA over late fusion")
    np.testing.assert_allclose([p.get_height() for p in ax.patches], [0.4, 0.1, 0.0, -0.05, -0.2])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "c", "e", "d", "a"]
    colours = [p.get_facecolor() for p in ax.patches]
    assert colours[0] == colours[1] != colours[-1]
    limited = plot_per_class_gain(gains, limit=1)
    np.testing.assert_allclose([p.get_height() for p in limited.patches], [0.4, -0.2])


def test_benchmark_heatmap_shows_means_and_annotates_mean_and_std():
    table = {"late": {"appearance": {"mean": 0.95, "std": 0.01}, "registration": {"mean": 0.47, "std": 0.02}},
             "conv": {"registration": {"mean": 1.0, "std": 0.0}, "order": {"mean": 0.55, "std": 0.04}}}
    ax = plot_benchmark_heatmap(table, title="benchmark", chance=0.25)
    values = np.ma.filled(ax.collections[0].get_array(), np.nan).reshape(2, 3)
    np.testing.assert_allclose(values, [[0.95, 0.47, np.nan], [np.nan, 1.0, 0.55]])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["appearance", "registration", "order"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["late", "conv"]
    texts = [t.get_text() for t in ax.texts]
    assert "0.95\n±0.01" in texts and "0.55\n±0.04" in texts and len([t for t in texts if t]) == 4
    with pytest.raises(ValueError, match="empty"):
        plot_benchmark_heatmap({})


def test_save_figure_writes_a_png(tmp_path):
    fig, ax = plt.subplots()
    plot_benchmark_heatmap({"late": {"motion": {"mean": 1.0, "std": 0.0}}}, ax=ax)
    path = save_figure(fig, "bench", tmp_path / "figures")
    assert path == tmp_path / "figures" / "bench.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Layout, read back from the drawn figure: legends beside the data, labels apart, one colour per method
# --------------------------------------------------------------------------------------------
from fusionkit.viz.plots import (METHOD_COLOURS, add_flow_key, epochs_to, flow_wheel, legend_outside,  # noqa: E402
                                 method_colours, palette_key, plot_learning_curves)


def _renderer(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _tick_label_boxes(ax, renderer):
    return [t.get_window_extent(renderer) for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]


def _assert_legend_clear(ax, companions=()):
    """The legend overlaps neither the data region nor any tick label of ``ax`` (and its companions)."""
    fig = ax.figure
    renderer = _renderer(fig)
    legend = ax.get_legend()
    assert legend is not None
    box = legend.get_window_extent(renderer)
    for a in (ax, *companions):
        assert not box.overlaps(a.get_window_extent(renderer)), "the legend covers the data region"
        for tick in _tick_label_boxes(a, renderer):
            assert not box.overlaps(tick), "the legend covers a tick label"
        label = a.yaxis.label.get_window_extent(renderer)
        assert not box.overlaps(label), "the legend covers an axis label"


def _assert_apart(boxes):
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not a.overlaps(b), f"{a} and {b} collide"


def test_palette_gives_a_method_one_colour_in_every_figure():
    assert palette_key("two-stream (late)") == palette_key("late") == "late"
    assert palette_key("CMA iter1") == "cma" and palette_key("non-local RGB") == "nonlocal"
    assert palette_key("cma-S") == "cma" and palette_key("cma-R") == "rgb" and palette_key("non-local") == "nonlocal" and palette_key("SUM") == "sum"
    bars = plot_accuracy_bars({"p": {"late": {"mean": 0.5, "std": 0}, "conv": {"mean": 1.0, "std": 0}}}, ["late", "conv"])
    sweep = {"rgb_weight": [0, 0.5, 1], "top1": [0.3, 0.6, 0.4]}
    lines = _lines(plot_weight_sweep({"two-stream": sweep, "conv": sweep}))
    curves = _lines(plot_learning_curves({"conv": [[0.5, 1.0]]}, threshold=None))
    colour = matplotlib.colors.to_hex
    assert colour(bars.patches[0].get_facecolor()) == colour(lines["two-stream"].get_color()) == METHOD_COLOURS["late"]
    assert (colour(bars.patches[1].get_facecolor()) == colour(lines["conv"].get_color())
            == colour(curves["conv"].get_color()) == METHOD_COLOURS["conv"])
    # labels naming no method get spare colours, never one already in the figure
    colours = method_colours(["late", "SUM+AL", "MAX+AL", "cmmp"])
    assert len(set(colours.values())) == 4 and colours["cmmp"] == METHOD_COLOURS["cmmp"]
    assert len(set(method_colours(["rgb", "cma-R"]).values())) == 2  # one figure never repeats a colour
    with pytest.raises(ValueError, match="name no method"):
        method_colours([f"row {i}" for i in range(20)])


def test_accuracy_bars_legend_beside_the_axes_hides_no_bar_or_tick():
    accuracy = {p: {o: {"mean": 0.5 + 0.1 * i, "std": 0.05} for i, o in enumerate(["rgb", "flow", "late", "conv"])}
                for p in ["appearance", "motion", "registration"]}
    fig, axes = plt.subplots(2, 1, figsize=(6, 5))
    for ax in axes:
        plot_accuracy_bars(accuracy, ["rgb", "flow", "late", "conv"], ax=ax, chance=0.25, title="t")
    fig.tight_layout()
    for ax in axes:
        _assert_legend_clear(ax)
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["rgb", "flow", "late", "conv"]
    _assert_texts_inside(fig)


def _assert_texts_inside(fig):
    """Every visible text lies inside the figure as laid out (nothing clipped without bbox_inches)."""
    renderer = _renderer(fig)
    page = fig.bbox.padded(1)
    for text in fig.findobj(matplotlib.text.Text):
        if text.get_text() and text.get_visible():
            box = text.get_window_extent(renderer)
            assert page.contains(box.x0, box.y0) and page.contains(box.x1, box.y1), f"{text.get_text()!r} is clipped"


def test_accuracy_bars_of_one_group_name_each_bar_on_the_axis():
    rows = ["baseline", "CB", "CS", "All", "SUM+AL", "MAX+AL", "CMMP+noAL"]
    ax = plot_accuracy_bars({"registration": {r: {"mean": 0.5, "std": 0.0} for r in rows}}, rows, chance=0.25)
    assert [t.get_text() for t in ax.get_xticklabels()] == rows and ax.get_xlabel() == "registration"
    assert ax.get_legend() is None
    np.testing.assert_allclose(ax.get_xticks(), [p.get_x() + p.get_width() / 2 for p in ax.patches])
    _assert_apart([t.get_window_extent(_renderer(ax.figure)) for t in ax.get_xticklabels()])
    assert any(t.get_text() == "chance" for t in ax.texts)


def test_history_legend_outside_both_axes_in_a_grid():
    history = [{"epoch": e, "loss": 1.0 / e, "train": {"cmmp-R": 0.3, "cmmp-F": 0.4, "cmmp-S": 0.5}} for e in (1, 2, 3)]
    fig, axes = plt.subplots(2, 3, figsize=(13, 5))
    for ax in axes.flat:
        plot_history(history, ax=ax, title="order CMMP")
    fig.tight_layout()
    for ax in axes.flat:
        twin = [a for a in fig.axes if a is not ax and a.bbox.bounds == ax.bbox.bounds]
        assert len(twin) == 1
        _assert_legend_clear(ax, companions=twin)
    accuracy_lines = _lines(fig.axes[-1])
    # the fused output in the method's colour, its per-stream outputs in the streams' colours
    assert accuracy_lines["train acc cmmp-S"].get_color() == METHOD_COLOURS["cmmp"]
    assert accuracy_lines["train acc cmmp-R"].get_color() == METHOD_COLOURS["rgb"]
    assert accuracy_lines["train acc cmmp-F"].get_color() == METHOD_COLOURS["flow"]
    assert len({line.get_color() for line in accuracy_lines.values()}) == 3


def test_weight_sweep_panels_side_by_side_do_not_collide():
    sweep = {"rgb_weight": list(np.linspace(0, 1, 21)), "top1": list(np.linspace(0.3, 1.0, 21))}
    fig, axes = plt.subplots(1, 5, figsize=(16, 3), sharey=True)
    for ax in axes:
        plot_weight_sweep({"late": sweep}, ax=ax, title="p", chance=0.25, legend=False)
    fig.tight_layout()
    renderer = _renderer(fig)
    _assert_apart([ax.xaxis.label.get_window_extent(renderer) for ax in axes])
    _assert_apart([t.get_window_extent(renderer) for ax in axes for t in ax.get_xticklabels()])
    assert [t.get_text() for t in axes[0].get_xticklabels()] == ["0\nflow only", "0.5", "1\nRGB only"]
    ax = plot_weight_sweep({"late": sweep, "cma": sweep})
    _assert_legend_clear(ax)


def test_epochs_to_threshold_by_hand():
    assert epochs_to([0.5, 0.85, 0.9, 1.0], 0.9) == 3
    assert epochs_to([0.95], 0.9) == 1
    assert epochs_to([0.5, 0.6], 0.9) is None


def test_learning_curves_draw_the_mean_over_seeds_and_the_epochs_to_threshold():
    curves = {"sum": [[0.5, 0.7, 0.9, 1.0], [0.3, 0.9, 1.0, 1.0]], "max": [[0.4, 0.5, 0.6, 0.7], [0.5, 0.6, 0.95, 1.0]]}
    ax = plot_learning_curves(curves, threshold=0.9, chance=0.25, title="t")
    lines = _lines(ax)
    np.testing.assert_allclose(lines["sum (2.5 ep. to 0.9)"].get_ydata(), [0.4, 0.8, 0.95, 1.0])
    np.testing.assert_allclose(lines["sum (2.5 ep. to 0.9)"].get_xdata(), [1, 2, 3, 4])
    assert "max (not 0.9 in 4 ep.)" in lines  # one seed never reaches it
    assert len(ax.collections) == 2  # the seeds' std bands
    _assert_legend_clear(ax)
    with pytest.raises(ValueError, match="one non-empty accuracy curve per seed"):
        plot_learning_curves({"sum": [0.5, 0.6]})


def test_flow_wheel_is_the_colour_of_the_flow_pointing_to_each_pixel():
    wheel = flow_wheel(65, max_magnitude=2.0)
    centre = 32
    # image axes: x to the right, y down; the edge of the circle is the full-saturation speed
    def colour(dx, dy):  # cv2.cartToPolar's angle is good to about 0.3 degrees: one hue step either way
        return flow_to_colour(np.array([[[dx, dy]]], np.float32), 2.0)[0, 0].astype(int)

    np.testing.assert_allclose(wheel[centre, 64], colour(2.0, 0.0), atol=2)
    np.testing.assert_allclose(wheel[0, centre], colour(0.0, -2.0), atol=2)  # up in the image: dy < 0
    np.testing.assert_allclose(wheel[centre, 0], colour(-2.0, 0.0), atol=2)
    np.testing.assert_array_equal(wheel[centre, centre], [255, 255, 255])  # no motion: white
    np.testing.assert_array_equal(wheel[0, 0], [255, 255, 255])  # outside the circle
    assert len({tuple(wheel[centre, 64]), tuple(wheel[0, centre]), tuple(wheel[centre, 0])}) == 3
    with pytest.raises(ValueError, match="at least 3 pixels"):
        flow_wheel(2)


@pytest.mark.parametrize("where", ["below", "right"])
def test_flow_key_sits_beside_the_image_and_labels_its_speed(where):
    fig, axes = plt.subplots(1, 3, figsize=(8, 3))
    for ax in axes:
        ax.imshow(flow_to_colour(np.ones((8, 8, 2), np.float32), 3))
    key = add_flow_key(axes[1], 3, where=where)
    renderer = _renderer(fig)
    box = key.get_window_extent(renderer)
    assert not box.overlaps(axes[1].get_window_extent(renderer))  # hides nothing of its image
    np.testing.assert_array_equal(key.images[0].get_array(), flow_wheel())
    label = key.get_ylabel() if where == "below" else key.get_title()
    assert label == "flow key: edge 3 px"
    with pytest.raises(ValueError, match="where must be one of"):
        add_flow_key(axes[0], where="inside")
