"""Models by name: ``create_model("paper8")``; ``list_models()`` shows what is registered.

Importing this package registers every family (one module each).
"""

from __future__ import annotations

from tinycnn.models import fast as _fast  # noqa: F401  (registers fastnet)
from tinycnn.models import paper as _paper  # noqa: F401  (registers the paper's models)
from tinycnn.models import resnet as _resnet  # noqa: F401  (registers the ResNets)
from tinycnn.models.init import init_weights, scale_classifier
from tinycnn.models.paper import PaperCNN
from tinycnn.models.registry import (
    ModelInfo,
    create_model,
    format_models,
    list_models,
    model_options,
    register_model,
)

__all__ = [
    "ModelInfo",
    "PaperCNN",
    "create_model",
    "format_models",
    "init_weights",
    "list_models",
    "model_options",
    "register_model",
    "scale_classifier",
]
