"""Xception (Chollet, CVPR 2017): depthwise separable convolutions with residual connections.

    >>> import xception
    >>> model = xception.create_model("xception")          # the paper's model, 22,855,952 parameters
    >>> backbone = xception.create_model("xception65", features_only=True, output_stride=16)
    >>> keras = xception.create_model(weights="xception.keras_in1k")  # Keras's ImageNet weights
    >>> fast = xception.optimize(model)                     # inference: BN folded, fused convs
    >>> int8 = xception.quantize(model, "calibration-photos/", held_out="photos-test/").model   # int8
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Each public name and the submodule that defines it. They are imported on first use (PEP 562), so that
# ``import xception`` — and with it ``xception --help`` — does not pay for importing torch.
_EXPORTS: dict[str, str] = {
    "Preprocessing": ".preprocessing",
    "SeparableConv2d": ".layers",
    "Xception": ".models",
    "XceptionConfig": ".models",
    "create_model": ".api",
    "list_models": ".models",
    "list_weights": ".weights",
    "optimize": ".fast",
    "quantize": ".quantize",
    "save_weights": ".weights",
}

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
    "quantize",
    "save_weights",
]

if TYPE_CHECKING:
    from .api import create_model
    from .fast import optimize
    from .layers import SeparableConv2d
    from .models import Xception, XceptionConfig, list_models
    from .preprocessing import Preprocessing
    from .quantize import quantize
    from .weights import list_weights, save_weights


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    package = importlib.import_module(module, __name__)
    # ``quantize`` is a package and its function at once: the package is callable as the function, and is what
    # the name must hold, since importing any of its modules binds it here anyway.
    value = package if module == f".{name}" else getattr(package, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
