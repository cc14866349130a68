"""The one path every explain request takes, whatever its body format (``/v1/explain``, OpenAI-style
``/v1/explanations``), in the order that keeps the expensive parts last (docs/design.md §6):

admission (Content-Length against the bytes in flight, 503 before the body is read) -> the body, within the
deadline -> a parse slot: parse, bound prompt / answer / config, fetch (within the deadline) and decode the
image on the decode pool -> bound the overlays -> the batcher, within the deadline, noticing a client that
leaves -> encode (overlays within the deadline) -> keep -> response.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from . import encode
from .batcher import Draining, QueueFull
from .limits import (
    ApiError,
    check_answer,
    check_prompt,
    decode_image,
    image_bytes_from_text,
    invalid,
    make_config,
    too_large,
)
from .request import ExplainRequest, content_length, read_body
from .state import ServeState

log = logging.getLogger("mmx_fast.serve")


@dataclass
class Parsed:
    """What a route's parser made of the body: the request in /v1/explain's form, the uploaded image's bytes
    (multipart), and fields the route adds to the response (e.g. the prompt built from ``messages``)."""

    req: ExplainRequest
    upload: bytes | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Parser = Callable[[Request, bytes, ServeState], Awaitable[Parsed]]


@dataclass
class Ready:
    """A request past every bound, its image decoded: what goes to the batcher."""

    req: ExplainRequest
    image: Any
    prompt: str
    answer: Any
    cfg: Any
    deadline: float
    timeout_s: float
    decode_s: float
    extra: dict[str, Any]


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.perf_counter())


async def fetch_image_url(url: str, limits, timeout_s: float = 10.0) -> bytes:
    """GET ``url`` (at most ``max_body_bytes``); the caller bounds the whole fetch by its deadline."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
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


async def _image_bytes(st: ServeState, p: Parsed, deadline: float, timeout_s: float) -> bytes:
    """The encoded image: the upload, a fetched URL (one wall-clock deadline for connect, headers and body:
    the request's own) or base64 / a data: URL (decoded on the pool)."""
    if p.upload is not None:
        return p.upload
    src = p.req.image
    if not src.startswith(("http://", "https://")):
        return await st.admission.run(image_bytes_from_text, src)
    if not st.settings.allow_image_urls:
        raise invalid(
            "image",
            "image URLs are disabled on this server (start it with --allow-image-urls); send the "
            "image as base64, a data: URL or a multipart upload",
        )
    left = _remaining(deadline)
    try:
        return await asyncio.wait_for(fetch_image_url(src, st.settings.limits, max(left, 0.001)), left)
    except TimeoutError:
        raise ApiError(
            504,
            "timeout",
            f"image: fetching {src[:200]!r} did not finish within the request's deadline of {timeout_s:g} s",
            "image",
            {"Retry-After": "1"},
        ) from None


def _check_overlays(req: ExplainRequest, image, answer, cfg, tokenizer, limits) -> None:
    """``overlays``: one PNG of the image's size per answer token; bounded (tokens x pixels) before the model
    runs, with the largest number of tokens the answer can have."""
    if not req.overlays:
        return
    if isinstance(answer, list):
        tokens = len(answer)
    elif isinstance(answer, str):
        tokens = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    else:
        tokens = cfg.max_new_tokens
    px = image.width * image.height
    if tokens * px > limits.max_overlay_pixels:
        raise too_large(
            "overlays",
            f"{tokens} answer tokens x {image.width}x{image.height} pixels = {tokens * px} overlay pixels exceeds "
            f"the limit of {limits.max_overlay_pixels} (max_overlay_pixels); send a smaller image, a shorter "
            "answer, or overlays: false and draw them from the maps",
        )


