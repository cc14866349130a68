"""Every file mmx_fast writes goes through here: atomic writes, the colour map, heatmaps / overlays and the one
way an ``Explanation`` is saved (``Explanation.save`` and the CLI's result folders both call :func:`save`).

Atomic: each file is written to a hidden temp file in the target folder, flushed to disk and renamed over the
target (``os.replace``), so a reader never sees a partial file; a folder of files is built in a hidden temp
folder and renamed into place (:func:`replace_dir`). Files get the permissions a plain ``open()`` would give
(``chmod_like_open``), not the private 0600 of a temp file.

This module imports nothing else from mmx_fast (``explanation`` and ``report`` import it, never the reverse).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# an ``mmx_fast.Explanation``; not imported, not even for type checking, so that ``explanation`` -> ``io``
# stays the only direction between the two modules
Explanation = Any

MAPS_FILE = "maps.npz"
JSON_FILE = "explanation.json"


def overlay_name(i: int, frame: int | None = None) -> str:
    """File name of token i's overlay PNG in a saved folder (a video: one per temporal patch ``frame``)."""
    return f"token_{i:03d}.png" if frame is None else f"token_{i:03d}_t{frame:03d}.png"


# ---------------------------------------------------------------------------------------------------
# atomic writes
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result file gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as indented UTF-8 JSON with a final newline, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``arrays`` as a compressed ``.npz`` file's bytes."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------
# result folders: the marker, the one rule for what may be replaced, temp folders of dead runs
RESULT_MARKER = ".mmx-fast-result.json"
RESULT_MARKER_VERSION = 1
TEMP_PREFIX = ".mmx-fast-tmp"
OLD_PREFIX = ".mmx-fast-old"
_MARKER_BYTES = 1 << 20  # a marker is a few hundred bytes; anything larger is not ours


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def make_temp_dir(parent: str | os.PathLike, prefix: str = TEMP_PREFIX) -> Path:
    """A new private hidden folder ``<prefix>.<host>.<pid>.<random>`` in ``parent``: the name says which process
    wrote it, so a later run can tell a leftover of a dead run from a folder still being written."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}.{_host()}.{os.getpid()}.", dir=parent))


def _write_marker(folder: Path, names: list[str]) -> None:
    from .version import __version__

    info = {"mmx_fast_result": RESULT_MARKER_VERSION, "version": __version__, "files": names}
    atomic_write_json(folder / RESULT_MARKER, info)


def write_result_marker(folder: str | os.PathLike) -> None:
    """Mark ``folder`` as an mmx-fast result: ``.mmx-fast-result.json`` listing every file it holds (write it
    last, once every other file is in place)."""
    folder = Path(folder)
    _write_marker(folder, sorted(p.name for p in folder.iterdir() if p.name != RESULT_MARKER))


def marked_files(folder: str | os.PathLike) -> set[str]:
    """The file names the marker in ``folder`` lists (files mmx-fast wrote there); empty without a valid one."""
    marker = Path(folder) / RESULT_MARKER
    try:
        st = os.lstat(marker)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MARKER_BYTES:
            return set()
        info = json.loads(marker.read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return set()
    files = info.get("files") if isinstance(info, dict) else None
    if info.get("mmx_fast_result") != RESULT_MARKER_VERSION or not isinstance(files, list):
        return set()
    return {f for f in files if isinstance(f, str) and f and "/" not in f and f != RESULT_MARKER}


def is_replaceable_result(path: str | os.PathLike) -> bool:
    """True only for a folder that is provably an untouched earlier mmx-fast result: a real directory (not a
    symbolic link) holding the marker (a regular file) and otherwise only regular files the marker lists."""
    path = Path(path)
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode) or not os.path.isfile(path / RESULT_MARKER):
            return False
        listed = marked_files(path)
        if not listed:
            return False
        with os.scandir(path) as entries:
            for e in entries:
                if e.name == RESULT_MARKER:
                    continue
                if e.name not in listed or not e.is_file(follow_symlinks=False):
                    return False
    except OSError:
        return False
    return True


def place_dir(tmp: Path, parent: Path, name: str) -> Path:
    """Move the finished folder ``tmp`` to ``parent/name``, or, when that name holds anything but an untouched
    earlier mmx-fast result (:func:`is_replaceable_result`), to the first of ``name-2``, ``name-3``, ... that
    is free or holds such a result. Returns where it went. Nothing else is ever moved or deleted."""
    k = 1
    while True:
        final = parent / (name if k == 1 else f"{name}-{k}")
        k += 1
        if not os.path.lexists(final):
            try:
                os.mkdir(final)  # claim the name; renaming a folder over an empty one replaces it
            except FileExistsError:
                continue
            try:
                os.rename(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rmdir(final)
                raise
            return final
        if is_replaceable_result(final):
            _swap(tmp, final)
            return final


def _swap(tmp: Path, final: Path) -> None:
    """Put ``tmp`` at ``final``, our earlier result, which is removed only after the new one is in place (on
    failure the old one is put back)."""
    old = make_temp_dir(final.parent, OLD_PREFIX)
    os.rmdir(old)
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    with contextlib.suppress(OSError):
        os.chmod(old, 0o700)  # our own earlier result, perhaps made read-only: its files can go
    shutil.rmtree(old, ignore_errors=True)


def replace_dir(tmp: Path, final: Path) -> Path:
    """:func:`place_dir` with ``final`` split into its parent and name."""
    return place_dir(tmp, final.parent, final.name)


_LEFTOVER = re.compile(
    rf"^(?:{re.escape(TEMP_PREFIX)}|{re.escape(OLD_PREFIX)})\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+$"
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_leftovers(parent: str | os.PathLike) -> list[Path]:
    """Remove the temp folders (:func:`make_temp_dir`) that runs on this host left in ``parent`` when they were
    killed: only real directories named ``.mmx-fast-tmp.<host>.<pid>.<random>`` (or ``.mmx-fast-old...``) with
    this host's name, whose process is gone, holding only regular files. Returns what was removed."""
    removed = []
    host = _host()
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for e in entries:
        m = _LEFTOVER.match(e.name)
        if m is None or m["host"] != host or int(m["pid"]) == os.getpid() or _pid_alive(int(m["pid"])):
            continue
        try:
            if not e.is_dir(follow_symlinks=False):
                continue
            with os.scandir(e.path) as inner:
                if not all(f.is_file(follow_symlinks=False) for f in inner):
                    continue
            shutil.rmtree(e.path)
            removed.append(Path(e.path))
        except OSError:
            continue
    return removed


