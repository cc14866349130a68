"""One self-contained HTML page per explanation (``Explanation.to_html``).

The page embeds everything it shows as data URIs (the image as a JPEG, every heatmap as a grid-sized PNG
that the browser scales up), with inline CSS and JavaScript: it makes no network request and can be mailed
or attached as a single file. The page's template, style sheet and script are package assets
(``mmx_fast/assets/report.html``, ``report.css``, ``report.js``); the template's ``@@name@@`` fields are
filled here.

What it shows: the answer as one chip per token (hover or focus previews that token's map, click selects
it, the arrow keys step through tokens), the map over the image with an opacity slider, a choice of which
map to show (the final map, the map before mitigation and each MSEA scale's map, when the explanation
carries them), the prompt, the configuration, the timings and an optional note (e.g. "random weights").

The URL fragment selects the state at load and is kept up to date: ``report.html#token=3&view=raw&opacity=0.7
&compare=1&cells=1``. Uncaught script errors are recorded in ``document.title`` (prefixed ``ERROR:``) and in
the ``data-error`` attribute of ``<body>``; ``data-ready="1"`` is set once the page is wired up.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import html
import io
import json
import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .io import atomic_write_bytes, check_colormap, chmod_like_open, colormap_uint8

# the longer side of the embedded photo (it is never upscaled)
MAX_IMAGE_SIDE = 640

_METHOD_LABELS = {"msea-arc": "MSEA + ARC", "tam": "TAM", "logit-lens": "logit lens"}
_MITIGATION_LABELS = {"arc": "ARC", "tam": "TAM's causal inference", "none": "mitigation"}


# ---------------------------------------------------------------------------------------------------
# encoding helpers
def _data_uri(img: Image.Image, fmt: str, **save_kwargs: Any) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kwargs)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _heat_png(m: np.ndarray, colormap: str = "jet") -> str:
    """[h, w] in [0, 1] -> a grid-sized PNG coloured with ``colormap`` as a data URI."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0).clip(0, 1)
    rgb = colormap_uint8(m, colormap, rounding="round")
    return _data_uri(Image.fromarray(rgb, mode="RGB"), "PNG", optimize=True)


