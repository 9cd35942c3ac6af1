"""CAM of a two-stream network through the grad-cam library: the adapter checked against Grad-CAM by
hand (2D per-snippet and 3D clip maps), every method x model, the choice of layer, the drawing, and
a trained RGB tower whose CAM peaks on the sprites of `registration` videos."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam import GradCAMPlusPlus
from scipy.ndimage import distance_transform_edt

from fusionkit.data.puzzles import SHAPES, coverage, get_puzzle, make_background
from fusionkit.data.transforms import Normalize
from fusionkit.methods import build_model
from fusionkit.viz.cam import (CAM_METHODS, SingleInputTwoStream, cam_overlay, cam_target_layer, get_cam_method,
                               plot_cam_strip, snippet_images, two_stream_cam, video_cams)


def _video(t=3, size=32, seed=0, flow_channels=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t, 3, size, size, generator=g), torch.randn(t, flow_channels, size, size, generator=g)


def _grad_cam_by_hand(model, rgb, flow, output, layer, target, clip=False):
    """Selvaraju et al.: weights = mean of d score / d A over the map's positions, map = ReLU(sum_k w_k A_k),
    resized to the frames and scaled to [0, 1] (per snippet for 2D maps, over the clip for 3D ones), as
    the library does."""
    store = {}

    def keep(module, inputs, output):
        store["a"] = output
        output.register_hook(lambda grad: store.update(g=grad))

    handle = layer.register_forward_hook(keep)
    score = model(rgb[None], flow[None])[output][0, target]
    score.backward()
    handle.remove()
    axes = tuple(range(2, store["a"].dim()))
    cam = F.relu((store["g"].mean(axes, keepdim=True) * store["a"]).sum(1))  # [T, h, w] or [1, t, h, w]
    if clip:
        cam = F.interpolate(cam[:, None], size=(rgb.shape[0], *rgb.shape[-2:]), mode="trilinear")[0, 0]
        cam = cam.detach().numpy()
        cam = cam - cam.min()
        return cam / (cam.max() + 1e-7)
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


def test_3d_towers_give_one_grad_cam_over_the_clip():
    """3D towers: the library weighs the [1, C, t, h, w] activations over (t, h, w) and resizes the map
    to the clip (its 3D path), so the frames share one scale instead of one scale per snippet."""
    torch.manual_seed(0)
    model = build_model("cma", 4, backbone="r2plus1d_18", new_length=1, positions=["stage3.0"]).eval()
    rgb, flow = _video(t=4, size=32, flow_channels=2)
    cams = two_stream_cam(model, rgb, flow, "cma-S", stream="rgb", target_class=1)
    assert cams.shape == (4, 32, 32) and np.isfinite(cams).all()
    assert cams.min() >= 0 and cams.max() == pytest.approx(1, abs=1e-3)
    expected = _grad_cam_by_hand(model, rgb, flow, "cma-S", model.rgb_tower.stages["stage4"], 1, clip=True)
    assert np.corrcoef(cams.ravel(), expected.ravel())[0, 1] > 0.95
    assert SingleInputTwoStream(model).stack(rgb, flow).shape == (1, 5, 4, 32, 32)


MODELS = {
    "late": {},
    "spatial": {"fusion": "conv"},  # motion tower truncated at the fusion point
    "conv_fusion": {},
    "cma": {},
    "ccs": {},
    "cmmp": {},
}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {name: build_model(name, 4, new_length=2, **kwargs).eval() for name, kwargs in MODELS.items()}


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
@pytest.mark.parametrize("model_name", list(MODELS))
def test_every_method_explains_both_streams_of_every_model(models, model_name, method):
    model = models[model_name]
    rgb, flow = _video()
    for stream in ("rgb", "flow"):
        cams = two_stream_cam(model, rgb, flow, stream=stream, method=method)  # the fused output, predicted class
        assert cams.shape == (3, 32, 32), (stream, cams.shape)
        assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6
        assert cams.max() > 0.5, f"{method} on {model_name}/{stream}: an empty map"
    assert not model.training


def test_methods_by_name_or_class_and_unknown_names_list_the_known_ones():
    assert get_cam_method("GradCAM++") is GradCAMPlusPlus and get_cam_method(GradCAMPlusPlus) is GradCAMPlusPlus
    assert get_cam_method(None).__name__ == "GradCAM"
    with pytest.raises(KeyError, match=r"registered: \[.*'gradcam'.*'layercam'"):
        get_cam_method("scorecam")
    with pytest.raises(TypeError, match="BaseCAM"):
        get_cam_method(42)
    model = build_model("late", 4, new_length=2).eval()
    rgb, flow = _video()
    cams = two_stream_cam(model, rgb, flow, "rgb", method=GradCAMPlusPlus)
    assert cams.shape == (3, 32, 32) and np.isfinite(cams).all()


def test_default_layers_and_layers_by_name():
    torch.manual_seed(0)
    late = build_model("late", 4, new_length=2)
    assert cam_target_layer(late, "rgb") is late.rgb_tower.stages["stage2"]
    assert cam_target_layer(late, "flow", "stage1.1") is late.flow_tower.stages["stage1"][1]
    # a truncated motion tower stops at the fusion point: its CAM is read there
    early = build_model("spatial", 4, new_length=2, position="stage1")
    assert cam_target_layer(early, "flow") is early.flow_tower.stages["stage1"]
    assert cam_target_layer(early, "rgb") is early.rgb_tower.stages["stage2"]
    # CMA blocks sit inside stem and stage1 (after child 1): those stages run child by child
    cma = build_model("cma", 4, new_length=2).eval()
    assert cam_target_layer(cma, "rgb", "stage1") is cma.rgb_tower.stages["stage1"][1]
    rgb, flow = _video()
    assert two_stream_cam(cma, rgb, flow, stream="rgb", layer="stage1").shape == (3, 32, 32)
    with pytest.raises(ValueError, match=r"stages are \['stem', 'stage1', 'stage2'\]"):
        cam_target_layer(late, "rgb", "layer4")
    with pytest.raises(ValueError, match=r"children 0\.\.1"):
        cam_target_layer(late, "rgb", "stage1.5")
    with pytest.raises(ValueError, match="stream"):
        cam_target_layer(late, "audio")
    with pytest.raises(RuntimeError, match="did not run"):  # past the truncation point
        two_stream_cam(early.eval(), rgb, flow, stream="flow", layer="stage2")


def test_frozen_towers_still_give_maps_and_the_training_mode_is_restored():
    torch.manual_seed(0)
    model = build_model("cma", 4, new_length=2).eval()
    rgb, flow = _video()
    before = two_stream_cam(model, rgb, flow, stream="flow", target_class=1)
    model.train_branch("rgb")  # the whole flow branch frozen: no parameter before its layer needs a gradient
    model.train()
    after = two_stream_cam(model, rgb, flow, stream="flow", target_class=1)
    np.testing.assert_allclose(after, before, atol=1e-5)
    assert model.training and not model.flow_tower.training


def test_an_output_that_ignores_a_stream_has_an_empty_map_for_it():
    torch.manual_seed(0)
    model = build_model("late", 4, new_length=2).eval()
    rgb, flow = _video()
    assert (two_stream_cam(model, rgb, flow, "rgb", stream="flow") == 0).all()
    assert two_stream_cam(model, rgb, flow, "rgb", stream="rgb").max() > 0.5


def test_the_adapter_takes_one_stacked_video_and_names_its_outputs():
    model = build_model("late", 4, new_length=2).eval()
    rgb, flow = _video()
    wrapped = SingleInputTwoStream(model, "late")
    with torch.no_grad():
        torch.testing.assert_close(wrapped(torch.cat([rgb, flow], 1)), model(rgb[None], flow[None])["late"])
        torch.testing.assert_close(SingleInputTwoStream(model)(torch.cat([rgb, flow], 1)),
                                   model(rgb[None], flow[None])["late"])  # default: the fused output
    with pytest.raises(KeyError, match="outputs are"):
        SingleInputTwoStream(model, "cma-R")(torch.cat([rgb, flow], 1))
    with pytest.raises(ValueError, match=r"\[T, 3 \+ 2L, H, W\]"):
        wrapped(rgb[None])
    with pytest.raises(ValueError, match="stream"):
        two_stream_cam(model, rgb, flow, "late", stream="audio")
    with pytest.raises(ValueError, match=r"classes 0\.\.3"):
        two_stream_cam(model, rgb, flow, "late", target_class=4)


def test_video_cams_explain_one_class_and_the_strip_overlays_them():
    torch.manual_seed(0)
    model = build_model("cma", 4, new_length=2).eval()
    rgb, flow = _video()
    cams = video_cams(model, rgb, flow, method="layercam")
    predicted = int(model(rgb[None], flow[None])["cma-S"].argmax())
    assert (cams.output, cams.method, cams.target_class) == ("cma-S", "layercam", predicted)
    np.testing.assert_allclose(cams.flow, two_stream_cam(model, rgb, flow, "cma-S", "flow", method="layercam",
                                                         target_class=predicted))
    fig = plot_cam_strip(rgb, flow, cams, class_names=["a", "b", "c", "d"], true_class=1)
    frame, flow_image = snippet_images(rgb[2], flow[2])
    rgb_rows, flow_rows = fig.cam_axes["rgb"], fig.cam_axes["flow"]
    # the raw frame beside, the CAM on its own on a fixed 0..1 scale, the frame lit by the CAM
    np.testing.assert_array_equal(rgb_rows["frame"][2].images[0].get_array(), frame)
    np.testing.assert_array_equal(rgb_rows["cam"][2].images[0].get_array(), cams.rgb[2])
    assert rgb_rows["cam"][2].images[0].get_clim() == (0, 1)
    assert rgb_rows["cam"][2].images[0].get_cmap().name == "viridis"
    np.testing.assert_array_equal(rgb_rows["lit"][2].images[0].get_array(), cam_overlay(frame, cams.rgb[2]))
    np.testing.assert_array_equal(flow_rows["frame"][2].images[0].get_array(), flow_image)
    np.testing.assert_array_equal(flow_rows["lit"][2].images[0].get_array(), cam_overlay(flow_image, cams.flow[2]))
    assert flow_rows["frame"][0].get_ylabel() == "flow" and rgb_rows["cam"][0].get_ylabel() == "RGB CAM"
    # a colour bar per stream, labelled; the flow key beside the flow row
    colourbars = [ax for ax in fig.axes if ax.get_ylabel() == "CAM"]
    assert len(colourbars) == 2
    assert any("flow key" in child.get_title() for child in flow_rows["frame"][-1].child_axes)
    # the prediction, its score and the truth in the title
    title = fig.get_suptitle()
    with torch.no_grad():
        probability = float(model(rgb[None], flow[None])["cma-S"].softmax(-1)[0, predicted])
    assert f"evidence for {'abcd'[predicted]} (p = {probability:.2f})" in title and "true class b" in title
    plt.close(fig)
    only_rgb = plot_cam_strip(rgb, flow, cams, streams=("rgb",))
    assert list(only_rgb.cam_axes) == ["rgb"] and len(only_rgb.axes) == 3 * 3 + 1
    with pytest.raises(ValueError, match="streams must be some of"):
        plot_cam_strip(rgb, flow, cams, streams=("audio",))


def test_overlay_keeps_the_frames_colours_where_the_evidence_is():
    image = np.zeros((2, 2, 3), np.float32)
    image[0, 0] = [1, 0, 0]  # a red pixel
    image[1, 1] = [0, 0, 1]  # a blue pixel
    cam = np.array([[1.0, 0.0], [0.0, 0.5]], np.float32)
    lit = cam_overlay(image, cam, floor=0.2)
    np.testing.assert_array_equal(lit[0, 0], [255, 0, 0])  # full evidence: the colour itself
    np.testing.assert_array_equal(lit[1, 1], [0, 0, round(255 * (0.2 + 0.8 * 0.5))])  # still blue, dimmer
    np.testing.assert_array_equal(lit[0, 1], [0, 0, 0])
    with pytest.raises(ValueError, match=r"floor must be in \[0, 1\]"):
        cam_overlay(image, cam, floor=1.5)


def test_overlay_checks_its_inputs_and_takes_uint8_or_float_images():
    image = np.full((8, 8, 3), 153 / 255, np.float32)  # a grey that uint8 holds exactly
    cam = np.zeros((8, 8), np.float32)
    cam[2, 3] = 1
    over = cam_overlay(image, cam)
    assert over.dtype == np.uint8 and over.shape == (8, 8, 3)
    np.testing.assert_array_equal(cam_overlay((image * 255).astype(np.uint8), cam), over)
    with pytest.raises(ValueError, match="differ in size"):
        cam_overlay(image, cam[:4])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        cam_overlay(image[..., 0], cam)


# -- a trained RGB tower looks at the sprites --------------------------------------------------
def _registration_videos(n: int, size: int = 64, frames: int = 3, seed: int = 0):
    """``n`` `registration` videos (two sprites of one shape, one of them moving), two snippets each
    (frames 0 and 1, L = 1), with the renderer's sprite masks and each video labelled by the shape
    of its sprites: what an RGB tower can learn from a frame (the puzzle's own label needs flow)."""
    puzzle, shapes = get_puzzle("registration"), list(SHAPES)
    rgb, flow, labels, masks = [], [], [], []
    for i in range(n):
        background = make_background(np.random.default_rng([seed, 1, i]), size)
        video = puzzle.render(i % 4, np.random.default_rng([seed, 2, i]), frames, size, background)
        # with the background given, render draws the tracks first: the same generator state gives the same sprites
        sprites = puzzle.tracks(i % 4, np.random.default_rng([seed, 2, i]), frames, size)
        mask = np.maximum.reduce([coverage(s, size) for s in sprites])[:2] >= 0.5
        chroma = np.ptp(video.frames[:2].astype(float), axis=-1)
        assert (chroma[mask] > 40).mean() > 0.9 and (chroma[~mask] < 40).mean() > 0.99  # the masks are the sprites
        r, f = Normalize()(torch.from_numpy(video.frames[:2]).permute(0, 3, 1, 2).float() / 255,
                           torch.from_numpy(video.flow[:2]).permute(0, 3, 1, 2))
        rgb.append(r), flow.append(f), masks.append(mask), labels.append(shapes.index(sprites[0].shape))
    return torch.stack(rgb), torch.stack(flow), torch.tensor(labels), np.stack(masks)


@pytest.fixture(scope="module")
def trained_rgb_tower():
    """The `late` model's RGB tower trained for 15 epochs on 96 videos (about 10 s on one core)."""
    rgb, flow, labels, masks = _registration_videos(128)
    torch.manual_seed(0)
    model = build_model("late", 4, new_length=1, widths=(16, 32, 64), dropout=0.0)
    optimizer = torch.optim.Adam([*model.rgb_tower.parameters(), *model.rgb_head.parameters()], 3e-3)
    epochs, batches = 15, torch.arange(96).split(16)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * len(batches))
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        model.train()
        for index in torch.randperm(96, generator=generator).split(16):
            loss = F.cross_entropy(model(rgb[index], flow[index])["rgb"], labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval(), (rgb[96:], flow[96:], labels[96:], masks[96:])


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_the_cam_of_a_trained_rgb_tower_peaks_on_a_sprite(trained_rgb_tower, method):
    """The issue's done-when. The last stage's map is 8 x 8 for 64 x 64 frames (one cell = 8 px), so
    a peak counts as near a sprite within half a cell (4 px). Chance: sprites cover ~6% of a frame,
    ~17% lies within 4 px of one. Measured (5 seeds): 56-73% of held-out snippets peak on a sprite
    pixel, 84-97% within 4 px."""
    model, (rgb, flow, labels, masks) = trained_rgb_tower
    with torch.no_grad():
        assert (model(rgb, flow)["rgb"].argmax(1) == labels).float().mean() >= 0.9  # it learned the shapes
    distances = []
    for i in range(len(labels)):
        cams = two_stream_cam(model, rgb[i], flow[i], "rgb", method=method)
        for t, cam in enumerate(cams):
            peak = np.unravel_index(cam.argmax(), cam.shape)
            distances.append(distance_transform_edt(~masks[i, t])[peak])
    distances = np.array(distances)
    assert (distances == 0).mean() >= 0.45, distances
    assert (distances <= 4).mean() >= 0.75, distances
