"""Feichtenhofer et al. (CVPR 2016), Tables 1 and 2: the fused VGG-M-2048 networks and their layer
and parameter counts, beside the paper's. :func:`fusion_parameter_counts` builds the two-tower
networks of the tables (on the meta device) and counts them; :func:`format_parameter_table`
prints them beside the paper's numbers. The towers are :mod:`fusionkit.models.vggm`'s.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Mapping

import torch
from torch import nn

from fusionkit.models.backbones import StagedBackbone
from fusionkit.models.vggm import RELU_STAGE, VGGM_CHANNELS, VGGMHead, vggm2048

# --- Feichtenhofer et al., Tables 1 and 2: layers and parameters of fused VGG-M-2048 towers ---------
# name -> (table, the paper's row, paper's #layers, paper's #parameters in millions)
PAPER_COUNTS: dict[str, tuple[int, str, int, float]] = {
    "T1 sum@softmax": (1, "Sum (ours), Softmax", 16, 181.42),
    "T1 max@ReLU5": (1, "Max, ReLU5", 13, 97.31),
    "T1 concat@ReLU5": (1, "Concatenation, ReLU5", 13, 172.81),
    "T1 bilinear@ReLU5": (1, "Bilinear, ReLU5", 10, 6.61),  # "6.61M+SVM"
    "T1 sum@ReLU5": (1, "Sum, ReLU5", 13, 97.31),
    "T1 conv@ReLU5": (1, "Conv, ReLU5", 14, 97.58),
    "T2 conv@ReLU2": (2, "ReLU2", 11, 91.90),
    "T2 conv@ReLU3": (2, "ReLU3", 12, 93.08),
    "T2 conv@ReLU4": (2, "ReLU4", 13, 95.48),
    "T2 conv@ReLU5": (2, "ReLU5", 14, 97.57),
    "T2 conv@ReLU5+FC8": (2, "ReLU5 + FC8", 17, 181.68),
    "T2 conv@ReLU3+ReLU5+FC6": (2, "ReLU3 + ReLU5 + FC6", 17, 190.06),
}
TOLERANCE = 0.005  # "matches the paper": relative difference within 0.5%
# Rows whose exact count is not within TOLERANCE of the paper (see fusion_parameter_counts).
MISMATCHED_ROWS = ("T1 bilinear@ReLU5", "T2 conv@ReLU3+ReLU5+FC6")


def _tower_until(tower: StagedBackbone, relu: int) -> nn.Sequential:
    """A tower truncated after ReLU ``relu`` (its stages stem .. RELU_STAGE[relu])."""
    return nn.Sequential(OrderedDict((n, tower.stages[n]) for n in tower.stage_names[:relu]))


def _tower_from(tower: StagedBackbone, relu: int) -> nn.Sequential:
    """The stages of a tower after ReLU ``relu``."""
    return nn.Sequential(OrderedDict((n, tower.stages[n]) for n in tower.stage_names[relu:]))


def _conv_fusion(channels: int) -> nn.Conv2d:
    """Eq. (4): a 1 x 1 x 2D x D filter bank with D biases on the stacked maps (2D -> D channels)."""
    return nn.Conv2d(2 * channels, channels, 1)


def fusion_configurations(num_classes: int = 101, flow_channels: int = 20, input_size: int = 224,
                          rgb_channels: int = 3, device: str | torch.device = "meta") -> dict[str, nn.ModuleDict]:
    """The networks of Feichtenhofer et al.'s Tables 1 and 2, built from two VGG-M-2048 towers
    (keys as in ``PAPER_COUNTS``). Each is an ``nn.ModuleDict`` of its parts: towers (``*_tower``,
    whole or truncated), injected fusion layers (``fusion_*``), heads (``*head*``, :class:`VGGMHead`
    or parts of one) and, for bilinear fusion, the linear ``svm``. Parameter-free fusions (sum, max,
    concatenation, bilinear pooling, the sum of FC8 scores) have no module. Built on the ``meta``
    device by default: shapes without memory, so that counting ~200M parameters is instant.

    Readings of the rows (the paper gives counts, not architectures, except Fig. 2):

    - ``T1 sum@softmax``: two whole networks (both conv stacks, both heads), scores averaged.
    - ``T1 max@ReLU5`` / ``sum@ReLU5``: both conv stacks to ReLU5, then ONE head: the tower fused
      into is kept, the other truncated (Fig. 2 left, Sec. 3.1).
    - ``T1 conv@ReLU5`` / ``T2 conv@ReLUk``: the other tower up to ReLU k, a 1x1 conv fusion
      2D -> D (Eq. 4) into the kept tower, the rest of the kept tower, one head. D = 256 at ReLU2.
    - ``T1 concat@ReLU5``: both conv stacks, one head whose fc6 takes the 2 x 512 stacked channels.
    - ``T1 bilinear@ReLU5``: both conv stacks, bilinear pooling (Eq. 5) to 512^2 features, no FC
      layers; a linear classifier (the paper's SVM) on the 512^2 features, counted apart.
    - ``T2 conv@ReLU5+FC8`` (Fig. 2 right): both towers kept whole; at ReLU5 a conv fusion of the
      two makes one tower spatiotemporal; the two towers' FC8 scores are summed (no parameters).
    - ``T2 conv@ReLU3+ReLU5+FC6``: the only reading with the paper's 17 layers. Tower A runs
      conv1-conv3, takes a conv fusion with B's ReLU3, runs conv4-conv5, takes a conv fusion with
      B's ReLU5, runs fc6; tower B runs whole to fc6 (its fc7, fc8 are cut); after fc6 (ReLU6) a
      conv fusion 2 x 4096 -> 4096 (Eq. 4 on 1 x 1 maps); then one fc7 and fc8.
    """
    relu_channels = dict(zip(RELU_STAGE, VGGM_CHANNELS))
    configs: dict[str, nn.ModuleDict] = {}
    with torch.device(device):
        def towers():
            return vggm2048(rgb_channels), vggm2048(flow_channels)

        def head(in_channels=512):
            return VGGMHead(in_channels, num_classes, input_size=input_size)

        rgb, flow = towers()
        configs["T1 sum@softmax"] = nn.ModuleDict(dict(rgb_tower=rgb, rgb_head=head(), flow_tower=flow,
                                                       flow_head=head()))
        for name in ("T1 max@ReLU5", "T1 sum@ReLU5"):
            rgb, flow = towers()
            configs[name] = nn.ModuleDict(dict(rgb_tower=rgb, flow_tower=flow, head=head()))
        rgb, flow = towers()
        configs["T1 concat@ReLU5"] = nn.ModuleDict(dict(rgb_tower=rgb, flow_tower=flow, head=head(2 * 512)))
        rgb, flow = towers()
        configs["T1 bilinear@ReLU5"] = nn.ModuleDict(dict(rgb_tower=rgb, flow_tower=flow,
                                                          svm=nn.Linear(512 * 512, num_classes)))
        for table, relu in [("T1", 5), ("T2", 2), ("T2", 3), ("T2", 4), ("T2", 5)]:
            rgb, flow = towers()
            configs[f"{table} conv@ReLU{relu}"] = nn.ModuleDict(dict(
                rgb_tower=_tower_until(rgb, relu), flow_tower=_tower_until(flow, relu),
                **{f"fusion_relu{relu}": _conv_fusion(relu_channels[relu])},
                fused_tower=_tower_from(rgb, relu), head=head()))
        rgb, flow = towers()
        configs["T2 conv@ReLU5+FC8"] = nn.ModuleDict(dict(rgb_tower=rgb, rgb_head=head(), flow_tower=flow,
                                                          fusion_relu5=_conv_fusion(512), fused_head=head()))
        a, b = towers()
        a_head, b_head = head(), head()
        configs["T2 conv@ReLU3+ReLU5+FC6"] = nn.ModuleDict(dict(
            a_tower=_tower_until(a, 3), fusion_relu3=_conv_fusion(512), a_tower_after_relu3=_tower_from(a, 3),
            fusion_relu5=_conv_fusion(512), a_fc6=a_head.layers.fc6,
            b_tower=b, b_fc6=b_head.layers.fc6,
            fusion_fc6=_conv_fusion(4096), head_fc7=a_head.layers.fc7, head_fc8=a_head.layers.fc8))
    return configs


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _layers(module: nn.Module) -> int:
    return sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in module.modules())


def fusion_parameter_counts(num_classes: int = 101, flow_channels: int = 20, input_size: int = 224,
                            rgb_channels: int = 3) -> dict[str, dict]:
    """Layers and parameters of the two-tower VGG-M-2048 networks of Feichtenhofer et al., Tables 1
    and 2, counted on the modules that :func:`fusion_configurations` builds.

    Returns ``{name: row}`` in the paper's order, each row a dict: ``table``, ``row`` (the paper's
    label), ``layers`` (conv + fc layers, as the paper counts them: two whole towers are 16),
    ``parameters`` (``sum(p.numel())`` of the network, the bilinear SVM excluded), ``svm_parameters``
    (bilinear only: a linear classifier on the 512^2 features), ``fusion_parameters`` (the injected
    conv fusion layers), ``parameters_paper_convention`` (see below), ``paper_layers``,
    ``paper_parameters`` (the paper's millions), ``rel_diff`` (ours / paper - 1) and
    ``rel_diff_paper_convention``, ``matches`` (``abs(rel_diff) <= TOLERANCE``).

    At the defaults (UCF-101's 101 classes, L = 10 flow fields, 224 x 224) every row is within 0.5%
    of the paper with the paper's layer counts, except the two in ``MISMATCHED_ROWS``:

    - ``T1 bilinear@ReLU5``: the paper gives "6.61M+SVM" for 10 layers. Ten layers are both conv
      stacks, 13.14M parameters (RGB 6,528,640 + flow 6,608,608). The paper's 6.61M is exactly ONE
      conv stack, the flow tower's with 20 input channels (6,608,608; the RGB stack would be 6.53M),
      so it appears to count one tower only. The SVM (512^2 x 101 + 101 = 26.48M) is apart, as in
      the paper.
    - ``T2 conv@ReLU3+ReLU5+FC6``: the reading above with the paper's 17 layers has 207.35M exactly;
      the paper's 190.06M is reproduced (190.04M, -0.01%) only under the paper's apparent counting
      convention for conv fusion layers, D x D + D instead of Eq. (4)'s 1 x 1 x 2D x D + D, i.e.
      half the filter (``parameters_paper_convention``). The fc6 fusion, 8192 -> 4096, is 33.56M
      exactly but 16.78M so counted.

    Evidence for that convention: the paper's conv fusion always adds 0.26-0.27M over sum fusion
    (97.58M vs 97.31M in Table 1, 97.57M vs 97.31M and 181.68M vs 181.42M in Table 2), which is
    512 x 512 + 512 = 262,656, whereas Eq. (4)'s 1 x 1 x 1024 x 512 filter + 512 biases is 524,800.
    So the exact conv fusion rows are +0.2% off (97.76M vs 97.58M), still within 0.5%. The
    convention does not fit every row: it gives 91.40M (-0.54%), 92.78M (-0.32%), 95.14M (-0.36%)
    for ReLU2..ReLU4, where the exact counts are -0.47%, -0.04%, -0.08%; the paper's own rows are
    not consistent with one rule (its ReLU4 -> ReLU5 step, 2.09M, is conv5's 2.36M minus 0.26M).

    The rows with no fusion layer are 0.07-0.08M below the paper (181.34M vs 181.42M, -0.05%;
    97.24M vs 97.31M, -0.08%). Hypotheses tested numerically (``tests/test_vggm.py``):

    - ``flow_channels=3`` (the flow conv1 counted like an RGB one) moves every row 0.08M further
      away (181.26M, 97.16M): rejected.
    - ``rgb_channels=20`` (BOTH conv1 layers take 20 channels, 79,968 parameters more, as if the
      spatial net were counted from the flow net's definition) gives 181.42M and 172.81M exactly
      and 97.32M for 97.31M; with the D x D + D convention also 97.58M (Table 1 conv: exact),
      181.68M (ReLU5 + FC8: exact), 97.58M for Table 2's 97.57M and 190.12M for 190.06M (+0.03%).
      This is the best fit: the paper's counts most likely come from networks whose two conv1
      layers both take 20 channels, with conv fusion counted as D x D + D. It is not the default,
      because the spatial tower does take 3 channels.
    - Neither convention fits ReLU2..ReLU4: over the unfused network (both conv1 with 20 inputs)
      the paper's fusion layers add 0.48M, 0.48M and 0.52M, against 0.07M, 0.26M, 0.26M
      (D x D + D) and 0.13M, 0.52M, 0.52M (exact). ReLU4 fits the exact count (95.48M), ReLU2 and
      ReLU3 fit nothing we could find (the same 0.48M at D = 256 and D = 512). Our exact counts
      stay within 0.5% of these rows (the closest call is ReLU2, -0.47%).
    """
    counts, nets = {}, fusion_configurations(num_classes, flow_channels, input_size, rgb_channels)
    for name in PAPER_COUNTS:
        net = nets[name]
        table, label, paper_layers, paper_m = PAPER_COUNTS[name]
        svm = net["svm"] if "svm" in net else None
        parts = {k: m for k, m in net.items() if k != "svm"}
        parameters = sum(_numel(m) for m in parts.values())
        fusions = [m for k, m in parts.items() if k.startswith("fusion_")]
        fusion_parameters = sum(_numel(m) for m in fusions)
        # the paper's apparent convention: a 2D -> D conv fusion counted as D x D + D
        halved = sum(m.out_channels * m.out_channels + m.out_channels for m in fusions)
        paper_convention = parameters - fusion_parameters + halved
        row = dict(table=table, row=label,
                   layers=sum(_layers(m) for m in parts.values()), parameters=parameters,
                   fusion_parameters=fusion_parameters, parameters_paper_convention=paper_convention,
                   paper_layers=paper_layers, paper_parameters=paper_m,
                   rel_diff=parameters / (paper_m * 1e6) - 1,
                   rel_diff_paper_convention=paper_convention / (paper_m * 1e6) - 1)
        row["matches"] = abs(row["rel_diff"]) <= TOLERANCE
        if svm is not None:
            row["svm_parameters"] = _numel(svm)
        counts[name] = row
    return counts


def format_parameter_table(counts: Mapping[str, Mapping]) -> str:
    """A plain-text table of :func:`fusion_parameter_counts`' rows beside the paper's numbers."""
    header = (f"{'configuration':<26} {'layers':>6} {'paper':>5} {'params (M)':>10} {'paper (M)':>9} "
              f"{'diff':>7}   {'paper conv. (M)':>15} {'diff':>7}")
    lines = [header, "-" * len(header)]
    for name, r in counts.items():
        svm = f" +SVM {r['svm_parameters'] / 1e6:.2f}" if "svm_parameters" in r else ""
        lines.append(f"{name:<26} {r['layers']:>6} {r['paper_layers']:>5} {r['parameters'] / 1e6:>10.2f} "
                     f"{r['paper_parameters']:>9.2f} {100 * r['rel_diff']:>+6.2f}%   "
                     f"{r['parameters_paper_convention'] / 1e6:>15.2f} {100 * r['rel_diff_paper_convention']:>+6.2f}%"
                     f"{'' if r['matches'] else '  (no match)'}{svm}")
    lines.append("params: sum(p.numel()) of the built modules; paper conv.: each conv fusion layer 2D -> D "
                 "counted as D*D + D, as the paper's counts suggest (see fusion_parameter_counts).")
    return "\n".join(lines)
