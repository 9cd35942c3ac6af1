"""Feichtenhofer et al. (CVPR 2016), Tables 1-5 as data: every row by name, the method and options
that build it, the paper's numbers and parameter counts, and the orderings §4.2-4.6 claim
(:mod:`fusionkit.methods.tables`; ``fusionkit reproduce feichtenhofer2016 --table N``).

Where a row fuses ("ReLU3", "ReLU5") is a point of the backbone used: on ``vggm2048`` the paper's
own (:data:`fusionkit.models.vggm.RELU_STAGE`); on any other staged backbone ReLU5 is the end of
its last stage and ReLU(5 - j) the end of the j-th stage before it (``tiny``'s three stages are
ReLU3, ReLU4, ReLU5, so Table 2's ReLU2 needs a deeper backbone). :func:`relu_position` resolves
them; a row with no such point on the backbone is reported as not buildable there.

Readings (the paper's text, and what differs here):

- The fused networks truncate the motion tower at the fusion point (Fig. 2 left) unless the row
  keeps both ("+", "ReLU5 + FC8": ``keep_flow_tower=True``; the fused prediction is then the two
  towers' average, ``spatial-S`` / ``conv_fusion-S``).
- Fusing at the last stage, the classifier has a per-location layer (``head_hidden``, the fc6
  analogue) in the teaching recipe: pooling right after a linear fusion would make the network
  linear in each stream.
- "Bilinear + SVM": the bilinear features (power- and L2-normalised, Eq. 5) of the frozen towers feed
  one linear layer trained as a one-vs-rest linear SVM (squared hinge loss, ``classifier="svm"``,
  ``finetune="classifier"``; :mod:`fusionkit.methods.conv_fusion`), no fully connected layers (§3.1).
- "ReLU5 + FC8" and Table 4's "+" rows combine the two towers' FC8 outputs (``score_fusion="logits"``,
  the paper recipe's); the teaching recipe averages their softmax scores (``"softmax"``, the default,
  what the committed reproductions used).
- Parameter counts (Tables 1-2) are checked by the test suite on the rows built as the paper's
  networks (:data:`PAPER_NETWORK`: two VGG-M-2048 with their fc6-fc8 head, L = 10, 224 x 224, 101
  classes): within 0.5% of the paper's, except where a row's note says why not.
- FC6 / FC7 fusion (Table 2's "ReLU3 + ReLU5 + FC6", §4.2's FC rows) needs fusion between the fully
  connected layers of the towers' heads, which :class:`~fusionkit.models.two_stream.TwoStreamNet`
  does not place blocks in: listed, not buildable.
"""
from __future__ import annotations

from fusionkit.methods.tables import AblationRow, AblationTable, Claim, Column, register_table, rows

PAPER = "feichtenhofer2016"
RELUS = ("ReLU1", "ReLU2", "ReLU3", "ReLU4", "ReLU5")


def relu_position(backbone: str, relu: str, **backbone_kwargs) -> str:
    """The stage whose output is "fusion at ``relu``" (``"ReLU3"``) on ``backbone``; ValueError where
    the backbone has no such point."""
    from fusionkit.models.two_stream import probe_backbone
    from fusionkit.models.vggm import RELU_STAGE

    if relu not in RELUS:
        raise ValueError(f"unknown fusion layer {relu!r}; the conv layers' ReLUs are {RELUS}")
    k = RELUS.index(relu) + 1
    if backbone == "vggm2048":
        return RELU_STAGE[k]
    names = probe_backbone(backbone, **backbone_kwargs).stage_names
    index = len(names) - 1 - (5 - k)
    if index < 0:
        raise ValueError(f"backbone {backbone!r} has {len(names)} stages ({', '.join(names)}), read as "
                         f"{', '.join(f'ReLU{5 - len(names) + 1 + i}' for i in range(len(names)))}: it has no {relu} "
                         f"(a backbone with more stages has, e.g. resnet18 or vggm2048)")
    return names[index]


