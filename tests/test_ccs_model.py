"""The CCS network (Zhang et al. 2019, Fig. 2) and its training: shared embeddings, ranking losses, balanced batches."""
import pytest
import torch

from fusionkit.methods.ccs import ConnectionBlock
from fusionkit.methods import get_method, run_method
from fusionkit.methods import build_model
from fusionkit.training.trainer import TrainConfig, Trainer
from tests.helpers import SyntheticTwoStream


def _inputs(b=4, t=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, 3, 32, 32, generator=g), torch.randn(b, t, 4, 32, 32, generator=g)


def test_outputs_and_embeddings_of_the_shared_block():
    torch.manual_seed(0)
    model = build_model("ccs", 5, new_length=2, embedding_dim=16).eval()
    assert isinstance(model.fusion_blocks["stage2"], ConnectionBlock)
    rgb, flow = _inputs()
    with torch.no_grad():
        out = model(rgb, flow)
        r, f = model.features(rgb.flatten(0, 1), flow.flatten(0, 1))
    assert out.heads == ["ccs-R", "ccs-F"] and out["ccs-R"].shape == (4, 5)
    z = out.extras["embeddings"]
    # z of a video = the shared layer applied to its snippets' pooled features, averaged over the snippets;
    # one layer for both streams
    expected_rgb = model.embedding.fc(r.mean((2, 3))).view(4, 3, -1).mean(1)
    expected_flow = model.embedding.fc(f.mean((2, 3))).view(4, 3, -1).mean(1)
    torch.testing.assert_close(z["rgb"], expected_rgb)
    torch.testing.assert_close(z["flow"], expected_flow)
    # the classifiers read the embeddings: a linear head of the mean embedding is the mean of the snippets' scores
    torch.testing.assert_close(out["ccs-R"], model.rgb_head.fc(z["rgb"]))


def test_the_connection_block_starts_as_the_identity_inside_the_network():
    torch.manual_seed(0)
    with_block = build_model("ccs", 5, new_length=2).eval()
    without = build_model("ccs", 5, new_length=2, fusion=None).eval()
    assert isinstance(with_block.block_at("stage2"), ConnectionBlock) and len(without.fusion_blocks) == 0
    without.load_state_dict({k: v for k, v in with_block.state_dict().items() if not k.startswith("fusion_blocks")})
    rgb, flow = _inputs()
    with torch.no_grad():
        a, b = with_block(rgb, flow), without(rgb, flow)
    assert a.roles == b.roles == {"rgb": "ccs-R", "flow": "ccs-F", "fused": "ccs-S"}
    for name in ("ccs-R", "ccs-F", "ccs-S"):
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)


def test_ccs_training_uses_eq_6_and_balanced_batches():
    seen = []

    class Recording(SyntheticTwoStream):
        def __getitem__(self, i):
            seen.append(i)
            return super().__getitem__(i)

    data = Recording(24)
    torch.manual_seed(0)
    model = build_model("ccs", 4, new_length=2, dropout=0.0, embedding_dim=8)
    config = TrainConfig(epochs=2, optimizer="adamw", lr=3e-3, progress=False, schedule="ccs",
                         classes_per_batch=2, videos_per_class=3, extra={"alpha1": 0.5})
    trainer = Trainer(model, data, config)
    assert trainer.sampler.batch_size == 6
    history = trainer.fit()
    assert {"loss_triplet", "loss_embedding", "loss_ccs-R", "loss_ccs-F"} <= set(history[-1])
    # each batch of 6 holds 2 classes x 3 videos
    batches = [seen[i:i + 6] for i in range(0, len(seen), 6)]
    for batch in batches:
        labels = sorted(data.records[i].label for i in batch)
        assert len(set(labels)) == 2 and all(labels.count(c) == 3 for c in set(labels))
    with pytest.raises(TypeError, match="unexpected keyword"):
        Trainer(model, data, TrainConfig(schedule="ccs", extra={"margin": 1.0}))


def test_the_ccs_methods():
    method = get_method("ccs")
    assert method.schedule == "ccs"
    # cross-entropy only (the old ccs_ce) is the training option ranking_losses=False
    assert method.configure(TrainConfig(schedule="ccs"), ranking_losses=True).schedule == "ccs"
    assert method.configure(TrainConfig(schedule="ccs"), ranking_losses=False).schedule == "separate"
    with pytest.raises(KeyError, match="ccs_ce"):
        get_method("ccs_ce")
    torch.manual_seed(0)
    model, history, metrics = run_method("ccs", SyntheticTwoStream(16), SyntheticTwoStream(8), 4, dropout=0.0,
                                         embedding_dim=8, config=TrainConfig(epochs=1, progress=False, schedule="ccs",
                                                                             classes_per_batch=2, videos_per_class=2))
    assert set(metrics) == {"ccs-R", "ccs-F", "ccs-S"} and len(history) == 1
    assert {"loss_triplet", "loss_embedding"} <= set(history[-1])
    torch.manual_seed(0)
    _, history, metrics = run_method("ccs", SyntheticTwoStream(16), SyntheticTwoStream(8), 4, dropout=0.0,
                                     embedding_dim=8, ranking_losses=False,
                                     config=TrainConfig(epochs=1, progress=False, classes_per_batch=2, videos_per_class=2))
    assert set(metrics) == {"ccs-R", "ccs-F", "ccs-S"} and len(history) == 1
    losses = {k for k in history[-1] if k.startswith("loss_")}
    assert {"loss_ccs-R", "loss_ccs-F"} <= losses and not {"loss_triplet", "loss_embedding"} & losses