async def _prepare(request: Request, st: ServeState, parse: Parser, ticket, t_arrival: float) -> Ready:
    """Body -> a Ready request, every bound checked."""
    limits = st.settings.limits
    deadline = t_arrival + limits.request_timeout_s
    try:
        body = await asyncio.wait_for(read_body(request, limits.max_body_bytes, ticket), _remaining(deadline))
    except TimeoutError:
        raise ApiError(
            408,
            "timeout",
            f"body: not received within request_timeout_s={limits.request_timeout_s:g} s",
            "body",
        ) from None
    async with st.admission.slot(deadline, limits.request_timeout_s):
        p = await parse(request, body, st)
        del body
        req = p.req
        timeout_s = min(req.timeout_s or limits.request_timeout_s, limits.request_timeout_s)
        deadline = t_arrival + timeout_s
        prompt = check_prompt(req.prompt, st.tokenizer, limits)
        answer = check_answer(req.answer, st.tokenizer, st.vocab_size, limits)
        cfg = make_config(req.config, st.default_config, limits, keep_scale_maps=req.keep)
        data = await _image_bytes(st, p, deadline, timeout_s)
        req.image, p.upload = "", None  # the encoded image is not held past decoding
        t0 = time.perf_counter()
        image = await st.admission.run(decode_image, data, limits)
        del data
        decode_s = time.perf_counter() - t0
        st.metrics.stage_seconds.labels("decode").observe(decode_s)
    ticket.resize(image.width * image.height * 3)
    _check_overlays(req, image, answer, cfg, st.tokenizer, limits)
    return Ready(req, image, prompt, answer, cfg, deadline, timeout_s, decode_s, p.extra)


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client closes the connection (the body has been read already)."""
    while True:
        msg = await request.receive()
        if msg.get("type") == "http.disconnect":
            return


async def _run_model(request: Request, st: ServeState, image, prompt, answer, cfg, deadline, timeout_s):
    """Queue the request and wait for its batch; 503 (queue full / draining), 504 (deadline), 499 (client
    gone: the queued work is dropped). Returns (explanation, work item) or a 499 Response."""
    rid = request.state.request_id
    try:
        item = st.batcher.submit(image, prompt, answer, cfg, request_id=rid)
    except QueueFull as e:
        raise ApiError(
            503,
            "queue_full",
            f"the server is busy: {e.depth} requests are waiting (max_queue={st.settings.max_queue}); retry later",
            headers={"Retry-After": str(math.ceil(e.retry_after_s))},
        ) from None
    except Draining:
        raise ApiError(503, "draining", "the server is shutting down", headers={"Retry-After": "1"}) from None
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait(
            {item.future, gone}, timeout=_remaining(deadline), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        gone.cancel()
    if item.future not in done:
        st.batcher.cancel(item)
        item.future.cancel()
        if gone in done:
            st.metrics.errors.labels("cancelled").inc()
            st.metrics.requests.labels("499").inc()
            request.state.access["error"] = "cancelled"
            return None, Response(status_code=499)
        raise ApiError(
            504,
            "timeout",
            f"the request took longer than its deadline of {timeout_s:g} s (timeout_s / request_timeout_s)",
            headers={"Retry-After": "1"},
        )
    try:
        return item.future.result(), item
    except (ValueError, TypeError) as e:
        raise ApiError(422, "invalid", str(e)) from None
    except Exception as e:
        log.exception("explain failed")
        raise ApiError(500, "internal", f"{type(e).__name__}: {e}") from None


async def _keep(st: ServeState, exp, rid: str) -> None:
    try:
        parts = await run_in_threadpool(encode.kept_parts, exp, str(st.model_info.get("id")))
        await run_in_threadpool(st.store.put, rid, parts)
    except Exception as e:
        log.exception("keeping the result failed")
        raise ApiError(
            503,
            "store",
            f"keep: the result store {st.store.describe()} failed: {e}",
            "keep",
            {"Retry-After": "5"},
        ) from None


async def handle(request: Request, st: ServeState, parse: Parser) -> Response:
    """One explain request, from its headers to its response."""
    t_arrival = time.perf_counter()
    m, limits, access = st.metrics, st.settings.limits, request.state.access
    if st.batcher.draining:
        raise ApiError(503, "draining", "the server is shutting down", headers={"Retry-After": "1"})
    n = content_length(request)
    if n is not None and n > limits.max_body_bytes:
        raise too_large("body", f"{n} bytes exceeds the limit of {limits.max_body_bytes} bytes")
    ticket = st.admission.admit(n or 0)
    try:
        r = await _prepare(request, st, parse, ticket, t_arrival)
        access["config"] = {"method": r.cfg.method, "scales": list(r.cfg.scales)}
        exp, item = await _run_model(request, st, r.image, r.prompt, r.answer, r.cfg, r.deadline, r.timeout_s)
        if exp is None:
            return item  # the client went away: 499
        t_enc = time.perf_counter()
        rid = uuid.uuid4().hex
        out = encode.response_body(exp, r.req.maps_format, r.answer is not None, item.batch_size, rid)
        out["request_id"] = request.state.request_id
        out.update(r.extra)
        if r.req.overlays:
            out["overlays"] = await st.admission.run(encode.overlays, exp, r.deadline, r.timeout_s)
        if r.req.keep:
            await _keep(st, exp, rid)
            out["report_url"] = f"/v1/explain/{rid}/report.html"
            out["npz_url"] = f"/v1/explain/{rid}/maps.npz"
    finally:
        ticket.release()
    now = time.perf_counter()
    timings = {
        "queue": (item.started or now) - item.enqueued,
        "decode": r.decode_s,
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
    model_s = timings["generate"] + timings["forward"] + timings["attribution"]
    access.update(queue_ms=round(timings["queue"] * 1000, 2), model_ms=round(model_s * 1000, 2),
                  batch_size=item.batch_size, answer_tokens=len(exp.answer_ids))  # fmt: skip
    return JSONResponse(out)
