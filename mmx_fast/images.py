"""Turning whatever the caller passes as an image into an RGB PIL image, with clear errors.

Accepted: a PIL image, a numpy array (H x W x 3 uint8, H x W x 4, H x W grayscale, or 16-bit), a path
(str or os.PathLike). Modes are converted to RGB: RGBA / LA / PA are composited on white (a transparent
pixel shows as white, not as its hidden colour), L / I;16 / I / F are scaled to 8 bits, P and CMYK go
through PIL's converters.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


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
        path = Path(image)
        if not path.exists():
            raise ValueError(f"image path {str(path)!r} does not exist")
        if path.is_dir():
            raise ValueError(f"image path {str(path)!r} is a directory; expected an image file")
        try:
            with Image.open(path) as im:
                im.load()
                image = im.copy()
        except Image.DecompressionBombError as e:
            raise ValueError(f"image file {str(path)!r} is too large to decode safely: {e}") from e
        except UnidentifiedImageError as e:
            raise ValueError(
                f"image file {str(path)!r} is not a readable image (PIL cannot identify it)"
            ) from e
        except (OSError, SyntaxError) as e:
            raise ValueError(f"image file {str(path)!r} is corrupt or truncated: {e}") from e
    elif isinstance(image, np.ndarray):
        image = _from_array(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(
            f"image of type {type(image).__name__} is not supported; expected a PIL.Image, a numpy array or a path"
        )
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image of size {image.width}x{image.height} is empty; expected at least 1x1 pixels")
    return to_rgb(image)
