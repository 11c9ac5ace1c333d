"""The model zoo: ResNets, CIFAR ResNets, VGG-16 and ResNet-50 I3D, any norm.

    from gn_keras import models
    model = models.build("resnet50", norm="gn", groups=32)
    models.available()             # model names
    gn_keras.norms.available()     # norm names
    models.feature_endpoints(model)   # {"C2": tensor, ..., "C5": tensor}
    models.feature_extractor(model, ("C3", "C4", "C5"))  # dict-output backbone
    models.inflate_2d_to_3d(resnet50_2d, resnet50_i3d)   # ImageNet -> video
    models.load_pretrained("timm", "resnet50_gn.pth", "resnet50")  # other libraries' weights

Models output logits (no softmax). Layer names are deterministic and shared
across norms and between ``resnet50`` and ``resnet50_i3d``; see
:mod:`models.common` for the naming scheme and the paper's initialization.
"""

from gn_keras.models.endpoints import feature_endpoints, feature_extractor
from gn_keras.models.inflate import inflate_2d_to_3d
from gn_keras.models.pretrained import load_pretrained
from gn_keras.models.registry import available, build

__all__ = [
    "available",
    "build",
    "feature_endpoints",
    "feature_extractor",
    "inflate_2d_to_3d",
    "load_pretrained",
]
