"""Xception (Chollet, CVPR 2017): depthwise separable convolutions with residual connections.

    >>> import xception
    >>> model = xception.create_model("xception")          # the paper's model, 22,855,952 parameters
    >>> backbone = xception.create_model("xception65", features_only=True, output_stride=16)
"""

from .layers import SeparableConv2d
from .models import Xception, XceptionConfig, list_models
from .models import build_model as create_model

__version__ = "0.1.0"

__all__ = ["SeparableConv2d", "Xception", "XceptionConfig", "__version__", "create_model", "list_models"]
