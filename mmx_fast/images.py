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
import http.client
import io
import math
import os
import re
import socket
import stat
import sys
import threading
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
#: Seconds a ``http(s)://`` fetch may take in all (connect, redirects, headers, body: one wall-clock deadline).
URL_TIMEOUT_S = 30.0
#: Largest ``timeout`` accepted (an infinite one would let a dripping server hold the caller forever).
MAX_URL_TIMEOUT_S = 3600.0
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
    check_size(arr.shape[1], arr.shape[0], what=f"image array of shape {arr.shape}")  # before any copy
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


def decode_image(source, what: str = "image") -> Image.Image:
    """THE image decoder of the library, the CLI and the service: ``source`` (bytes or a binary file object)
    is identified, its header's size checked (``check_size``) before any pixel is decoded, then decoded and
    turned upright by its EXIF orientation (as a photo viewer shows it). Not yet converted to RGB (``to_rgb``,
    or ``load_image`` which does both). ValueError naming ``what`` for anything unreadable or too large."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ValueError(f"{what} is empty (0 bytes); expected the bytes of a PNG, JPEG, WebP, ... image")
        source = io.BytesIO(source)
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
    return to_rgb(decode_image(data, what))


def _is_url(text: str) -> bool:
    m = _URL_SCHEME.match(text)
    return bool(m) and (m.group(1).lower() in ("http", "https", "data") or text[m.end() :].startswith("//"))


_DATA_CHUNK = 1 << 20  # characters of a data: URL decoded at a time
_DATA_HEADER_CHARS = 1024  # "data:<media type>;<params>," is short; anything longer is not an image URL


def _data_url_bytes(url: str, max_bytes: int) -> bytes:
    """The bytes of a ``data:`` URL, refused from its encoded length before anything is decoded, then
    decoded in chunks of ``_DATA_CHUNK`` characters (never the whole URL at once, never a copy of it)."""
    what = f"image data URL {_short(url)!r}"
    comma = url.find(",", 5, 5 + _DATA_HEADER_CHARS)
    if comma < 0:
        raise ValueError(
            f"{what} has no ',' in its first {_DATA_HEADER_CHARS} characters; expected "
            "data:[<media type>][;base64],<data>"
        )
    params = [p.strip().lower() for p in url[5:comma].split(";")]
    media = params[0] if params and "=" not in params[0] else ""
    if media and not media.startswith("image/"):
        raise ValueError(f"{what} has media type {media!r}; expected an image/* type (or none)")
    b64 = "base64" in params[1:] or params[0] == "base64"
    encoded = len(url) - comma - 1
    # the shortest encoding of max_bytes bytes is 4/3 of it in base64 (room is left for line breaks) and the
    # bytes themselves when percent-encoded: a longer URL cannot hold an image within the limit
    most = 2 * (4 * (max_bytes // 3 + 1)) + 64 if b64 else 3 * max_bytes
    if encoded > most:
        raise ValueError(
            f"{what} has {encoded} characters of data, more than an image within the limit of {max_bytes} bytes "
            f"(max_bytes) can take ({most}); nothing was decoded"
        )
    out = bytearray()
    carry = ""
    pos = comma + 1
    while pos < len(url):
        chunk = carry + url[pos : pos + _DATA_CHUNK]
        pos += _DATA_CHUNK
        if b64:
            chunk = "".join(chunk.split())
            cut = len(chunk) - len(chunk) % 4 if pos < len(url) else len(chunk)
            try:
                out += base64.b64decode(chunk[:cut], validate=True)
            except (binascii.Error, ValueError) as e:
                raise ValueError(f"{what} is not valid base64: {e}") from None
        else:
            tail = chunk.rfind("%", max(0, len(chunk) - 2))  # a %XX cut by the chunk's end waits for the rest
            cut = tail if tail >= 0 and pos < len(url) else len(chunk)
            out += urllib.parse.unquote_to_bytes(chunk[:cut])
        carry = chunk[cut:]
        if len(out) > max_bytes:
            raise ValueError(f"{what} holds more than the limit of {max_bytes} bytes (max_bytes)")
    return bytes(out)


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(
                f"image URL {_short(req.full_url)!r} redirects to {_short(newurl)!r}; only http(s) redirects are followed"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Deadline:
    """One wall-clock deadline for a whole fetch (connect, TLS, status line, headers, redirects, body): every
    socket the fetch opens is created with at most the time left, and at the deadline a timer shuts them all
    down, which ends any read that is still waiting (a server that drips one byte at a time included), since a
    socket timeout alone bounds each wait, not their sum."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.expired = False
        self.timer = threading.Timer(max(0.0, deadline - time.monotonic()), self.expire)
        self.timer.daemon = True

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    def connect(self, address, timeout=None, source_address=None, *args, **kwargs):
        sock = socket.create_connection(address, self.left(), source_address, *args, **kwargs)
        with self.lock:
            self.sockets.append(sock)
            if self.expired:
                sock.shutdown(socket.SHUT_RDWR)
        return sock

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _deadline_handlers(dl: _Deadline) -> list:
    """urllib handlers whose connections open their sockets through ``dl`` (so the deadline can end them)."""

    def bind(conn_cls):
        class Conn(conn_cls):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self._create_connection = dl.connect

        return Conn

    http_conn, https_conn = bind(http.client.HTTPConnection), bind(http.client.HTTPSConnection)

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_conn, req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(https_conn, req, context=self._context)

    return [Http(), Https(), _HttpOnlyRedirects()]