def count_parameters(row: AblationRow, model) -> float:
    """The parameters (millions) of the network the row describes: all of the model's but, where the
    motion tower is truncated at the fusion point (Fig. 2 left), its layers after that point, which
    :class:`~fusionkit.models.two_stream.TwoStreamNet` builds but never runs (Table 2's ReLU2-ReLU4)."""
    from fusionkit.models.positions import order_positions

    total = sum(p.numel() for p in model.parameters())
    if model.flow_head is None and model.positions:
        tower = model.flow_tower
        first = order_positions(model.positions, tower.stage_names)[0]
        index = tower.stage_names.index(first.stage)
        unused = [tower.stages[n] for n in tower.stage_names[index + 1:]]
        if first.child is not None:
            unused += list(tower.stages[first.stage].children())[first.child + 1:]
        total -= sum(p.numel() for m in unused for p in m.parameters())
    return total / 1e6


def resolve(row: AblationRow, backbone: str) -> dict:
    """A row's options for ``backbone``: ``position`` / ``positions`` named by ReLU become stages."""
    options = dict(row.options)
    if isinstance(options.get("position"), str) and options["position"] in RELUS:
        options["position"] = relu_position(backbone, options["position"])
    if options.get("positions") is not None:
        options["positions"] = [relu_position(backbone, p) if p in RELUS else p for p in options["positions"]]
    return options


# the networks whose parameters Tables 1-2 count: two VGG-M-2048 with their fc head, L = 10, on UCF101
PAPER_NETWORK = {"num_classes": 101, "backbone": "vggm2048", "new_length": 10, "head": "vggm_fc", "input_size": 224}
FC8 = ("the two towers' predictions combined: score_fusion='logits' averages their FC8 outputs as the paper does "
       "(the paper recipe); the teaching recipe averages their softmax scores (score_fusion='softmax')")

# ---- Table 1: how to fuse spatially (§4.2), two VGG-M-2048, UCF101 split 1 ----------------------
T1_COLUMNS = (Column("Acc.", "fused", "UCF101"),)
T1_SOFTMAX_NOTE = "the two separately trained streams, softmax scores averaged: the `late` run the fusion rows start from"
TABLE1 = register_table(AblationTable(
    PAPER, 1, "Performance comparison of different spatial fusion strategies (Sec. 3.1) on UCF101 (split 1)",
    T1_COLUMNS,
    rows(T1_COLUMNS,
         ("Sum [22] / Softmax", "late", {}, (85.6,),
          dict(parameters=181.42, extra={"#layers": 16}, note="Simonyan & Zisserman's number; " + T1_SOFTMAX_NOTE)),
         ("Sum (ours) / Softmax", "late", {}, (85.94,),
          dict(parameters=181.42, extra={"#layers": 16}, note=T1_SOFTMAX_NOTE)),
         ("Max / ReLU5", "spatial", {"fusion": "max", "position": "ReLU5"}, (82.70,),
          dict(parameters=97.31, extra={"#layers": 13})),
         ("Concatenation / ReLU5", "spatial", {"fusion": "concat", "position": "ReLU5"}, (83.53,),
          dict(parameters=172.81, extra={"#layers": 13})),
         ("Bilinear [15] / ReLU5", "spatial",
          {"fusion": "bilinear", "position": "ReLU5", "head": "pool_linear", "head_hidden": None, "dropout": 0.0,
           "classifier": "svm", "finetune": "classifier"}, (85.05,),
          dict(parameters=6.61, extra={"#layers": 10, "#parameters": "6.61M+SVM"},
               note="bilinear features (Eq. 5, power- and L2-normalised) of the frozen towers (from the separately "
                    "trained streams) into a one-vs-rest linear SVM (squared hinge loss, regularised by the weight "
                    "decay), no FC layers (§3.1). Parameters: ours are both conv stacks, 13.14M, plus the SVM on "
                    "the 512^2 features, 26.48M: 39.61M; the paper's 6.61M is exactly one conv stack (the flow "
                    "tower's, 6,608,608; parameter_counts), the SVM counted apart")),
         ("Sum / ReLU5", "spatial", {"fusion": "sum", "position": "ReLU5"}, (85.20,),
          dict(parameters=97.31, extra={"#layers": 13})),
         ("Conv / ReLU5", "spatial", {"fusion": "conv", "position": "ReLU5"}, (85.96,),
          dict(parameters=97.58, extra={"#layers": 14}, note="1x1 conv fusion initialised as the sum (identity, §4.2)"))),
    claims=(
        Claim("Conv >= Sum > Max at ReLU5", (("Conv / ReLU5", ">=", "Sum / ReLU5"), ("Sum / ReLU5", ">", "Max / ReLU5")),
              "UCF101 Acc.", source="§4.2; the issue's summary"),
        Claim("Max and Concatenation perform considerably lower than Sum and Conv",
              (("Sum / ReLU5", ">", "Max / ReLU5"), ("Sum / ReLU5", ">", "Concatenation / ReLU5"),
               ("Conv / ReLU5", ">", "Max / ReLU5"), ("Conv / ReLU5", ">", "Concatenation / ReLU5")),
              "UCF101 Acc.", source="§4.2"),
        Claim("Conv fusion performs best, slightly better than Bilinear and Sum",
              (("Conv / ReLU5", ">=", "Bilinear [15] / ReLU5"), ("Conv / ReLU5", ">=", "Sum / ReLU5"),
               ("Conv / ReLU5", ">=", "Max / ReLU5"), ("Conv / ReLU5", ">=", "Concatenation / ReLU5")),
              "UCF101 Acc.", source="§4.2"),
        Claim("Fusing at ReLU5 by Conv or Sum does not significantly lower accuracy (vs softmax averaging, "
              "within 1 point)",
              (("Conv / ReLU5", "~", "Sum (ours) / Softmax"), ("Sum / ReLU5", "~", "Sum (ours) / Softmax")),
              "UCF101 Acc.", tolerance=1.0, source="Table 1 caption"),
    ),
    recipe_method="spatial", parameter_unit="M", resolve=resolve, paper_network=PAPER_NETWORK,
    count_parameters=count_parameters,
    note="Two VGG-M-2048 towers in the paper; the fused networks truncate the motion tower at ReLU5 (Fig. 2 left). "
         "Parameter counts are the paper's for VGG-M-2048 (fusionkit.methods.conv_fusion.parameter_counts rebuilds "
         "them; the rows built with PAPER_NETWORK match them within 0.5%); ours are of the backbone run."))

