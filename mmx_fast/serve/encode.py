"""Turning an Explanation into what the service sends or keeps: maps as base64 arrays, overlay PNGs (within
the request's deadline), and a kept result's parts (``report.html``, ``maps.npz``) for the result store."""

from __future__ import annotations

import base64
import dataclasses
import time
from typing import Any

import numpy as np

from ..io import maps_arrays, npz_bytes, png_bytes
from .limits import ApiError

KEPT_IMAGE_SIDE = 1024  # a kept report shows the image at most this large


def encode_maps(exp, fmt: str) -> dict[str, Any] | None:
    if fmt == "none":
        return None
    maps = exp.maps.numpy()
    if fmt == "uint8":
        arr = np.stack([exp.map_uint8(i) for i in range(len(exp))]) if len(exp) else maps.astype(np.uint8)
    else:
        arr = maps.astype("<f2" if fmt == "float16" else "<f4")
    return {"format": fmt, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode("ascii")}


def overlays(exp, deadline: float, timeout_s: float) -> list[str]:
    """One base64 PNG per answer token; the request's deadline is checked after each one (504 past it)."""
    out = []
    for i in range(len(exp)):
        if time.perf_counter() > deadline:
            raise ApiError(
                504,
                "timeout",
                f"overlays: {i} of {len(exp)} encoded when the request's deadline of {timeout_s:g} s passed",
                "overlays",
                {"Retry-After": "1"},
            )
        out.append(base64.b64encode(png_bytes(exp.overlay(i))).decode("ascii"))
    return out


def kept_parts(exp, model_id: str) -> dict[str, bytes]:
    """A kept result as the store holds it: its maps (``Explanation.save``'s ``maps.npz``) and its report, the
    image at most KEPT_IMAGE_SIDE px on its long side (Explanation is frozen: a copy with the smaller image)."""
    from ..report import render_report

    npz = npz_bytes(maps_arrays(exp))
    if exp.image is not None and max(exp.image.size) > KEPT_IMAGE_SIDE:
        small = exp.image.copy()
        small.thumbnail((KEPT_IMAGE_SIDE, KEPT_IMAGE_SIDE))
        exp = dataclasses.replace(exp, image=small)
    html = render_report(exp, None, None, {"model": model_id})
    return {"maps.npz": npz, "report.html": html.encode("utf-8")}


def response_body(exp, maps_format: str, answer_forced: bool, batch_size: int, rid: str) -> dict[str, Any]:
    return {
        "id": rid,
        "answer": exp.answer_text,
        "answer_ids": [int(i) for i in exp.answer_ids],
        "answer_tokens": list(exp.answer_tokens),
        "answer_forced": answer_forced,
        "grid": [int(g) for g in exp.grid],
        "view_box": list(exp.view_box) if exp.view_box else None,
        "image_size": list(exp.image.size) if exp.image is not None else None,
        "config": exp.config.to_dict(),
        "maps": encode_maps(exp, maps_format),
        "batch_size": batch_size,
    }
