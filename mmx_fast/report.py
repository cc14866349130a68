"""One self-contained HTML page per explanation (``Explanation.to_html``).

The page embeds everything it shows as data URIs (the image as a JPEG, every heatmap as a grid-sized PNG
that the browser scales up), with inline CSS and JavaScript: it makes no network request and can be mailed
or attached as a single file.

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
import html
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .explanation import _jet, atomic_write_bytes

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


def _heat_png(m: np.ndarray) -> str:
    """[h, w] in [0, 1] -> a grid-sized jet PNG as a data URI."""
    m = np.nan_to_num(np.asarray(m, dtype=np.float64), nan=0.0, posinf=1.0, neginf=0.0).clip(0, 1)
    rgb = (_jet(m) * 255).round().astype(np.uint8)
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
def _views(exp) -> list[dict[str, Any]]:
    """Every map set the page can show: key, label, a short explanation and one PNG per token."""
    cfg = exp.config
    method = getattr(cfg, "method", None)
    mitigation = getattr(cfg, "mitigation", None)
    final_label = _METHOD_LABELS.get(method, "final map")
    views = [
        {
            "key": "final",
            "label": f"{final_label} (final)",
            "help": "the explanation: values in [0, 1] as returned in Explanation.maps",
            "maps": [_heat_png(m) for m in _as_numpy(exp.maps)],
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
                "maps": [_heat_png(m) for m in _normalise(_as_numpy(exp.raw_maps))],
            }
        )
    if exp.scale_maps:
        for s in sorted(exp.scale_maps):
            sm = _normalise(_as_numpy(exp.scale_maps[s]))
            h, w = sm.shape[1:] if sm.ndim == 3 else (0, 0)
            views.append(
                {
                    "key": f"scale-{float(s):g}",
                    "label": f"scale {float(s):g} ({h}\u00d7{w})",
                    "help": f"logit-lens map of the image resized by {float(s):g}, scaled to its own maximum",
                    "maps": [_heat_png(m) for m in sm],
                }
            )
    return views


def render_report(
    exp, title: str | None = None, note: str | None = None, meta: dict[str, Any] | None = None
) -> str:
    """The page as a string. ``meta``: extra rows for the "Run" table (model, image path, device...)."""
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
    views = _views(exp)
    photo, size = _photo_uri(exp.image)
    if title is None:
        title = f"Token-level visual attribution ({method_label})"

    # chips, rendered server-side so the page reads without script
    # (one chip per token; the chips of one word are grouped so that a word never wraps inside)
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
    chips_html = (
        "".join(f'<span class="word">{"".join(w)}</span>' for w in words)
        if words
        else "<p class='empty'>The answer is empty: there is nothing to explain.</p>"
    )

    radios = []
    for k, v in enumerate(views):
        checked = " checked" if k == 0 else ""
        radios.append(
            f'<label title="{html.escape(v["help"])}"><input type="radio" name="view" value="{v["key"]}"{checked}>'
            f" {html.escape(v['label'])}</label>"
        )
    has_extra_views = len(views) > 1
    compare_html = (
        '<label class="toggle"><input type="checkbox" id="compare"> show the per-scale maps and the map before '
        f"{html.escape(_MITIGATION_LABELS.get(cfg_dict.get('mitigation'), 'mitigation'))} side by side</label>"
        if has_extra_views
        else ""
    )

    if photo is not None:
        aspect = f"{size[0]} / {size[1]}"
        stage_inner = (
            f'<img id="base" alt="the input image" src="{photo}">'
            f'<img id="heat" alt="heatmap of the selected token" src="{views[0]["maps"][0] if T else ""}">'
        )
    else:
        aspect = f"{grid[1]} / {grid[0]}"
        stage_inner = f'<img id="heat" class="solo" alt="heatmap of the selected token" src="{views[0]["maps"][0] if T else ""}">'

    cfg_rows = list(cfg_dict.items())
    run_rows: list[tuple[str, Any]] = []
    for k, v in (meta or {}).items():
        run_rows.append((k, v))
    run_rows += [
        ("visual grid (scale 1.0)", f"{grid[0]} \u00d7 {grid[1]}"),
        ("answer tokens", T),
    ]
    if size is not None:
        run_rows.append(("image size", f"{size[0]} \u00d7 {size[1]}"))
    timing_rows = [(k, f"{1000 * float(v):.1f} ms") for k, v in (exp.timings or {}).items()]

    note_html = (
        f'<div class="note" role="note"><strong>Note.</strong> {html.escape(note)}</div>' if note else ""
    )
    data = {
        "tokens": tokens,
        "ids": ids,
        "views": [{"key": v["key"], "label": v["label"], "maps": v["maps"]} for v in views],
    }
    data_json = json.dumps(data, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/")
    version = _version()

    values = dict(
        title=html.escape(title),
        subtitle=html.escape(
            f"{method_label} \u00b7 {T} answer token{'s' if T != 1 else ''} \u00b7 grid {grid[0]}\u00d7{grid[1]}"
        ),
        note=note_html,
        aspect=aspect,
        stage=stage_inner,
        prompt=html.escape(exp.prompt or ""),
        chips=chips_html,
        radios="".join(radios),
        compare=compare_html,
        config=_table(cfg_rows, "kv"),
        run=_table(run_rows, "kv"),
        timings=_table(timing_rows, "kv") if timing_rows else "<p>none recorded</p>",
        version=html.escape(version),
        css=_CSS,
        boxcss=_box_css(exp) if photo is not None else "",
        js=_JS,
        data=data_json,
        n_tokens=str(T),
    )
    return re.sub(r"@@(\w+)@@", lambda m: values[m.group(1)], _PAGE)


def write_report(
    exp,
    path: str | os.PathLike,
    title: str | None = None,
    note: str | None = None,
    *,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write the page for ``exp`` to ``path`` (atomically; the parent folder is created) and return the path."""
    path = Path(path)
    text = render_report(exp, title=title, note=note, meta=meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))
    chmod_like_open(path)
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def chmod_like_open(path: str | os.PathLike, directory: bool = False) -> None:
    """Give ``path`` the permissions a plain ``open()`` / ``mkdir()`` would have (temp files and folders are
    created private, 0600 / 0700)."""
    try:
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())
    except OSError:  # pragma: no cover - e.g. a file system without permissions
        pass