# ---- Table 2: where to fuse (§4.3), conv fusion, two VGG-M-2048, UCF101 split 1 -------------------
T2_COLUMNS = (Column("Accuracy", "fused", "UCF101"),)
TABLE2 = register_table(AblationTable(
    PAPER, 2, "Performance comparison for Conv fusion (4) at different fusion layers", T2_COLUMNS,
    rows(T2_COLUMNS,
         ("ReLU2", "spatial", {"fusion": "conv", "position": "ReLU2"}, (82.25,), dict(parameters=91.90, extra={"#layers": 11})),
         ("ReLU3", "spatial", {"fusion": "conv", "position": "ReLU3"}, (83.43,), dict(parameters=93.08, extra={"#layers": 12})),
         ("ReLU4", "spatial", {"fusion": "conv", "position": "ReLU4"}, (82.55,), dict(parameters=95.48, extra={"#layers": 13})),
         ("ReLU5", "spatial", {"fusion": "conv", "position": "ReLU5"}, (85.96,), dict(parameters=97.57, extra={"#layers": 14})),
         ("ReLU5 + FC8", "spatial", {"fusion": "conv", "position": "ReLU5", "keep_flow_tower": True}, (86.04,),
          dict(parameters=181.68, extra={"#layers": 17},
               note="Fig. 2 right: both towers kept, conv fusion at ReLU5 into the appearance tower, " + FC8)),
         ("ReLU3 + ReLU5 + FC6", None, {"fusion": "conv", "positions": ["ReLU3", "ReLU5"], "keep_flow_tower": True},
          (81.55,),
          dict(parameters=190.06, extra={"#layers": 17}, buildable=False,
               reason="FC6 fusion: a conv fusion of the two towers' fc6 outputs needs a block between the fully "
                      "connected layers of the heads, which TwoStreamNet does not place; the conv part alone is "
                      "spatial(positions=[ReLU3, ReLU5], keep_flow_tower=True)"))),
    claims=(
        Claim("An earlier fusion (than after conv5) results in weaker performance",
              (("ReLU5", ">", "ReLU4"), ("ReLU5", ">", "ReLU3"), ("ReLU5", ">", "ReLU2")), "UCF101 Accuracy",
              source="Table 2 caption"),
        Claim("Fusing at ReLU5 alone is about as good as ReLU5 + FC8 (85.96% vs 86.04%, within 1 point)",
              (("ReLU5", "~", "ReLU5 + FC8"),), "UCF101 Accuracy", tolerance=1.0, source="§4.3"),
        Claim("Multiple fusions lower performance if early layers are incorporated",
              (("ReLU3 + ReLU5 + FC6", "<", "ReLU5"),), "UCF101 Accuracy", source="Table 2 caption"),
    ),
    recipe_method="spatial", parameter_unit="M", resolve=resolve, paper_network=PAPER_NETWORK,
    count_parameters=count_parameters,
    note="ReLUk is the end of a backbone stage (see relu_position): tiny has ReLU3-ReLU5 only."))

