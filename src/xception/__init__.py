"""Xception (Chollet, CVPR 2017): depthwise separable convolutions with residual connections.

    >>> import xception
    >>> model = xception.create_model("xception")          # the paper's model, 22,855,952 parameters
    >>> backbone = xception.create_model("xception65", features_only=True, output_stride=16)
    >>> keras = xception.create_model(weights="xception.keras_in1k")  # Keras's ImageNet weights
    >>> fast = xception.optimize(model)                     # inference: BN folded, fused convs
"""

from .api import create_model
from .fast import optimize
from .layers import SeparableConv2d
from .models import Xception, XceptionConfig, list_models
from .preprocessing import Preprocessing
from .weights import list_weights, save_weights

__version__ = "0.1.0"

__all__ = [
    "Preprocessing",
    "SeparableConv2d",
    "Xception",
    "XceptionConfig",
    "__version__",
    "create_model",
    "list_models",
    "list_weights",
    "optimize",
    "save_weights",
]
