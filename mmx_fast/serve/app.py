"""The FastAPI app of ``mmx-fast serve``: ``create_app(holder, settings)``.

Routes (see README "Serving"):

- ``POST /v1/explain``: JSON ``{"image", "prompt", "answer", "config", "maps_format", "overlays", "keep"}``
  or the same fields as ``multipart/form-data`` (``image`` as a file; ``answer_ids`` and ``config`` as JSON
  text). Answers the explanation as JSON.
- ``GET /v1/explain/{id}/report.html`` and ``/v1/explain/{id}/maps.npz``: kept results (``"keep": true``).
- ``GET /healthz`` (liveness), ``GET /readyz`` (model loaded, warmed up, native ops built; 503 while
  draining), ``GET /metrics`` (Prometheus), ``/docs`` and ``/openapi.json``.

The model is owned by one worker thread (``Batcher``); the event loop only parses, bounds, queues and
encodes. The app reads its state through ``holder.state`` so that the same app can be built before the
model is loaded (Ray Serve builds the app on the driver and loads the model in each replica).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import copy
import hmac
import json
import logging
import math
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from ..config import ExplainConfig
from ..io import maps_arrays, npz_bytes
from ..io import png_bytes as io_png_bytes
from .batcher import Batcher, Draining, QueueFull
from .limits import (
    CLIENT_CONFIG_FIELDS,
    ApiError,
    Limits,
    check_answer,
    check_prompt,
    decode_image,
    image_bytes_from_text,
    invalid,
    make_config,
    too_large,
)
from .metrics import Metrics

log = logging.getLogger("mmx_fast.serve")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeSettings:
    """Everything ``mmx-fast serve`` is configured with (the CLI flags)."""

    model: str = "tiny:qwen2_vl"
    host: str = "127.0.0.1"
    port: int = 8000
    device: str = "auto"
    dtype: str = "auto"
    method: str = "msea-arc"
    max_batch: int = 8
    max_wait_ms: float = 10.0
    max_queue: int = 64
    keep_max: int = 64  # kept results (reports / npz) held in memory, oldest dropped first
    api_keys: tuple[str, ...] = ()
    allow_image_urls: bool = False
    limits: Limits = field(default_factory=Limits)
    warmup: bool = True


# ---------------------------------------------------------------------------------------------------
class ServeState:
    """The model, one Explainer per config seen, the batcher, the metrics and the kept results."""

    def __init__(self, model, processor, settings: ServeSettings, *, model_info: dict | None = None) -> None:
        from ..fast import Explainer

        self.settings = settings
        self.model_info = model_info or {"id": settings.model}
        self.default_config = ExplainConfig(
            method=settings.method, max_new_tokens=min(32, settings.limits.max_new_tokens)
        )
        first = Explainer(model, processor, self.default_config)
        self.model, self.processor, self.adapter = model, processor, first.adapter
        self._explainers: collections.OrderedDict[ExplainConfig, Any] = collections.OrderedDict(
            [(self.default_config, first)]
        )
        # the event loop counts tokens with its own copy: a fast tokenizer shared with the worker thread can
        # fail with "Already borrowed" when the processor changes its padding / truncation settings
        self.tokenizer = copy.deepcopy(first.adapter.tokenizer)
        self.vocab_size = int(first.adapter.lm_head_weight().shape[0])
        self.metrics = Metrics(settings.max_batch)
        self.kept: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._kept_lock = threading.Lock()
        self.native = _native_status()
        if settings.warmup:
            self._warmup()
        self.batcher = Batcher(
            self._run_batch,
            max_batch=settings.max_batch,
            max_wait_ms=settings.max_wait_ms,
            max_queue=settings.max_queue,
            metrics=self.metrics,
        )
        self.ready = True

    def explainer(self, cfg: ExplainConfig):
        from ..fast import Explainer

        ex = self._explainers.get(cfg)
        if ex is None:
            ex = self._explainers[cfg] = Explainer(self.model, self.processor, cfg)
            while len(self._explainers) > 16:
                self._explainers.popitem(last=False)
        else:
            self._explainers.move_to_end(cfg)
        return ex

    def _run_batch(self, cfg, images, prompts, answers):  # worker thread only
        return self.explainer(cfg).explain_batch(images, prompts, answers)

    def _warmup(self) -> None:
        """One explanation on a small synthetic image: builds the native ops, fills caches."""
        from PIL import Image

        img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 80, 3), dtype=np.uint8))
        self.explainer(self.default_config).explain(img, "What is in the image?", "a picture")

    def keep(self, rid: str, exp) -> None:
        """Hold ``exp`` for its report / npz URLs; the image is kept at most 1024 px on its long side (the
        report shows it at that size anyway), so ``keep_max`` results stay small in memory."""
        if exp.image is not None and max(exp.image.size) > 1024:
            exp.image = exp.image.copy()
            exp.image.thumbnail((1024, 1024))
        with self._kept_lock:
            self.kept[rid] = exp
            while len(self.kept) > self.settings.keep_max:
                self.kept.popitem(last=False)

    def close(self) -> None:
        self.ready = False
        self.batcher.stop()


def _native_status() -> dict[str, Any]:
    import torch

    from .. import native

    try:
        on_cpu = not torch.cuda.is_available()
        built = native.available() if on_cpu else None
    except Exception as e:  # MMX_FAST_NATIVE=1 and a failed build
        return {"built": False, "error": str(e)}
    return {"built": built, "error": native.build_error()}


class StateHolder:
    """Where the app finds its ServeState (set once the model is loaded)."""

    def __init__(self, state: ServeState | None = None) -> None:
        self.state = state


# ---------------------------------------------------------------------------------------------------
class ExplainRequest(BaseModel):
    """The JSON body of ``POST /v1/explain``."""

    model_config = ConfigDict(extra="forbid")
    image: StrictStr = Field(
        description="the image: base64 bytes, a data: URL (data:image/png;base64,...), or an http(s) URL "
        "when the server runs with --allow-image-urls"
    )
    prompt: StrictStr = Field(description="the question or instruction")
    answer: StrictStr | list[StrictInt] | None = Field(
        None,
        description="the answer to explain (the production path: what your serving engine answered), as text "
        "or token ids; omitted: the model's own greedy answer is generated",
    )
    config: dict[str, Any] | None = Field(
        None, description=f"ExplainConfig fields to override: {', '.join(CLIENT_CONFIG_FIELDS)}"
    )
    maps_format: Literal["float16", "uint8", "float32", "none"] = Field(
        "float16", description="maps as base64 little-endian float16 / float32 [T, Hc, Wc], or TAM's uint8"
    )
    overlays: StrictBool = Field(False, description="also return one PNG overlay per answer token (base64)")
    keep: StrictBool = Field(
        False, description="keep the result: the response carries report_url and npz_url"
    )
    timeout_s: float | None = Field(
        None, gt=0, description="this request's deadline in seconds (at most the server's request_timeout_s)"
    )


_FORM_FIELDS = {
    "image",
    "prompt",
    "answer",
    "answer_ids",
    "config",
    "maps_format",
    "overlays",
    "keep",
    "timeout_s",
}


def _error_response(e: ApiError, metrics: Metrics | None) -> JSONResponse:
    if metrics is not None:
        metrics.errors.labels(e.kind).inc()
        metrics.requests.labels(str(e.status)).inc()
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            n = int(length)
        except ValueError:
            raise invalid("content-length", f"{length!r} is not an integer") from None
        if n > limit:
            raise too_large("body", f"{n} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large("body", f"more than {limit} bytes (the limit)")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(499, "cancelled", "the client went away while sending the body") from None
    body = b"".join(chunks)
    request._body = body  # starlette's form parser reads the cached body
    return body


def _validation_error(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
    if err.get("type") == "extra_forbidden":
        return invalid(loc, f"unknown field; expected {', '.join(ExplainRequest.model_fields)}")
    return invalid(loc, err.get("msg", "invalid value"))


async def _parse_request(request: Request, limits: Limits) -> tuple[ExplainRequest, bytes | None]:
    """The validated request and, for a multipart upload, the image file's bytes."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await _read_body(request, limits.max_body_bytes)
    if ctype == "application/json" or (not ctype and body[:1] == b"{"):
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise invalid("body", f"is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise invalid("body", "must be a JSON object")
        try:
            return ExplainRequest.model_validate(data), None
        except ValidationError as e:
            raise _validation_error(e) from None
    if ctype == "multipart/form-data":
        try:
            form = await request.form(
                max_files=1, max_fields=len(_FORM_FIELDS) + 1, max_part_size=limits.max_body_bytes
            )
        except Exception as e:  # malformed multipart, too many parts
            raise invalid("body", f"is not a valid multipart form: {e}") from None
        unknown = sorted(set(form.keys()) - _FORM_FIELDS)
        if unknown:
            raise invalid(unknown[0], f"unknown form field; expected {', '.join(sorted(_FORM_FIELDS))}")
        data: dict[str, Any] = {}
        upload = None
        img = form.get("image")
        if img is None:
            raise invalid("image", "is missing; upload the image file as the form field 'image'")
        if isinstance(img, str):
            data["image"] = img
        else:
            upload = await img.read()
            data["image"] = ""
        for k in ("prompt", "answer", "maps_format", "timeout_s"):
            if isinstance(form.get(k), str):
                data[k] = form[k]
        for k in ("overlays", "keep"):
            if isinstance(form.get(k), str):
                v = form[k].strip().lower()
                if v not in ("true", "false", "1", "0"):
                    raise invalid(k, f"{form[k]!r} is not a boolean; expected true or false")
                data[k] = v in ("true", "1")
        for k, target in (("answer_ids", "answer"), ("config", "config")):
            if isinstance(form.get(k), str):
                try:
                    data[target] = json.loads(form[k])
                except json.JSONDecodeError as e:
                    raise invalid(k, f"is not valid JSON: {e}") from None
        try:
            return ExplainRequest.model_validate(data), upload
        except ValidationError as e:
            raise _validation_error(e) from None
    raise ApiError(
        415,
        "invalid",
        f"content-type {ctype!r} is not supported; send application/json or multipart/form-data",
    )


async def _fetch_image_url(url: str, limits: Limits) -> bytes:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as client:
            async with client.stream("GET", url) as r:
                if r.status_code != 200:
                    raise invalid("image", f"fetching {url!r} answered HTTP {r.status_code}")
                chunks, size = [], 0
                async for chunk in r.aiter_bytes():
                    size += len(chunk)
                    if size > limits.max_body_bytes:
                        raise too_large("image", f"{url!r} is larger than {limits.max_body_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
    except httpx.HTTPError as e:
        raise invalid("image", f"cannot fetch {url!r}: {e}") from None


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        msg = await request.receive()
        if msg.get("type") == "http.disconnect":
            return


def _encode_maps(exp, fmt: str) -> dict[str, Any] | None:
    if fmt == "none":
        return None
    maps = exp.maps.numpy()
    if fmt == "uint8":
        arr = np.stack([exp.map_uint8(i) for i in range(len(exp))]) if len(exp) else maps.astype(np.uint8)
    else:
        arr = maps.astype("<f2" if fmt == "float16" else "<f4")
    return {"format": fmt, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def _overlays(exp) -> list[str]:
    return [base64.b64encode(io_png_bytes(exp.overlay(i))).decode("ascii") for i in range(len(exp))]


def _npz(exp) -> bytes:
    """The same arrays as ``Explanation.save``'s ``maps.npz``."""
    return npz_bytes(maps_arrays(exp))


# ---------------------------------------------------------------------------------------------------
def create_app(holder: StateHolder, settings: ServeSettings, on_shutdown=None) -> FastAPI:
    """The app; ``on_shutdown`` runs after the server stopped accepting and finished in-flight requests."""
    limits = settings.limits
    keys = [k.encode() for k in settings.api_keys]

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

    def state() -> ServeState:
        st = holder.state
        if st is None:
            raise ApiError(503, "not_ready", "the model is still loading", headers={"Retry-After": "5"})
        return st

    def metrics() -> Metrics | None:
        return holder.state.metrics if holder.state is not None else None

    def authorize(request: Request) -> None:
        if not keys:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        ok = scheme.lower() == "bearer" and any(hmac.compare_digest(token.strip().encode(), k) for k in keys)
        if not ok:
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong bearer token; send 'Authorization: Bearer <key>'",
                "authorization",
                {"WWW-Authenticate": "Bearer"},
            )

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError):
        return _error_response(e, metrics())

    @app.get("/healthz", summary="liveness")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="readiness: model loaded and warmed up, native ops built, not draining")
    async def readyz():
        st = holder.state
        if st is None or not st.ready or st.batcher.draining:
            why = "loading" if st is None else "draining" if st.batcher.draining else "not ready"
            return JSONResponse({"status": why}, status_code=503)
        return {
            "status": "ready",
            "model": st.model_info,
            "native_ops": st.native,
            "queue_depth": st.batcher.depth,
            "max_batch": settings.max_batch,
            "max_queue": settings.max_queue,
        }

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus(request: Request):
        authorize(request)
        st = state()
        return Response(st.metrics.render(), media_type=st.metrics.content_type)

    @app.get("/v1/limits", summary="the per-request limits and batching settings of this server")
    async def get_limits(request: Request):
        authorize(request)
        return {
            "limits": limits.to_dict(),
            "max_batch": settings.max_batch,
            "max_wait_ms": settings.max_wait_ms,
            "max_queue": settings.max_queue,
            "default_config": state().default_config.to_dict(),
            "image_urls": settings.allow_image_urls,
        }

    @app.post(
        "/v1/explain",
        summary="explain an answer: one attribution map per answer token",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": ExplainRequest.model_json_schema()},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["image", "prompt"],
                            "properties": {
                                "image": {"type": "string", "format": "binary"},
                                "prompt": {"type": "string"},
                                "answer": {"type": "string"},
                                "answer_ids": {"type": "string", "description": "JSON list of token ids"},
                                "config": {"type": "string", "description": "JSON object"},
                                "maps_format": {"type": "string"},
                                "overlays": {"type": "boolean"},
                                "keep": {"type": "boolean"},
                                "timeout_s": {"type": "number"},
                            },
                        }
                    },
                },
            }
        },
    )
    async def explain(request: Request):
        t_arrival = time.perf_counter()
        authorize(request)
        st = state()
        m = st.metrics
        if st.batcher.draining:
            raise ApiError(503, "draining", "the server is shutting down", headers={"Retry-After": "1"})
        req, upload = await _parse_request(request, limits)
        timeout_s = min(req.timeout_s or limits.request_timeout_s, limits.request_timeout_s)
        deadline = t_arrival + timeout_s

        # bound everything before the model sees it
        prompt = check_prompt(req.prompt, st.tokenizer, limits)
        answer = check_answer(req.answer, st.tokenizer, st.vocab_size, limits)
        cfg = make_config(req.config, st.default_config, limits, keep_scale_maps=req.keep)
        if upload is not None:
            data = upload
        elif req.image.startswith(("http://", "https://")):
            if not settings.allow_image_urls:
                raise invalid(
                    "image",
                    "image URLs are disabled on this server (start it with --allow-image-urls); send the "
                    "image as base64, a data: URL or a multipart upload",
                )
            data = await _fetch_image_url(req.image, limits)
        else:
            data = image_bytes_from_text(req.image)
        t0 = time.perf_counter()
        image = await run_in_threadpool(decode_image, data, limits)
        decode_s = time.perf_counter() - t0
        m.stage_seconds.labels("decode").observe(decode_s)

        try:
            item = st.batcher.submit(image, prompt, answer, cfg)
        except QueueFull as e:
            raise ApiError(
                503,
                "queue_full",
                f"the server is busy: {e.depth} requests are waiting (max_queue={settings.max_queue}); retry later",
                headers={"Retry-After": str(math.ceil(e.retry_after_s))},
            ) from None
        except Draining:
            raise ApiError(
                503, "draining", "the server is shutting down", headers={"Retry-After": "1"}
            ) from None

        gone = asyncio.ensure_future(_wait_disconnect(request))
        try:
            done, _ = await asyncio.wait(
                {item.future, gone},
                timeout=max(0.0, deadline - time.perf_counter()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            gone.cancel()
        if item.future not in done:
            st.batcher.cancel(item)
            item.future.cancel()
            if gone in done:
                m.errors.labels("cancelled").inc()
                m.requests.labels("499").inc()
                return Response(status_code=499)
            raise ApiError(
                504,
                "timeout",
                f"the request took longer than its deadline of {timeout_s:g} s (timeout_s / request_timeout_s)",
                headers={"Retry-After": "1"},
            )
        try:
            exp = item.future.result()
        except (ValueError, TypeError) as e:
            raise ApiError(422, "invalid", str(e)) from None
        except Exception as e:
            log.exception("explain failed")
            raise ApiError(500, "internal", f"{type(e).__name__}: {e}") from None

        t_enc = time.perf_counter()
        rid = uuid.uuid4().hex
        out = await run_in_threadpool(_response, exp, req, answer, item, rid)
        if req.keep:
            st.keep(rid, exp)
            out["report_url"] = f"/v1/explain/{rid}/report.html"
            out["npz_url"] = f"/v1/explain/{rid}/maps.npz"
        now = time.perf_counter()
        queue_s = (item.started or now) - item.enqueued
        timings = {
            "queue": queue_s,
            "decode": decode_s,
            "generate": exp.timings.get("generate", 0.0),
            "forward": exp.timings.get("forward", 0.0),
            "attribution": exp.timings.get("attribution", 0.0),
            "encode": now - t_enc,
            "total": now - t_arrival,
        }
        out["timings"] = timings
        for stage in ("queue", "generate", "forward", "attribution", "encode", "total"):
            m.stage_seconds.labels(stage).observe(timings[stage])
        m.explanations.inc()
        m.requests.labels("200").inc()
        return JSONResponse(out)

    @app.get("/v1/explain/{rid}/report.html", response_class=HTMLResponse, summary="a kept result's report")
    async def report(rid: str, request: Request):
        authorize(request)
        exp = state().kept.get(rid)
        if exp is None:
            raise ApiError(
                404, "not_found", f'no kept result {rid!r} (send "keep": true; old ones expire)', "id"
            )
        from ..report import render_report

        html = await run_in_threadpool(
            render_report, exp, None, None, {"model": str(state().model_info.get("id"))}
        )
        return HTMLResponse(html)

    @app.get("/v1/explain/{rid}/maps.npz", summary="a kept result's maps as .npz")
    async def npz(rid: str, request: Request):
        authorize(request)
        exp = state().kept.get(rid)
        if exp is None:
            raise ApiError(
                404, "not_found", f'no kept result {rid!r} (send "keep": true; old ones expire)', "id"
            )
        data = await run_in_threadpool(_npz, exp)
        return Response(data, media_type="application/octet-stream")

    return app


def _response(exp, req: ExplainRequest, answer, item, rid: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": rid,
        "answer": exp.answer_text,
        "answer_ids": [int(i) for i in exp.answer_ids],
        "answer_tokens": list(exp.answer_tokens),
        "answer_forced": answer is not None,
        "grid": [int(g) for g in exp.grid],
        "view_box": list(exp.view_box) if exp.view_box else None,
        "image_size": list(exp.image.size) if exp.image is not None else None,
        "config": exp.config.to_dict(),
        "maps": _encode_maps(exp, req.maps_format),
        "batch_size": item.batch_size,
    }
    if req.overlays:
        out["overlays"] = _overlays(exp)
    return out


def _version() -> str:
    from .. import __version__

    return __version__
