"""Every file mmx_fast writes goes through here: atomic writes, the colour map, heatmaps / overlays and the one
way an ``Explanation`` is saved (``Explanation.save`` and the CLI's result folders both call :func:`save`).

Atomic: each file is written to a hidden temp file in the target folder, flushed to disk and renamed over the
target (``os.replace``), so a reader never sees a partial file; a folder of files is built in a hidden temp
folder and renamed into place (:func:`replace_dir`). Files get the permissions a plain ``open()`` would give
(``chmod_like_open``), not the private 0600 of a temp file.

This module imports nothing else from mmx_fast (``explanation`` and ``report`` import it, never the reverse).
"""

from __future__ import annotations

import io
import json
import os
import shutil
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


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` to ``final``, replacing an older result there (which is removed only
    after the new folder is in place; on failure the old one is put back)."""
    if not os.path.lexists(final):
        os.rename(tmp, final)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".mmx-fast-old", dir=final.parent))
    os.rmdir(old)
    os.rename(final, old)
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


# ---------------------------------------------------------------------------------------------------
# the colour map
def jet(x: np.ndarray) -> np.ndarray:
    """The classic jet colour map, [H, W] in [0, 1] -> [H, W, 3] in [0, 1]."""
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return np.stack([r, g, b], -1)


def jet_uint8(x: np.ndarray, *, rounding: str = "floor") -> np.ndarray:
    """``jet(x)`` as uint8 RGB. ``rounding="floor"`` truncates (``Explanation.heatmap`` and the overlay PNGs),
    ``"round"`` rounds to nearest (the HTML report's heatmaps)."""
    rgb = jet(x) * 255
    if rounding == "round":
        rgb = rgb.round()
    elif rounding != "floor":
        raise ValueError(f"rounding={rounding!r} is not allowed; expected 'floor' or 'round'")
    return rgb.astype(np.uint8)


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


def heatmap(
    exp: Explanation, i: int, size: tuple[int, int] | None = None, frame: int | None = None
) -> Image.Image:
    """Map i as an RGB heatmap (jet), resized bilinearly to ``size`` (W, H) if given (a video: of temporal
    patch ``frame``)."""
    i = token_index(exp, i)
    k = frame_index(exp, frame)
    m = exp.maps[i] if k is None else exp.maps[i, k]
    img = Image.fromarray(jet_uint8(m.clamp(0, 1).numpy()), mode="RGB")
    if size is not None:
        img = img.resize(size, Image.BILINEAR)
    return img


def box_pixels(exp: Explanation) -> tuple[int, int, int, int]:
    """``exp.view_box`` in pixels of the image (left, top, right, bottom); the whole image when None."""
    w, h = exp.image.size
    x0, y0, x1, y1 = exp.view_box or (0.0, 0.0, 1.0, 1.0)
    left, top = round(x0 * w), round(y0 * h)
    return left, top, max(left + 1, round(x1 * w)), max(top + 1, round(y1 * h))


def overlay(exp: Explanation, i: int, alpha: float = 0.5, frame: int | None = None) -> Image.Image:
    """Map i over the image, at the image's size, on the part of the image the grid shows (``view_box``;
    outside it the image is left as it is). A video: map [i, frame] over the first frame of that pair."""
    if exp.image is None:
        raise ValueError("this Explanation carries no image; pass the image to explain() to get overlays")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha={alpha} is not allowed; expected a number in [0, 1]")
    k = frame_index(exp, frame)
    base = (exp.image if k is None else exp.frames[min(2 * k, len(exp.frames) - 1)]).convert("RGB")
    left, top, right, bottom = box_pixels(exp)
    heat = heatmap(exp, i, size=(right - left, bottom - top), frame=k)
    out = base.copy()
    out.paste(Image.blend(base.crop((left, top, right, bottom)), heat, alpha), (left, top))
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
) -> Path:
    """Write ``maps.npz`` (:func:`maps_arrays`), ``explanation.json`` (``info``, by default
    ``exp.to_dict()``) and, with ``overlays`` and an image, one PNG overlay per token (``token_000.png``...),
    each file atomically; the folder is created if needed. Returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / MAPS_FILE, npz_bytes(maps_arrays(exp)))
    atomic_write_json(out / JSON_FILE, exp.to_dict() if info is None else info)
    if overlays and exp.image is not None:
        for i in range(len(exp)):
            if getattr(exp, "frames", None) is None:
                atomic_write_bytes(out / overlay_name(i), png_bytes(overlay(exp, i)))
                continue
            for k in range(int(exp.maps.shape[1])):
                atomic_write_bytes(out / overlay_name(i, k), png_bytes(overlay(exp, i, frame=k)))
    return out