def _version() -> str:
    try:
        from . import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "?"


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


_CSS = """
:root { --ink:#1d2330; --muted:#5d6677; --line:#dde1e8; --bg:#f6f7f9; --card:#fff; --accent:#1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
  color: var(--ink); background: var(--bg); }
.wrap { max-width: 1080px; margin: 0 auto; padding: 18px 20px 28px; }
header h1 { font-size: 1.35rem; margin: 0 0 2px; }
header .sub { color: var(--muted); margin: 0 0 12px; font-size: .92rem; }
.note { background: #fff4d6; border: 1px solid #e8c35a; border-radius: 8px; padding: 9px 13px; margin: 0 0 14px;
  font-size: .93rem; }
.layout { display: flex; flex-wrap: wrap; gap: 18px; align-items: flex-start; }
.viewer { flex: 1 1 360px; max-width: 480px; }
.side { flex: 1 1 320px; min-width: 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.stage { position: relative; width: 100%; background: #222; border-radius: 6px;
  overflow: hidden; }
.stage img { position: absolute; inset: 0; width: 100%; height: 100%; display: block; }
#heat { opacity: .5; mix-blend-mode: normal; }
#heat.solo { opacity: 1 !important; }
.cells #heat, .cells .strip .h { image-rendering: pixelated; }
.legend { display: flex; align-items: center; gap: 8px; margin: 8px 0 2px; color: var(--muted); font-size: .82rem; }
.legend .bar { flex: 1; height: 10px; border-radius: 5px; background: linear-gradient(to right,
  rgb(0,0,128) 0%, rgb(0,0,255) 12.5%, rgb(0,255,255) 37.5%, rgb(255,255,0) 62.5%, rgb(255,0,0) 87.5%,
  rgb(128,0,0) 100%); }
.caption { margin-top: 6px; font-size: .92rem; min-height: 1.4em; }
.caption b { font-family: ui-monospace, "DejaVu Sans Mono", monospace; background: #eef2f8; padding: 0 4px;
  border-radius: 4px; }
h2 { font-size: .8rem; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 14px 0 6px; }
h2:first-child { margin-top: 0; }
h2 small { text-transform: none; letter-spacing: 0; font-weight: normal; }
.prompt { margin: 0; white-space: pre-wrap; }
.chips { display: flex; flex-wrap: wrap; gap: 6px 7px; }
.word { display: inline-flex; gap: 1px; }
.chip { font: inherit; font-size: 1rem; border: 1px solid #c9d2e0; background: #f3f6fb; color: var(--ink);
  border-radius: 6px; padding: 2px 7px; margin: 0; cursor: pointer; }
.chip:hover, .chip:focus-visible, .chip.shown { border-color: var(--accent); outline: none; background: #e3ecfb; }
.chip.active { background: var(--accent); border-color: var(--accent); color: #fff; }
.controls { display: grid; gap: 8px; font-size: .92rem; }
.controls input[type=range] { width: 180px; vertical-align: middle; }
.views { border: 0; padding: 0; margin: 0; display: flex; flex-wrap: wrap; gap: 4px 14px; }
.views legend { padding: 0; margin-bottom: 3px; color: var(--muted); }
.strip { display: none; flex-wrap: wrap; gap: 6px; margin-top: 10px; }
.compare .strip { display: flex; }
.strip figure { margin: 0; flex: 1 1 0; min-width: 64px; max-width: 150px; cursor: pointer; }
.strip .s { position: relative; width: 100%; border-radius: 4px; overflow: hidden;
  background: #222; outline: 2px solid transparent; }
.strip figure.on .s { outline-color: var(--accent); }
.strip img { position: absolute; inset: 0; width: 100%; height: 100%; }
.strip figcaption { font-size: .75rem; color: var(--muted); text-align: center; margin-top: 2px; }
.details { display: flex; flex-wrap: wrap; gap: 18px; margin-top: 18px; }
.details > div { flex: 1 1 300px; }
table.kv { border-collapse: collapse; width: 100%; font-size: .86rem; }
table.kv th { text-align: left; font-weight: 600; color: var(--muted); padding: 3px 10px 3px 0; white-space: nowrap;
  vertical-align: top; }
table.kv td { padding: 3px 0; font-family: ui-monospace, "DejaVu Sans Mono", monospace; word-break: break-all; }
table.kv tr + tr { border-top: 1px solid var(--line); }
footer { color: var(--muted); font-size: .8rem; margin-top: 18px; }
.empty { color: var(--muted); }
"""

