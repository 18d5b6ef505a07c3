"""What the service answers, as pydantic models: the schemas ``/docs`` and ``/openapi.json`` show.

Field names are the JSON keys; ``class`` is a Python keyword, so that field is ``class_name`` with the
alias ``class`` (FastAPI writes responses by alias).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ClassScore(BaseModel):
    """One class of a prediction."""

    class_name: str = Field(alias="class", description="the class name (its index as text when the model has none)")
    index: int = Field(ge=0, description="the class index: the position of its logit")
    probability: float = Field(ge=0, le=1, description="softmax probability")


class Prediction(BaseModel):
    """``POST /predict``: the top-k classes, most probable first."""

    top: list[ClassScore]
    model: str = Field(description="the model's name")
    backend: str = Field(description="what runs it: torch (PyTorch, on its fast path), onnxruntime or torch-export")


class NamedScore(BaseModel):
    class_name: str = Field(alias="class")
    probability: float = Field(ge=0, le=1)


class Target(BaseModel):
    index: int = Field(ge=0)
    class_name: str = Field(alias="class")


class Explanation(BaseModel):
    """``POST /explain?format=json``: Grad-CAM for the target class."""

    top: list[NamedScore] = Field(description="the top-k classes, most probable first")
    target: Target = Field(description="the class explained: the most probable one unless ?class= named one")
    layer: str = Field(description="the layer whose activations and gradients made the heatmap")
    heatmap: list[list[float]] = Field(description="the heatmap at the layer's resolution, values in [0, 1]")
    overlay: str = Field(description="the overlay on the image, as a data:image/png;base64 URL")


class ErrorBody(BaseModel):
    """Every refused request: ``error`` is the kind (also the label of ``xception_errors_total``)."""

    error: str = Field(examples=["not_an_image"])
    message: str = Field(examples=["the upload is unusable: not an image (unknown format)"])


class Health(BaseModel):
    """``GET /healthz``: the process answers."""

    status: Literal["ok"] = "ok"


class ModelFacts(BaseModel):
    """What is served and how. Runtimes add facts of their own (provider, kernels, the ONNX file …)."""

    model_config = ConfigDict(extra="allow")

    backend: str = Field(description="what runs the model: torch, onnxruntime or torch-export")
    runtime: str = Field(description="the runtime of xception.inference: torch, fast, onnxruntime, torch-export")
    model: str
    device: str
    classes: int = Field(ge=1)
    input_size: int = Field(ge=1, description="image side in pixels after preprocessing")
    explain: bool = Field(description="whether POST /explain can run (it needs the PyTorch model)")
    precision: str | None = None


class Readiness(ModelFacts):
    """``GET /readyz``: 200 once the model is loaded and warmed up, 503 before."""

    status: Literal["ready", "warming up"]


class ModelInfo(ModelFacts):
    """``GET /model``: what is served, with the class names in index order."""

    class_names: list[str]
    top_k: int = Field(ge=1, description="classes /predict returns unless ?top_k= says otherwise")
    max_batch: int = Field(ge=1, description="images per model call at most")
    max_bytes: int = Field(ge=1, description="largest request body accepted")
