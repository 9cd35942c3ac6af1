"""Staged backbones: CNN towers cut into named stages, so fusion blocks can sit between them.

A :class:`StagedBackbone` is a sequence of stages named ``stem``, ``stage1``, ..., ``stageN``,
each with known output channels and stride. The two-stream network runs an RGB tower and a flow
tower stage by stage and applies fusion blocks between stages (docs/architecture.md).
Backbones return feature maps ``[N, C, H, W]``; pooling and classifiers live in the heads.

Registered backbones (``get_backbone(name, in_channels, pretrained)``):

============ ================================ ========================== =====================
name         stages (output channels)         stage ends at              stride of stem..last
============ ================================ ========================== =====================
``tiny``     24, 48, 96 (``widths``)          conv-BN-ReLU               2, 4, 8
``resnet18`` 64, 64, 128, 256, 512            maxpool, res2 .. res5      4, 4, 8, 16, 32
``resnet50`` 64, 256, 512, 1024, 2048         maxpool, res2 .. res5      4, 4, 8, 16, 32
``vgg16``    64, 128, 256, 512, 512           ReLU1_2 .. ReLU5_3         1, 2, 4, 8, 16
============ ================================ ========================== =====================

The RGB tower takes 3 input channels; the flow tower takes ``2L`` (the x and y components of L
stacked flow fields, e.g. 10 for L = 5). With ``pretrained=True`` the torchvision ImageNet weights
are loaded, and a tower with other than 3 input channels gets its first conv by cross-modality
initialisation (:func:`cross_modality_init`). Weights download only when asked for, into
torch.hub's cache; offline, the error says which file to put in which folder.

Add a backbone with ``@register_backbone("name")`` on a function
``(in_channels: int = 3, pretrained: bool = False, **kwargs) -> StagedBackbone``.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights, VGG16_Weights
from torchvision.models.video import R2Plus1D_18_Weights, R3D_18_Weights

from fusionkit.registry import Registry


class StagedBackbone(nn.Module):
    """A CNN tower as an ordered sequence of named stages.

    Args:
        stages: the stage modules in order; they are named ``stem``, ``stage1``, ..., ``stageN``.
        channels: output channels of each stage.
        strides: total downsampling of each stage's output relative to the input.
        in_channels: channels of the input (3 for RGB, 2L for stacked flow).
        dims: 2 for image backbones (``[N, C, H, W]``), 3 for video backbones (``[N, C, T, H, W]``
            clips; ``strides`` then give the spatial downsampling).

    Attributes:
        stages: ``nn.ModuleDict`` of the stages, in order.
        stage_names: ``["stem", "stage1", ..., "stageN"]``.
        stage_channels / stage_strides: ``{stage name: output channels / stride}``.
        in_channels, out_channels: input channels; output channels of the last stage.
    """

    def __init__(self, stages: Sequence[nn.Module], channels: Sequence[int], strides: Sequence[int],
                 in_channels: int, dims: int = 2):
        super().__init__()
        if not len(stages) == len(channels) == len(strides):
            raise ValueError(f"got {len(stages)} stages, {len(channels)} channel counts and {len(strides)} strides")
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, len(stages))]
        self.stages = nn.ModuleDict(zip(self.stage_names, stages))
        self.stage_channels = dict(zip(self.stage_names, channels))
        self.stage_strides = dict(zip(self.stage_names, strides))
        self.in_channels = in_channels
        self.dims = dims
        self.out_channels = channels[-1]

    def run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Apply one stage; ``x`` is the previous stage's output (the input for ``stem``)."""
        if name not in self.stages:
            raise KeyError(f"no stage {name!r}; stages are {self.stage_names}")
        if name == "stem" and (x.dim() != self.dims + 2 or x.shape[1] != self.in_channels):
            layout = "[N, {c}, H, W]" if self.dims == 2 else "[N, {c}, T, H, W] (a clip)"
            raise ValueError(f"this backbone takes input {layout.format(c=self.in_channels)} but got shape "
                             f"{tuple(x.shape)} (an RGB tower takes 3 channels, a flow tower 2L: x and y of L "
                             f"stacked flow fields)")
        return self.stages[name](x)

    def forward_stages(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output, ``{stage name: [N, C, H, W]}`` in stage order."""
        outputs = {}
        for name in self.stage_names:
            x = outputs[name] = self.run_stage(name, x)
        return outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's feature map (no pooling, no classifier)."""
        for name in self.stage_names:
            x = self.run_stage(name, x)
        return x

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, stage_channels={self.stage_channels}, dims={self.dims}"


# --- registry ---------------------------------------------------------------------------------
BACKBONES = Registry("backbone")
register_backbone = BACKBONES.register  # function decorator for a backbone constructor


def list_backbones() -> list[str]:
    return sorted(BACKBONES)


def get_backbone(name: str, in_channels: int = 3, pretrained: bool = False, **kwargs) -> StagedBackbone:
    """Build the registered backbone ``name``; ``kwargs`` go to its constructor."""
    return BACKBONES.lookup(name)(in_channels=in_channels, pretrained=pretrained, **kwargs)


# --- pretrained weights -----------------------------------------------------------------------
# The original ImageNet weights (V1), as the two-stream papers used them; Kinetics-400 for the 3D nets.
PRETRAINED_WEIGHTS = {
    "resnet18": ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": ResNet50_Weights.IMAGENET1K_V1,
    "vgg16": VGG16_Weights.IMAGENET1K_V1,
    "r3d_18": R3D_18_Weights.KINETICS400_V1,
    "r2plus1d_18": R2Plus1D_18_Weights.KINETICS400_V1,
}


def pretrained_weights_file(name: str) -> Path:
    """Where the pretrained weights of backbone ``name`` are looked for, and downloaded to:
    ``<torch.hub.get_dir()>/checkpoints/<file name of the torchvision URL>`` (moves with $TORCH_HOME)."""
    if name not in PRETRAINED_WEIGHTS:
        raise ValueError(f"backbone {name!r} has no pretrained weights; these do: {sorted(PRETRAINED_WEIGHTS)}")
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(PRETRAINED_WEIGHTS[name].url).path)