def _normalise(maps: np.ndarray) -> np.ndarray:
    """Per-token display scaling for raw (unnormalised) maps: clip at 0, divide by each map's maximum."""
    m = np.nan_to_num(np.asarray(maps, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0).clip(min=0)
    peak = m.reshape(m.shape[0], -1).max(axis=1, initial=0.0) if m.shape[0] else np.zeros(0)
    peak = np.where(peak > 0, peak, 1.0)
    return m / peak.reshape(-1, *([1] * (m.ndim - 1)))


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _photo_uri(image: Image.Image | None) -> tuple[str | None, tuple[int, int] | None]:
    if image is None:
        return None, None
    img = image.convert("RGB")
    w, h = img.size
    scale = min(1.0, MAX_IMAGE_SIDE / max(w, h))
    if scale < 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    return _data_uri(img, "JPEG", quality=85, optimize=True), (w, h)


def _chip_text(tok: str) -> tuple[str, bool]:
    """(what a chip shows, whether the token starts a new word). Leading spaces become the gap before the chip;
    whitespace that would vanish is made visible."""
    starts_word = tok[:1] in (" ", "\n", "\t", "\u2581", "\u0120")
    text = tok.lstrip(" \u2581\u0120")
    if tok and not text:
        text = "\u2423"  # open box: a token that is only spaces
    text = text.replace("\n", "\u21b5").replace("\t", "\u2192").replace("\r", "")
    if not tok:
        text = "\u2205"
    return text, starts_word


def _script_json(obj: Any) -> str:
    """``obj`` as JSON that is inert inside ``<script type="application/json">``: every ``<`` (so neither
    ``</script>`` nor ``<!--`` + ``<script>`` can end or swallow the element), ``>`` and ``&`` escaped as
    ``\\u003c`` etc., and U+2028 / U+2029 (which ``ensure_ascii`` already escapes) too."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"))
    for ch, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(ch, esc)
    return text


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt_value(x) for x in v)
    return str(v)


def _table(rows: list[tuple[str, Any]], cls: str) -> str:
    body = "".join(
        f"<tr><th scope='row'>{html.escape(str(k))}</th><td>{html.escape(_fmt_value(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table class='{cls}'>{body}</table>"


# ---------------------------------------------------------------------------------------------------
def _pngs(maps: np.ndarray, colormap: str = "jet") -> list[Any]:
    """One PNG per token ([T, H, W]); a video ([T, t, H, W]): per token, one PNG per temporal patch."""
    if maps.ndim == 4:
        return [[_heat_png(f, colormap) for f in m] for m in maps]
    return [_heat_png(m, colormap) for m in maps]


def _views(exp, colormap: str = "jet") -> list[dict[str, Any]]:
    """Every map set the page can show: key, label, a short explanation and one PNG per token (a video: a list
    of PNGs per token, one per temporal patch)."""
    cfg = exp.config
    method = getattr(cfg, "method", None)
    mitigation = getattr(cfg, "mitigation", None)
    final_label = _METHOD_LABELS.get(method, "final map")
    views = [
        {
            "key": "final",
            "label": f"{final_label} (final)",
            "help": "the explanation: values in [0, 1] as returned in Explanation.maps",
            "maps": _pngs(_as_numpy(exp.maps), colormap),
        }
    ]
    if exp.raw_maps is not None:
        what = _MITIGATION_LABELS.get(mitigation, "mitigation")
        label = f"before {what}" if mitigation != "none" else "before filtering"
        if exp.scale_maps is not None and len(exp.scale_maps) > 1:
            label = f"MSEA, {label}"
        views.append(
            {
                "key": "raw",
                "label": label,
                "help": "the aggregated logit-lens map before mitigation, scaled to its own maximum",
                "maps": _pngs(_normalise(_as_numpy(exp.raw_maps)), colormap),
            }
        )
    if exp.scale_maps:
        for s in sorted(exp.scale_maps):
            sm = _normalise(_as_numpy(exp.scale_maps[s]))
            h, w = sm.shape[-2:] if sm.ndim in (3, 4) else (0, 0)
            views.append(
                {
                    "key": f"scale-{float(s):g}",
                    "label": f"scale {float(s):g} ({h}\u00d7{w})",
                    "help": f"logit-lens map of the image resized by {float(s):g}, scaled to its own maximum",
                    "maps": _pngs(sm, colormap),
                }
            )
    return views


def _chips_html(tokens: list[str], ids: list[int]) -> str:
    """The answer as chips, rendered server-side so the page reads without script (one chip per token; the
    chips of one word are grouped so that a word never wraps inside)."""
    words: list[list[str]] = []
    for i, tok in enumerate(tokens):
        text, starts_word = _chip_text(tok)
        tip = f"#{i} \u00b7 id {ids[i]} \u00b7 {json.dumps(tok, ensure_ascii=False)}"
        chip = (
            f'<button type="button" class="chip" data-i="{i}" aria-pressed="false" '
            f'title="{html.escape(tip)}">{html.escape(text)}</button>'
        )
        if starts_word or not words:
            words.append([])
        words[-1].append(chip)
    if not words:
        return "<p class='empty'>The answer is empty: there is nothing to explain.</p>"
    return "".join(f'<span class="word">{"".join(w)}</span>' for w in words)


def _view_controls(views: list[dict[str, Any]], mitigation: Any) -> tuple[str, str]:
    """(the radio buttons choosing the map shown, the side-by-side toggle or "" when there is one view)."""
    radios = []
    for k, v in enumerate(views):
        checked = " checked" if k == 0 else ""
        radios.append(
            f'<label title="{html.escape(v["help"])}"><input type="radio" name="view" value="{v["key"]}"{checked}>'
            f" {html.escape(v['label'])}</label>"
        )
    compare_html = (
        '<label class="toggle"><input type="checkbox" id="compare"> show the per-scale maps and the map before '
        f"{html.escape(_MITIGATION_LABELS.get(mitigation, 'mitigation'))} side by side</label>"
        if len(views) > 1
        else ""
    )
    return "".join(radios), compare_html


def _stage_html(photo: str | None, size, grid, first_map: str) -> tuple[str, str]:
    """(the CSS aspect ratio of the viewer, its images): the photo with the heatmap over it, or the heatmap
    alone when the explanation carries no image."""
    if photo is not None:
        inner = (
            f'<img id="base" alt="the input image" src="{photo}">'
            f'<img id="heat" alt="heatmap of the selected token" src="{first_map}">'
        )
        return f"{size[0]} / {size[1]}", inner
    inner = f'<img id="heat" class="solo" alt="heatmap of the selected token" src="{first_map}">'
    return f"{grid[1]} / {grid[0]}", inner


def _run_rows(meta: dict[str, Any] | None, grid, n_tokens: int, size) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = list((meta or {}).items())
    rows += [("visual grid (scale 1.0)", f"{grid[0]} \u00d7 {grid[1]}"), ("answer tokens", n_tokens)]
    if size is not None:
        rows.append(("image size", f"{size[0]} \u00d7 {size[1]}"))
    return rows


def render_report(
    exp,
    title: str | None = None,
    note: str | None = None,
    meta: dict[str, Any] | None = None,
    colormap: str = "jet",
) -> str:
    """The page as a string. ``meta``: extra rows for the "Run" table (model, image path, device...);
    ``colormap``: the heatmaps' colour map (a built-in name or any matplotlib one, ``io.check_colormap``)."""
    check_colormap(colormap)
    tokens = list(exp.answer_tokens)
    ids = [int(i) for i in exp.answer_ids]
    T = len(ids)
    if len(tokens) != T:
        tokens = (tokens + [f"<{i}>" for i in ids[len(tokens) :]])[:T]
    cfg = exp.config
    cfg_dict = cfg.to_dict() if hasattr(cfg, "to_dict") else (dict(cfg) if isinstance(cfg, dict) else {})
    method = cfg_dict.get("method")
    method_label = _METHOD_LABELS.get(method, str(method or "explanation"))
    grid = tuple(int(g) for g in exp.grid)
    views = _views(exp, colormap)
    photo, size = _photo_uri(exp.image)
    if title is None:
        title = f"Token-level visual attribution ({method_label})"
    radios, compare_html = _view_controls(views, cfg_dict.get("mitigation"))
    first = views[0]["maps"][0] if T else ""
    video = getattr(exp, "frames", None) is not None
    aspect, stage_inner = _stage_html(photo, size, grid, first[0] if video and T else first)
    timing_rows = [(k, f"{1000 * float(v):.1f} ms") for k, v in (exp.timings or {}).items()]
    note_html = (
        f'<div class="note" role="note"><strong>Note.</strong> {html.escape(note)}</div>' if note else ""
    )
    data = {
        "tokens": tokens,
        "ids": ids,
        "views": [{"key": v["key"], "label": v["label"], "maps": v["maps"]} for v in views],
    }
    scrubber = ""
    if video:
        t = int(exp.maps.shape[1])
        # the photo under temporal patch k: the first frame of its pair (Qwen merges frames 2k, 2k + 1)
        data["frames"] = [_photo_uri(exp.frames[min(2 * k, len(exp.frames) - 1)])[0] for k in range(t)]
        data["frame_pairs"] = [[2 * k, min(2 * k + 1, len(exp.frames) - 1)] for k in range(t)]
        scrubber = (
            '<label class="scrubber">Frame pair <input type="range" id="frame" min="0" '
            f'max="{t - 1}" step="1" value="0"> <output id="frame-value">frames 0-1</output></label>'
        )
    values = dict(
        title=html.escape(title),
        subtitle=html.escape(
            f"{method_label} \u00b7 {T} answer token{'s' if T != 1 else ''} \u00b7 grid {grid[0]}\u00d7{grid[1]}"
            + (f" \u00b7 video, {len(exp.frames)} frames" if video else "")
        ),
        scrubber=scrubber,
        note=note_html,
        aspect=aspect,
        stage=stage_inner,
        prompt=html.escape(exp.prompt or ""),
        chips=_chips_html(tokens, ids),
        radios=radios,
        compare=compare_html,
        config=_table(list(cfg_dict.items()), "kv"),
        run=_table(_run_rows(meta, grid, T, size), "kv"),
        timings=_table(timing_rows, "kv") if timing_rows else "<p>none recorded</p>",
        version=html.escape(_version()),
        css=_asset("report.css"),
        boxcss=_box_css(exp) if photo is not None else "",
        js=_asset("report.js"),
        data=_script_json(data),
        n_tokens=str(T),
    )
    return re.sub(r"@@(\w+)@@", lambda m: values[m.group(1)], _asset("report.html"))


def write_report(
    exp,
    path: str | os.PathLike,
    title: str | None = None,
    note: str | None = None,
    *,
    meta: dict[str, Any] | None = None,
    colormap: str = "jet",
) -> Path:
    """Write the page for ``exp`` to ``path`` (atomically; the parent folder is created) and return the path."""
    path = Path(path)
    text = render_report(exp, title=title, note=note, meta=meta, colormap=colormap)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
    chmod_like_open(path)
    return path


def _version() -> str:
    from .version import __version__

    return __version__


# ---------------------------------------------------------------------------------------------------
def _box_css(exp) -> str:
    """Put the heatmaps on the part of the photo the grid shows (``Explanation.view_box``; LLaVA's
    processor centre-crops) instead of stretching them over the whole photo."""
    box = getattr(exp, "view_box", None)
    if not box:
        return ""
    x0, y0, x1, y1 = (100.0 * float(v) for v in box)
    return (
        f" #heat:not(.solo), .strip .h {{ inset: auto; left: {x0:.4f}%; top: {y0:.4f}%;"
        f" width: {x1 - x0:.4f}%; height: {y1 - y0:.4f}%; }}"
    )


@functools.cache
def _asset(name: str) -> str:
    """A text file of ``mmx_fast/assets`` (read once, through importlib.resources, so it works from a wheel)."""
    return files("mmx_fast").joinpath("assets", name).read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------------
# the compact notebook view (``Explanation._repr_html_``)
NOTEBOOK_THUMB_TOKENS = 48  # tokens shown with a thumbnail; the others as text chips only
NOTEBOOK_THUMB_SIDE = 96  # the longer side of each thumbnail, in pixels
NOTEBOOK_MAX_TOKEN_CHARS = 40  # a longer token string is cut (with an ellipsis) in its chip
NOTEBOOK_MAX_TEXT_CHARS = 2000  # the prompt and answer shown are cut beyond this


# what the notebook view and ``Explanation.to_html`` say about a random-weight model (``mmx_fast.testing``)
RANDOM_WEIGHTS_NOTE = (
    "This model has RANDOM weights (a tiny test model built by mmx_fast.testing.tiny_model), not a trained "
    "model: the heatmaps show the pipeline at work, not where a trained model looks."
)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def notebook_html(exp: Any, colormap: str = "jet") -> str:
    """A compact, self-contained HTML fragment for Jupyter (``Explanation._repr_html_``): the prompt, the
    answer, then every answer token as a chip; the first ``NOTEBOOK_THUMB_TOKENS`` chips carry a small
    overlay of that token's map on the image (a heatmap alone when the explanation carries no image). Every
    string is HTML-escaped; the size is bounded (thumbnails of at most ``NOTEBOOK_THUMB_SIDE`` pixels, a
    bounded number of them, token and text lengths cut), whatever the answer's length."""
    from . import io as _io

    _io.check_colormap(colormap)
    if getattr(exp, "frames", None) is not None:  # a video: the first frame pair's maps over its first frame
        exp = dataclasses.replace(exp, maps=exp.maps[:, 0], frames=None)
    small = None
    if exp.image is not None:
        small = exp.image.convert("RGB")
        small.thumbnail((NOTEBOOK_THUMB_SIDE, NOTEBOOK_THUMB_SIDE))
    hc, wc = exp.grid
    scale = NOTEBOOK_THUMB_SIDE / max(hc, wc, 1)
    heat_size = (max(1, round(wc * scale)), max(1, round(hc * scale)))
    thumb_exp = dataclasses.replace(exp, image=small)  # the same maps (not copied), the small image

    def thumb(i: int) -> str:
        if small is not None:
            img = _io.overlay(thumb_exp, i, colormap=colormap)
        else:
            img = _io.heatmap(exp, i, size=heat_size, colormap=colormap)
        return _data_uri(img, "JPEG", quality=80)

    esc = html.escape
    chips = []
    for i, tok in enumerate(exp.answer_tokens):
        label = esc(_cut(str(tok), NOTEBOOK_MAX_TOKEN_CHARS), quote=True)
        title = f"token {i}: {esc(repr(str(tok))[:200], quote=True)}"
        if i < NOTEBOOK_THUMB_TOKENS:
            chips.append(
                f'<figure title="{title}" style="margin:0;display:inline-block;text-align:center">'
                f'<img src="{thumb(i)}" alt="map of token {i}" style="display:block;max-width:{NOTEBOOK_THUMB_SIDE}px">'
                f'<figcaption style="font:12px monospace;white-space:pre">{label}</figcaption></figure>'
            )
        else:
            chips.append(
                f'<span title="{title}" style="font:12px monospace;white-space:pre;padding:1px 4px;'
                f'border:1px solid #ccc;border-radius:4px">{label}</span>'
            )
    method = getattr(exp.config, "method", None)
    warn = (
        '<div role="note" style="background:#fff3cd;border:1px solid #e0b100;padding:2px 6px;margin:2px 0">'
        f"<b>Random weights.</b> {esc(RANDOM_WEIGHTS_NOTE)}</div>"
        if getattr(exp, "random_weights", False)
        else ""
    )
    head = f"mmx-fast explanation: {len(exp)} tokens, grid {hc}x{wc}" + (
        f", {esc(str(method))}" if method else ""
    )
    return (
        '<div class="mmx-fast-explanation" style="font:13px sans-serif">'
        f"<div><b>{head}</b></div>{warn}"
        f"<div><b>Prompt:</b> {esc(_cut(exp.prompt or '', NOTEBOOK_MAX_TEXT_CHARS))}</div>"
        f"<div><b>Answer:</b> {esc(_cut(exp.answer_text or '', NOTEBOOK_MAX_TEXT_CHARS))}</div>"
        '<div style="display:flex;flex-wrap:wrap;gap:4px;align-items:flex-end;margin-top:4px">'
        + "".join(chips)
        + "</div></div>"
    )
