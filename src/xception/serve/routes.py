"""The endpoints, on one :class:`~fastapi.APIRouter`: the service and the upload come as dependencies.

    POST /predict   an image → the top-k classes (:class:`~.schemas.Prediction`)
    POST /explain   an image → the Grad-CAM overlay as PNG, or JSON (:class:`~.schemas.Explanation`)
    GET  /healthz   the process answers;  GET /readyz: the model is loaded and warmed up
    GET  /model     what is served;       GET /metrics: Prometheus;  GET /: a page to drop an image on
"""

from __future__ import annotations

import asyncio
import base64
import io
from importlib import resources
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse

from ..errors import ConfigError
from ..models import Xception
from .handlers import RequestError
from .schemas import ClassScore, ErrorBody, Explanation, Health, ModelInfo, Prediction, Readiness
from .service import TOP_K_MAX, ServiceDep
from .uploads import IMAGE_BODY, UploadedImage, UploadedTensor

if TYPE_CHECKING:
    from ..explain import ImageExplanation


def _errors(*statuses: int | str) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


# Any request may be refused (a parameter out of range is a 400 here, not FastAPI's 422): said once for all.
router = APIRouter(responses={"4XX": {"model": ErrorBody, "description": "refused: the error's kind and what to do"}})

TopK = Annotated[int | None, Query(ge=1, le=TOP_K_MAX, description="how many classes (default 5; at most the "
                                   "model's classes)")]
UPLOAD_ERRORS = _errors(400, 413, 415)


def _page() -> str:
    return resources.files(__package__).joinpath("static/index.html").read_text(encoding="utf-8")


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    """The page to drop an image on."""
    return HTMLResponse(_page())


@router.get("/healthz", tags=["operations"])
async def healthz() -> Health:
    """The process answers (liveness)."""
    return Health()


@router.get("/readyz", tags=["operations"], responses={503: {"model": Readiness, "description": "warming up"}})
async def readyz(service: ServiceDep, response: Response) -> Readiness:
    """200 once the model is loaded and warmed up (readiness), 503 before, with what is served."""
    ready = service.ready and service.batcher is not None
    if not ready:
        response.status_code = 503
    return Readiness(status="ready" if ready else "warming up", **service.served.describe())


@router.get("/model", tags=["operations"])
async def model_info(service: ServiceDep) -> ModelInfo:
    """What is served: the model, its runtime, its classes in index order, and the service's limits."""
    served, opts = service.served, service.opts
    return ModelInfo(class_names=served.class_names, top_k=opts.top_k, max_batch=opts.max_batch,
                     max_bytes=opts.max_bytes, **served.describe())


@router.get("/metrics", tags=["operations"], response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}})
async def metrics(service: ServiceDep, request: Request) -> Response:
    """Requests by endpoint and status, errors by kind, latency histograms, batch sizes (Prometheus text;
    OpenMetrics when the Accept header asks for it)."""
    body, content_type = service.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)


@router.post("/predict", tags=["model"], openapi_extra=IMAGE_BODY,
             responses={**UPLOAD_ERRORS, **_errors(503, 504)})
async def predict(service: ServiceDep, image: UploadedTensor, top_k: TopK = None) -> Prediction:
    """The model's top-k classes for an image, most probable first. Concurrent requests share model calls."""
    batcher = service.batcher
    if batcher is None:
        raise RequestError(503, "not_running", "the server is starting or stopping; try again")
    logits = await service.within_deadline(batcher.submit(image))
    values, indices = logits.float().softmax(0).topk(service.top_k(top_k))
    served = service.served
    top = [ClassScore.model_validate({"class": served.class_names[i], "index": i, "probability": p})
           for i, p in zip(indices.tolist(), values.tolist(), strict=True)]
    return Prediction(top=top, model=served.model_name, backend=served.name)


def explainable_model(service: ServiceDep) -> Xception:
    """Dependency: the PyTorch model Grad-CAM needs; 501 for an export, before the upload is read."""
    model = service.served.model
    if model is None:
        raise RequestError(501, "explain_unavailable", "Grad-CAM needs the gradients of the PyTorch model, which "
                           "an export does not keep: serve the weights it was exported from")
    return model


PNG = {"image/png": {"schema": {"type": "string", "format": "binary"}}}


@router.post("/explain", tags=["model"], openapi_extra=IMAGE_BODY, response_model=None,
             responses={200: {"model": Explanation, "content": PNG, "description": "the overlay as PNG (default), "
                              "or JSON with the heatmap (?format=json, or Accept: application/json)"},
                        **UPLOAD_ERRORS, **_errors(501, 503, 504)})
async def explain(
    service: ServiceDep, model: Annotated[Xception, Depends(explainable_model)], image: UploadedImage,
    request: Request, top_k: TopK = None,
    target: Annotated[str | None, Query(alias="class", description="the class to explain, by name or index "
                                        "(default: the most probable)")] = None,
    layer: Annotated[str | None, Query(description="the layer (default: the exit flow's last activation)")] = None,
    fmt: Annotated[Literal["png", "json"] | None, Query(alias="format", description="png (default) or json")] = None,
) -> Response:
    """Grad-CAM: where the model looked for a class, as an overlay on the image."""
    from ..explain import explain_images

    served = service.served

    def run() -> ImageExplanation:
        return explain_images(model, [image], preprocessing=served.preprocessing, target=target, layer=layer,
                              top_k=service.top_k(top_k))[0]

    loop = asyncio.get_running_loop()
    try:
        item = await service.within_deadline(loop.run_in_executor(service.executor, run))
    except ConfigError as err:  # a class or layer that does not exist
        raise RequestError(400, "bad_request", str(err)) from None
    wants_json = fmt == "json" or (fmt is None and "application/json" in request.headers.get("accept", ""))
    return _explanation_response(item, wants_json)


def _explanation_response(item: ImageExplanation, wants_json: bool) -> Response:
    """The overlay as PNG, or as JSON with the heatmap and a data URL."""
    buffer = io.BytesIO()
    item.overlay.save(buffer, format="PNG")
    png = buffer.getvalue()
    if not wants_json:
        return Response(png, media_type="image/png",
                        headers={"X-Class": item.target_name.encode("ascii", "replace").decode(),
                                 "X-Layer": item.layer})
    body = Explanation.model_validate({
        "top": [{"class": n, "probability": p} for n, p in item.top],
        "target": {"index": item.target, "class": item.target_name}, "layer": item.layer,
        "heatmap": item.heatmap.round(4).tolist(),
        "overlay": "data:image/png;base64," + base64.b64encode(png).decode("ascii")})
    return JSONResponse(body.model_dump(mode="json", by_alias=True))
