"""Per-request limits of ``mmx-fast serve`` and the checks that enforce them.

Every request-sized resource is bounded BEFORE the expensive work it would cause: the body is refused from
its Content-Length (and counted while streamed) before it is read; an image's pixel count and aspect ratio
are read from its header before it is decoded; the prompt is bounded in characters before it is tokenized
and in tokens before it reaches the model; the answer, ``max_new_tokens`` and the MSEA scales are bounded
before the request is queued. Every refusal is an ``ApiError`` naming the field, the value and the limit.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..config import ExplainConfig


@dataclass(frozen=True)
class Limits:
    """Defaults suit one GPU serving a 2B-7B model; every one is a ``mmx-fast serve`` flag."""

    max_body_bytes: int = 16 * 1024 * 1024  # whole request body (JSON or multipart), and a fetched URL
    max_image_pixels: int = 4096 * 4096  # width * height of the decoded image
    max_aspect_ratio: float = 20.0  # max(w, h) / min(w, h)
    max_prompt_chars: int = 8192  # checked before tokenizing
    max_prompt_tokens: int = 1024
    max_answer_tokens: int = 256  # forced answer (text or ids)
    max_new_tokens: int = 128  # generation budget a request may ask for
    max_scales: int = 4  # MSEA scales per request
    max_scale: float = 2.0  # largest MSEA scale (a scale s costs about s^2 the tokens of scale 1)
    request_timeout_s: float = 120.0  # from arrival to the response, queueing included
    max_overlay_pixels: int = 16 * 1024 * 1024  # "overlays": answer tokens x image pixels (PNGs returned)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"limit {f.name}={v!r} is not allowed; expected a positive number")
        if self.max_aspect_ratio < 1:
            raise ValueError(f"limit max_aspect_ratio={self.max_aspect_ratio} must be >= 1")
        if self.max_scale < 1:
            raise ValueError(f"limit max_scale={self.max_scale} must be >= 1 (scale 1.0 is always used)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ApiError(Exception):
    """An error answered as ``{"error": {"kind", "field", "message"}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"kind": self.kind, "field": self.field, "message": self.message}}


def too_large(field: str, message: str) -> ApiError:
    return ApiError(413, "too_large", f"{field}: {message}", field)


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid", f"{field}: {message}", field)


# ---------------------------------------------------------------------------------------------------
# images
_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,"
)


def image_bytes_from_text(text: str) -> bytes:
    """A ``data:`` URL or plain base64 -> bytes (http(s) URLs are handled by the app, when allowed)."""
    m = _DATA_URL.match(text)
    if m:
        if not m.group("b64"):
            raise invalid("image", "a data: URL must be base64-encoded (data:image/png;base64,...)")
        text = text[m.end() :]
    try:
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)
    except (binascii.Error, ValueError):
        raise invalid(
            "image",
            "is neither valid base64 nor a data: URL; expected base64 image bytes or data:image/...;base64,...",
        ) from None


