"""Pre-trained ResNets from other libraries, converted into the zoo's models.

    from gn_keras import models
    model = models.load_pretrained("timm", "resnet50_gn.pth", "resnet50", norm="gn")
    conversion = models.pretrained.convert_checkpoint("detectron", "R-50-GN.pkl")
    models.pretrained.convert_to_directory("timm", "hub:resnet50_gn.a1h_in1k", "r50_gn")

Sources: timm and torchvision state dicts (``.pth``/``.pt``/``.bin``,
``.safetensors``), Detectron's Caffe2 ``.pkl`` blobs and detectron2
checkpoints, for ResNet-18/34/50/101/152 with GN or BN, and timm's GN
pre-activation ResNet-V2 (BiT's GN + WS, :mod:`.timm_resnetv2`). The zoo's ResNets
have torchvision's layout (v1.5, torch-style padding), so each tensor has
exactly one place: :mod:`.names` renames, :mod:`.assign` fills,
:mod:`.loader` checks and builds, :mod:`.verify` compares with PyTorch and
:mod:`.output` writes the model directory (``gn-convert``).
"""

from gn_keras.models.pretrained.loader import (
    INPUT_FORMATS,
    MODELS,
    NORMS,
    Conversion,
    convert_checkpoint,
    load_pretrained,
)
from gn_keras.models.pretrained.names import SOURCES
from gn_keras.models.pretrained.output import convert_to_directory, write
from gn_keras.models.pretrained.verify import verify

__all__ = [
    "INPUT_FORMATS",
    "MODELS",
    "NORMS",
    "SOURCES",
    "Conversion",
    "convert_checkpoint",
    "convert_to_directory",
    "load_pretrained",
    "verify",
    "write",
]
