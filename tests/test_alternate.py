"""Chi et al.'s iterative training (§4.3): one branch at a time, the other frozen, LR reset per iteration."""
import pytest
import torch

from fusionkit.fusion import FusionChain, build_fusion
from fusionkit.methods import get_method
from fusionkit.methods.recipe import initialise_from
from fusionkit.methods import build_model
from fusionkit.training.trainer import CHECKPOINT, TrainConfig, Trainer
from fusionkit.training.schedules import alternate_branches
from tests.helpers import SyntheticTwoStream

CFG = dict(epochs=2, batch_size=8, optimizer="adamw", lr=3e-3, weight_decay=0.0, progress=False,
           schedule="alternate")


def _cma(seed=0, **kwargs):
    torch.manual_seed(seed)
    return build_model("cma", 4, new_length=2, dropout=0.0, positions=["stage1.1"], **kwargs)


def _snapshot(modules):
    return [t.detach().clone() for m in modules for t in [*m.parameters(), *m.buffers()]]


def test_branches_alternate_rgb_first():
    assert alternate_branches(4) == ["rgb", "flow", "rgb", "flow"]
    assert alternate_branches(2, first="flow") == ["flow", "rgb"]
    with pytest.raises(ValueError, match="'rgb' or 'flow'"):
        alternate_branches(2, first="audio")
    with pytest.raises(ValueError, match="iterations >= 1"):
        alternate_branches(0)


def test_branch_modules_split_the_cma_units():
    model = _cma()
    block = model.fusion_blocks["stage1:1"]
    rgb, flow = model.branch_modules("rgb"), model.branch_modules("flow")
    assert block.rgb_attention in rgb and block.flow_attention in flow
    assert model.rgb_tower in rgb and model.rgb_head in rgb and model.flow_tower in flow
    ids = lambda ms: {id(p) for m in ms for p in m.parameters()}  # noqa: E731
    assert not ids(rgb) & ids(flow)
    assert ids(rgb) | ids(flow) == {id(p) for p in model.parameters()}  # nothing belongs to no branch


@pytest.mark.parametrize("iteration", [0, 1])
def test_the_frozen_branch_does_not_change_during_an_iteration(iteration):
    """Iteration 1 trains the RGB branch only; iteration 2 the flow branch only, the RGB branch's CMA
    units, BatchNorm statistics and classifier included in what stays fixed."""
    model = _cma()
    trainer = Trainer(model, SyntheticTwoStream(16), TrainConfig(**{**CFG, "iterations": 2}))
    trainer.enter_phase(iteration)
    trained, frozen = ("rgb", "flow") if iteration == 0 else ("flow", "rgb")
    before_frozen, before_trained = _snapshot(model.branch_modules(frozen)), _snapshot(model.branch_modules(trained))
    trainer.train_epoch(iteration * 2)
    after_frozen, after_trained = _snapshot(model.branch_modules(frozen)), _snapshot(model.branch_modules(trained))
    assert all(a.equal(b) for a, b in zip(before_frozen, after_frozen))
    assert sum(not a.equal(b) for a, b in zip(before_trained, after_trained)) > len(before_trained) // 2


def test_iterations_reset_the_lr_train_their_branch_and_weight_the_scores_towards_it():
    model = _cma()
    history = Trainer(model, SyntheticTwoStream(16), TrainConfig(**{**CFG, "iterations": 3})).fit()
    assert [r["branch"] for r in history] == ["rgb", "rgb", "flow", "flow", "rgb", "rgb"]
    assert [r["iteration"] for r in history] == [1, 1, 2, 2, 3, 3]
    assert [r["lr"] for r in history] == pytest.approx([3e-3, 1.5e-3] * 3)  # cosine restarts each iteration
    assert set(history[0]) >= {"loss_cma-R"} and "loss_cma-F" not in history[0]
    assert set(history[2]) >= {"loss_cma-F"} and "loss_cma-R" not in history[2]
    assert model.rgb_weight == pytest.approx(5 / 6)  # §5.2: 5:1 after an RGB iteration
    Trainer(model, SyntheticTwoStream(16), TrainConfig(**{**CFG, "iterations": 2})).fit()
    assert model.rgb_weight == pytest.approx(1 / 6)  # 1:5 after a flow iteration


