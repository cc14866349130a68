"""The FastAPI app of ``mmx-fast serve``: ``create_app(holder, settings)`` assembles one router per concern.

Routes (see README "Serving"):

- ``POST /v1/explain`` (``routes_explain.py``): JSON ``{"image", "prompt", "answer", "config", "maps_format",
  "overlays", "keep", "timeout_s"}`` or the same fields as ``multipart/form-data``; and the kept results,
  ``GET /v1/explain/{id}/report.html`` and ``/v1/explain/{id}/maps.npz`` (from the result store, ``store.py``).
- ``POST /v1/explanations`` (``routes_openai.py``): OpenAI-style ``messages`` plus the engine's answer.
- ``GET /healthz``, ``/readyz``, ``/metrics``, ``/v1/limits`` (``routes_ops.py``), ``/docs``, ``/openapi.json``.

Every explain request takes one path (``explain_flow.py``): admission before the body is read
(``admission.py``), parsing (``request.py``) and image decoding on a bounded pool, the batcher
(``batcher.py``: one worker thread owns the model), encoding (``encode.py``). ``access_log.py`` gives each
request its id and its access-log line. The app reads its state through ``holder.state`` so that the same
app can be built before the model is loaded (Ray Serve builds the app on the driver and loads the model in
each replica).
"""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .access_log import RequestContext
from .explain_flow import fetch_image_url as _fetch_image_url  # noqa: F401  (tests, older imports)
from .limits import ApiError
from .metrics import Metrics
from .request import ExplainRequest  # noqa: F401
from .routes_explain import router as explain_router
from .routes_openai import router as openai_router
from .routes_ops import router as ops_router
from .settings import ServeSettings
from .state import ServeState, StateHolder

__all__ = ["ServeSettings", "ServeState", "StateHolder", "create_app"]

log = logging.getLogger("mmx_fast.serve")


def _error_response(request: Request, e: ApiError, metrics: Metrics | None) -> JSONResponse:
    if metrics is not None:
        metrics.errors.labels(e.kind).inc()
        metrics.requests.labels(str(e.status)).inc()
    body = e.body()
    rid = getattr(request.state, "request_id", None)
    body["error"]["request_id"] = rid  # what a user quotes in a report; the access log line has it too
    access = getattr(request.state, "access", None)
    if access is not None:
        access["error"] = e.kind
    return JSONResponse(body, status_code=e.status, headers=e.headers)


def create_app(holder: StateHolder, settings: ServeSettings, on_shutdown=None) -> FastAPI:
    """The app; ``on_shutdown`` runs after the server stopped accepting and finished in-flight requests."""

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        if on_shutdown is not None:
            await run_in_threadpool(on_shutdown)

    app = FastAPI(
        lifespan=lifespan,
        title="mmx-fast",
        summary="Token-level visual attribution maps (MSEA + ARC) for a multimodal LLM's answers",
        version=_version(),
    )
    app.state.holder = holder
    app.state.settings = settings
    app.state.api_keys = [k.encode() for k in settings.api_keys]

    def metrics() -> Metrics | None:
        return holder.state.metrics if holder.state is not None else None

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _error_response(request, e, metrics())

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):  # a bug: logged with the request id, answered 500
        log.exception("unhandled error")
        return _error_response(request, ApiError(500, "internal", f"{type(e).__name__}: {e}"), metrics())

    app.include_router(ops_router)
    app.include_router(explain_router)
    app.include_router(openai_router)
    app.add_middleware(RequestContext, holder=holder, mode=settings.access_log)
    return app


def _version() -> str:
    from .. import __version__

    return __version__
