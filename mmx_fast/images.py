"""Turning whatever the caller passes as an image into an RGB PIL image, with clear errors.

Accepted: a PIL image, a numpy array (H x W x 3 uint8, H x W x 4, H x W grayscale, or 16-bit), a torch tensor
(C x H x W or H x W x C with C in 1, 3, 4, or H x W; uint8, or float in [0, 1]), a path (str or os.PathLike),
or a URL string: ``http://`` / ``https://`` (fetched with the standard library: at most ``max_bytes``; each
network wait at most ``timeout`` s and the fetch abandoned once ``timeout`` s have passed; redirects only to
http(s)) or ``data:`` (base64 or percent-encoded, an image media
type). Modes are converted to RGB: RGBA / LA / PA are composited on white (a transparent pixel shows as white,
not as its hidden colour), L / I;16 / I / F are scaled to 8 bits, P and CMYK go through PIL's converters.

A 3-D tensor whose first AND last dimensions are both in (1, 3, 4) (a 3 x W x 3 image, say) is read as
C x H x W, torch's convention.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import re
import stat
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Bounds on every image, checked on the file's header before anything is decoded or resized (README "Limits and
# guarantees"). A fixed-size family (LLaVA's CLIP) resizes the shortest side to its input size first, so the
# work it does grows with the aspect ratio; Qwen2-VL's own smart_resize refuses ratios above 200.
MAX_PIXELS = 100_000_000
MAX_ASPECT = 50

#: Largest image a URL may deliver (bytes, after base64 decoding for ``data:`` URLs).
MAX_URL_BYTES = 32 * 1024 * 1024
#: Seconds a ``http(s)://`` fetch may take in all (connect, redirects, every read).
URL_TIMEOUT_S = 30.0
_URL_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")
_READ_CHUNK = 1 << 16


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


def _short(url: str, n: int = 80) -> str:
    return url if len(url) <= n else url[: n - 3] + "..."


def _decode(source, what: str) -> Image.Image:
    """Open ``source`` (a file object), check its header's size (``check_size``), then decode it upright;
    errors name ``what``."""
    try:
        with _quiet_pil(), Image.open(source) as im:
            check_size(*im.size, what=what)
            im.load()
            return _upright(im)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{what} is too large to decode safely: {e}") from e
    except UnidentifiedImageError as e:
        raise ValueError(f"{what} is not a readable image (PIL cannot identify it)") from e
    except (OSError, SyntaxError) as e:
        raise ValueError(f"{what} is corrupt or truncated: {e}") from e


def decode_image_bytes(data: bytes, what: str = "image") -> Image.Image:
    """Encoded image bytes (PNG, JPEG, ...) -> RGB PIL image, upright by its EXIF orientation: the one decoding
    path of the library, the CLI and ``mmx-fast serve``; errors (ValueError) name ``what``."""
    return to_rgb(_decode(io.BytesIO(data), what))


def _is_url(text: str) -> bool:
    m = _URL_SCHEME.match(text)
    return bool(m) and (m.group(1).lower() in ("http", "https", "data") or text[m.end() :].startswith("//"))


def _data_url_bytes(url: str, max_bytes: int) -> bytes:
    what = f"image data URL {_short(url)!r}"
    header, comma, payload = url[5:].partition(",")
    if not comma:
        raise ValueError(f"{what} has no ',' before its data; expected data:[<media type>][;base64],<data>")
    params = [p.strip().lower() for p in header.split(";")]
    media = params[0] if params and "=" not in params[0] else ""
    if media and not media.startswith("image/"):
        raise ValueError(f"{what} has media type {media!r}; expected an image/* type (or none)")
    if "base64" in params[1:] or params[0] == "base64":
        compact = "".join(payload.split())
        if len(compact) * 3 // 4 > max_bytes + 2:
            raise ValueError(
                f"{what} holds about {len(compact) * 3 // 4} bytes, over the limit of {max_bytes} bytes (max_bytes)"
            )
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError) as e:
            raise ValueError(f"{what} is not valid base64: {e}") from e
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise ValueError(f"{what} holds {len(data)} bytes, over the limit of {max_bytes} bytes (max_bytes)")
    return data


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(
                f"image URL {_short(req.full_url)!r} redirects to {_short(newurl)!r}; only http(s) redirects are followed"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _http_bytes(url: str, max_bytes: int, timeout: float) -> bytes:
    what = f"image URL {_short(url, 200)!r}"
    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    request = urllib.request.Request(url, headers={"User-Agent": "mmx-fast", "Accept": "image/*"})
    try:
        with opener.open(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise ValueError(
                    f"{what} is {int(length)} bytes (Content-Length), over the limit of {max_bytes} bytes (max_bytes)"
                )
            read = getattr(resp, "read1", resp.read)
            chunks, size = [], 0
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError
                chunk = read(min(_READ_CHUNK, max_bytes + 1 - size))  # returns what has arrived
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"{what} sent more than the limit of {max_bytes} bytes (max_bytes)")
    except urllib.error.HTTPError as e:
        raise ValueError(f"{what} could not be fetched: HTTP {e.code} {e.reason}") from None
    except (TimeoutError, OSError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise ValueError(f"{what} timed out: no complete image within {timeout:g} s (timeout)") from None
        raise ValueError(f"{what} could not be fetched: {reason}") from None
    return b"".join(chunks)


def _from_tensor(t) -> Image.Image:
    """A torch tensor (CHW / HWC / HW; uint8, or float in [0, 1]) -> PIL image."""
    import torch

    shape = tuple(t.shape)
    if t.ndim == 3:
        if shape[0] in (1, 3, 4):
            t = t.permute(1, 2, 0)
        elif shape[-1] not in (1, 3, 4):
            raise ValueError(
                f"image tensor of shape {list(shape)} is not supported; expected C x H x W or H x W x C with C in 1, 3, 4"
            )
    elif t.ndim != 2:
        hint = " (a batch: pass one image, e.g. tensor[0])" if t.ndim == 4 else ""
        raise ValueError(
            f"image tensor of shape {list(shape)} is not supported{hint}; expected C x H x W, H x W x C or H x W"
        )
    if t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"image tensor of shape {list(shape)} is empty; expected at least 1x1 pixels")
    t = t.detach().to("cpu")
    if t.dtype == torch.uint8:
        arr = t.contiguous().numpy()
    elif t.is_floating_point():
        t = t.to(torch.float64)
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(
                f"image tensor contains {bad} NaN or Inf values; expected finite values in [0, 1]"
            )
        lo, hi = float(t.min()), float(t.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float image tensor has values in [{lo:g}, {hi:g}]; expected [0, 1] (or pass uint8 in [0, 255])"
            )
        arr = (t * 255.0).round().to(torch.uint8).contiguous().numpy()
    else:
        raise TypeError(
            f"image tensor dtype {t.dtype} is not supported; expected torch.uint8, or a float dtype in [0, 1]"
        )
    return _from_array(arr)


def load_image(image, *, max_bytes: int = MAX_URL_BYTES, timeout: float = URL_TIMEOUT_S) -> Image.Image:
    """Return an RGB PIL image, or raise TypeError / ValueError naming what was wrong. ``max_bytes`` and
    ``timeout`` bound what an ``http(s)://`` or ``data:`` URL may cost (see the module docstring)."""
    torch = sys.modules.get("torch")
    if isinstance(image, str) and _is_url(image):
        if not (isinstance(max_bytes, int) and max_bytes >= 1) or not (
            isinstance(timeout, (int, float)) and timeout > 0
        ):
            raise ValueError(
                f"max_bytes={max_bytes!r} and timeout={timeout!r}: expected an int >= 1 and a number > 0"
            )
        scheme = image.split(":", 1)[0].lower()
        if scheme == "data":
            data = _data_url_bytes(image, max_bytes)
        elif scheme in ("http", "https"):
            data = _http_bytes(image, max_bytes, timeout)
        else:
            raise ValueError(
                f"image URL {_short(image)!r} has scheme {scheme!r}; expected http, https, data, or a file path"
            )
        what = (
            f"image data URL {_short(image)!r}" if scheme == "data" else f"image URL {_short(image, 200)!r}"
        )
        image = _decode(io.BytesIO(data), what)
    elif isinstance(image, (str, os.PathLike)):
        image = open_image_file(image)
    elif isinstance(image, np.ndarray):
        image = _from_array(image)
    elif torch is not None and isinstance(image, torch.Tensor):
        image = _from_tensor(image)
    elif not isinstance(image, Image.Image):
        raise TypeError(
            f"image of type {type(image).__name__} is not supported; expected a PIL.Image, a numpy array, a "
            "torch tensor, a path or an http(s):// / data: URL"
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