# ---- Table 3: deep vs very deep towers (§4.4), late fusion -------------------------------------------
T3_COLUMNS = tuple(Column(name, role, dataset) for dataset in ("UCF101", "HMDB51")
                   for name, role in (("Spatial", "rgb"), ("Temporal", "flow"), ("Late Fusion", "fused")))
TABLE3 = register_table(AblationTable(
    PAPER, 3, "Performance comparison of deep (VGG-M-2048) vs. very deep (VGG-16) Two-Stream ConvNets (split 1); "
              "late fusion averages the prediction layers. Transposed: the paper's columns are our rows",
    T3_COLUMNS,
    rows(T3_COLUMNS,
         ("VGG-M-2048", "late", {"backbone": "vggm2048"}, (74.22, 82.34, 85.94, 36.77, 51.50, 54.90),
          dict(note="vggm2048 towers with the run's classifier (global pooling + linear); the paper's fc6-fc8 "
                    "head is the option head='vggm_fc'")),
         ("VGG-16", "late", {"backbone": "vgg16"}, (82.61, 86.25, 90.62, 47.06, 55.23, 58.17))),
    claims=(
        Claim("Going to a deeper spatial model boosts performance significantly",
              ((("VGG-16", "UCF101 Spatial"), ">", ("VGG-M-2048", "UCF101 Spatial")),
               (("VGG-16", "HMDB51 Spatial"), ">", ("VGG-M-2048", "HMDB51 Spatial"))), "UCF101 Spatial", source="§4.4"),
        Claim("The deeper two-stream network is better after late fusion",
              ((("VGG-16", "UCF101 Late Fusion"), ">", ("VGG-M-2048", "UCF101 Late Fusion")),
               (("VGG-16", "HMDB51 Late Fusion"), ">", ("VGG-M-2048", "HMDB51 Late Fusion"))), "UCF101 Late Fusion",
              source="Table 3 caption"),
    ),
    recipe_method="late",
    note="The row's backbone option picks the towers (both towers of a network share one backbone here)."))

# ---- Table 4: how to fuse temporally (§4.5), S: VGG-16, T: VGG-M ------------------------------------
T4_COLUMNS = (Column("Acc.", "fused", "UCF101"), Column("Acc.", "fused", "HMDB51"),
              Column("fused tower alone (-R, not in the paper)", "rgb"))
