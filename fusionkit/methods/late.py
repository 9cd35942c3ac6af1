"""The original two-stream network (Simonyan & Zisserman 2014): late fusion of two towers.

An appearance tower on single RGB frames and a motion tower on stacks of L flow fields, trained
separately, their softmax scores averaged with weight ``rgb_weight`` (the ``late`` output,
:func:`fusionkit.models.two_stream.late_fusion`). The fusion methods start from these streams.
"""
from __future__ import annotations

from fusionkit.methods.recipe import Method, register_method
from fusionkit.models.two_stream import TwoStreamNet


def late(num_classes: int, rgb_weight: float = 0.5, **network) -> TwoStreamNet:
    """Two towers, no fusion inside; outputs ``rgb``, ``flow`` and ``late`` = w p_rgb + (1 - w) p_flow."""
    return TwoStreamNet(num_classes, rgb_weight=rgb_weight, method="late", **network)


register_method(Method(
    name="late", build=late, schedule="separate",
    description="Two-stream network (Simonyan & Zisserman 2014): RGB and flow towers trained separately, "
                "softmax scores averaged with weight rgb_weight."))


# ---- recipes (fusionkit.methods.training_recipes) ---------------------------------------------------
def _register_recipes() -> None:
    from fusionkit.methods.training_recipes import TEACHING_DATA, Recipe, register_recipe, teaching_config
    from fusionkit.training.trainer import TrainConfig

    register_recipe(Recipe(
        "late", "teaching", teaching_config(25, weight_decay=1e-4), model={"dropout": 0.3},
        data={**TEACHING_DATA, "test_segments": 5}, source="notebooks/02_two_stream_late_fusion.ipynb",
        notes={"optimizer": "AdamW at 2e-3 with a cosine schedule: SGD's step schedule needs far more epochs than "
                            "a CPU lesson has",
               "epochs": "25: where both streams have converged on every puzzle"}))
    register_recipe(Recipe(
        "late", "paper",
        TrainConfig(epochs=1, batch_size=256, optimizer="sgd", lr=1e-2, momentum=0.9, weight_decay=5e-4,
                    lr_schedule="plateau", lr_patience=3),
        steps=20_000, model={"dropout": 0.85},
        data={"segments": 1, "test_segments": 25, "new_length": 10, "input_size": 224,
              "sampling": "one RGB frame / one stack of L = 10 flow fields per video and iteration (S&Z 2014)",
              "test_protocol": "25 frames per video, averaged (S&Z 2014); Feichtenhofer et al. test their streams "
                               "on 5 frames and flips, fully convolutional (their §3.5)"},
        source="Simonyan & Zisserman 2014 as retrained by Feichtenhofer et al. 2016 §3.5",
        notes={"optimizer": "SGD with momentum 0.9, batches of 256 ([22] = Simonyan & Zisserman 2014, Sec. 5; "
                            "that paper is not in shared/papers, cited from it)",
               "lr": "1e-2 ([22]); 'instead of decreasing the learning rate according to a fixed schedule, we lower "
                     "it after the validation error saturates' (Feichtenhofer §3.5): plateau, patience not stated, "
                     "chose 3 epochs",
               "length": "not stated by Feichtenhofer et al.; [22] stops fine-tuning from ImageNet at 20K "
                         "iterations: steps=20000 (both streams start from ImageNet, §3.5)",
               "dropout": "0.85 for the spatial net's fc layers (§3.5); fusionkit has one dropout for both towers: "
                          "0.85 for both",
               "weight_decay": "not stated: chose 5e-4 (TSN's)",
               "input": "frames rescaled to a smallest side of 256, 224x224 crops; flow stacked with L = 10, clipped "
                        "at 20 px, stored as JPEG (§3.5): new_length=10, input_size=224",
               "augmentation": "no RGB colour jittering (§3.5): fusionkit does none",
               "backbone": "VGG-M-2048 (Tables 1-2: --backbone vggm2048) or VGG-16 (Tables 3-5: --backbone vgg16), "
                           "ImageNet-initialised, the temporal net too (§3.5): --pretrained"}))


_register_recipes()
