"""CAM of a two-stream network through the grad-cam library: the adapter, checked against Grad-CAM by hand."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAMPlusPlus

from fusionkit.models.two_stream import build_model
from fusionkit.viz.cam import SingleInputTwoStream, two_stream_cam


def _video(t=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, 3, size, size, generator=g), torch.randn(t, 4, size, size, generator=g)


def _grad_cam_by_hand(model, rgb, flow, output, layer, target):
    """Selvaraju et al.: weights = spatial mean of d score / d A, map = ReLU(sum_k w_k A_k), per snippet,
    resized to the frame and scaled to [0, 1] per snippet (as the library does)."""
    store = {}

    def keep(module, inputs, output):
        store["a"] = output
        output.register_hook(lambda grad: store.update(g=grad))

    handle = layer.register_forward_hook(keep)
    score = model(rgb[None], flow[None])[output][0, target]
    score.backward()
    handle.remove()
    weights = store["g"].mean((2, 3), keepdim=True)
    cam = F.relu((weights * store["a"]).sum(1))  # [T, h, w]
    cam = F.interpolate(cam[:, None], size=rgb.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach().numpy()
    cam = cam - cam.min(axis=(1, 2), keepdims=True)
    return cam / (cam.max(axis=(1, 2), keepdims=True) + 1e-7)


@pytest.mark.parametrize("stream", ["rgb", "flow"])
def test_grad_cam_of_a_stream_equals_the_computation_by_hand(stream):
    torch.manual_seed(0)
    model = build_model("cmmp", 4, new_length=2).eval()
    rgb, flow = _video()
    cams = two_stream_cam(model, rgb, flow, "cmmp-S", stream=stream, target_class=2)
    assert cams.shape == (3, 32, 32) and cams.min() >= 0 and cams.max() <= 1
    tower = model.rgb_tower if stream == "rgb" else model.flow_tower
    expected = _grad_cam_by_hand(model, rgb, flow, "cmmp-S", tower.stages["stage2"], 2)
    # the library resizes with OpenCV, we with torch: compare where the maps are large and small
    assert np.corrcoef(cams.ravel(), expected.ravel())[0, 1] > 0.98


def test_other_methods_of_the_library_and_the_predicted_class():
    torch.manual_seed(0)
    model = build_model("late", 4, new_length=2).eval()
    rgb, flow = _video()
    cams = two_stream_cam(model, rgb, flow, "rgb", method=GradCAMPlusPlus)
    assert cams.shape == (3, 32, 32) and np.isfinite(cams).all()


def test_the_adapter_takes_one_stacked_video_and_names_its_outputs():
    model = build_model("late", 4, new_length=2).eval()
    rgb, flow = _video()
    wrapped = SingleInputTwoStream(model, "late")
    torch.testing.assert_close(wrapped(torch.cat([rgb, flow], 1)), model(rgb[None], flow[None])["late"])
    with pytest.raises(KeyError, match="outputs are"):
        SingleInputTwoStream(model, "cma-R")(torch.cat([rgb, flow], 1))
    with pytest.raises(ValueError, match=r"\[T, 3 \+ 2L, H, W\]"):
        wrapped(rgb[None])
    with pytest.raises(ValueError, match="stream"):
        two_stream_cam(model, rgb, flow, "late", stream="audio")
