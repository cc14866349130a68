"""``POST /v1/explanations``: the request an app already sends to an OpenAI-compatible engine (vLLM, TGI,
SGLang...) plus the engine's answer, so a sidecar forwards both without translating (README "Serving").

``messages`` holds one ``user`` message whose ``content`` has exactly one ``image_url`` part (``data:`` URLs
always; ``http(s)`` only with ``--allow-image-urls``) and text parts, joined with newlines into the prompt
(the adapters put the image before the text, as the engines' Qwen2-VL / LLaVA templates do for a single
image). ``answer`` is the engine's answer: its text, its token ids, or its ``choices[0].message`` object;
omitted, the model's own greedy answer is explained. Sampling fields (``model``, ``temperature``,
``max_tokens``...) are accepted so the very same body can be forwarded, and are not used: the answer is given.
The response is ``/v1/explain``'s, plus ``prompt``; ``answer_ids`` are the ids explained (a text answer
re-tokenized), for the caller to compare with the engine's.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr

from . import explain_flow
from .deps import State, authorize
from .explain_flow import Parsed
from .limits import CLIENT_CONFIG_FIELDS, invalid
from .request import ExplainRequest, media_type, parse_json_body, unsupported_media
from .state import ServeState

router = APIRouter(dependencies=[Depends(authorize)])


class ExplanationsRequest(BaseModel):
    """The JSON body of ``POST /v1/explanations``."""

    model_config = ConfigDict(extra="forbid")
    messages: list[dict[str, Any]] = Field(
        description="OpenAI chat messages: one user message with one image_url part and text parts"
    )
    answer: StrictStr | list[StrictInt] | dict[str, Any] | None = Field(
        None, description="the engine's answer: text, token ids, or its choices[0].message object"
    )
    config: dict[str, Any] | None = Field(
        None, description=f"ExplainConfig fields to override: {', '.join(CLIENT_CONFIG_FIELDS)}"
    )
    maps_format: Literal["float16", "uint8", "float32", "none"] = "float16"
    overlays: StrictBool = False
    keep: StrictBool = False
    timeout_s: float | None = Field(None, gt=0)
    # what an app sends its engine about sampling: accepted, so the very same body can be forwarded, and not
    # used (the answer is given); declared so that extra="forbid" still catches a misspelt field of ours
    model: Any = None
    temperature: Any = None
    top_p: Any = None
    top_k: Any = None
    max_tokens: Any = None
    max_completion_tokens: Any = None
    n: Any = None
    seed: Any = None
    stop: Any = None
    stream: Any = None
    presence_penalty: Any = None
    frequency_penalty: Any = None
    repetition_penalty: Any = None
    logprobs: Any = None
    top_logprobs: Any = None
    user: Any = None


def _image_url(part: dict, where: str) -> str:
    ref = part.get("image_url")
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise invalid(f"{where}.image_url.url", "is missing; expected a data: or http(s) URL")
    if not url.startswith(("data:", "http://", "https://")):
        raise invalid(f"{where}.image_url.url", f"{url[:40]!r} is not a data: or http(s) URL")
    return url


def messages_to_prompt(messages: list[dict[str, Any]]) -> tuple[str, str]:
    """OpenAI ``messages`` -> (image URL, prompt); 422 naming the message / part that is not supported."""
    if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        roles = [m.get("role") if isinstance(m, dict) else type(m).__name__ for m in messages]
        raise invalid(
            "messages",
            f"roles {roles} are not supported; expected exactly one user message (system prompts and earlier "
            "turns would change the prompt the engine answered, and are not modelled)",
        )
    content = messages[0].get("content")
    if isinstance(content, str):
        raise invalid("messages[0].content", "has no image_url part; expected a list with one image_url part")
    if not isinstance(content, list):
        raise invalid("messages[0].content", f"has type {type(content).__name__}; expected a list of parts")
    images, texts = [], []
    for i, part in enumerate(content):
        where = f"messages[0].content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            images.append(_image_url(part, where))
        elif kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            raise invalid(where, f"type {kind!r} is not supported; expected a text or an image_url part")
    if len(images) != 1:
        raise invalid("messages[0].content", f"has {len(images)} image_url parts; expected exactly one")
    return images[0], "\n".join(texts)


def _answer(answer: Any) -> str | list[int] | None:
    if isinstance(answer, dict):  # the engine's choices[0].message
        content = answer.get("content")
        if answer.get("role", "assistant") != "assistant" or not isinstance(content, str):
            raise invalid("answer", "a message object must be {'role': 'assistant', 'content': '<text>'}")
        return content
    return answer


async def parse_explanations_body(request: Request, body: bytes, st: ServeState) -> Parsed:
    ctype = media_type(request)
    if ctype not in ("application/json", ""):
        raise unsupported_media(ctype)
    chat = await st.admission.run(parse_json_body, body, ExplanationsRequest)
    image, prompt = messages_to_prompt(chat.messages)
    req = ExplainRequest.model_construct(
        image=image, prompt=prompt, answer=_answer(chat.answer), config=chat.config,
        maps_format=chat.maps_format, overlays=chat.overlays, keep=chat.keep, timeout_s=chat.timeout_s,
    )  # fmt: skip
    return Parsed(req, None, {"prompt": prompt})


@router.post(
    "/v1/explanations",
    summary="explain an engine's answer to an OpenAI-style chat request (messages + answer)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ExplanationsRequest.model_json_schema()}},
        }
    },
)
async def explanations(request: Request, st: State):
    return await explain_flow.handle(request, st, parse_explanations_body)