TABLE4 = register_table(AblationTable(
    PAPER, 4, "Spatiotemporal two-stream fusion on UCF101 (split1) and HMDB51 (split1); '+': both towers and their "
              "losses kept, the FC8 predictions of both averaged at test", T4_COLUMNS,
    rows(T4_COLUMNS,
         ("2D Conv / 2D pooling / ReLU5 +", "conv_fusion", {"fusion": "pool2d", "spatial_fusion": "conv"},
          (89.35, 56.93, None)),
         ("2D Conv / 3D pooling / ReLU5 +", "conv_fusion", {"fusion": "pool3d", "spatial_fusion": "conv"},
          (89.64, 57.58, None)),
         ("3D Conv / 3D pooling / ReLU5 +", "conv_fusion", {"fusion": "conv3d_pool3d"}, (90.40, 58.63, None),
          dict(note="Eq. 6, initialised as §3.5 (two identity matrices, the temporal one x3, a 3x3x3 Gaussian)"))),
    claims=(
        Claim("3D pooling instead of 2D pooling after the fusion layer increases performance",
              (("2D Conv / 3D pooling / ReLU5 +", ">", "2D Conv / 2D pooling / ReLU5 +"),
               (("2D Conv / 3D pooling / ReLU5 +", "HMDB51 Acc."), ">", ("2D Conv / 2D pooling / ReLU5 +", "HMDB51 Acc."))),
              "UCF101 Acc.", source="§4.5"),
        Claim("A 3D filter for fusion further boosts recognition (3D conv + 3D pooling best)",
              (("3D Conv / 3D pooling / ReLU5 +", ">", "2D Conv / 3D pooling / ReLU5 +"),
               ("3D Conv / 3D pooling / ReLU5 +", ">", "2D Conv / 2D pooling / ReLU5 +"),
               (("3D Conv / 3D pooling / ReLU5 +", "HMDB51 Acc."), ">", ("2D Conv / 3D pooling / ReLU5 +", "HMDB51 Acc."))),
              "UCF101 Acc.", source="§4.5"),
    ),
    recipe_method="conv_fusion",
    note="The paper's towers are S: VGG-16 and T: VGG-M (mixed backbones are not buildable: one backbone serves both "
         "towers here); the rows' fusion structures are the paper's. '+': " + FC8 + "."))

# ---- Table 5: the method against the state of the art (§4.6), mean over 3 splits --------------------
T5_COLUMNS = (Column("Acc.", "fused", "UCF101"), Column("Acc.", "fused", "HMDB51"))
TABLE5 = register_table(AblationTable(
    PAPER, 5, "Mean classification accuracy over three splits: the paper's own rows (S: spatial, T: temporal model)",
    T5_COLUMNS,
    rows(T5_COLUMNS,
         ("Two-Stream ConvNet (VGG-16, ours)", "late", {"backbone": "vgg16"}, (91.7, 58.7)),
         ("Ours (S:VGG-16, T:VGG-M)", None, {}, (90.8, 62.1),
          dict(buildable=False, reason="mixed backbones (VGG-16 appearance tower, VGG-M-2048 motion tower, the smaller "
                                       "map zero-padded, §3.2/§3.5): TwoStreamNet builds both towers from one backbone")),
         ("Ours (S:VGG-16, T:VGG-16, single tower after fusion)", None, {"backbone": "vgg16"}, (91.8, 64.6),
          dict(buildable=False, reason="the motion tower truncated after 3D conv fusion: TwoStreamNet's temporal fusion "
                                       "needs the motion tower (keep_flow_tower=False takes one spatial block only)")),
         ("Ours (S:VGG-16, T:VGG-16)", "conv_fusion", {"backbone": "vgg16", "fusion": "conv3d_pool3d"}, (92.5, 65.4))),
    claims=(
        Claim("3D conv + 3D pooling fusion improves on the two-stream ConvNet with the same VGG-16 towers",
              (("Ours (S:VGG-16, T:VGG-16)", ">", "Two-Stream ConvNet (VGG-16, ours)"),
               (("Ours (S:VGG-16, T:VGG-16)", "HMDB51 Acc."), ">", ("Two-Stream ConvNet (VGG-16, ours)", "HMDB51 Acc."))),
              "UCF101 Acc.", source="§4.6"),
        Claim("Keeping two towers (92.5%) beats a single tower after temporal fusion (91.8%)",
              (("Ours (S:VGG-16, T:VGG-16)", ">", "Ours (S:VGG-16, T:VGG-16, single tower after fusion)"),), "UCF101 Acc.",
              source="§4.6"),
        Claim("VGG-16 for both streams beats S:VGG-16, T:VGG-M",
              (("Ours (S:VGG-16, T:VGG-16)", ">", "Ours (S:VGG-16, T:VGG-M)"),), "UCF101 Acc.", source="§4.6"),
    ),
    recipe_method="conv_fusion",
    note="Only the paper's own rows; the other methods of Table 5 are other papers'."))