def _pretrained_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Load the torchvision state dict of ``name`` from torch.hub's cache, downloading it if absent
    (only ever called for ``pretrained=True``: the user asked for the weights)."""
    path, url = pretrained_weights_file(name), PRETRAINED_WEIGHTS[name].url
    try:
        return torch.hub.load_state_dict_from_url(url, model_dir=str(path.parent), map_location="cpu",
                                                  check_hash=True, weights_only=True)
    except OSError as err:  # urllib's URLError, socket and SSL errors: no network
        raise RuntimeError(f"could not download the pretrained weights of {name!r} ({path.name}) from {url}: {err}. "
                           f"On an offline machine, download {path.name} elsewhere and put it in the folder "
                           f"{path.parent} (torch.hub's cache; $TORCH_HOME moves it).") from err


def cross_modality_init(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Cross-modality initialisation of a first conv for ``in_channels`` inputs: average the
    pretrained filters ``[O, C, kh, kw]`` over their C input channels and replicate the mean
    ``in_channels`` times, giving ``[O, in_channels, kh, kw]`` (or ``[O, in_channels, kt, kh, kw]`` for
    a 3D conv). As in TSN (Wang et al., ECCV 2016,
    Sec. 3.2, "cross modality pre-training"), Feichtenhofer et al.'s code, and CMA (Chi et al.,
    Sec. 4.1, "Implementation": "replicating the means of the pre-trained weights across channels")."""
    if weight.dim() not in (4, 5) or in_channels < 1:
        raise ValueError(f"need conv weights [O, C, kh, kw] or [O, C, kt, kh, kw] and in_channels >= 1, "
                         f"got {tuple(weight.shape)} and {in_channels}")
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, *[1] * (weight.dim() - 2))


