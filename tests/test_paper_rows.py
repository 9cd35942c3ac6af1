"""The papers' rows that were missing (issue 15): Feichtenhofer's "Bilinear + SVM" and FC8 averaging,
CCS's aggregation functions (Fig. 5a), CMA's classifier-only fine-tuning (§5.7), and the parameter
counts of every row where the paper gives one (Feichtenhofer Tables 1-2, CMA Table 2)."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from fusionkit.methods import build_model, get_method, run_method
from fusionkit.methods.ccs import SharedEmbedding
from fusionkit.methods.conv_fusion import squared_hinge_loss
from fusionkit.methods.recipe import freeze_all_but_classifiers, initialise_from
from fusionkit.methods.tables import TABLES, get_table
from fusionkit.methods.training_recipes import get_recipe
from fusionkit.models.two_stream import late_fusion
from fusionkit.training.trainer import TrainConfig
from tests.helpers import SyntheticTwoStream


def _config(**more) -> TrainConfig:
    return TrainConfig(**{"epochs": 1, "batch_size": 8, "optimizer": "sgd", "lr": 0.5, "weight_decay": 0.0,
                          "progress": False, "device": "cpu", **more})


def _changed(before: dict, model) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}


# ---- 1. "Bilinear + SVM" (Feichtenhofer Table 1) ---------------------------------------------------------
def test_squared_hinge_loss_by_hand():
    scores = torch.tensor([[2.0, -0.5, 0.3], [0.0, 0.5, -2.0]])
    labels = torch.tensor([0, 1])
    # video 0: class 0 (y=+1) margin met -> 0; class 1 (y=-1): (1 - 0.5)^2; class 2 (y=-1): (1 + 0.3)^2
    # video 1: class 0: (1 + 0)^2; class 1 (y=+1): (1 - 0.5)^2; class 2: margin met -> 0
    expected = ((0.25 + 1.69) + (1.0 + 0.25)) / 2
    assert squared_hinge_loss(scores, labels).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"scores \[B, K\] and labels \[B\]"):
        squared_hinge_loss(scores, labels[:1])


def test_the_svm_objective_is_linear_svc_s():
    """A linear layer minimising the squared hinge loss with L2 weight decay (what SGD's weight_decay
    adds) is scikit-learn's LinearSVC (LIBLINEAR) with C = 1 / (weight_decay * N)."""
    svm = pytest.importorskip("sklearn.svm")
    g = torch.Generator().manual_seed(0)
    n, d, k = 60, 5, 3
    labels = torch.arange(n) % k
    x = torch.randn(n, d, generator=g, dtype=torch.float64) + 1.5 * F.one_hot(labels, d).double()
    c = 0.5
    weight_decay = 1 / (c * n)
    layer = torch.nn.Linear(d, k).double()
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = squared_hinge_loss(layer(x), labels) + weight_decay / 2 * sum(p.pow(2).sum() for p in layer.parameters())
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    reference = svm.LinearSVC(C=c, loss="squared_hinge", penalty="l2", dual=False, tol=1e-10, max_iter=100_000,
                              intercept_scaling=1.0).fit(x.numpy(), labels.numpy())
    torch.testing.assert_close(layer.weight.detach(), torch.from_numpy(reference.coef_), atol=2e-4, rtol=1e-3)
    torch.testing.assert_close(layer.bias.detach(), torch.from_numpy(reference.intercept_), atol=2e-4, rtol=1e-3)


@pytest.fixture(scope="module")
def streams():
    """A late model trained for one epoch on synthetic data: the separately trained streams."""
    train = SyntheticTwoStream(16, size=16)
    model, _, _ = run_method("late", train, None, 4, config=_config())
    return train, model


