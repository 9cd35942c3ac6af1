"""Cross-modal message passing (Wang et al. 2018, Eq. 1-5) against references written from the equations."""
import pytest
import torch
import torch.nn.functional as F

from fusionkit.fusion import build_fusion
from fusionkit.methods import get_method, run_method
from fusionkit.models.two_stream import TwoStreamOutput, late_fusion
from fusionkit.methods import build_model
from fusionkit.methods.cmmp import adversarial_objective
from fusionkit.training.trainer import TrainConfig
from tests.helpers import SyntheticTwoStream


def _maps(b=2, c_rgb=6, c_flow=4, t=3, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randn(b, c_rgb, t, 5, 4, generator=g, dtype=torch.float64)
    flow = torch.randn(b, c_flow, t, 5, 4, generator=g, dtype=torch.float64)
    return rgb.requires_grad_(grad), flow.requires_grad_(grad)


def _lstm_by_hand(lstm: torch.nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """A stacked LSTM written out (PyTorch's gate order i, f, g, o): the top layer's h at every step."""
    for layer in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
        b = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        h = x.new_zeros(x.shape[0], lstm.hidden_size)
        c = torch.zeros_like(h)
        outputs = []
        for t in range(x.shape[1]):
            i, f, g, o = (x[:, t] @ w_ih.T + h @ w_hh.T + b).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        x = torch.stack(outputs, 1)
    return x


@pytest.mark.parametrize("fusion, merge", [("mean", lambda x, m: (x + m) / 2), ("sum", torch.add),
                                           ("max", torch.maximum)])
def test_messages_and_fusion_match_eq_1_and_2(fusion, merge):
    torch.manual_seed(0)
    block = build_fusion("cmmp", rgb_channels=6, flow_channels=4, fusion=fusion).double()
    rgb, flow = _maps()
    fused_a, fused_m = block(rgb, flow)
    assert fused_a.shape == (2, 6, 3, 1, 1) and fused_m.shape == (2, 4, 3, 1, 1)
    x_a, x_m = rgb.mean((3, 4)).transpose(1, 2), flow.mean((3, 4)).transpose(1, 2)  # [B, T, D]
    m_a, m_m = _lstm_by_hand(block.lstm_a, x_a), _lstm_by_hand(block.lstm_m, x_m)  # Eq. 1
    assert m_a.shape == (2, 3, 4) and m_m.shape == (2, 3, 6)  # a message has its target's width
    torch.testing.assert_close(fused_a[..., 0, 0].transpose(1, 2), merge(x_a, m_m))  # Eq. 2
    torch.testing.assert_close(fused_m[..., 0, 0].transpose(1, 2), merge(x_m, m_a))


def test_lstm_messages_see_the_order_of_the_segments_and_identity_messages_do_not():
    torch.manual_seed(0)
    rgb, flow = torch.randn(2, 3, 3, 32, 32), torch.randn(2, 3, 4, 32, 32)  # [B, T, C, H, W]
    reverse = [2, 1, 0]
    lstm = build_model("cmmp", 4, new_length=2).eval()
    identity = build_model("cmmp", 4, new_length=2, messages="identity", fusion="sum").eval()
    with torch.no_grad():
        out, out_rev = lstm(rgb, flow), lstm(rgb[:, reverse], flow[:, reverse])
        assert not torch.allclose(out["cmmp-R"], out_rev["cmmp-R"])
        plain, plain_rev = identity(rgb, flow), identity(rgb[:, reverse], flow[:, reverse])
        torch.testing.assert_close(plain["cmmp-R"], plain_rev["cmmp-R"])  # averaging over T forgets order


def test_gradient_paths_joint_by_default_and_own_network_only_when_asked():
    """By default the appearance loss reaches the motion tower through lstm_m (the whole network is
    trained jointly, §3.4); with own_gradients it trains only the appearance tower, its classifier and
    lstm_m (which writes the appearance network's message), never the motion tower or lstm_a."""
    got = lambda m: any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())  # noqa: E731
    rgb, flow, labels = torch.randn(2, 2, 3, 32, 32), torch.randn(2, 2, 4, 32, 32), torch.tensor([0, 1])
    torch.manual_seed(0)
    joint = build_model("cmmp", 4, new_length=2)
    F.cross_entropy(joint(rgb, flow)["cmmp-R"], labels).backward()
    assert got(joint.rgb_tower) and got(joint.temporal_fusion.lstm_m) and got(joint.flow_tower)
    assert not got(joint.temporal_fusion.lstm_a)  # lstm_a writes the motion message, which cmmp-R never reads

    torch.manual_seed(0)
    model = build_model("cmmp", 4, new_length=2, own_gradients=True)
    F.cross_entropy(model(rgb, flow)["cmmp-R"], labels).backward()
    block = model.temporal_fusion
    assert got(model.rgb_tower) and got(model.rgb_head) and got(block.lstm_m)
    assert not got(model.flow_tower) and not got(block.lstm_a) and not got(model.flow_head)
    assert block.branch_modules("rgb") == [block.lstm_m] and block.branch_modules("flow") == [block.lstm_a]


def _out(s_a, s_m):
    # the objective finds the appearance and motion scores by role, not by name or order of heads
    return TwoStreamOutput({"m": s_m, "a": s_a, "s": late_fusion(s_a, s_m)}, roles={"rgb": "a", "flow": "m", "fused": "s"},
                           heads=["m", "a"])


def test_adversarial_objective_equals_eq_4_and_5_with_the_hinge_at_zero():
    labels = torch.tensor([0, 1])
    s_a = torch.tensor([[2.0, 0.0], [0.0, 2.0]], requires_grad=True)  # confident and right: low loss
    s_m = torch.tensor([[0.0, 0.5], [0.5, 0.0]], requires_grad=True)  # wrong: high loss
    l_a, l_m = F.cross_entropy(s_a, labels), F.cross_entropy(s_m, labels)
    losses = adversarial_objective(_out(s_a, s_m), labels)
    assert set(losses) == {"AL_a", "AL_m"}
    # the appearance network is ahead: its hinge is zero, AL_a = L_a
    torch.testing.assert_close(losses["AL_a"], l_a)
    # the motion network is behind: AL_m = L_m + (L_m - L_a) = 2 L_m - L_a
    torch.testing.assert_close(losses["AL_m"], 2 * l_m - l_a)
    sum(losses.values()).backward()
    # the other loss is a constant inside each hinge: each stream gets 1x / 2x its own CE gradient
    g_a = torch.autograd.grad(F.cross_entropy(s_a, labels), s_a)[0]
    g_m = torch.autograd.grad(F.cross_entropy(s_m, labels), s_m)[0]
    torch.testing.assert_close(s_a.grad, g_a)
    torch.testing.assert_close(s_m.grad, 2 * g_m)


def test_two_stage_training_starts_from_the_pretrained_streams():
    """§3.4: stage 1 trains each stream alone with cross-entropy (the `late` model, no message passing);
    stage 2 starts the CMMP network from its towers and classifiers, with fresh message generators."""
    method = get_method("cmmp")
    assert (method.schedule, method.pretrain) == ("two_stage", "late")
    data = SyntheticTwoStream(8)
    torch.manual_seed(0)
    late = build_model("late", 4, new_length=2, dropout=0.0)
    torch.manual_seed(0)  # run_method seeds the initial weights from config.seed (0)
    fresh = build_model("cmmp", 4, new_length=2, dropout=0.0)
    model, history, _ = run_method("cmmp", data, None, 4, config=TrainConfig(epochs=0, progress=False),
                                   init_from=late, dropout=0.0)
    assert history == []
    for name, value in model.state_dict().items():
        if name.startswith(("rgb_tower", "flow_tower", "rgb_head", "flow_head")):
            assert value.equal(late.state_dict()[name]), name
        else:  # the message generators are not part of stage 1
            assert value.equal(fresh.state_dict()[name]), name


def test_stage_two_trains_on_the_adversarial_objective():
    torch.manual_seed(0)
    late = build_model("late", 4, new_length=2, dropout=0.0)
    _, history, _ = run_method("cmmp", SyntheticTwoStream(16), None, 4, init_from=late, dropout=0.0,
                               config=TrainConfig(epochs=2, batch_size=8, optimizer="adamw", lr=3e-3, progress=False))
    assert {"loss_AL_cmmp-R", "loss_AL_cmmp-F"} <= set(history[-1])


def test_without_the_adversarial_objective_stage_two_trains_on_each_streams_cross_entropy():
    """Table 1's CMMP+noAL is the cmmp method with the training option adversarial=False."""
    method = get_method("cmmp")
    assert method.configure(TrainConfig(schedule="two_stage"), adversarial=True).schedule == "two_stage"
    assert method.configure(TrainConfig(schedule="two_stage"), adversarial=False).schedule == "finetune"
    torch.manual_seed(0)
    late = build_model("late", 4, new_length=2, dropout=0.0)
    model, history, _ = run_method("cmmp", SyntheticTwoStream(16), None, 4, init_from=late, dropout=0.0, adversarial=False,
                                   config=TrainConfig(epochs=2, batch_size=8, optimizer="adamw", lr=3e-3, progress=False))
    assert type(model.temporal_fusion).__name__ == "MessagePassing"  # the same network
    losses = {k for k in history[-1] if k.startswith("loss_") and k != "loss_total"}
    assert {"loss_cmmp-R", "loss_cmmp-F"} <= losses and not any("AL_" in k for k in losses)
    with pytest.raises(ValueError, match="training option"):  # not a model option
        build_model("cmmp", 4, new_length=2, adversarial=False)


def test_bad_configurations_are_explained():
    with pytest.raises(ValueError, match="'lstm' or 'identity'"):
        build_fusion("cmmp", rgb_channels=4, flow_channels=4, messages="gru")
    with pytest.raises(ValueError, match="fusion must be one of"):
        build_fusion("cmmp", rgb_channels=4, flow_channels=4, fusion="concat")
    with pytest.raises(ValueError, match="equal widths"):
        build_fusion("cmmp", rgb_channels=4, flow_channels=6, messages="identity")
    with pytest.raises(ValueError, match="temporal_fusion"):
        build_fusion("cmmp", rgb_channels=4, flow_channels=4)(torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5))
