"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) from this server alone, with no internet.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, so without internet they stay blank. Here their
JavaScript and CSS come from the ``fastapi-offline`` package (``pip install 'xception[serve]'``), which
ships the builds FastAPI points at (Swagger UI 5, which reads the OpenAPI 3.1 FastAPI writes; ReDoc 2),
served under :data:`ASSETS`; the pages use nothing from elsewhere (no web fonts, no validator badge).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger(__name__)

ASSETS = "/docs/assets"
_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js", "favicon.png")


def assets_folder() -> Path | None:
    """The folder holding the Swagger UI and ReDoc builds, or None when ``fastapi-offline`` is missing."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if all((folder / name).is_file() for name in _FILES) else None


def add_docs(app: FastAPI, title: str) -> bool:
    """``/docs`` and ``/redoc`` on local assets; False (and no pages, said in the log) without them."""
    folder = assets_folder()
    if folder is None:
        log.warning("no /docs page: its Swagger UI files come from fastapi-offline; pip install 'xception[serve]'")
        return False
    app.mount(ASSETS, StaticFiles(directory=folder), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(openapi_url=root + openapi_url, title=f"{title} · API",
                                   swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
                                   oauth2_redirect_url=None, swagger_ui_parameters={"validatorUrl": None})

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=root + openapi_url, title=f"{title} · API",
                              redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{ASSETS}/favicon.png", with_google_fonts=False)

    return True
