"""``POST /v1/explain`` (JSON or multipart body) and the kept results' ``report.html`` / ``maps.npz``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from . import explain_flow
from .deps import State, authorize
from .explain_flow import Parsed
from .limits import ApiError
from .request import ExplainRequest, media_type, parse_form, parse_json_body, unsupported_media
from .state import ServeState

router = APIRouter(dependencies=[Depends(authorize)])

_MULTIPART_SCHEMA = {
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


async def parse_explain_body(request: Request, body: bytes, st: ServeState) -> Parsed:
    """JSON (parsed on the decode pool) or multipart/form-data -> Parsed."""
    ctype = media_type(request)
    if ctype == "application/json" or (not ctype and body[:1] == b"{"):
        return Parsed(await st.admission.run(parse_json_body, body, ExplainRequest))
    if ctype == "multipart/form-data":
        req, upload = await parse_form(request, body, st.settings.limits)
        return Parsed(req, upload)
    raise unsupported_media(ctype)


@router.post(
    "/v1/explain",
    summary="explain an answer: one attribution map per answer token",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": ExplainRequest.model_json_schema()},
                "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
            },
        }
    },
)
async def explain(request: Request, st: State):
    return await explain_flow.handle(request, st, parse_explain_body)


async def _kept(st: ServeState, rid: str, part: str) -> bytes:
    data = await run_in_threadpool(st.store.get, rid, part)
    if data is None:
        raise ApiError(404, "not_found", f'no kept result {rid!r} (send "keep": true; old ones expire)', "id")
    return data


@router.get("/v1/explain/{rid}/report.html", response_class=HTMLResponse, summary="a kept result's report")
async def report(rid: str, st: State):
    return HTMLResponse(await _kept(st, rid, "report.html"))


@router.get("/v1/explain/{rid}/maps.npz", summary="a kept result's maps as .npz")
async def npz(rid: str, st: State):
    return Response(await _kept(st, rid, "maps.npz"), media_type="application/octet-stream")