def test_bilinear_svm_trains_only_the_svm_on_frozen_features(streams, tmp_path):
    _, late = streams
    row = get_table("feichtenhofer2016", 1).row("Bilinear [15] / ReLU5")
    assert row.options["classifier"] == "svm" and row.options["finetune"] == "classifier"
    options = {k: v for k, v in row.options.items() if k != "position"}  # ReLU5: tiny's last stage, the default
    network = {k: v for k, v in options.items() if k not in ("classifier", "finetune")}
    train = SyntheticTwoStream(8, size=16)  # one batch: one SGD step
    model, history, _ = run_method("spatial", train, None, 4, config=_config(), init_from=late, out_dir=tmp_path,
                                   **options)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["train"]["schedule"] == "svm" and run["training_options"] == {"classifier": "svm"}
    assert {k for k in history[0] if k.startswith("loss_")} == {"loss_spatial-S"}
    # by hand: the same start (run_method seeds 0 before building, then copies the streams'), one SGD
    # step on the squared hinge loss with the towers frozen (BatchNorm in eval mode)
    torch.manual_seed(0)
    start = build_model("spatial", 4, new_length=2, **network)
    initialise_from(start, late)  # what matches by name and shape: the towers (and the rgb classifier's bias)
    before = {k: v.clone() for k, v in start.state_dict().items()}
    freeze_all_but_classifiers(start)
    start.train()
    batch = [train[i] for i in range(8)]
    out = start(torch.stack([b["rgb"] for b in batch]), torch.stack([b["flow"] for b in batch]))
    squared_hinge_loss(out["spatial-S"], torch.tensor([b["label"] for b in batch])).backward()
    with torch.no_grad():
        expected = start.rgb_head.fc.weight - 0.5 * start.rgb_head.fc.weight.grad
    torch.testing.assert_close(model.rgb_head.fc.weight, expected)
    assert _changed(before, model) == {"rgb_head.fc.weight", "rgb_head.fc.bias"}  # the towers stayed the streams'


def test_the_classifier_option_is_checked():
    with pytest.raises(ValueError, match="classifier must be one of"):
        get_method("spatial").configure(TrainConfig(), classifier="hinge")


# ---- 2. Feichtenhofer's test protocol: the towers' FC8 outputs averaged ---------------------------------
@pytest.mark.parametrize("method, options", [("spatial", {"fusion": "conv", "keep_flow_tower": True}),
                                             ("conv_fusion", {})])
def test_score_fusion_averages_the_fc8_outputs_or_the_softmax(method, options):
    torch.manual_seed(0)
    rgb, flow = torch.randn(2, 3, 3, 16, 16), torch.randn(2, 3, 4, 16, 16)
    outputs = {}
    for fusion in ("softmax", "logits"):
        torch.manual_seed(1)
        model = build_model(method, 4, new_length=2, score_fusion=fusion, **options).eval()
        with torch.no_grad():
            outputs[fusion] = model(rgb, flow)
    soft, logits = outputs["softmax"], outputs["logits"]
    r, f, s = (soft.roles[k] for k in ("rgb", "flow", "fused"))
    torch.testing.assert_close(soft[r], logits[r])  # the same towers
    torch.testing.assert_close(soft[s], late_fusion(soft[r], soft[f]))
    torch.testing.assert_close(logits[s], (logits[r] + logits[f]) / 2)
    assert not torch.allclose(soft[s].softmax(-1), logits[s].softmax(-1))
    with pytest.raises(ValueError, match="score_fusion must be one of"):
        build_model(method, 4, new_length=2, score_fusion="mean", **options)


def test_the_paper_recipes_average_fc8_and_the_teaching_ones_the_softmax():
    for method in ("spatial", "conv_fusion"):
        assert get_recipe(method, "paper").model["score_fusion"] == "logits"
        assert "score_fusion" not in get_recipe(method, "teaching").model  # the default: softmax, as committed
        assert build_model(method, 4, new_length=2).score_fusion == "softmax"
    assert "score_fusion='logits'" in get_table("feichtenhofer2016", 2).row("ReLU5 + FC8").note
    assert "score_fusion='logits'" in get_table("feichtenhofer2016", 4).note


