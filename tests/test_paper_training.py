"""How the papers train (issue 15, defects a-g): a method's training defaults fill only what a config
leaves unset; CMMP's hinge per sample; the non-local baseline fused with equal weights; above-fusion
freezing kept across the alternate schedule's branches; Feichtenhofer's fine-tuning above the
fusion point by default and his chunk sampling; VGG-M-2048's trainable fc head."""
from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch
import torch.nn.functional as F

from fusionkit.data.dataset import TwoStreamDataset, chunk_starts
from fusionkit.data.splits import load_ucf101_split
from fusionkit.methods import build_model, get_method, method_options, run_method
from fusionkit.methods.cmmp import adversarial_objective
from fusionkit.methods.conv_fusion.parameter_counts import fusion_parameter_counts
from fusionkit.models.two_stream import TwoStreamOutput, late_fusion
from fusionkit.models.vggm import VGGMHead
from fusionkit.training.schedules import SCHEDULES
from fusionkit.training.trainer import TrainConfig, Trainer
from tests.helpers import SyntheticTwoStream


def _n(module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- a. a method's training defaults fill what the config leaves unset -------------------------------
def test_train_config_records_the_fields_the_caller_set():
    config = TrainConfig(epochs=3, classes_per_batch=0)
    assert config.explicit == ("epochs", "classes_per_batch")  # 0 is the default, but it was asked for
    assert replace(config, seed=2).explicit == ("epochs", "classes_per_batch", "seed")  # replace keeps them
    assert replace(TrainConfig(), videos_per_class=4).explicit == ("videos_per_class",)
    assert TrainConfig(**asdict(config)).explicit == config.explicit  # a copy through asdict too
    assigned = TrainConfig()
    assigned.lr = 0.01
    assert assigned.explicit == ("lr",)
    assert TrainConfig().set(classes_per_batch=0).explicit == ("classes_per_batch",)
    assert TrainConfig(lr=0.01) == TrainConfig()  # explicit is not compared
    filled = config.with_defaults({"classes_per_batch": 4, "videos_per_class": 4}, schedule="ccs")
    assert (filled.classes_per_batch, filled.videos_per_class, filled.schedule) == (0, 4, "ccs")
    assert filled.explicit == config.explicit
    with pytest.raises(ValueError, match="unknown training default"):
        config.with_defaults({"classes": 4})


def _run_json(tmp_path, name, config, **options):
    run_method("ccs", SyntheticTwoStream(16), None, 4, config=config, out_dir=tmp_path / name, **options)
    return json.loads((tmp_path / name / "run.json").read_text())["train"]


def test_a_passed_config_keeps_the_methods_balanced_batches(tmp_path):
    """CCS's balanced N x M batches (its train_defaults) survive a config that does not mention them,
    as ``fusionkit train --method ccs`` passes; a config that asks for plain batches gets them."""
    assert get_method("ccs").train_defaults == {"classes_per_batch": 4, "videos_per_class": 4}
    cli_like = TrainConfig(epochs=0, batch_size=16, optimizer="adamw", lr=1e-3, seed=0, progress=False)
    train = _run_json(tmp_path, "given", cli_like)
    assert (train["classes_per_batch"], train["videos_per_class"], train["schedule"]) == (4, 4, "ccs")
    assert (train["epochs"], train["optimizer"]) == (0, "adamw")  # the caller's values stay
    plain = TrainConfig(epochs=0, progress=False, classes_per_batch=0, videos_per_class=0)
    train = _run_json(tmp_path, "plain", replace(plain, seed=1))
    assert (train["classes_per_batch"], train["videos_per_class"], train["seed"]) == (0, 0, 1)
    train = _run_json(tmp_path, "other", TrainConfig(epochs=0, progress=False, classes_per_batch=2, videos_per_class=2))
    assert (train["classes_per_batch"], train["videos_per_class"]) == (2, 2)
    train = _run_json(tmp_path, "ce", TrainConfig(epochs=0, progress=False), ranking_losses=False)
    assert (train["classes_per_batch"], train["schedule"]) == (4, "separate")  # a training option, defaults kept


# --- b. CMMP's hinge per sample ------------------------------------------------------------------------
def _out(s_a, s_m):
    return TwoStreamOutput({"a": s_a, "m": s_m, "s": late_fusion(s_a, s_m)}, roles={"rgb": "a", "flow": "m", "fused": "s"},
                           heads=["a", "m"])


def test_the_hinge_compares_the_streams_video_by_video():
    """Eq. 3 is one video's cross-entropy: on a batch where each stream trails on one video, each AL is
    the mean of the videos' L + max(L - L_other, 0), not the hinge of the batch means."""
    labels = torch.tensor([0, 1])
    s_a = torch.tensor([[3.0, 0.0], [1.0, 0.0]], requires_grad=True)  # right and sure, then wrong
    s_m = torch.tensor([[0.0, 0.2], [0.0, 3.0]], requires_grad=True)  # wrong, then right and sure
    l_a, l_m = F.cross_entropy(s_a, labels, reduction="none"), F.cross_entropy(s_m, labels, reduction="none")
    assert (l_a[0] < l_m[0]) and (l_a[1] > l_m[1])
    losses = adversarial_objective(_out(s_a, s_m), labels)
    torch.testing.assert_close(losses["AL_a"], (l_a + torch.relu(l_a - l_m)).mean())
    torch.testing.assert_close(losses["AL_m"], (l_m + torch.relu(l_m - l_a)).mean())
    batch = adversarial_objective(_out(s_a, s_m), labels, hinge="batch")  # the earlier behaviour, on request
    la, lm = l_a.mean(), l_m.mean()
    torch.testing.assert_close(batch["AL_a"], la + torch.relu(la - lm))
    assert not torch.allclose(batch["AL_a"], losses["AL_a"])
    sum(losses.values()).backward()
    # each video's trailing stream gets twice its gradient on that video, the leading one its own
    g_a = torch.autograd.grad(F.cross_entropy(s_a, labels, reduction="none").sum(), s_a)[0] / 2
    torch.testing.assert_close(s_a.grad, g_a * torch.tensor([[1.0], [2.0]]))
    with pytest.raises(ValueError, match="hinge"):
        adversarial_objective(_out(s_a, s_m), labels, hinge="video")


def test_the_hinge_is_a_training_option_of_cmmp():
    option = method_options("cmmp")["hinge"]
    assert (option.kind, option.default) == ("training", "sample")
    configure = get_method("cmmp").configure
    assert configure(TrainConfig(schedule="two_stage")).extra == {"hinge": "sample"}
    config = configure(TrainConfig(schedule="two_stage"), hinge="batch")
    labels = torch.tensor([0, 1])
    s_a, s_m = torch.tensor([[3.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 0.2], [0.0, 3.0]])
    objective = SCHEDULES.lookup("two_stage")(config)
    torch.testing.assert_close(objective(_out(s_a, s_m), labels)["AL_a"],
                               adversarial_objective(_out(s_a, s_m), labels, hinge="batch")["AL_a"])
    default = SCHEDULES.lookup("two_stage")(TrainConfig(schedule="two_stage"))
    torch.testing.assert_close(default(_out(s_a, s_m), labels)["AL_a"],
                               adversarial_objective(_out(s_a, s_m), labels)["AL_a"])
    with pytest.raises(ValueError, match="hinge"):
        configure(TrainConfig(), hinge="mean")
    torch.manual_seed(0)
    late = build_model("late", 4, new_length=2, dropout=0.0)
    _, history, _ = run_method("cmmp", SyntheticTwoStream(8), None, 4, init_from=late, dropout=0.0, hinge="batch",
                               config=TrainConfig(epochs=1, batch_size=8, progress=False))
    assert "loss_AL_cmmp-R" in history[-1]


# --- c. the non-local baseline fuses its separately trained towers equally ------------------------------
def test_nonlocal_fuses_with_equal_weights_and_cma_5_to_1():
    torch.manual_seed(0)
    model = build_model("nonlocal", 4, new_length=2).eval()
    assert model.rgb_weight == 0.5 and build_model("cma", 4, new_length=2).rgb_weight == 5 / 6
    rgb, flow = torch.randn(2, 2, 3, 32, 32), torch.randn(2, 2, 4, 32, 32)
    with torch.no_grad():
        out = model(rgb, flow)
    torch.testing.assert_close(out["nonlocal-S"], late_fusion(out["nonlocal-R"], out["nonlocal-F"], 0.5))
    assert build_model("nonlocal", 4, new_length=2, rgb_weight=5 / 6).rgb_weight == 5 / 6  # notebook 06's


# --- d. above-fusion freezing survives the alternate schedule --------------------------------------------
def _requires_grad(module) -> set[bool]:
    return {p.requires_grad for p in module.parameters()}


def test_train_branch_keeps_the_layers_below_the_fusion_point_frozen():
    torch.manual_seed(0)
    model = build_model("cma", 4, new_length=2, dropout=0.0, positions=["stage1.1"])
    assert model.freeze_below_fusion() == ["stage1.0-1", "stem"]
    below = [model.rgb_tower.stages["stem"], model.flow_tower.stages["stem"], model.rgb_tower.stages["stage1"][0],
             model.flow_tower.stages["stage1"][1]]
    for branch, other in (("rgb", "flow"), ("flow", "rgb")):
        model.train_branch(branch)
        model.train()
        for module in below:
            assert _requires_grad(module) == {False} and not module.training, branch
        assert _requires_grad(getattr(model, f"{branch}_tower").stages["stage2"]) == {True}
        assert _requires_grad(getattr(model, f"{other}_tower").stages["stage2"]) == {False}


def test_the_alternate_schedule_leaves_the_frozen_layers_as_they_were():
    torch.manual_seed(0)
    model = build_model("cma", 4, new_length=2, dropout=0.0, positions=["stage1.1"])
    model.freeze_below_fusion()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    below = ("rgb_tower.stages.stem.", "flow_tower.stages.stem.", "rgb_tower.stages.stage1.0.", "flow_tower.stages.stage1.1.")
    frozen = [k for k in before if k.startswith(below)]
    assert len(frozen) > 10
    config = TrainConfig(epochs=1, iterations=2, batch_size=8, optimizer="adamw", lr=3e-3, progress=False,
                         schedule="alternate")
    Trainer(model, SyntheticTwoStream(16, size=32), config).fit()
    after = model.state_dict()
    for name in frozen:
        assert after[name].equal(before[name]), name  # weights and BatchNorm statistics alike
    for tower in ("rgb_tower", "flow_tower"):  # each branch trained above the fusion point in its iteration
        assert not after[f"{tower}.stages.stage2.0.conv.weight"].equal(before[f"{tower}.stages.stage2.0.conv.weight"])


# --- e. Feichtenhofer §3.5: fine-tuning above the fusion point by default ---------------------------------
def test_feichtenhofer_methods_fine_tune_above_the_fusion_point_by_default():
    assert get_method("spatial").finetune == get_method("conv_fusion").finetune == "above_fusion"
    assert get_method("cma").finetune == "all"
    data = SyntheticTwoStream(8, size=32)
    cfg = TrainConfig(epochs=0, progress=False)
    torch.manual_seed(0)
    late = build_model("late", 4, new_length=2, head_hidden=16)
    paper, _, _ = run_method("spatial", data, None, 4, config=cfg, init_from=late, head_hidden=16, fusion="conv",
                             position="stage1")
    assert _requires_grad(paper.rgb_tower.stages["stem"]) == {False} == _requires_grad(paper.flow_tower.stages["stage1"])
    assert _requires_grad(paper.rgb_tower.stages["stage2"]) == {True}
    everything, _, _ = run_method("spatial", data, None, 4, config=cfg, init_from=late, head_hidden=16, fusion="conv",
                                  position="stage1", finetune="all")
    assert _requires_grad(everything) == {True}
    temporal, _, _ = run_method("conv_fusion", data, None, 4, config=cfg, init_from=late)
    assert _requires_grad(temporal.rgb_tower) == {False} and _requires_grad(temporal.temporal_fusion) == {True}


# --- f. Feichtenhofer §3.4-3.5: T chunks tau frames apart --------------------------------------------------
def _tau(starts):
    gaps = {b - a for a, b in zip(starts, starts[1:])}
    assert len(gaps) == 1, starts
    return gaps.pop()


def test_chunk_starts_in_training_are_tau_apart_with_tau_drawn_from_the_range():
    g = torch.Generator().manual_seed(0)
    taus, firsts = set(), set()
    for _ in range(400):
        starts = chunk_starts(100, 5, True, stride=(1, 10), generator=g)
        tau = _tau(starts)
        assert 1 <= tau <= 10 and starts[0] >= 0 and starts[-1] <= 99
        taus.add(tau)
        firsts.add(starts[0])
    assert taus == set(range(1, 11))  # every stride of [1, 10] is drawn
    assert min(firsts) == 0 and max(firsts) >= 55  # the starting frame is random too
    short = [chunk_starts(19, 5, True, generator=g) for _ in range(100)]  # 19 starts: tau <= 4 fits
    assert {_tau(s) for s in short} == {1, 2, 3, 4} and all(s[-1] <= 18 for s in short)
    assert {_tau(chunk_starts(100, 5, True, stride=3, generator=g)) for _ in range(20)} == {3}


def test_chunk_starts_in_testing_are_fixed_and_centred():
    assert chunk_starts(100, 5, False) == [39, 44, 49, 54, 59]  # tau = 5, the middle of [1, 10]
    assert chunk_starts(100, 5, False, test_stride=2) == [45, 47, 49, 51, 53]
    assert chunk_starts(100, 5, False) == chunk_starts(100, 5, False)
    assert chunk_starts(19, 5, False) == [1, 5, 9, 13, 17]  # tau 5 does not fit: the largest that does, 4
    assert chunk_starts(3, 5, False) == [0, 1, 2, 2, 2]  # fewer starts than chunks
    assert chunk_starts(3, 5, True) == [0, 1, 2, 2, 2]
    assert len(chunk_starts(10, 1, True)) == 1
    with pytest.raises(ValueError, match="stride"):
        chunk_starts(100, 5, True, stride=(4, 2))
    with pytest.raises(ValueError, match="no valid snippet start"):
        chunk_starts(0, 5, True)


def test_dataset_samples_neighbouring_chunks(motion_puzzle, motion_cache):
    split = load_ucf101_split(motion_puzzle)
    train = TwoStreamDataset(split.train, motion_cache, num_segments=3, new_length=2, sampling="chunks", stride=(1, 3))
    num_starts = train.meta[0]["flows"] - 2 + 1
    torch.manual_seed(0)
    draws = [train.snippet_starts(0) for _ in range(60)]
    assert {_tau(s) for s in draws} == {1, 2, 3} and all(0 <= s[0] and s[-1] < num_starts for s in draws)
    torch.manual_seed(0)
    assert [train.snippet_starts(0) for _ in range(60)] == draws  # the trainer's seeding makes them reproducible
    item = train[0]
    assert item["rgb"].shape[0] == 3 and item["flow"].shape[:2] == (3, 4)
    test = TwoStreamDataset(split.test, motion_cache, num_segments=3, new_length=2, train=False, sampling="chunks",
                            stride=(1, 3))
    assert test.snippet_starts(0) == chunk_starts(test.meta[0]["flows"] - 1, 3, False, (1, 3))
    assert TwoStreamDataset(split.test, motion_cache, num_segments=3, new_length=2, train=False).sampling == "tsn"
    with pytest.raises(ValueError, match="sampling"):
        TwoStreamDataset(split.test, motion_cache, sampling="dense")


# --- g. VGG-M-2048's fc head, trainable -----------------------------------------------------------------------
def test_vggm_fc_head_has_the_parameter_counts_of_tables_1_and_2():
    counts = fusion_parameter_counts()
    paper_towers = dict(backbone="vggm2048", new_length=10, head="vggm_fc", input_size=224)
    with torch.device("meta"):
        late = build_model("late", 101, **paper_towers)
        sum5 = build_model("spatial", 101, fusion="sum", **paper_towers)
        conv5 = build_model("spatial", 101, fusion="conv", **paper_towers)
    assert isinstance(late.rgb_head, VGGMHead) and isinstance(late.flow_head, VGGMHead)
    assert _n(late) == counts["T1 sum@softmax"]["parameters"]
    assert _n(sum5) == counts["T1 sum@ReLU5"]["parameters"]
    assert _n(conv5) == counts["T1 conv@ReLU5"]["parameters"]
    assert {"head", "input_size"} <= set(method_options("late"))


def test_vggm_fc_head_trains_one_step():
    torch.manual_seed(0)
    model = build_model("late", 4, backbone="vggm2048", new_length=2, head="vggm_fc", input_size=64, dropout=0.5)
    assert model.rgb_head.layers.fc6.in_features == 512 and model.rgb_head.layers.fc7.out_features == 2048
    fc6 = model.rgb_head.layers.fc6.weight.detach().clone()
    config = TrainConfig(epochs=1, batch_size=4, optimizer="sgd", lr=1e-2, progress=False)
    history = Trainer(model, SyntheticTwoStream(4, segments=1, size=64), config).fit()
    assert torch.isfinite(torch.tensor(history[-1]["loss"]))
    assert not model.rgb_head.layers.fc6.weight.equal(fc6)
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 1, 3, 64, 64), torch.randn(2, 1, 4, 64, 64))
    assert out["rgb"].shape == (2, 4) and set(out) == {"rgb", "flow", "late"}


def test_vggm_fc_head_on_time_stacked_maps_and_bad_combinations():
    head = VGGMHead(8, 3, fc6=16, fc7=8, input_size=64).eval()
    maps = torch.randn(2, 8, 3, 3, 3)  # [N, C, T, H, W]
    with torch.no_grad():
        expected = torch.stack([head(maps[:, :, t]) for t in range(3)], 1).mean(1)
        torch.testing.assert_close(head(maps), expected)
    with pytest.raises(ValueError, match="vggm2048"):
        build_model("late", 4, backbone="tiny", head="vggm_fc")
    with pytest.raises(ValueError, match="head must be one of"):
        build_model("late", 4, head="svm")
