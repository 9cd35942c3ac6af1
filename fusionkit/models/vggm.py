"""VGG-M-2048, the two-stream network of Simonyan & Zisserman (2014) and of Feichtenhofer et al. (CVPR 2016).

VGG-M-2048 is the "medium" network of Chatfield, Simonyan, Vedaldi & Zisserman, "Return of the
Devil in the Details" (BMVC 2014), with a 2048-unit fc7. Five conv and three fully-connected layers:

======= ========================================== ===================== ============
layer   definition                                 output at 224 x 224   parameters
======= ========================================== ===================== ============
conv1   96 x 7x7, stride 2, pad 0; ReLU; LRN       109 x 109 x 96        7*7*C*96 + 96
pool1   max 3x3, stride 2                          54 x 54 x 96
conv2   256 x 5x5, stride 2, pad 1; ReLU; LRN      26 x 26 x 256         614,656
pool2   max 3x3, stride 2 (rounding up, as Caffe)  13 x 13 x 256
conv3   512 x 3x3, pad 1; ReLU                     13 x 13 x 512         1,180,160
conv4   512 x 3x3, pad 1; ReLU                     13 x 13 x 512         2,359,808
conv5   512 x 3x3, pad 1; ReLU                     13 x 13 x 512         2,359,808
pool5   max 3x3, stride 2                          6 x 6 x 512
fc6     4096; ReLU; dropout                        4096                  75,501,568
fc7     2048; ReLU; dropout                        2048                  8,390,656
fc8     K classes                                  K                     2048*K + K
======= ========================================== ===================== ============

C is 3 for the RGB tower and 2L for the flow tower (the paper stacks L = 10 flow fields: 20
channels, conv1 then has 94,176 parameters instead of 14,208). LRN is Caffe's: 5 channels,
alpha = 5e-4 (divided by 5, i.e. MatConvNet's 1e-4), beta = 0.75, k = 2. The max pools round up,
as Caffe does (MatConvNet pads pool2 by one on the bottom and right); this is what makes conv5
13 x 13 at 224 x 224, as Feichtenhofer et al. Sec. 3.5 state ("we pad the slightly smaller output
of VGG-M (13 x 13, compared to 14 x 14)"), with the stride of 16 and the 139 x 139 receptive field
of Sec. 3.4. One tower with a 1000-class head has 92,469,864 parameters (ImageNet's VGG-M-2048).

Stages of the ``vggm2048`` staged backbone, cut at the fusion points of the paper's Table 2
("fusion at ReLU k" = the output of stage ``RELU_STAGE[k]``):

======== ================================= ======= ========== ======================
stage    layers                            ReLU k  channels   stride (size at 224)
======== ================================= ======= ========== ======================
stem     conv1, relu1                      ReLU1   96         2 (109)
stage1   norm1, pool1, conv2, relu2        ReLU2   256        8 (26)
stage2   norm2, pool2, conv3, relu3        ReLU3   512        16 (13)
stage3   conv4, relu4                      ReLU4   512        16 (13)
stage4   conv5, relu5                      ReLU5   512        16 (13)
======== ================================= ======= ========== ======================

pool5 and the fully-connected layers are the head, :class:`VGGMHead`: a trainable module, the
two-stream network's classifier with ``TwoStreamNet(..., backbone="vggm2048", head="vggm_fc",
input_size=...)`` (its parameters are then those :mod:`~fusionkit.methods.conv_fusion.parameter_counts`
counts for Tables 1-2).

The fused networks of Feichtenhofer et al.'s Tables 1 and 2 and their parameter counts are the
paper's, in :mod:`fusionkit.methods.conv_fusion.parameter_counts`.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from fusionkit.models.backbones import StagedBackbone, register_backbone

# "fusion at ReLU k" (Feichtenhofer et al., Table 2) is the output of this stage.
RELU_STAGE = {1: "stem", 2: "stage1", 3: "stage2", 4: "stage3", 5: "stage4"}
VGGM_CHANNELS = (96, 256, 512, 512, 512)  # output channels of conv1..conv5 (stem..stage4)
VGGM_STRIDES = (2, 8, 16, 16, 16)

VGGM_WEIGHTS_HELP = (
    "VGG-M-2048 has no torchvision ImageNet weights, so the 'vggm2048' backbone cannot be built with "
    "pretrained=True. The original ImageNet model is MatConvNet's imagenet-vgg-m-2048.mat "
    "(https://www.vlfeat.org/matconvnet/models/imagenet-vgg-m-2048.mat, listed on "
    "https://www.vlfeat.org/matconvnet/pretrained/), also released for Caffe as VGG_CNN_M_2048 "
    "(http://www.robots.ox.ac.uk/~vgg/research/deep_eval/); Feichtenhofer et al.'s two-stream models "
    "are at http://www.robots.ox.ac.uk/~vgg/software/two_stream_action/. fusionkit does not convert "
    "these files (not implemented). Build it with pretrained=False, or use a backbone with torchvision "
    "weights: 'vgg16', 'resnet18' or 'resnet50'."
)


def _pool_size(n: int, kernel: int = 3, stride: int = 2) -> int:
    """Output size of a max pool without padding that rounds up (Caffe; ``ceil_mode=True``)."""
    out = math.ceil((n - kernel) / stride) + 1
    return out - 1 if (out - 1) * stride >= n else out  # PyTorch's rule: no window starts past the input


def vggm_feature_sizes(input_size: int = 224) -> dict[str, int]:
    """Spatial size (height = width) of each VGG-M layer's output for a square input; at 224:
    conv1 109, pool1 54, conv2 26, pool2 13, conv3..conv5 13, pool5 6."""
    sizes, n = {}, input_size
    n = sizes["conv1"] = (n - 7) // 2 + 1
    n = sizes["pool1"] = _pool_size(n)
    n = sizes["conv2"] = (n + 2 - 5) // 2 + 1
    n = sizes["pool2"] = _pool_size(n)
    sizes["conv3"] = sizes["conv4"] = sizes["conv5"] = n
    sizes["pool5"] = _pool_size(n)
    if min(sizes.values()) < 1:
        raise ValueError(f"input {input_size} x {input_size} is too small for VGG-M: layer sizes {sizes}")
    return sizes


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's VGG
    nn.init.zeros_(conv.bias)
    return conv


def _lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)  # Caffe's VGG_CNN_M_2048 norm1 / norm2


@register_backbone("vggm2048")
def vggm2048(in_channels: int = 3, pretrained: bool = False) -> StagedBackbone:
    """VGG-M-2048's conv layers as a staged backbone (see the module docstring for the stages):
    stage ``RELU_STAGE[k]`` ends at ReLU k, so ``stages["stage4"]`` ends at ReLU5, the 13 x 13 x 512
    map where Feichtenhofer et al. fuse (Sec. 4.2). ``in_channels``: 3 for RGB, 2L for flow (20 in
    the paper). ``pretrained=True`` raises :class:`NotImplementedError` (no weights; see
    ``VGGM_WEIGHTS_HELP``)."""
    if pretrained:
        raise NotImplementedError(VGGM_WEIGHTS_HELP)
    relu = lambda: nn.ReLU(inplace=True)  # noqa: E731
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    stages = [
        nn.Sequential(OrderedDict(conv1=_conv(in_channels, 96, 7, stride=2), relu1=relu())),
        nn.Sequential(OrderedDict(norm1=_lrn(), pool1=pool(), conv2=_conv(96, 256, 5, stride=2, padding=1),
                                  relu2=relu())),
        nn.Sequential(OrderedDict(norm2=_lrn(), pool2=pool(), conv3=_conv(256, 512, 3, padding=1), relu3=relu())),
        nn.Sequential(OrderedDict(conv4=_conv(512, 512, 3, padding=1), relu4=relu())),
        nn.Sequential(OrderedDict(conv5=_conv(512, 512, 3, padding=1), relu5=relu())),
    ]
    return StagedBackbone(stages, VGGM_CHANNELS, VGGM_STRIDES, in_channels)


class VGGMHead(nn.Module):
    """VGG-M-2048's fully-connected head on a ReLU5 map: pool5 (max 3x3, stride 2) -> flatten
    (pool5 size^2 x C, 6 x 6 x 512 at 224 x 224) -> fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout
    -> fc8. Returns logits ``[N, num_classes]``. Maps with a time axis, ``[N, C, T, H, W]`` (after a
    temporal fusion block), are classified per time step and the T logits averaged.

    Args:
        in_channels: channels of the fused ReLU5 map (512; 1024 after concatenation fusion).
        num_classes: K (101 for UCF-101).
        fc6, fc7: widths (4096 and 2048 in VGG-M-2048).
        dropout: after fc6 and fc7. ImageNet VGG-M uses 0.5; Feichtenhofer et al. (Sec. 3.5) use 0.85
            for the spatial network, Simonyan & Zisserman 0.9 for the temporal one.
        input_size: the towers' input size, which fixes pool5's size and so fc6's input (224 -> 6).
    """

    def __init__(self, in_channels: int = 512, num_classes: int = 101, fc6: int = 4096, fc7: int = 2048,
                 dropout: float = 0.5, input_size: int = 224):
        super().__init__()
        self.in_channels, self.pool5_size = in_channels, vggm_feature_sizes(input_size)["pool5"]
        self.layers = nn.Sequential(OrderedDict(
            pool5=nn.MaxPool2d(3, 2, ceil_mode=True),
            flatten=nn.Flatten(1),
            fc6=nn.Linear(in_channels * self.pool5_size ** 2, fc6),
            relu6=nn.ReLU(inplace=True), drop6=nn.Dropout(dropout),
            fc7=nn.Linear(fc6, fc7), relu7=nn.ReLU(inplace=True), drop7=nn.Dropout(dropout),
            fc8=nn.Linear(fc7, num_classes),
        ))
        for layer in self.layers:
            if isinstance(layer, nn.Linear):  # as torchvision's VGG
                nn.init.normal_(layer.weight, 0, 0.01)
                nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:  # [N, C, T, H, W]: each time step through the head, the logits averaged over T
            n, t = x.shape[0], x.shape[2]
            return self(x.transpose(1, 2).flatten(0, 1)).view(n, t, -1).mean(1)
        if x.dim() != 4 or x.shape[1] != self.in_channels or \
                _pool_size(x.shape[-2]) != self.pool5_size or _pool_size(x.shape[-1]) != self.pool5_size:
            raise ValueError(f"VGGMHead takes ReLU5 maps [N, {self.in_channels}, H, W] whose pool5 is "
                             f"{self.pool5_size} x {self.pool5_size} (set input_size to the towers' input size), "
                             f"got shape {tuple(x.shape)}")
        return self.layers(x)
