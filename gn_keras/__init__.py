"""gn-keras: Group Normalization (Wu & He, 2018) for Keras 3 and TensorFlow.

The public surface: the ``GroupNormalization`` layer and its functional form
``group_norm``.
"""

from gn_keras.functional import group_norm
from gn_keras.layer import GroupNormalization

__version__ = "0.1.0"

__all__ = ["GroupNormalization", "group_norm", "__version__"]