# ---- 3. CCS Fig. 5a: the aggregation functions -----------------------------------------------------------
def _identity_embedding(**kwargs) -> SharedEmbedding:
    embedding = SharedEmbedding(2, dim=2 * (kwargs.get("segments") or 1), **kwargs)
    with torch.no_grad():
        embedding.fc.weight.copy_(torch.eye(embedding.fc.in_features))
        embedding.fc.bias.zero_()
    return embedding


def test_the_aggregations_by_hand():
    # two videos of 4 snippets, 2 channels each (video-major, as the snippets are folded into the batch)
    x = torch.tensor([[1., 2.], [3., -1.], [2., 2.], [0., 4.],
                      [1., 1.], [2., 3.], [-1., 0.5], [1., 2.]])
    assert _identity_embedding()(x, segments=4).tolist() == [[1.5, 1.75], [0.75, 1.625]]
    assert _identity_embedding(aggregation="max")(x, segments=4).tolist() == [[3., 4.], [2., 3.]]
    assert _identity_embedding(aggregation="product")(x, segments=4).tolist() == [[0., -16.], [-2., 3.]]
    # concatenation of 2 segments, each the mean of its 2 snippets
    assert _identity_embedding(aggregation="concat", segments=2)(x, segments=4).tolist() == \
        [[2., 0.5, 1., 3.], [1.5, 2., 0., 1.25]]
    with pytest.raises(ValueError, match="sample at least 2"):
        _identity_embedding(aggregation="concat", segments=2)(x, segments=1)
    with pytest.raises(ValueError, match="needs segments"):
        SharedEmbedding(2, aggregation="concat")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        SharedEmbedding(2, aggregation="median")


@pytest.mark.parametrize("aggregation, segments", [("max", None), ("product", None), ("concat", 3)])
def test_ccs_classifies_the_aggregated_embedding(aggregation, segments):
    torch.manual_seed(0)
    model = build_model("ccs", 4, new_length=2, aggregation=aggregation, concat_segments=segments).eval()
    rgb, flow = torch.randn(2, 3, 3, 16, 16), torch.randn(2, 3, 4, 16, 16)
    with torch.no_grad():
        out = model(rgb, flow)
        r, _ = model.features(rgb.flatten(0, 1), flow.flatten(0, 1))
        pooled = r.mean((2, 3)).view(2, 3, -1)  # [B, T, C]
        video = {"max": lambda p: p.amax(1), "product": lambda p: p.prod(1), "concat": lambda p: p.flatten(1)}
        z = model.embedding.fc(video[aggregation](pooled))
        expected = model.rgb_head.fc(z)
    torch.testing.assert_close(out.extras["embeddings"]["rgb"], z)
    torch.testing.assert_close(out["ccs-R"], expected)
    assert out.heads == ["ccs-R", "ccs-F"]


def test_mean_aggregation_is_the_unchanged_network():
    torch.manual_seed(0)
    default = build_model("ccs", 4, new_length=2)
    torch.manual_seed(0)
    mean = build_model("ccs", 4, new_length=2, aggregation="mean")
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), mean.state_dict().values()))
    with pytest.raises(ValueError, match="shared_embedding=True"):
        build_model("ccs", 4, new_length=2, aggregation="max", shared_embedding=False)


def test_fig_5a_is_a_table_without_the_papers_numbers():
    table = get_table("ccs", 5)
    assert table.display_name == "Fig. 5a" and table.key == "zhang2019-table5"
    assert [(r.name, r.options.get("aggregation")) for r in table.rows] == [
        ("Max", "max"), ("Average", "mean"), ("Multiplication", "product"), ("Concatenation", "concat")]
    assert all(not r.paper for r in table.rows) and "only plots" in table.note
    assert table.check_paper_claims()[0]["holds"] is None  # nothing printed to check it on