def check_url_limits(max_bytes, timeout) -> None:
    """Refuse a ``max_bytes`` that is not an int >= 1 or a ``timeout`` that is not a number in
    (0, ``MAX_URL_TIMEOUT_S``] (an infinite or huge one would overflow the socket's timer)."""
    ok_bytes = isinstance(max_bytes, int) and not isinstance(max_bytes, bool) and max_bytes >= 1
    ok_time = (
        isinstance(timeout, (int, float))
        and not isinstance(timeout, bool)
        and math.isfinite(timeout)
        and 0 < timeout <= MAX_URL_TIMEOUT_S
    )
    if not (ok_bytes and ok_time):
        raise ValueError(
            f"max_bytes={max_bytes!r} and timeout={timeout!r}: expected an int >= 1 and a number of seconds in "
            f"(0, {MAX_URL_TIMEOUT_S:g}]"
        )


def fetch_url(
    url: str, *, max_bytes: int = MAX_URL_BYTES, timeout: float = URL_TIMEOUT_S, deadline: float | None = None
) -> bytes:
    """The bytes an ``http(s)://`` URL sends, at most ``max_bytes``, all of it (connect, redirects, headers,
    body) within ``timeout`` seconds of wall-clock time, or by ``deadline`` (a ``time.monotonic()`` value, e.g.
    what is left of a request's own deadline) when that comes first. ValueError naming the URL otherwise
    (too large, too slow, an HTTP error, a malformed response)."""
    check_url_limits(max_bytes, timeout)
    what = f"image URL {_short(url, 200)!r}"
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"{what} has scheme {scheme!r}; expected http or https")
    end = time.monotonic() + timeout
    if deadline is not None:
        end = min(end, deadline)
    budget = max(0.0, end - time.monotonic())
    dl = _Deadline(end)
    opener = urllib.request.OpenerDirector()
    extra = [
        urllib.request.ProxyHandler(),
        urllib.request.HTTPErrorProcessor(),
        urllib.request.HTTPDefaultErrorHandler(),
    ]
    for handler in _deadline_handlers(dl) + extra:  # what build_opener would add, sockets through ``dl``
        opener.add_handler(handler)
    request = urllib.request.Request(url, headers={"User-Agent": "mmx-fast", "Accept": "image/*"})
    dl.timer.start()
    try:
        with opener.open(request, timeout=max(1e-3, dl.left())) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.strip().isdigit() and int(length) > max_bytes:
                raise ValueError(
                    f"{what} is {int(length)} bytes (Content-Length), over the limit of {max_bytes} bytes (max_bytes)"
                )
            read = getattr(resp, "read1", resp.read)
            chunks, size = [], 0
            while True:
                dl.left()
                chunk = read(min(_READ_CHUNK, max_bytes + 1 - size))  # returns what has arrived
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"{what} sent more than the limit of {max_bytes} bytes (max_bytes)")
            dl.left()  # a read the deadline ended looks like the end of the body
            if length is not None and length.strip().isdigit() and size < int(length):
                raise ValueError(
                    f"{what} sent a malformed HTTP response (IncompleteRead: {size} of the {int(length)} bytes "
                    "its Content-Length announced)"
                )
    except urllib.error.HTTPError as e:
        raise ValueError(f"{what} could not be fetched: HTTP {e.code} {e.reason}") from None
    except ValueError as e:
        if str(e).startswith(("image URL", what)):  # ours (limits, redirects)
            raise
        raise ValueError(f"{what} sent a malformed HTTP response ({_short(str(e), 120)})") from None
    except Exception as e:  # sockets, TLS, and http.client's BadStatusLine / IncompleteRead / LineTooLong ...
        if dl.expired or time.monotonic() >= end:
            raise ValueError(f"{what} timed out: no complete image within {budget:.3g} s (timeout)") from None
        reason = getattr(e, "reason", e)
        if isinstance(e, TimeoutError) or isinstance(reason, TimeoutError) or "timed out" in str(reason):
            raise ValueError(f"{what} timed out: no complete image within {budget:.3g} s (timeout)") from None
        if isinstance(e, http.client.HTTPException) or isinstance(reason, http.client.HTTPException):
            detail = f"{type(reason).__name__}: {_short(str(reason), 120)}".rstrip(": ")
            raise ValueError(f"{what} sent a malformed HTTP response ({detail})") from None
        raise ValueError(f"{what} could not be fetched: {_short(str(reason), 200)}") from None
    finally:
        dl.timer.cancel()
        dl.expire()  # close what is still open
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
    what = f"image tensor of shape {list(shape)}"
    if t.is_meta or t.layout != torch.strided:
        kind = (
            "on the meta device (it has no data)" if t.is_meta else f"{str(t.layout).removeprefix('torch.')}"
        )
        raise ValueError(f"{what} is {kind}; expected a dense tensor with data (e.g. tensor.to_dense())")
    check_size(int(t.shape[1]), int(t.shape[0]), what=what)  # from the shape alone: nothing converted yet
    if not (t.dtype == torch.uint8 or t.is_floating_point()):
        raise TypeError(
            f"image tensor dtype {t.dtype} is not supported; expected torch.uint8, or a float dtype in [0, 1]"
        )
    t = t.detach()
    if t.dtype == torch.uint8:
        arr = t.to("cpu").contiguous().numpy()
    else:  # checked and converted a block of rows at a time: never a float64 copy of the whole image
        out = torch.empty(tuple(t.shape), dtype=torch.uint8)
        rows = max(1, (1 << 22) // max(1, t[0].numel()))
        bad, lo, hi = 0, math.inf, -math.inf
        for r in range(0, t.shape[0], rows):
            blk = t[r : r + rows].to("cpu", torch.float64)
            finite = torch.isfinite(blk)
            bad += int((~finite).sum())
            if bad:
                continue
            lo, hi = min(lo, float(blk.min())), max(hi, float(blk.max()))
            out[r : r + rows] = (blk * 255.0).round().clamp(0, 255).to(torch.uint8)
        if bad:
            raise ValueError(
                f"image tensor contains {bad} NaN or Inf values; expected finite values in [0, 1]"
            )
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"float image tensor has values in [{lo:g}, {hi:g}]; expected [0, 1] (or pass uint8 in [0, 255])"
            )
        arr = out.numpy()
    return _from_array(arr)


