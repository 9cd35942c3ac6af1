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