# ---------------------------------------------------------------------------------------------------
# the colour maps (no matplotlib): "jet" (the default, as TAM), "viridis", "gray", "hot"
def jet(x: np.ndarray) -> np.ndarray:
    """The classic jet colour map, [H, W] in [0, 1] -> [H, W, 3] in [0, 1]."""
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return np.stack([r, g, b], -1)


def gray(x: np.ndarray) -> np.ndarray:
    """Black (0) to white (1)."""
    x = np.clip(x, 0, 1)
    return np.stack([x, x, x], -1)


def hot(x: np.ndarray) -> np.ndarray:
    """Black -> red -> yellow -> white: red rises over [0, 1/3], green over [1/3, 2/3], blue over [2/3, 1]."""
    return np.stack([np.clip(3 * x - k, 0, 1) for k in range(3)], -1)


# viridis' colours at 0, 1/4, 1/2, 3/4 and 1 (#440154, #3b528b, #21918c, #5ec962, #fde725); between them the
# colour is interpolated linearly in RGB, so this is a close, perceptually ordered approximation of viridis
# that is exact at the five stops (a full 256-entry table is not needed for heatmaps).
_VIRIDIS_STOPS = (
    np.array(
        [[0x44, 0x01, 0x54], [0x3B, 0x52, 0x8B], [0x21, 0x91, 0x8C], [0x5E, 0xC9, 0x62], [0xFD, 0xE7, 0x25]],
        dtype=np.float64,
    )
    / 255.0
)


