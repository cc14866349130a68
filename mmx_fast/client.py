"""A small client for ``mmx-fast serve``: ``explain(url, image, prompt, answer=...)`` -> ``Explanation``.

    from mmx_fast.client import explain
    exp = explain("http://127.0.0.1:8000", "photo.jpg", "What is in the image?", answer="A red car.")
    exp.maps  # float32 [T, Hc, Wc], exactly what the server computed
    exp.overlay(0).save("token0.png")

Needs ``httpx`` (``pip install 'mmx-fast[serve]'``). Errors of the server are raised as ``ServerError``
with its status, kind, field and message; a 503 carries ``retry_after`` (seconds).
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from .config import ExplainConfig
from .explanation import Explanation
from .images import load_image

__all__ = ["ServerError", "explain", "explain_request"]


class ServerError(Exception):
    def __init__(self, status: int, kind: str | None, field: str | None, message: str, retry_after=None):
        super().__init__(f"HTTP {status} ({kind}): {message}")
        self.status, self.kind, self.field, self.message = status, kind, field, message
        self.retry_after = retry_after


def _png_bytes(image) -> tuple[bytes, Image.Image]:
    if isinstance(image, (str, os.PathLike)):
        with open(image, "rb") as f:
            data = f.read()
        return data, load_image(image)
    pil = load_image(image)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")  # lossless: the server sees exactly these pixels
    return buf.getvalue(), pil


def explain_request(
    image,
    prompt: str,
    answer=None,
    config: ExplainConfig | dict | None = None,
    *,
    maps_format: str = "float32",
) -> tuple[dict[str, Any], Image.Image]:
    """The JSON body for ``POST /v1/explain`` and the image as the server will decode it."""
    data, pil = _png_bytes(image)
    if isinstance(config, ExplainConfig):
        from .serve.limits import CLIENT_CONFIG_FIELDS

        d = config.to_dict()
        config = {k: d[k] for k in CLIENT_CONFIG_FIELDS}
    body: dict[str, Any] = {
        "image": base64.b64encode(data).decode("ascii"),
        "prompt": prompt,
        "maps_format": maps_format,
    }
    if answer is not None:
        body["answer"] = answer if isinstance(answer, str) else [int(a) for a in answer]
    if config is not None:
        body["config"] = config
    return body, pil


def decode_maps(maps: dict[str, Any]) -> torch.Tensor:
    """The ``maps`` field of a response -> float32 [T, Hc, Wc] (uint8 maps come back as k / 255)."""
    dtype = {"float16": "<f2", "float32": "<f4", "uint8": "u1"}[maps["format"]]
    arr = np.frombuffer(base64.b64decode(maps["data"]), dtype=dtype).reshape(maps["shape"])
    out = arr.astype(np.float32) / (255.0 if maps["format"] == "uint8" else 1.0)
    return torch.from_numpy(out.copy())


def to_explanation(resp: dict[str, Any], image: Image.Image | None = None) -> Explanation:
    cfg = dict(resp["config"])
    cfg["scales"] = tuple(cfg["scales"])
    maps = resp.get("maps")
    grid = tuple(resp["grid"])
    return Explanation(
        maps=decode_maps(maps) if maps else torch.zeros(0, *grid),
        answer_ids=list(resp["answer_ids"]),
        answer_tokens=list(resp["answer_tokens"]),
        grid=grid,
        config=ExplainConfig(**cfg),
        image=image,
        timings=dict(resp.get("timings", {})),
        view_box=tuple(resp["view_box"]) if resp.get("view_box") else None,
    )


def explain(
    url: str,
    image,
    prompt: str,
    answer=None,
    config: ExplainConfig | dict | None = None,
    *,
    api_key: str | None = None,
    timeout: float = 300.0,
    client=None,
) -> Explanation:
    """Explain ``answer`` (text or token ids; None: the model's greedy answer) on a running server.

    ``url``: the server's base URL. ``image``: a path (sent as its file bytes), a PIL image or a numpy
    array (sent as PNG). ``config``: an ExplainConfig or a dict of its fields (the server keeps its own
    backend). ``client``: an ``httpx.Client`` to reuse connections."""
    import httpx

    body, pil = explain_request(image, prompt, answer, config)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    endpoint = url.rstrip("/") + "/v1/explain"
    if client is None:
        with httpx.Client(timeout=timeout) as c:
            r = c.post(endpoint, json=body, headers=headers)
    else:
        r = client.post(endpoint, json=body, headers=headers, timeout=timeout)
    if r.status_code != 200:
        try:
            err = r.json().get("error", {})
        except ValueError:
            err = {}
        ra = r.headers.get("retry-after")
        raise ServerError(
            r.status_code,
            err.get("kind"),
            err.get("field"),
            err.get("message", r.text[:500]),
            float(ra) if ra else None,
        )
    return to_explanation(r.json(), pil)
