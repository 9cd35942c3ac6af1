"""The ipywidgets explorers: their plain logic (CAM views from cached CAMs, fused accuracy at a weight)
checked directly, and each explorer built and driven headless, as papermill runs it."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import fusionkit.viz.attention as attention
import fusionkit.viz.explorers as explorers
from fusionkit.training.evaluate import Scores
from fusionkit.methods import build_model
from fusionkit.viz.cam import cam_overlay, snippet_images, two_stream_cam
from fusionkit.viz.explorers import (CamSource, CamState, cam_explorer, cam_view, fused_accuracy,
                                     fusion_weight_explorer, plot_cam_view, plot_weight_view, weight_view)
from tests.helpers import SyntheticTwoStream


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def cma_model():
    torch.manual_seed(0)
    return build_model("cma", 4, new_length=2).eval()


# -- (a) CAM scrubber --------------------------------------------------------------------------
def test_cam_views_come_from_cams_computed_once_per_video_and_method(cma_model, monkeypatch):
    calls = []
    real = explorers.video_cams
    monkeypatch.setattr(explorers, "video_cams", lambda *a, **k: calls.append(a[4]) or real(*a, **k))
    data = SyntheticTwoStream(n=4, segments=3, size=32)
    source = CamSource(cma_model, data, class_names=["TL", "TR", "BL", "BR"])
    views = [cam_view(source, CamState(video=1, segment=t)) for t in range(3)]
    assert calls == ["gradcam"]  # scrubbing the segments reuses the cached CAMs
    cam_view(source, CamState(video=1, segment=0, method="layercam"))
    assert calls == ["gradcam", "layercam"]

    item = data[1]
    expected = two_stream_cam(cma_model, item["rgb"], item["flow"], stream="flow")
    frame, flow_image = snippet_images(item["rgb"][2], item["flow"][2])
    np.testing.assert_allclose(views[2].flow_cam, expected[2], atol=1e-6)
    np.testing.assert_array_equal(views[2].rgb, cam_overlay(frame, views[2].rgb_cam))
    np.testing.assert_array_equal(views[2].flow, cam_overlay(flow_image, views[2].flow_cam))
    assert "video1  segment 2: gradcam on 'cma-S'" in views[2].title and "(true: TR)" in views[2].title
    axes = plot_cam_view(views[2])
    assert [ax.get_title() for ax in axes] == ["RGB tower", "motion tower"]

    with pytest.raises(ValueError, match=r"segment 3 out of range: valid values are 0\.\.2"):
        cam_view(source, CamState(video=1, segment=3))
    with pytest.raises(ValueError, match=r"video 4 out of range"):
        cam_view(source, CamState(video=4))
    with pytest.raises(KeyError, match="registered"):
        cam_view(source, CamState(method="nocam"))


def test_cam_explorer_builds_headless_and_follows_its_controls(cma_model):
    box = cam_explorer(cma_model, SyntheticTwoStream(n=3, segments=2, size=32), methods=("gradcam", "eigencam"))
    assert set(box.controls) == {"video", "segment", "method"} and box.controls["segment"].max == 1
    box.controls["segment"].value = 1
    box.controls["method"].value = "eigencam"
    box.controls["video"].value = 2
    assert box.state() == CamState(video=2, segment=1, method="eigencam")
    assert set(box.source._cache) == {(0, "gradcam"), (0, "eigencam"), (2, "eigencam")}
    with pytest.raises(KeyError, match="registered"):
        cam_explorer(cma_model, SyntheticTwoStream(n=3, size=32), methods=("gradcam", "nocam"))


# -- (b) fusion-weight slider ------------------------------------------------------------------
def test_fused_accuracy_by_hand_and_as_evaluate_fuses():
    labels = np.array([0, 1, 1])
    rgb = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])  # right, wrong, right
    flow = np.array([[0.3, 0.7], [0.1, 0.9], [0.55, 0.45]])  # wrong, right, wrong
    assert fused_accuracy(rgb, flow, labels, 1.0) == pytest.approx(2 / 3)
    assert fused_accuracy(rgb, flow, labels, 0.0) == pytest.approx(1 / 3)
    # w = 0.5: [0.6, 0.4] right, [0.35, 0.65] right, [0.375, 0.625] right
    assert fused_accuracy(rgb, flow, labels, 0.5) == pytest.approx(1.0)
    # w = 0.9: [0.84, 0.16] right, [0.55, 0.45] wrong, [0.235, 0.765] right
    assert fused_accuracy(rgb, flow, labels, 0.9) == pytest.approx(2 / 3)
    scores = Scores({"rgb": rgb, "flow": flow}, labels, ["a", "b", "c"])
    for w in np.linspace(0, 1, 11):
        assert fused_accuracy(rgb, flow, labels, w) == float((scores.fused(w).argmax(1) == labels).mean())
    with pytest.raises(ValueError, match=r"weight must lie in \[0, 1\]"):
        fused_accuracy(rgb, flow, labels, 1.5)
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        fused_accuracy(rgb, flow[:2], labels, 0.5)


def _cma_scores(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 40)
    probs = {name: rng.dirichlet(np.ones(4), 40) for name in ("cma-R", "cma-F", "cma-S")}
    return Scores(probs, labels, [f"v{i}" for i in range(40)], {"rgb": "cma-R", "flow": "cma-F", "fused": "cma-S"})


def test_weight_view_finds_the_per_stream_outputs_and_marks_the_weight():
    scores = _cma_scores(0)
    view = weight_view(scores, 0.8)
    p_r, p_f = scores.probs["cma-R"], scores.probs["cma-F"]
    assert view.top1 == fused_accuracy(p_r, p_f, scores.labels, 0.8)
    assert (view.rgb_top1, view.flow_top1) == (fused_accuracy(p_r, p_f, scores.labels, 1.0),
                                                fused_accuracy(p_r, p_f, scores.labels, 0.0))
    assert view.sweep["top1"][16] == pytest.approx(view.top1)  # the sweep's grid point at w = 0.8
    assert "(cma-R)" in view.title and f"{view.top1:.3f}" in view.title
    ax = plot_weight_view(view)
    line = next(ln for ln in ax.get_lines() if ln.get_gid() == "weight-line")
    assert list(line.get_xdata()) == [0.8, 0.8]
    with pytest.raises(ValueError, match=r"no output\(s\) \['rgb'\]"):
        weight_view(scores, 0.5, rgb="rgb", flow="cma-F")


def test_fusion_weight_explorer_builds_headless_and_updates_live():
    runs = {"cma": _cma_scores(0), "other": _cma_scores(1)}
    box = fusion_weight_explorer(runs, chance=0.25)
    box.controls["weight"].value = 0.3
    view = box.view()
    assert view.weight == pytest.approx(0.3)
    assert view.top1 == fused_accuracy(runs["cma"].probs["cma-R"], runs["cma"].probs["cma-F"], runs["cma"].labels, 0.3)
    box.controls["scores"].value = "other"
    assert box.view().title.startswith("other: ")
    assert f"{box.view().top1:.3f}" in box.children[1].value  # the readout follows the controls
    single = fusion_weight_explorer(runs["cma"])
    assert len(single.children[0].children) == 1  # no dropdown for one model


# -- (c) the CMA query picker ------------------------------------------------------------------
def test_the_cma_query_picker_is_re_exported_not_duplicated():
    for name in ("attention_explorer", "explorer_view", "ExplorerState", "AttentionSource", "plot_explorer_view"):
        assert getattr(explorers, name) is getattr(attention, name)