def viridis(x: np.ndarray) -> np.ndarray:
    """Dark violet (0) -> blue -> teal -> green -> yellow (1); see ``_VIRIDIS_STOPS``."""
    x = np.clip(np.asarray(x, dtype=np.float64), 0, 1)
    pos = np.linspace(0, 1, len(_VIRIDIS_STOPS))
    return np.stack([np.interp(x, pos, _VIRIDIS_STOPS[:, c]) for c in range(3)], -1)


COLORMAPS = {"jet": jet, "viridis": viridis, "gray": gray, "hot": hot}
PLOT_EXTRA_HINT = "pip install 'mmx-fast[plot]'"


def _matplotlib_colormap(name: str):
    """matplotlib's colour map called ``name`` (case-sensitive, as matplotlib names them); a ValueError naming
    the built-in maps when matplotlib is not installed or has no such map."""
    builtin = ", ".join(COLORMAPS)
    try:
        import matplotlib
    except ImportError:
        raise ValueError(
            f"colormap={name!r} is not one of the built-in colour maps ({builtin}); other names are "
            f"matplotlib's, and matplotlib is not installed ({PLOT_EXTRA_HINT})"
        ) from None
    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(
            f"colormap={name!r} is not allowed; expected one of {builtin} or a matplotlib colormap name "
            "(e.g. magma, turbo, inferno)"
        ) from None


def check_colormap(name: str) -> str:
    """``name`` if it is a colour map: one of the built-in :data:`COLORMAPS` (no matplotlib needed, the same
    colours everywhere) or any matplotlib colormap name; a ValueError naming what is allowed otherwise."""
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"colormap={name!r} is not allowed; expected one of {', '.join(COLORMAPS)} or a matplotlib "
            "colormap name"
        )
    if name not in COLORMAPS:
        _matplotlib_colormap(name)
    return name


