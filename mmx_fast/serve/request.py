"""Reading and validating an explain request's body: the JSON model ``ExplainRequest``, the multipart form,
and the bounds that apply before anything is parsed (body size against the request's admission ticket and
deadline; JSON nesting depth)."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError
from starlette.requests import ClientDisconnect

from .limits import CLIENT_CONFIG_FIELDS, ApiError, Limits, invalid, too_large

MAX_JSON_DEPTH = 32  # objects and arrays inside each other; our bodies need 4


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
    overlays: StrictBool = Field(
        False,
        description="also return one PNG overlay per answer token (base64); bounded by max_overlay_pixels",
    )
    keep: StrictBool = Field(
        False, description="keep the result: the response carries report_url and npz_url"
    )
    timeout_s: float | None = Field(
        None, gt=0, description="this request's deadline in seconds (at most the server's request_timeout_s)"
    )


FORM_FIELDS = {
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


def content_length(request: Request) -> int | None:
    """The declared body size, checked against nothing yet (None: a chunked body)."""
    length = request.headers.get("content-length")
    if length is None:
        return None
    try:
        n = int(length)
    except ValueError:
        raise invalid("content-length", f"{length!r} is not an integer") from None
    if n < 0:
        raise invalid("content-length", f"{n} is negative")
    return n


async def read_body(request: Request, limit: int, ticket) -> bytes | bytearray:
    """The body, at most ``limit`` bytes; a chunked body grows the request's admission ``ticket`` as it
    streams in (503 once the bytes in flight would exceed the server's bound). A declared body is read into
    one buffer of its size (no list of chunks joined into a second copy)."""
    declared = content_length(request)
    buf, size = bytearray(declared or 0), 0
    try:
        async for chunk in request.stream():
            n = len(chunk)
            if size + n > limit:
                raise too_large("body", f"more than {limit} bytes (the limit)")
            if declared is not None and size + n <= declared:
                buf[size : size + n] = chunk
            else:  # chunked (or more than declared, which the HTTP server refuses first)
                ticket.grow(n)
                buf[size:] = chunk
            size += n
    except ClientDisconnect:
        raise ApiError(499, "cancelled", "the client went away while sending the body") from None
    if size < len(buf):
        del buf[size:]
    return buf


def json_depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (iterative: a deep value cannot overflow the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            if d > MAX_JSON_DEPTH:
                return d
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


def loads(text: bytes | str, field: str) -> Any:
    """JSON -> value; invalid or nested deeper than MAX_JSON_DEPTH -> 422 naming ``field``."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise invalid(field, f"is not valid JSON: {e}") from None
    except RecursionError:
        raise invalid(field, f"nests JSON deeper than the limit of {MAX_JSON_DEPTH} levels") from None
    if json_depth(data) > MAX_JSON_DEPTH:
        raise invalid(field, f"nests JSON deeper than the limit of {MAX_JSON_DEPTH} levels")
    return data


def validation_error(e: ValidationError, model: type[BaseModel]) -> ApiError:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ())) or "body"
    if err.get("type") == "extra_forbidden":
        return invalid(loc, f"unknown field; expected {', '.join(model.model_fields)}")
    return invalid(loc, err.get("msg", "invalid value"))


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_json_body(body: bytes, model: type[BaseModel]):
    """A JSON object body -> ``model`` (run on the decode pool: a large body is parsed off the event loop)."""
    data = loads(body, "body")
    if not isinstance(data, dict):
        raise invalid("body", "must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e, model) from None


async def parse_form(request: Request, body: bytes, limits: Limits) -> tuple[ExplainRequest, bytes | None]:
    """A multipart/form-data body -> the request and the uploaded image's bytes."""
    request._body = bytes(body)  # starlette's form parser reads the cached body
    try:
        form = await request.form(
            max_files=1, max_fields=len(FORM_FIELDS) + 1, max_part_size=limits.max_body_bytes
        )
    except Exception as e:  # malformed multipart, too many parts
        raise invalid("body", f"is not a valid multipart form: {e}") from None
    finally:
        del request._body  # the body is not held past parsing
    unknown = sorted(set(form.keys()) - FORM_FIELDS)
    if unknown:
        raise invalid(unknown[0], f"unknown form field; expected {', '.join(sorted(FORM_FIELDS))}")
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
            data[target] = loads(form[k], k)
    try:
        return ExplainRequest.model_validate(data), upload
    except ValidationError as e:
        raise validation_error(e, ExplainRequest) from None


def unsupported_media(ctype: str) -> ApiError:
    return ApiError(
        415,
        "invalid",
        f"content-type {ctype!r} is not supported; send application/json or multipart/form-data",
    )