def _with_in_channels(conv: nn.Conv2d | nn.Conv3d, in_channels: int, pretrained: bool) -> nn.Conv2d | nn.Conv3d:
    """``conv`` itself if it takes ``in_channels``; else a copy that does, its weights cross-modality
    initialised from ``conv``'s when pretrained, else drawn as torchvision draws them."""
    if conv.in_channels == in_channels:
        return conv
    new = type(conv)(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    with torch.no_grad():
        if pretrained:
            new.weight.copy_(cross_modality_init(conv.weight, in_channels))
        else:
            nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
        if conv.bias is not None:
            new.bias.copy_(conv.bias)  # torchvision initialises conv biases to zero
    return new


# --- tiny: a small CNN for 64x64 puzzles on a CPU ---------------------------------------------
def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
        bn=nn.BatchNorm2d(out_channels),
        relu=nn.ReLU(inplace=True),
    ))


@register_backbone("tiny")
def tiny(in_channels: int = 3, pretrained: bool = False, widths: Sequence[int] = (24, 48, 96)) -> StagedBackbone:
    """Small CNN for the puzzles: each stage is a stride-2 conv3x3-BN-ReLU followed by a conv3x3-BN-ReLU,
    one stage per width. Default: ~165k parameters, 32/16/8-pixel maps at 64x64 input.

    Why this shape: during development (``appearance`` puzzle, TSN training with 3 snippets a video,
    84 videos, 2 CPU cores) widths 24/48/96 reached 0.96 test accuracy in 25 epochs at ~31 s a run,
    32/64/128 about the same at ~55 s, and one conv a stage with a full-resolution stem (98k
    parameters) only 0.86 in 40 epochs. Notebook 02's results file records what this default reaches
    now (``figures/results/02_two_stream_late_fusion.json``).
    """
    if pretrained:
        raise ValueError("the 'tiny' backbone has no pretrained weights; build it with pretrained=False "
                         f"(backbones with ImageNet weights: {sorted(PRETRAINED_WEIGHTS)})")
    stages, previous = [], in_channels
    for width in widths:
        stages.append(nn.Sequential(_conv_bn_relu(previous, width, 2), _conv_bn_relu(width, width, 1)))
        previous = width
    return StagedBackbone(stages, widths, [2 ** (i + 1) for i in range(len(widths))], in_channels)


# --- ResNet (He et al., CVPR 2016), from torchvision --------------------------------------------
def _resnet(arch: str, in_channels: int, pretrained: bool) -> StagedBackbone:
    """stem = conv1, bn1, relu, maxpool; stage1..stage4 = torchvision's layer1..layer4 (the
    paper's res2..res5; CMA's res_3 and res_4 are stage2 and stage3). Each stage is torchvision's
    ``nn.Sequential`` of BasicBlock / Bottleneck modules, so ``stages["stage2"][i]`` is residual
    block i and blocks can be inserted after chosen residual blocks."""
    state = _pretrained_state_dict(arch) if pretrained else None
    net = getattr(torchvision.models, arch)(weights=None)
    if state is not None:
        net.load_state_dict(state)
    stem = nn.Sequential(OrderedDict(conv1=_with_in_channels(net.conv1, in_channels, pretrained),
                                     bn1=net.bn1, relu=net.relu, maxpool=net.maxpool))
    expansion = type(net.layer1[0]).expansion
    return StagedBackbone([stem, net.layer1, net.layer2, net.layer3, net.layer4],
                          [64] + [64 * 2 ** i * expansion for i in range(4)], [4, 4, 8, 16, 32], in_channels)


@register_backbone("resnet18")
def resnet18(in_channels: int = 3, pretrained: bool = False) -> StagedBackbone:
    """ResNet-18 (BasicBlocks 2-2-2-2), see :func:`_resnet` for the stages."""
    return _resnet("resnet18", in_channels, pretrained)


@register_backbone("resnet50")
def resnet50(in_channels: int = 3, pretrained: bool = False) -> StagedBackbone:
    """ResNet-50 (Bottlenecks 3-4-6-3), the CMA paper's base network; see :func:`_resnet`."""
    return _resnet("resnet50", in_channels, pretrained)


# --- VGG-16 (Simonyan & Zisserman, ICLR 2015; configuration D, no batch norm) ------------------
_VGG16_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (width, convs) of conv1..conv5