def decode_image(data: bytes, limits: Limits) -> Image.Image:
    """Bytes -> RGB PIL image; size and aspect ratio are checked from the header, before decoding, which is
    the library's own (``mmx_fast.images.decode_image_bytes``: EXIF orientation applied, as in the CLI)."""
    from ..images import decode_image_bytes

    if not data:
        raise invalid("image", "is empty; expected the bytes of a PNG, JPEG, WebP, ... image")
    if len(data) > limits.max_body_bytes:
        raise too_large("image", f"{len(data)} bytes exceeds the limit of {limits.max_body_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
    except UnidentifiedImageError:
        raise invalid("image", "is not a readable image (PIL cannot identify it)") from None
    except Image.DecompressionBombError as e:
        raise too_large("image", str(e)) from None
    except Exception as e:  # corrupt header
        raise invalid("image", f"cannot be opened: {e}") from None
    if w < 1 or h < 1:
        raise invalid("image", f"has size {w}x{h}; expected at least 1x1 pixels")
    if w * h > limits.max_image_pixels:
        raise too_large(
            "image", f"{w}x{h} = {w * h} pixels exceeds the limit of {limits.max_image_pixels} pixels"
        )
    ratio = max(w, h) / min(w, h)
    if ratio > limits.max_aspect_ratio:
        raise invalid(
            "image", f"aspect ratio {w}x{h} = {ratio:.1f} exceeds the limit of {limits.max_aspect_ratio:g}"
        )
    try:
        return decode_image_bytes(data, "image")
    except ValueError as e:  # truncated / corrupt data, or over the library's own bounds
        msg = str(e)
        if "too large" in msg or "above the limit" in msg:
            raise too_large("image", msg) from None
        raise invalid("image", msg.removeprefix("image ")) from None
    except Exception as e:
        raise invalid("image", f"is corrupt or truncated: {e}") from None


def check_text(field: str, text: str) -> None:
    """A lone surrogate (``"\\ud800"`` in JSON) is valid JSON but not text: refuse it here, naming the field,
    before the tokenizer raises a TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise invalid(
            field,
            f"contains {text[e.start]!r} at character {e.start}, a lone surrogate; expected valid Unicode text",
        ) from None


# ---------------------------------------------------------------------------------------------------
# text, answer and config
def check_prompt(prompt: Any, tokenizer, limits: Limits) -> str:
    if not isinstance(prompt, str):
        raise invalid("prompt", f"has type {type(prompt).__name__}; expected a string")
    if not prompt.strip():
        raise invalid("prompt", "is empty; expected a non-empty question or instruction")
    if len(prompt) > limits.max_prompt_chars:
        raise too_large("prompt", f"{len(prompt)} characters exceeds the limit of {limits.max_prompt_chars}")
    check_text("prompt", prompt)
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if n > limits.max_prompt_tokens:
        raise too_large("prompt", f"{n} tokens exceeds the limit of {limits.max_prompt_tokens} tokens")
    return prompt


def check_answer(answer: Any, tokenizer, vocab_size: int, limits: Limits) -> str | list[int] | None:
    """None (generate), a text (tokenized here to bound it) or a list of token ids in the vocabulary."""
    if answer is None:
        return None
    if isinstance(answer, str):
        if not answer.strip():
            raise invalid("answer", "is empty; omit it to explain the model's own greedy answer")
        if len(answer) > 16 * limits.max_answer_tokens:
            raise too_large(
                "answer", f"{len(answer)} characters exceeds the limit of {16 * limits.max_answer_tokens}"
            )
        check_text("answer", answer)
        n = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
        if n > limits.max_answer_tokens:
            raise too_large("answer", f"{n} tokens exceeds the limit of {limits.max_answer_tokens} tokens")
        return answer
    if isinstance(answer, list):
        if not all(isinstance(a, int) and not isinstance(a, bool) for a in answer):
            raise invalid("answer", "must be a text or a list of integer token ids")
        if len(answer) > limits.max_answer_tokens:
            raise too_large(
                "answer", f"{len(answer)} tokens exceeds the limit of {limits.max_answer_tokens} tokens"
            )
        bad = [a for a in answer if not 0 <= a < vocab_size]
        if bad:
            raise invalid(
                "answer", f"token ids {bad[:5]} are out of range; expected ids in [0, {vocab_size})"
            )
        return list(answer)
    raise invalid("answer", f"has type {type(answer).__name__}; expected a text or a list of token ids")


# what a client may set; ``backend`` is the server's choice
CLIENT_CONFIG_FIELDS = (
    "method",
    "scales",
    "aggregate",
    "mitigation",
    "filter",
    "top_k",
    "rbo_p",
    "rbo_variant",
    "base",
    "max_new_tokens",
)


def make_config(
    overrides: Any, default: ExplainConfig, limits: Limits, keep_scale_maps: bool
) -> ExplainConfig:
    """The request's ExplainConfig: the server default with the client's fields applied, then bounded."""
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise invalid("config", f"has type {type(overrides).__name__}; expected an object of config fields")
    unknown = sorted(set(overrides) - set(CLIENT_CONFIG_FIELDS))
    if unknown:
        raise invalid("config", f"unknown field(s) {unknown}; allowed: {', '.join(CLIENT_CONFIG_FIELDS)}")
    kw = {k: getattr(default, k) for k in CLIENT_CONFIG_FIELDS}
    if "method" in overrides:  # a new preset: fields the client did not give come from that preset
        for k in ("scales", "aggregate", "mitigation", "filter"):
            kw[k] = None
    kw.update(overrides)
    if isinstance(kw.get("scales"), list):
        kw["scales"] = tuple(kw["scales"])
    try:
        cfg = ExplainConfig(**kw, backend=default.backend, keep_scale_maps=keep_scale_maps)
    except (ValueError, TypeError) as e:
        name = re.match(r"ExplainConfig\.(\w+)=", str(e))
        raise invalid(f"config.{name.group(1)}" if name else "config", str(e)) from None
    if cfg.max_new_tokens > limits.max_new_tokens:
        raise too_large(
            "config.max_new_tokens", f"{cfg.max_new_tokens} exceeds the limit of {limits.max_new_tokens}"
        )
    if len(cfg.scales) > limits.max_scales:
        raise too_large("config.scales", f"{len(cfg.scales)} scales exceeds the limit of {limits.max_scales}")
    if max(cfg.scales) > limits.max_scale:
        raise too_large(
            "config.scales", f"scale {max(cfg.scales)} exceeds the largest allowed scale {limits.max_scale}"
        )
    return cfg
