"""The uploaded image, as dependencies of the routes: the request's bytes within the size limit, decoded.

An image comes as the multipart field ``file`` (or the first file of the form), or as the raw body with an
``image/*`` or ``application/octet-stream`` type. The body is read, and measured against the limit, before
any of it is parsed: a body over the limit is refused after ``limit`` bytes, whatever its Content-Length
claims. FastAPI's own ``UploadFile`` parameters would parse the form first, so the body is read here and
described to OpenAPI by :data:`IMAGE_BODY`.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from fastapi import Depends, Request
from PIL import Image
from starlette.datastructures import UploadFile

from .handlers import RequestError
from .service import ServiceDep

IMAGE_TYPES = ("application/octet-stream", "multipart/form-data")
_BINARY = {"type": "string", "format": "binary"}
# The request body of POST /predict and /explain, for /docs and /openapi.json.
IMAGE_BODY: dict[str, Any] = {"requestBody": {
    "required": True,
    "description": "an image (JPEG, PNG, WebP, …): the multipart field 'file', or the body itself",
    "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {"file": _BINARY}, "required": ["file"]}},
        "image/*": {"schema": _BINARY},
        "application/octet-stream": {"schema": _BINARY},
    },
}}


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise RequestError(400, "bad_request", f"Content-Length {declared!r} is not a number")
        if int(declared) > limit:
            raise RequestError(413, "too_large", f"the body is {int(declared):,} bytes; the limit is {limit:,}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:  # a client that sent no (or a false) Content-Length
            raise RequestError(413, "too_large", f"the body is over the limit of {limit:,} bytes")
    return bytes(body)


async def read_upload(request: Request, limit: int) -> bytes:
    """The image bytes of a request: its multipart field ``file`` (or first file), or its raw body."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype.startswith("image/") or ctype in IMAGE_TYPES):
        raise RequestError(415, "unsupported_media_type",
                           f"content type {ctype or '(none)'} is not accepted: send an image as multipart/form-data "
                           "(field 'file') or as the body with an image/* or application/octet-stream type")
    body = await _read_body(request, limit)
    if ctype != "multipart/form-data":
        return body

    async def replay() -> dict[str, Any]:  # the body was read (and measured) already: parse it from memory
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=4, max_fields=16)
    except Exception as err:  # starlette raises its own types for a malformed multipart body
        raise RequestError(400, "bad_multipart", f"the multipart body cannot be parsed ({err})") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        chosen = form.get("file") if isinstance(form.get("file"), UploadFile) else (files[0] if files else None)
        if not isinstance(chosen, UploadFile):
            raise RequestError(400, "no_file", "the multipart body has no file: send the image in the field 'file'")
        return await chosen.read()
    finally:
        await form.close()


async def upload_bytes(request: Request, service: ServiceDep) -> bytes:
    """Dependency: the upload's bytes, refused (413) past the service's ``max_bytes``."""
    return await read_upload(request, service.opts.max_bytes)


UploadBytes = Annotated[bytes, Depends(upload_bytes)]


async def uploaded_image(data: UploadBytes, service: ServiceDep) -> Image.Image:
    """Dependency: the uploaded image, decoded (refused 4xx when it is not a usable image)."""
    return await service.image(data)


async def uploaded_tensor(data: UploadBytes, service: ServiceDep) -> torch.Tensor:
    """Dependency: the uploaded image decoded and preprocessed for the model."""
    return await service.tensor(data)


UploadedImage = Annotated[Image.Image, Depends(uploaded_image)]
UploadedTensor = Annotated[torch.Tensor, Depends(uploaded_tensor)]
