"""The training recipes of Feichtenhofer et al.'s fused networks (``spatial``, ``conv_fusion``): the
paper's (§3.5, "Two-Stream ConvNet fusion" and "Spatiotemporal architecture") and notebook 03's
CPU settings (:mod:`fusionkit.methods.training_recipes`)."""
from __future__ import annotations

from fusionkit.methods.training_recipes import TEACHING_DATA, Recipe, register_recipe, teaching_config
from fusionkit.training.trainer import TrainConfig

TEACHING_NOTES = {
    "optimizer": "AdamW at 2e-3, cosine, batches of 8, for the streams and the fused network alike (notebook 03)",
    "finetune": "all layers: on the puzzles the towers are trained minutes before and re-fitting them with the fusion "
                "layer costs nothing; the paper's above_fusion is one option away (finetune='above_fusion')",
    "head_hidden": "128: a per-location layer before pooling, the fc6 analogue (the tiny towers have no fc6), so "
                   "that fusion at the last stage is not linear up to the classifier",
}
# the streams the fused networks start from, as notebook 03 trains them
STREAMS = teaching_config(20, weight_decay=1e-4)

# §3.5 "Two-Stream ConvNet fusion", for both fused networks
PAPER_FINETUNE = TrainConfig(epochs=30, batch_size=96, optimizer="sgd", lr=1e-3, momentum=0.9, weight_decay=5e-4,
                             lr_schedule="plateau", lr_patience=3)
PAPER_STREAMS = TrainConfig(epochs=1, batch_size=256, optimizer="sgd", lr=1e-2, momentum=0.9, weight_decay=5e-4,
                            lr_schedule="plateau", lr_patience=3)
PAPER_NOTES = {
    "streams": "first the two streams, separately, as [22] with §3.5's differences (late's paper recipe): SGD, "
               "batch 256, LR 1e-2 lowered when the validation error saturates, dropout 0.85, 20K iterations",
    "batch": "96 (§3.5: 'finetuned with a batch size of 96')",
    "lr": "1e-3, 'reduced by a factor of 10 as soon as the validation accuracy saturates' (§3.5): plateau; the "
          "patience is not stated, chose 3 epochs",
    "optimizer": "not stated for fine-tuning: SGD with momentum 0.9, as the streams ([22])",
    "weight_decay": "not stated: chose 5e-4",
    "epochs": "not stated (training ends with the plateaus): chose at most 30 epochs",
    "finetune": "above_fusion: 'We only propagate back to the injected fusion layer, since full backpropagation did "
                "not result in an improvement' (§3.5)",
    "dropout": "not stated for fine-tuning: kept the streams' 0.85",
    "score_fusion": "logits: the two towers' FC8 outputs averaged at test, not their softmax (Table 4's caption, "
                    "Table 2's ReLU5 + FC8); the teaching recipe keeps the softmax average",
    "init": "conv fusion initialised by identity matrices that sum the two networks (§3.5, §4.2): the blocks' default",
    "backbone": "two VGG-M-2048 (Tables 1-2: --backbone vggm2048), VGG-16 (Tables 3-5: vgg16); the S: VGG-16 / "
                "T: VGG-M mix of Table 4 is not buildable (one backbone for both towers)",
}


def register() -> None:
    register_recipe(Recipe(
        "spatial", "teaching", teaching_config(20, weight_decay=1e-4), pretrain=STREAMS, finetune="all",
        model={"dropout": 0.3, "head_hidden": 128}, data=dict(TEACHING_DATA), source="notebooks/03_conv_fusion.ipynb",
        notes=TEACHING_NOTES))
    register_recipe(Recipe(
        "spatial", "paper", PAPER_FINETUNE, pretrain=PAPER_STREAMS, pretrain_steps=20_000, finetune="above_fusion",
        model={"dropout": 0.85, "score_fusion": "logits"},
        data={"segments": 1, "test_segments": 5, "new_length": 10, "input_size": 224,
              "sampling": "not stated for the spatially fused networks (Tables 1-2): one frame and its flow stack per "
                          "video, as the streams ([22])",
              "test_protocol": "T = 5 frames and their horizontal flips, fully convolutional on the whole frame "
                               "(§3.5); fusionkit tests centre crops without the flips. With both towers kept "
                               "(ReLU5 + FC8) their FC8 outputs are averaged (score_fusion='logits')"},
        source="Feichtenhofer et al. 2016 §3.5", notes=PAPER_NOTES))
    register_recipe(Recipe(
        "conv_fusion", "teaching", teaching_config(20, weight_decay=1e-4), pretrain=STREAMS, finetune="all",
        model={"dropout": 0.3, "head_hidden": 128}, data=dict(TEACHING_DATA), source="notebooks/03_conv_fusion.ipynb",
        notes={**TEACHING_NOTES, "sampling": "TSN segments spread over the (24-frame) puzzle video, 3 in training and "
                                             "testing; the paper's neighbouring chunks tau frames apart are the "
                                             "paper recipe's"}))
    register_recipe(Recipe(
        "conv_fusion", "paper", PAPER_FINETUNE, pretrain=PAPER_STREAMS, pretrain_steps=20_000, finetune="above_fusion",
        model={"dropout": 0.85, "score_fusion": "logits"},
        data={"segments": 5, "test_segments": 5, "new_length": 10, "input_size": 224,
              "sampling": "T = 5 frame stacks tau frames apart from a random start, tau random in [1, 10] in training "
                          "(§3.5: 15-50 frames); width and height jittered by +-25% and rescaled to 224, the same crop "
                          "for every frame of a stack",
              "test_protocol": "T = 5 frames and their flips, fully convolutional; the FC8 outputs of both towers "
                               "averaged (§3.4, Table 4 caption): score_fusion='logits'"},
        source="Feichtenhofer et al. 2016 §3.4-3.5",
        notes={**PAPER_NOTES,
               "losses": "both towers' losses, the prediction layers not fused in training (§3.4-3.5): the "
                         "finetune schedule's one loss per classifier",
               "init": "the 3x3x3 x 1024 x 512 fusion kernel as two identity matrices, the temporal one x3, with a "
                       "3x3x3 Gaussian of sigma 1 (§3.5): conv3d_pool3d's default"}))


register()
