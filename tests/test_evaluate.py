"""Metrics against hand-computed cases, weight sweeps, multi-crop testing, predict()."""
import numpy as np
import pytest
import torch

from fusionkit.data import transforms as T
from fusionkit.training.evaluate import Scores, classification_metrics, confusion_matrix, fusion_weight_sweep, predict
from fusionkit.methods import build_model
from tests.helpers import SyntheticTwoStream


def test_metrics_on_a_hand_computed_case():
    probs = np.array([[0.7, 0.2, 0.1],   # true 0, predicted 0
                      [0.5, 0.4, 0.1],   # true 1, predicted 0 (1 is second)
                      [0.1, 0.2, 0.7],   # true 2, predicted 2
                      [0.6, 0.3, 0.1]])  # true 2, predicted 0 (2 is last)
    labels = np.array([0, 1, 2, 2])
    m = classification_metrics(probs, labels)
    assert m["top1"] == 0.5
    assert m["top3"] == 1.0  # top-5 is capped at the 3 classes
    # per class: 1/1, 0/1, 1/2 -> mean 0.5
    assert m["mean_class"] == pytest.approx(0.5)
    assert m["confusion"] == [[1, 0, 0], [1, 0, 0], [1, 0, 1]]


def test_mean_class_accuracy_differs_from_top1_on_imbalanced_data():
    probs = np.eye(2)[[0, 0, 0, 0, 1]]
    labels = np.array([0, 0, 0, 1, 1])
    m = classification_metrics(probs, labels)
    assert m["top1"] == pytest.approx(0.8) and m["mean_class"] == pytest.approx(0.75)


def test_confusion_matrix_counts_rows_as_truth():
    cm = confusion_matrix(np.array([1, 1, 0]), np.array([0, 1, 0]), 2)
    assert cm.tolist() == [[1, 1], [0, 1]]


def test_weight_sweep_endpoints_are_the_single_streams():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50)
    rgb, flow = rng.dirichlet(np.ones(4), 50), rng.dirichlet(np.ones(4), 50)
    scores = Scores({"rgb": rgb, "flow": flow}, labels, [str(i) for i in range(50)])
    sweep = fusion_weight_sweep(scores, weights=[0.0, 0.5, 1.0])
    assert sweep["top1"][0] == (flow.argmax(1) == labels).mean()
    assert sweep["top1"][2] == (rgb.argmax(1) == labels).mean()
    assert sweep["top1"][1] == ((rgb + flow).argmax(1) == labels).mean()


def test_ten_crop_takes_corners_centre_and_their_mirrors():
    rgb = torch.arange(2 * 3 * 6 * 8, dtype=torch.float32).view(2, 3, 6, 8)
    flow = torch.randn(2, 4, 6, 8)
    out_rgb, out_flow = T.TenCrop(4)(rgb, flow)
    assert out_rgb.shape == (20, 3, 4, 4) and out_flow.shape == (20, 4, 4, 4)
    torch.testing.assert_close(out_rgb[0:2], rgb[..., :4, :4])           # top-left, both snippets
    torch.testing.assert_close(out_rgb[6:8], rgb[..., 2:, 4:])           # bottom-right
    torch.testing.assert_close(out_rgb[8:10], rgb[..., 1:5, 2:6])        # centre
    torch.testing.assert_close(out_rgb[10:12], rgb[..., :4, :4].flip(-1))  # mirrored top-left
    torch.testing.assert_close(out_flow[10:12, 0::2], -flow[:, 0::2, :4, :4].flip(-1))  # flow-x negated


def test_predict_returns_probabilities_for_every_output():
    torch.manual_seed(0)
    model = build_model("late", 4, backbone="tiny", new_length=2)
    scores = predict(model, SyntheticTwoStream(10), batch_size=4)
    assert set(scores.probs) == {"rgb", "flow", "late"}
    for p in scores.probs.values():
        assert p.shape == (10, 4)
        np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    assert scores.labels.tolist() == [i % 4 for i in range(10)]
    assert scores.video_ids[3] == "video3"
    assert scores.roles == {"rgb": "rgb", "flow": "flow", "fused": "late"} and scores.streams() == ("rgb", "flow")
    # the fused probabilities are the model's late fusion of the two streams
    np.testing.assert_allclose(scores.probs["late"], scores.fused(0.5), rtol=1e-4, atol=1e-6)


def test_predict_keeps_the_roles_and_fuses_the_per_stream_outputs_of_a_fusion_model():
    torch.manual_seed(0)
    model = build_model("spatial", 4, backbone="tiny", new_length=2, fusion="sum", keep_flow_tower=True)
    scores = predict(model, SyntheticTwoStream(10), batch_size=4)
    assert scores.roles == {"rgb": "spatial-R", "flow": "spatial-F", "fused": "spatial-S"}
    assert set(scores.probs) == {"spatial-R", "spatial-F", "spatial-S"}
    assert scores.streams() == ("spatial-R", "spatial-F")
    # fused(w) weighs the roles' outputs by default: the model's own late fusion at its weight
    np.testing.assert_allclose(scores.probs["spatial-S"], scores.fused(0.5), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(scores.fused(0.3), 0.3 * scores.probs["spatial-R"] + 0.7 * scores.probs["spatial-F"])
    sweep = fusion_weight_sweep(scores, weights=[0.0, 1.0])
    assert sweep["top1"] == [(scores.probs[k].argmax(1) == scores.labels).mean() for k in ("spatial-F", "spatial-R")]


def test_a_truncated_motion_tower_has_no_streams_to_weigh():
    from fusionkit.training.evaluate import evaluation_report

    torch.manual_seed(0)
    model = build_model("spatial", 4, backbone="tiny", new_length=2, fusion="sum")
    scores = predict(model, SyntheticTwoStream(6), batch_size=4)
    assert scores.roles == {"fused": "spatial-S"} and set(scores.probs) == {"spatial-S"}
    with pytest.raises(ValueError, match="no pair of per-stream outputs"):
        scores.streams()
    with pytest.raises(ValueError, match="no pair of per-stream outputs"):
        scores.fused(0.5)
    report = evaluation_report(model, SyntheticTwoStream(6), batch_size=4)
    assert report["roles"] == {"fused": "spatial-S"} and set(report["metrics"]) == {"spatial-S"}
    assert report["fusion_weight_sweep"] is None