# ---- 4. CMA §5.7: fine-tuning only the classifier ------------------------------------------------------
def test_finetune_classifier_changes_only_the_last_fc_layers(streams):
    train, late = streams
    model, history, _ = run_method("cma", train, None, 4, config=_config(), init_from=late, finetune="classifier")
    # everything that matches is copied from the trained network, not only the flow branch (Method.initialise)
    torch.manual_seed(0)  # as run_method builds it (seed 0)
    start = build_model("cma", 4, new_length=2).state_dict()
    start.update({k: v for k, v in late.state_dict().items() if k in start})
    assert _changed(start, model) == {"rgb_head.fc.weight", "rgb_head.fc.bias", "flow_head.fc.weight",
                                      "flow_head.fc.bias"}
    assert {k for k in history[0] if k.startswith("loss_")} == {"loss_cma-R", "loss_cma-F"}  # both classifiers
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"rgb_head.fc.weight", "rgb_head.fc.bias", "flow_head.fc.weight", "flow_head.fc.bias"}


def test_classifier_freezing_survives_train_branch_and_keeps_batchnorm_fixed():
    model = build_model("cma", 4, new_length=2, head_hidden=8)
    assert sorted(freeze_all_but_classifiers(model)) == ["flow_head.fc.bias", "flow_head.fc.weight",
                                                         "rgb_head.fc.bias", "rgb_head.fc.weight"]
    model.train_branch("rgb")
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"rgb_head.fc.weight", "rgb_head.fc.bias"}
    model.train()
    assert not model.rgb_tower.training and not model.rgb_head.hidden[0].training and model.rgb_head.fc.training


def test_finetune_classifier_needs_a_trained_network():
    with pytest.raises(ValueError, match="give init_from"):
        run_method("late", SyntheticTwoStream(8, size=16), None, 4, config=_config(), finetune="classifier")
    with pytest.raises(ValueError, match="finetune must be one of"):
        run_method("late", SyntheticTwoStream(8, size=16), None, 4, config=_config(), finetune="heads")


def test_table_6_rows_fine_tune_only_the_classifiers():
    table = get_table("cma", 6)
    assert [(r.name, r.method, r.role, r.paper["UCF101 top-1"]) for r in table.rows] == [
        ("ResNet50-R", "late", "rgb", 90.9), ("ResNet50-F", "late", "flow", 92.4), ("ResNet50-S", "late", "fused", 95.5),
        ("CMA_iter_1-R", "cma", "rgb", 95.3), ("CMA_iter_1-S", "cma", "fused", 96.5)]
    assert all(r.options == {"finetune": "classifier"} for r in table.rows)
    assert "§5.7" in table.row("ResNet50-R").note


# ---- 5. the paper's parameter counts ------------------------------------------------------------------
def _counted_rows():
    for key in sorted(TABLES):
        table = TABLES[key]
        if not table.paper_network:
            continue
        for row in table.buildable:
            if row.parameters is not None:
                yield pytest.param(key, row, id=f"{key}:{row.name}")


def test_the_tables_with_parameter_counts_are_those_of_the_paper():
    assert sorted({key for key, _ in (p.values for p in _counted_rows())}) == [
        "chi2019-table2", "feichtenhofer2016-table1", "feichtenhofer2016-table2"]


@pytest.mark.parametrize("key, row", list(_counted_rows()))
def test_every_row_has_the_papers_parameter_count_or_says_why_not(key, row):
    table = TABLES[key]
    network = dict(table.paper_network)
    num_classes = network.pop("num_classes")
    options = table.resolve(row, network["backbone"]) if table.resolve else dict(row.options)
    options = {k: v for k, v in options.items() if k not in ("finetune", "classifier")}  # training, not the network
    with torch.device("meta"):
        model = build_model(row.method, num_classes, **{**network, **options})
    ours = (table.count_parameters(row, model) if table.count_parameters
            else sum(p.numel() for p in model.parameters()) / 1e6)
    unit = "M" if table.parameter_unit == "M" else "x"
    if abs(ours / row.parameters - 1) > 0.005:  # more than 0.5% off: the row's note says by how much and why
        assert f"{ours:.2f}{unit}" in row.note, (row.name, ours, row.parameters, row.note)