def load_image(
    image, *, max_bytes: int = MAX_URL_BYTES, timeout: float = URL_TIMEOUT_S, deadline: float | None = None
) -> Image.Image:
    """Return an RGB PIL image, or raise TypeError / ValueError naming what was wrong. ``max_bytes`` and
    ``timeout`` bound what an ``http(s)://`` or ``data:`` URL may cost (see the module docstring); ``timeout``
    is one wall-clock deadline for the whole fetch, and ``deadline`` (a ``time.monotonic()`` value) an earlier
    one where the caller has it (:func:`fetch_url`)."""
    torch = sys.modules.get("torch")
    if isinstance(image, str) and _is_url(image):
        check_url_limits(max_bytes, timeout)
        scheme = image.split(":", 1)[0].lower()
        if scheme == "data":
            data = _data_url_bytes(image, max_bytes)
            what = f"image data URL {_short(image)!r}"
        elif scheme in ("http", "https"):
            data = fetch_url(image, max_bytes=max_bytes, timeout=timeout, deadline=deadline)
            what = f"image URL {_short(image, 200)!r}"
        else:
            raise ValueError(
                f"image URL {_short(image)!r} has scheme {scheme!r}; expected http, https, data, or a file path"
            )
        image = decode_image(data, what)
        del data
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


def regular_file(
    path: str | os.PathLike, what: str = "image path", kind: str = "an image file", missing: type = ValueError
) -> Path:
    """``path`` after checking it names a readable regular file (not a folder, pipe, device or socket), or an
    error naming it as ``what`` and saying ``kind`` was expected; a missing file raises ``missing``. Shared by
    images and video files (:mod:`mmx_fast.video`)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise missing(f"{what} {str(path)!r} does not exist") from None
    except OSError as e:
        raise ValueError(f"{what} {str(path)!r} cannot be read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{what} {str(path)!r} is a directory; expected {kind}")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(
            f"{what} {str(path)!r} is not a regular file (a pipe, device or socket); expected {kind}"
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
    path = regular_file(path)
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
    """The first frame of the image file at ``path`` (:func:`decode_image`, after ``check_image_file``
    vetted the path); upright by its EXIF orientation, not yet converted to RGB."""
    path = regular_file(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ValueError(f"image file {str(path)!r} cannot be read ({e.strerror or e})") from None
    with f:
        return decode_image(f, f"image file {str(path)!r}")


def _upright(im: Image.Image) -> Image.Image:
    """A copy of ``im`` turned by its EXIF orientation; EXIF data that is corrupt is ignored (as viewers do),
    silently."""
    try:
        with _quiet_pil():
            return ImageOps.exif_transpose(im)
    except Exception:
        return im.copy()