def test_resume_across_an_iteration_boundary_gives_the_same_model(tmp_path):
    data, config = SyntheticTwoStream(16), TrainConfig(**{**CFG, "iterations": 2})
    reference = _cma()
    Trainer(reference, data, config).fit()

    class Interrupted(Trainer):
        def train_epoch(self, epoch):
            if epoch == 3:  # mid-way through iteration 2, after its first epoch was checkpointed
                raise KeyboardInterrupt
            return super().train_epoch(epoch)

    with pytest.raises(KeyboardInterrupt):
        Interrupted(_cma(), data, config, out_dir=tmp_path).fit()
    assert torch.load(tmp_path / CHECKPOINT, weights_only=False)["epoch"] == 3
    resumed = _cma(seed=7)
    Trainer(resumed, data, config, out_dir=tmp_path).fit(resume=True)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name, rtol=0, atol=0)


def test_alternate_needs_a_model_with_branches():
    with pytest.raises(TypeError, match="train_branch"):
        Trainer(torch.nn.Linear(2, 2), SyntheticTwoStream(4), TrainConfig(**CFG))


def test_the_cma_method_starts_from_a_separately_trained_flow_branch_only():
    """§4.3: the flow branch is trained first; the RGB branch is not taken from the two-stream
    baseline (Table 1's footnote)."""
    method = get_method("cma")
    assert (method.schedule, method.pretrain) == ("alternate", "late")
    torch.manual_seed(1)
    late = build_model("late", 4, new_length=2, dropout=0.0)
    model = _cma()
    copied = initialise_from(model, late, method.initialise)
    assert copied and all(k.startswith(("flow_tower.", "flow_head.")) for k in copied)
    assert model.flow_tower.state_dict().keys() == late.flow_tower.state_dict().keys()
    for a, b in zip(model.flow_tower.state_dict().values(), late.flow_tower.state_dict().values()):
        assert a.equal(b)
    assert not model.rgb_tower.stages["stem"][0].conv.weight.equal(late.rgb_tower.stages["stem"][0].conv.weight)


def test_cma_behind_nonlocal_chain():
    """Table 4's "CMA + non-local": a non-local block in the RGB branch, then a CMA block, at each position."""
    model = _cma(fusion=("nonlocal", "cma"), fusion_options=({"directions": "rgb"}, {})).eval()
    chain = model.fusion_blocks["stage1:1"]
    assert isinstance(chain, FusionChain) and chain.fuses_streams
    nonlocal_block, cma_block = chain.blocks
    assert nonlocal_block.flow_attention is None
    assert chain.branch_modules("rgb") == [nonlocal_block.rgb_attention, cma_block.rgb_attention]
    assert chain.branch_modules("flow") == [cma_block.flow_attention]
    out = model(torch.randn(2, 2, 3, 32, 32), torch.randn(2, 2, 4, 32, 32))
    # the outputs take the method's name, whichever blocks it chains
    assert out.roles == {"rgb": "cma-R", "flow": "cma-F", "fused": "cma-S"}
    assert out.heads == ["cma-R", "cma-F"]
    with pytest.raises(ValueError, match="one dict per block"):
        _cma(fusion=("nonlocal", "cma"), fusion_options={})


def test_chain_checks_channels_between_its_blocks():
    with pytest.raises(ValueError, match="outputs 16/8 rgb/flow channels"):
        FusionChain([build_fusion("concat", rgb_channels=8, flow_channels=8),
                     build_fusion("sum", rgb_channels=8, flow_channels=8)])