def colorize(x: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """``x`` [H, W] in [0, 1] -> [H, W, 3] in [0, 1] through the colour map named ``colormap`` (a built-in
    one, or matplotlib's of that name)."""
    check_colormap(colormap)
    if colormap in COLORMAPS:
        return COLORMAPS[colormap](np.asarray(x))
    cmap = _matplotlib_colormap(colormap)
    return np.asarray(cmap(np.clip(np.asarray(x, dtype=np.float64), 0, 1)), dtype=np.float64)[..., :3]


def colormap_uint8(x: np.ndarray, colormap: str = "jet", *, rounding: str = "floor") -> np.ndarray:
    """``colorize(x, colormap)`` as uint8 RGB. ``rounding="floor"`` truncates (``Explanation.heatmap`` and the
    overlay PNGs), ``"round"`` rounds to nearest (the HTML report's heatmaps)."""
    if rounding not in ("floor", "round"):
        raise ValueError(f"rounding={rounding!r} is not allowed; expected 'floor' or 'round'")
    rgb = colorize(x, colormap) * 255
    if rounding == "round":
        rgb = rgb.round()
    return rgb.astype(np.uint8)


def jet_uint8(x: np.ndarray, *, rounding: str = "floor") -> np.ndarray:
    """``colormap_uint8(x, "jet", rounding=rounding)``."""
    return colormap_uint8(x, "jet", rounding=rounding)


# ---------------------------------------------------------------------------------------------------
# images of one explanation
def token_index(exp: Explanation, i: int) -> int:
    """``i`` as an index into the answer's tokens (negative counts from the end); a clear error otherwise."""
    if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
        raise TypeError(f"token index {i!r} must be an integer")
    t = len(exp.answer_ids)
    if not -t <= i < t:
        raise IndexError(f"token index {i} is out of range; this answer has {t} tokens (valid: 0..{t - 1})")
    return int(i) % t


def map_uint8(exp: Explanation, i: int) -> np.ndarray:
    """Map i as TAM stores it, ``(map * 255).astype(uint8)`` (truncation); the 1e-4 nudge makes maps that are
    already k / 255 (the ``tam`` preset) come back as exactly k despite float32 rounding."""
    i = token_index(exp, i)
    return np.floor(exp.maps[i].numpy().astype(np.float64) * 255 + 1e-4).clip(0, 255).astype(np.uint8)


def frame_index(exp: Explanation, frame: int | None) -> int | None:
    """For a video explanation (maps [T, t, Hc, Wc]) the temporal patch ``frame`` in 0..t-1 (required); for an
    image None (a frame is an error)."""
    if getattr(exp, "frames", None) is None:
        if frame is not None:
            raise ValueError(f"frame={frame!r} is only allowed for a video explanation; this one is an image")
        return None
    t = int(exp.maps.shape[1])
    if frame is None:
        raise ValueError(f"this is a video explanation with {t} temporal patches: pass frame= in 0..{t - 1}")
    if not isinstance(frame, (int, np.integer)) or isinstance(frame, bool) or not 0 <= frame < t:
        raise IndexError(f"frame={frame!r} is out of range; expected 0..{t - 1}")
    return int(frame)


# Bound on what one ``upsampled`` call may allocate (float32 elements: 1 GiB).
MAX_UPSAMPLED_ELEMENTS = 1 << 28
# The colour heatmaps give the part of the image the model did not see (outside ``view_box``).
OUTSIDE_GRAY = (128, 128, 128)


def image_size(exp: Explanation) -> tuple[int, int]:
    """(W, H) of the explained image (a video: of its frames); the grid's (Wc, Hc) without an image."""
    if exp.image is not None:
        return tuple(exp.image.size)
    hc, wc = exp.grid
    return int(wc), int(hc)


def check_size(size: Any) -> tuple[int, int]:
    """``size`` as a (W, H) pair of positive integers; a ValueError naming the value otherwise."""
    ok = (
        isinstance(size, (tuple, list))
        and len(size) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in size)
    )
    if not ok:
        raise ValueError(f"size={size!r} is not allowed; expected None or (width, height), positive integers")
    return int(size[0]), int(size[1])