@register_backbone("vgg16")
def vgg16(in_channels: int = 3, pretrained: bool = False) -> StagedBackbone:
    """VGG-16's conv layers: torchvision's ``vgg16().features`` without pool5, cut so that every
    stage ends at a block's last ReLU, where Feichtenhofer et al. (CVPR 2016) fuse (Sec. 4.3 and
    Table 2 compare fusing at ReLU2..ReLU5):

    - stem = conv1_1 .. relu1_2 (stride 1);
    - stage k = pool_k, then conv(k+1)_1 .. the block's last ReLU, so stage1..stage4 end at
      ReLU2_2, ReLU3_3, ReLU4_3 and ReLU5_3 (14x14 at 224x224 input: the paper's VGG-16 fusion
      point, Sec. 3.5). pool5 is left to the head.

    Layers are named as in the paper (``stages["stage4"].conv5_3``)."""
    state = _pretrained_state_dict("vgg16") if pretrained else None
    stages, channels = [], 3
    for b, (width, convs) in enumerate(_VGG16_BLOCKS, 1):
        layers = [(f"pool{b - 1}", nn.MaxPool2d(2, 2))] if b > 1 else []
        for i in range(1, convs + 1):
            conv = nn.Conv2d(channels, width, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's VGG
            nn.init.zeros_(conv.bias)
            layers += [(f"conv{b}_{i}", conv), (f"relu{b}_{i}", nn.ReLU(inplace=True))]
            channels = width
        stages.append(nn.Sequential(OrderedDict(layers)))
    if state is not None:  # the layers in order are torchvision's features[0:30]; the classifier is not used
        features = nn.Sequential(*(layer for stage in stages for layer in stage))
        features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                                  if k.startswith("features.")})
    stages[0].conv1_1 = _with_in_channels(stages[0].conv1_1, in_channels, pretrained)
    return StagedBackbone(stages, [w for w, _ in _VGG16_BLOCKS], [1, 2, 4, 8, 16], in_channels)


# --- 3D ResNets for 3D-CMA (Chi et al. §5.6), from torchvision's video models -------------------
def _video_resnet(arch: str, in_channels: int, pretrained: bool) -> StagedBackbone:
    """stem = torchvision's stem (its first conv taking ``in_channels``); stage1..stage4 = layer1..layer4,
    each a sequence of residual blocks, so ``"stage3.0"`` is after the first block of res4.

    Chi et al. §5.6 put 3D-CMA blocks in a P3D ResNet-152 (pseudo-3D: 1x3x3 then 3x1x1 convs), which
    torchvision does not ship; ``r2plus1d_18`` (Tran et al. 2018) factorises 3D convs the same way
    (spatial then temporal), ``r3d_18`` is the plain 3D ResNet. Input clips ``[N, C, T, H, W]``;
    the stem keeps T, and stages 2-4 halve T, H and W (strides below are spatial)."""
    state = _pretrained_state_dict(arch) if pretrained else None
    net = getattr(torchvision.models.video, arch)(weights=None)
    if state is not None:
        net.load_state_dict(state)
    net.stem[0] = _with_in_channels(net.stem[0], in_channels, pretrained)
    return StagedBackbone([net.stem, net.layer1, net.layer2, net.layer3, net.layer4], [64, 64, 128, 256, 512],
                          [2, 2, 4, 8, 16], in_channels, dims=3)


@register_backbone("r3d_18")
def r3d_18(in_channels: int = 3, pretrained: bool = False) -> StagedBackbone:
    """3D ResNet-18 (Tran et al., CVPR 2018; torchvision ``r3d_18``), see :func:`_video_resnet`."""
    return _video_resnet("r3d_18", in_channels, pretrained)


@register_backbone("r2plus1d_18")
def r2plus1d_18(in_channels: int = 3, pretrained: bool = False) -> StagedBackbone:
    """(2+1)D ResNet-18 (Tran et al., CVPR 2018; torchvision ``r2plus1d_18``), see :func:`_video_resnet`."""
    return _video_resnet("r2plus1d_18", in_channels, pretrained)