_JS = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("mmx-data").textContent);
  var body = document.body;
  var heat = document.getElementById("heat");
  var base = document.getElementById("base");
  var chips = Array.prototype.slice.call(document.querySelectorAll(".chip"));
  var radios = Array.prototype.slice.call(document.querySelectorAll('input[name="view"]'));
  var opacity = document.getElementById("opacity");
  var opacityOut = document.getElementById("opacity-value");
  var cells = document.getElementById("cells");
  var compare = document.getElementById("compare");
  var strip = document.getElementById("strip");
  var caption = document.getElementById("caption");
  var T = data.tokens.length;
  var state = { token: 0, shown: 0, view: 0 };
  var stripHeat = [];

  function clampToken(i) { return Math.max(0, Math.min(T - 1, i | 0)); }
  function viewIndex(key) {
    for (var k = 0; k < data.views.length; k++) { if (data.views[k].key === key) { return k; } }
    return -1;
  }
  function label(tok) { return JSON.stringify(tok); }

  function render(i) {
    if (!T) { return; }
    state.shown = i;
    var v = data.views[state.view];
    heat.src = v.maps[i];
    chips.forEach(function (c, k) { c.classList.toggle("shown", k === i); });
    stripHeat.forEach(function (img, k) { img.src = data.views[k].maps[i]; });
    caption.innerHTML = "";
    caption.appendChild(document.createTextNode("Token " + i + " of " + T + ": "));
    var b = document.createElement("b");
    b.textContent = label(data.tokens[i]);
    caption.appendChild(b);
    caption.appendChild(document.createTextNode(" \u00b7 id " + data.ids[i] + " \u00b7 " + v.label));
    body.setAttribute("data-shown", String(i));
  }

  function writeHash() {
    var parts = ["token=" + state.token, "view=" + encodeURIComponent(data.views[state.view].key)];
    if (opacity) { parts.push("opacity=" + opacity.value); }
    if (compare && compare.checked) { parts.push("compare=1"); }
    if (cells && cells.checked) { parts.push("cells=1"); }
    try { history.replaceState(null, "", "#" + parts.join("&")); } catch (e) { /* file:// in some browsers */ }
  }

  function select(i) {
    if (!T) { return; }
    state.token = clampToken(i);
    chips.forEach(function (c, k) {
      c.classList.toggle("active", k === state.token);
      c.setAttribute("aria-pressed", k === state.token ? "true" : "false");
    });
    body.setAttribute("data-token", String(state.token));
    render(state.token);
    writeHash();
  }

  function setView(k) {
    if (k < 0 || k >= data.views.length) { return; }
    state.view = k;
    radios.forEach(function (r) { r.checked = r.value === data.views[k].key; });
    Array.prototype.forEach.call(document.querySelectorAll(".strip figure"), function (f, j) {
      f.classList.toggle("on", j === k);
    });
    body.setAttribute("data-view", data.views[k].key);
    render(state.shown);
    writeHash();
  }

  function setOpacity(x) {
    if (!opacity) { return; }
    var v = Math.max(0, Math.min(1, parseFloat(x)));
    if (isNaN(v)) { return; }
    opacity.value = String(v);
    heat.style.opacity = String(v);
    stripHeat.forEach(function (img) { img.style.opacity = String(v); });
    if (opacityOut) { opacityOut.textContent = Math.round(v * 100) + "%"; }
  }

  // the side-by-side strip: one small overlay per view for the shown token
  if (strip && data.views.length > 1) {
    data.views.forEach(function (v, k) {
      var fig = document.createElement("figure");
      var s = document.createElement("div");
      s.className = "s";
      if (base) {
        var b = document.createElement("img");
        b.src = base.src;
        b.alt = "";
        s.appendChild(b);
      }
      var h = document.createElement("img");
      h.className = "h";
      h.alt = v.label;
      s.appendChild(h);
      stripHeat.push(h);
      var cap = document.createElement("figcaption");
      cap.textContent = v.label;
      fig.appendChild(s);
      fig.appendChild(cap);
      fig.addEventListener("click", function () { setView(k); });
      strip.appendChild(fig);
    });
    if (!base) { stripHeat.forEach(function (img) { img.style.opacity = "1"; }); }
  }

  chips.forEach(function (c) {
    var i = parseInt(c.getAttribute("data-i"), 10);
    c.addEventListener("mouseenter", function () { render(i); });
    c.addEventListener("mouseleave", function () { render(state.token); });
    c.addEventListener("focus", function () { render(i); });
    c.addEventListener("blur", function () { render(state.token); });
    c.addEventListener("click", function () { select(i); });
  });
  radios.forEach(function (r) {
    r.addEventListener("change", function () { setView(viewIndex(r.value)); });
  });
  if (opacity) {
    opacity.addEventListener("input", function () { setOpacity(opacity.value); writeHash(); });
  }
  if (cells) {
    cells.addEventListener("change", function () { body.classList.toggle("cells", cells.checked); writeHash(); });
  }
  if (compare) {
    compare.addEventListener("change", function () { body.classList.toggle("compare", compare.checked); writeHash(); });
  }
  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") { return; }
    if (e.key === "ArrowRight") { select(state.token + 1); if (chips[state.token]) { chips[state.token].focus(); } e.preventDefault(); }
    if (e.key === "ArrowLeft") { select(state.token - 1); if (chips[state.token]) { chips[state.token].focus(); } e.preventDefault(); }
  });

  // state from the URL fragment: #token=3&view=raw&opacity=0.7&compare=1&cells=1
  var params = {};
  (location.hash || "").replace(/^#/, "").split("&").forEach(function (kv) {
    if (!kv) { return; }
    var p = kv.split("=");
    params[decodeURIComponent(p[0])] = decodeURIComponent(p.slice(1).join("="));
  });
  if (params.opacity !== undefined) { setOpacity(params.opacity); } else if (opacity) { setOpacity(opacity.value); }
  if (cells && params.cells === "1") { cells.checked = true; body.classList.add("cells"); }
  if (compare && params.compare === "1") { compare.checked = true; body.classList.add("compare"); }
  var vk = params.view !== undefined ? viewIndex(params.view) : 0;
  state.view = vk >= 0 ? vk : 0;
  setView(state.view);
  var t = params.token !== undefined ? parseInt(params.token, 10) : 0;
  select(isNaN(t) ? 0 : t);
  body.setAttribute("data-ready", "1");
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="mmx-fast @@version@@">
<title>@@title@@</title>
<script>
window.addEventListener("error", function (e) {
  var msg = (e && e.message) || "error";
  document.title = "ERROR: " + msg;
  if (document.body) { document.body.setAttribute("data-error", msg); }
});
</script>
<style>@@css@@</style>
<style>.stage, .strip .s { aspect-ratio: @@aspect@@; }@@boxcss@@</style>
</head>
<body data-tokens="@@n_tokens@@">
<div class="wrap">
<header>
<h1>@@title@@</h1>
<p class="sub">@@subtitle@@</p>
</header>
@@note@@
<main class="layout">
<section class="viewer">
<div class="stage" id="stage">@@stage@@</div>
<div class="legend"><span>0</span><div class="bar" title="colour scale of the maps"></div><span>1</span></div>
<div class="caption" id="caption" aria-live="polite"></div>
<div class="strip" id="strip"></div>
</section>
<section class="side card">
<h2>Prompt</h2>
<p class="prompt">@@prompt@@</p>
<h2>Answer <small>&mdash; hover to preview, click to keep, &larr; &rarr; to step</small></h2>
<div class="chips" id="chips">@@chips@@</div>
<h2>Display</h2>
<div class="controls">
<label>Heatmap opacity <input type="range" id="opacity" min="0" max="1" step="0.05" value="0.5">
<output id="opacity-value">50%</output></label>
<fieldset class="views"><legend>Map shown</legend>@@radios@@</fieldset>
@@compare@@
<label class="toggle"><input type="checkbox" id="cells"> show the visual-token cells (no smoothing)</label>
</div>
</section>
</main>
<section class="details">
<div class="card"><h2>Configuration</h2>@@config@@</div>
<div class="card"><h2>Run</h2>@@run@@<h2>Timings</h2>@@timings@@</div>
</section>
<footer>Generated by mmx-fast @@version@@. Self-contained: images and scripts are embedded, the page makes no
network request. The final maps are shown as returned (values in [0, 1]); the other maps are each scaled to
their own maximum.</footer>
</div>
<script type="application/json" id="mmx-data">@@data@@</script>
<script>@@js@@</script>
</body>
</html>
"""
