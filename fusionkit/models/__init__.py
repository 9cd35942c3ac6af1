"""Models: staged backbones (this package's :mod:`~fusionkit.models.backbones`)."""
from fusionkit.models.backbones import (
    BACKBONES,
    PRETRAINED_WEIGHTS,
    StagedBackbone,
    cross_modality_init,
    get_backbone,
    list_backbones,
    pretrained_weights_file,
    register_backbone,
)

__all__ = [
    "BACKBONES",
    "PRETRAINED_WEIGHTS",
    "StagedBackbone",
    "cross_modality_init",
    "get_backbone",
    "list_backbones",
    "pretrained_weights_file",
    "register_backbone",
]
from fusionkit.models import vggm  # noqa: E402,F401  (registers the "vggm2048" backbone)