def box_at(
    view_box: tuple[float, float, float, float] | None, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """``view_box`` (fractions of the image) in pixels of an image of ``size`` (W, H): (left, top, right,
    bottom), half-open, rounded to the nearest pixel as the eval harness places maps (``eval.metrics.box_in_mask``)
    and never empty; the whole image when None."""
    w, h = size
    x0, y0, x1, y1 = view_box or (0.0, 0.0, 1.0, 1.0)
    left, top = min(round(x0 * w), w - 1), min(round(y0 * h), h - 1)
    return left, top, max(left + 1, min(w, round(x1 * w))), max(top + 1, min(h, round(y1 * h)))


def resize_maps(maps: Any, size_hw: tuple[int, int]) -> np.ndarray:
    """Float maps [..., h, w] resized to [..., H, W] with the eval harness's rule (``eval.metrics.resize_bilinear_u8``,
    OpenCV's ``INTER_LINEAR``) in float: bilinear, pixel-centre sampling ``(d + 0.5) * h / H - 0.5``, edges
    clamped, no antialiasing (``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``)."""
    import torch

    m = torch.as_tensor(np.asarray(maps, dtype=np.float32))
    lead, (h, w) = m.shape[:-2], m.shape[-2:]
    if (h, w) == tuple(size_hw):
        return m.numpy().copy()
    flat = m.reshape(-1, 1, h, w)
    if flat.shape[0] == 0:
        return np.zeros((*lead, *size_hw), dtype=np.float32)
    out = torch.nn.functional.interpolate(flat, size=tuple(size_hw), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *size_hw).numpy()


def upsampled(exp: Explanation, i: int | None = None, size: tuple[int, int] | None = None) -> np.ndarray:
    """The maps at the image's size: float32 [T, H, W] (``i`` None) or [H, W] (token ``i``); a video
    [T, t, H, W] / [t, H, W] at its frames' size. ``size`` (W, H) picks another size (default: the image's;
    the grid's when the explanation carries no image). Each map is resized onto the part of the image the
    model saw (``view_box``; the whole image for most families) by :func:`resize_maps`, the eval harness's
    rule; pixels outside that part (LLaVA's centre crop leaves the sides of a wide photo) are NaN: no value,
    not 0. Values inside stay in [0, 1]."""
    maps = exp.maps if i is None else exp.maps[token_index(exp, i)]
    w, h = image_size(exp) if size is None else check_size(size)
    lead = tuple(maps.shape[:-2])
    n = int(np.prod(lead, dtype=np.int64)) * w * h
    if n > MAX_UPSAMPLED_ELEMENTS:
        raise ValueError(
            f"upsampled maps of shape {(*lead, h, w)} would hold {n} values, more than "
            f"{MAX_UPSAMPLED_ELEMENTS} (mmx_fast.io.MAX_UPSAMPLED_ELEMENTS); ask for one token (i=) or a smaller size"
        )
    left, top, right, bottom = box_at(exp.view_box if exp.image is not None else None, (w, h))
    out = np.full((*lead, h, w), np.nan, dtype=np.float32)
    out[..., top:bottom, left:right] = resize_maps(maps.numpy(), (bottom - top, right - left))
    return out


def _map_of(exp: Explanation, i: int, frame: int | None) -> np.ndarray:
    i = token_index(exp, i)
    k = frame_index(exp, frame)
    return exp.maps[i] if k is None else exp.maps[i, k]


def heat_rgb(u: np.ndarray, colormap: str) -> np.ndarray:
    """An upsampled map [H, W] (NaN outside what the model saw) as uint8 RGB: ``colormap`` inside, mid grey
    (:data:`OUTSIDE_GRAY`) outside."""
    nan = np.isnan(u)
    rgb = colormap_uint8(np.nan_to_num(u, nan=0.0).clip(0, 1), colormap)
    rgb[nan] = OUTSIDE_GRAY
    return rgb


def heatmap(
    exp: Explanation,
    i: int,
    size: tuple[int, int] | None = None,
    colormap: str = "jet",
    frame: int | None = None,
) -> Image.Image:
    """Map i as an RGB heatmap at the image's size, or ``size`` (W, H) if given (the grid's size without an
    image): :func:`upsampled` coloured with ``colormap`` (a built-in name or any matplotlib one); the part of
    the image the model did not see is grey. A video: temporal patch ``frame``."""
    check_colormap(colormap)
    m = _map_of(exp, i, frame)
    view = _Single(exp, m)
    return Image.fromarray(heat_rgb(upsampled(view, None, size)[0], colormap), mode="RGB")


class _Single:
    """One map [Hc, Wc] seen as a one-token explanation (``upsampled`` of a chosen frame)."""

    def __init__(self, exp: Explanation, m: Any) -> None:
        self.maps = m[None]
        self.image, self.grid, self.view_box = exp.image, exp.grid, exp.view_box
        self.answer_ids = [0]


def box_pixels(exp: Explanation) -> tuple[int, int, int, int]:
    """``exp.view_box`` in pixels of the image (left, top, right, bottom); the whole image when None."""
    return box_at(exp.view_box, exp.image.size)


def token_label(exp: Explanation, i: int) -> str:
    """``token i: 'text'`` as the overlays and plots title a map."""
    i = token_index(exp, i)
    return f"token {i}: {exp.answer_tokens[i]!r}"


def overlay(
    exp: Explanation,
    i: int,
    alpha: float = 0.5,
    colormap: str = "jet",
    frame: int | None = None,
    *,
    outline: bool = True,
    label: bool | str = False,
    colorbar: bool = False,
) -> Image.Image:
    """Map i over the image, at the image's size, on the part of the image the model saw (``view_box``;
    outside it the image is left as it is), coloured with ``colormap``. A video: map [i, frame] over the first
    frame of that pair.

    outline:  when the model saw only part of the image, a white line just inside that part's border.
    label:    True writes ``token i: 'text'`` in the top-left corner; a str writes that text.
    colorbar: a colour bar (0 at the bottom, 1 at the top) appended on the right: the image gets wider."""
    check_colormap(colormap)
    if exp.image is None:
        raise ValueError("this Explanation carries no image; pass the image to explain() to get overlays")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha} is not allowed; expected a number in [0, 1]")
    k = frame_index(exp, frame)
    base = (exp.image if k is None else exp.frames[min(2 * k, len(exp.frames) - 1)]).convert("RGB")
    m = _map_of(exp, i, k)
    u = upsampled(_Single(exp, m), None, base.size)[0]
    inside = ~np.isnan(u)
    heat = colormap_uint8(np.nan_to_num(u, nan=0.0).clip(0, 1), colormap).astype(np.float64)
    px = np.asarray(base).astype(np.float64)
    blend = np.floor(px * (1 - alpha) + heat * alpha + 0.5).clip(0, 255)
    out_px = np.where(inside[..., None], blend, px).astype(np.uint8)
    out = Image.fromarray(out_px, mode="RGB")
    from PIL import ImageDraw

    if outline and exp.view_box is not None:
        left, top, right, bottom = box_at(exp.view_box, base.size)
        width = max(1, round(min(base.size) / 150))
        ImageDraw.Draw(out).rectangle(
            (left, top, right - 1, bottom - 1), outline=(255, 255, 255), width=width
        )
    if label:
        text = token_label(exp, i) if label is True else str(label)
        _draw_label(out, text)
    if colorbar:
        out = _with_colorbar(out, colormap)
    return out


