"""gn-keras: Group Normalization (Wu & He, 2018) for Keras 3 and TensorFlow.

The public surface: the ``GroupNormalization`` layer and its functional form
``group_norm``, ``portable_ops`` for graphs traced by hand for export, and
``replace_group_norms``, which puts the layer into an existing Keras model.
"""

import os as _os
import sys as _sys

# Our command-line scripts (console scripts gn-*, or python -m gn_keras...)
# hide TensorFlow's C++ INFO lines (CPU features, finished iterators), which
# only clutter a run.  It must happen before TensorFlow loads, and this
# package is imported first; a library user's environment is left alone.
if _os.path.basename(_sys.argv[0]).startswith("gn-") or _sys.argv[0] == "-m":
    _os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

# The normalization family, model conversion, and the layers they use (the
# imports also register those layers for loading saved models).
from gn_keras import convert, norms
from gn_keras.dropin import replace_group_norms
from gn_keras.frozen_bn import FrozenBatchNormalization
from gn_keras.functional import group_norm
from gn_keras.layer import GroupNormalization
from gn_keras.portable import portable_ops
from gn_keras.temporal_padding import TemporalReplicatePadding
from gn_keras.weight_convs import WNConv2D, WNConv3D, WSConv2D, WSConv3D

__version__ = "0.1.0"

__all__ = [
    "GroupNormalization",
    "group_norm",
    "portable_ops",
    "replace_group_norms",
    "__version__",
    "convert",
    "norms",
    "FrozenBatchNormalization",
    "TemporalReplicatePadding",
    "WNConv2D",
    "WNConv3D",
    "WSConv2D",
    "WSConv3D",
]
