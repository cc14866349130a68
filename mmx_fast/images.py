"""Turning whatever the caller passes as an image into an RGB PIL image, with clear errors.

Accepted: a PIL image, a numpy array (H x W x 3 uint8, H x W x 4, H x W grayscale, or 16-bit), a path
(str or os.PathLike). Modes are converted to RGB: RGBA / LA / PA are composited on white (a transparent
pixel shows as white, not as its hidden colour), L / I;16 / I / F are scaled to 8 bits, P and CMYK go
through PIL's converters.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Bounds on every image, checked on the file's header before anything is decoded or resized (README "Limits and
# guarantees"). A fixed-size family (LLaVA's CLIP) resizes the shortest side to its input size first, so the
# work it does grows with the aspect ratio; Qwen2-VL's own smart_resize refuses ratios above 200.
MAX_PIXELS = 100_000_000
MAX_ASPECT = 50


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.integer):
        hi = 65535 if arr.max(initial=0) > 255 else 255
        return np.clip(arr.astype(np.float64) * (255.0 / hi), 0, 255).round().astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError("image array contains NaN or Inf values; expected finite pixel values")
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    raise TypeError(f"image array dtype {arr.dtype} is not supported; expected uint8, uint16, bool or float")


def _from_array(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise ValueError(
            f"image array of shape {arr.shape} is not supported; expected H x W, H x W x 3 or H x W x 4"
        )
    arr = _to_uint8(np.ascontiguousarray(arr))
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[arr.ndim if arr.ndim == 2 else arr.shape[-1]]
    return Image.fromarray(arr, mode=mode)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (alpha composited on white; 16/32-bit grayscale rescaled to 8 bits)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _from_array(np.asarray(img)).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(image) -> Image.Image:
    """Return an RGB PIL image, or raise TypeError / ValueError naming what was wrong."""
    if isinstance(image, (str, os.PathLike)):
        image = open_image_file(image)
    elif isinstance(image, np.ndarray):
        image = _from_array(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(
            f"image of type {type(image).__name__} is not supported; expected a PIL.Image, a numpy array or a path"
        )
    check_size(image.width, image.height)
    return to_rgb(image)


# ---------------------------------------------------------------------------------------------------
# bounds and files (the header is read and checked before any pixel is decoded)
def check_size(width: int, height: int, what: str = "image") -> None:
    """Refuse an empty image, one with more than ``MAX_PIXELS`` pixels or an aspect ratio (longer side over
    shorter side) above ``MAX_ASPECT``; ``what`` names the image in the message."""
    if width < 1 or height < 1:
        raise ValueError(f"{what} of size {width}x{height} is empty; expected at least 1x1 pixels")
    if width * height > MAX_PIXELS:
        raise ValueError(
            f"{what} of size {width}x{height} has {width * height} pixels, above the limit of {MAX_PIXELS} "
            "(mmx_fast.images.MAX_PIXELS); downscale it"
        )
    aspect = max(width, height) / min(width, height)
    if aspect > MAX_ASPECT:
        raise ValueError(
            f"{what} of size {width}x{height} has aspect ratio {_ratio(aspect)}:1 (longer side / shorter side), "
            f"above the limit of {MAX_ASPECT}:1 (mmx_fast.images.MAX_ASPECT); crop or pad it"
        )


def check_scaled_size(width: int, height: int, scales, what: str = "image") -> None:
    """An MSEA scale above 1 enlarges the image before the processor resizes it: refuse a scale at which the
    enlarged image would exceed ``MAX_PIXELS`` (checked before any resize)."""
    for s in sorted({float(x) for x in scales}, reverse=True):
        w, h = max(1, round(width * s)), max(1, round(height * s))
        if s > 1 and w * h > MAX_PIXELS:
            raise ValueError(
                f"{what} of size {width}x{height} at MSEA scale {s:g} would be {w}x{h} = {w * h} pixels, above the "
                f"limit of {MAX_PIXELS} (mmx_fast.images.MAX_PIXELS); use smaller scales or a smaller image"
            )


def _ratio(x: float) -> str:
    """60000.0 -> '60000', 50.5 -> '50.5' (never exponent notation)."""
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _regular_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ValueError(f"image path {str(path)!r} does not exist") from None
    except OSError as e:
        raise ValueError(f"image path {str(path)!r} cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"image path {str(path)!r} is a directory; expected an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(
            f"image path {str(path)!r} is not a regular file (a pipe, device or socket); expected an image file"
        )
    return path


@contextlib.contextmanager
def _quiet_pil():
    """PIL's warnings that need no reader: the decompression-bomb warning (our own bound applies) and corrupt
    EXIF data (ignored, as viewers do)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.filterwarnings("ignore", message="Corrupt EXIF", category=UserWarning)
        yield


def check_image_file(path: str | os.PathLike, decode: bool = False) -> tuple[int, int]:
    """(width, height) of the image file at ``path`` after checking it is a regular file PIL identifies and
    that its header's size is within ``check_size``'s bounds; only the header is read unless ``decode``, which
    also decodes the first frame (to find truncated or corrupt data) and drops it. ValueError otherwise."""
    path = _regular_file(path)
    name = f"image file {str(path)!r}"
    try:
        with _quiet_pil():
            with Image.open(path) as im:
                size = im.size
                check_size(*size, what=name)
                if decode:
                    im.load()
    except Image.DecompressionBombError as e:
        raise ValueError(f"{name} is too large to decode safely: {e}") from e
    except UnidentifiedImageError as e:
        raise ValueError(f"{name} is not a readable image (PIL cannot identify it)") from e
    except ValueError:
        raise
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{name} is corrupt or truncated: {e}") from e
    return size


def open_image_file(path: str | os.PathLike) -> Image.Image:
    """The first frame of the image file at ``path``, decoded after ``check_image_file`` passed its header,
    turned upright by its EXIF orientation (as a photo viewer shows it); not yet converted to RGB."""
    path = Path(path)
    check_image_file(path)
    try:
        with _quiet_pil():
            with Image.open(path) as im:
                im.load()
                return _upright(im)
    except UnidentifiedImageError as e:  # pragma: no cover - the header was identified a moment ago
        raise ValueError(f"image file {str(path)!r} is not a readable image (PIL cannot identify it)") from e
    except (OSError, SyntaxError) as e:
        raise ValueError(f"image file {str(path)!r} is corrupt or truncated: {e}") from e


def _upright(im: Image.Image) -> Image.Image:
    """A copy of ``im`` turned by its EXIF orientation; EXIF data that is corrupt is ignored (as viewers do),
    silently."""
    try:
        with _quiet_pil():
            return ImageOps.exif_transpose(im)
    except Exception:
        return im.copy()