def _draw_label(img: Image.Image, text: str) -> None:
    """``text`` in white on a dark box in the top-left corner of ``img`` (in place)."""
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    text = text if len(text) <= 60 else text[:59] + "\u2026"
    x0, y0, x1, y1 = draw.textbbox((3, 2), text, font=font)
    draw.rectangle((0, 0, x1 + 3, y1 + 3), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255), font=font)


def _with_colorbar(img: Image.Image, colormap: str) -> Image.Image:
    """``img`` with a vertical colour bar on its right (1 at the top, 0 at the bottom, labelled)."""
    from PIL import ImageDraw

    w, h = img.size
    bar_w = max(8, w // 25)
    pad = max(4, bar_w // 2)
    text_w = 24
    out = Image.new("RGB", (w + pad + bar_w + text_w, h), (255, 255, 255))
    out.paste(img, (0, 0))
    ramp = np.linspace(1.0, 0.0, h)[:, None].repeat(bar_w, 1)
    out.paste(Image.fromarray(colormap_uint8(ramp, colormap), mode="RGB"), (w + pad, 0))
    draw = ImageDraw.Draw(out)
    draw.text((w + pad + bar_w + 3, 0), "1", fill=(0, 0, 0))
    draw.text((w + pad + bar_w + 3, max(0, h - 12)), "0", fill=(0, 0, 0))
    return out


# ---------------------------------------------------------------------------------------------------
# saving
def maps_arrays(exp: Explanation) -> dict[str, np.ndarray]:
    """What ``maps.npz`` holds (a video: every map array has the time axis after T, e.g. [T, t, Hc, Wc]):
    ``maps`` float32 [T, Hc, Wc], ``grid`` int64 [2], ``answer_ids`` int64 [T],
    and when the explanation carries them ``raw_maps`` float32 [T, Hc, Wc] and ``scale_<s>`` float32
    [T, h_s, w_s] (one per MSEA scale, e.g. ``scale_0.5``)."""
    arrays = {
        "maps": exp.maps.numpy().astype(np.float32),
        "grid": np.asarray(exp.grid, dtype=np.int64),
        "answer_ids": np.asarray(exp.answer_ids, dtype=np.int64),
    }
    if exp.raw_maps is not None:
        arrays["raw_maps"] = exp.raw_maps.numpy().astype(np.float32)
    for s, m in sorted((exp.scale_maps or {}).items()):
        arrays[f"scale_{float(s)}"] = m.numpy().astype(np.float32)
    return arrays


def save(
    exp: Explanation,
    out_dir: str | os.PathLike,
    overlays: bool = True,
    *,
    info: dict[str, Any] | None = None,
    colormap: str = "jet",
    annotate: bool = False,
) -> Path:
    """Write ``maps.npz`` (:func:`maps_arrays`), ``explanation.json`` (``info``, by default
    ``exp.to_dict()``) and, with ``overlays`` and an image, one PNG overlay per token (``token_000.png``...),
    each file atomically; the folder is created if needed. Overlays are coloured with ``colormap`` (any name
    :func:`check_colormap` accepts); ``annotate`` writes each token's label on its overlay and appends a colour
    bar (:func:`overlay`). Returns the folder.

    Never overwrites a file mmx-fast did not write: the folder's marker (``.mmx-fast-result.json``) lists what
    it wrote; any other existing file of one of those names raises FileExistsError before anything is written.
    The marker is updated BEFORE the files are written (so a save that fails midway, e.g. on a full disk, can
    be retried into the same folder) and, once they are all in place, files of an earlier save that this one
    did not write (a longer answer's ``token_009.png``) are removed and the marker lists exactly this save."""
    check_colormap(colormap)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_overlays = len(exp) if overlays and exp.image is not None else 0
    video = getattr(exp, "frames", None) is not None
    # (token, frame) per overlay: a video has one per temporal patch (``frame`` k), an image one per token
    if video:
        pngs = [(i, k) for i in range(n_overlays) for k in range(int(exp.maps.shape[1]))]
    else:
        pngs = [(i, None) for i in range(n_overlays)]
    names = [MAPS_FILE, JSON_FILE] + [overlay_name(i, k) for i, k in pngs]
    ours = marked_files(out)
    clash = [n for n in names if os.path.lexists(out / n) and n not in ours]
    if clash:
        more = f" (and {len(clash) - 1} more)" if len(clash) > 1 else ""
        raise FileExistsError(
            f"{str(out)!r} already holds {clash[0]!r}{more}, which mmx-fast did not write there; nothing was "
            "written (save into a new or empty folder, or one mmx-fast wrote)"
        )
    _write_marker(out, sorted(ours | set(names)))  # claimed first: a failure below leaves them retryable
    maps = npz_bytes(maps_arrays(exp))
    atomic_write_bytes(out / MAPS_FILE, maps)
    del maps
    atomic_write_json(out / JSON_FILE, exp.to_dict() if info is None else info)
    for i, k in pngs:
        atomic_write_bytes(
            out / overlay_name(i, k),
            png_bytes(overlay(exp, i, colormap=colormap, frame=k, label=annotate, colorbar=annotate)),
        )
    for name in sorted(ours - set(names)):  # an earlier save's files this one did not write
        path = out / name
        if _SAVED_NAME.match(name) and stat.S_ISREG(_lstat_mode(path)):
            os.unlink(path)
    _write_marker(out, sorted(names))
    return out


# the files ``save`` writes; only these are ever removed as an earlier save's leftovers (a marker edited by
# hand cannot make us delete anything else)
_SAVED_NAME = re.compile(r"^(?:maps\.npz|explanation\.json|token_\d{3,}(?:_t\d{3,})?\.png)$")


def _lstat_mode(path: Path) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0
