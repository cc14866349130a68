"""Images given as URLs (http/https from a local server in a thread, data:) and as torch tensors, through
``load_image`` (what ``Explainer.explain`` and every other API entry point call)."""

from __future__ import annotations

import base64
import http.server
import io
import threading
import time
import urllib.parse

import numpy as np
import pytest
import torch
from PIL import Image

from mmx_fast.images import load_image

RNG = np.random.default_rng(0)
PIXELS = RNG.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png(PIXELS)
BIG = 4096  # the limit the tests pass as max_bytes; PNG is smaller, the oversize bodies larger


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # a body without Content-Length ends when the connection closes

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes, ctype: str = "image/png", length: bool = True) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path
        if path == "/ok.png":
            self._send(200, PNG)
        elif path == "/big-declared":
            self._send(200, b"\0" * (BIG + 1))
        elif path == "/big-undeclared":
            self._send(200, b"\0" * (BIG * 3), length=False)
        elif path == "/slow":
            time.sleep(5.0)
            self._send(200, PNG)
        elif path == "/trickle":
            self.send_response(200)
            self.end_headers()
            for _ in range(50):
                self.wfile.write(b"\0" * 8)
                self.wfile.flush()
                time.sleep(0.1)
        elif path == "/text":
            self._send(200, b"hello, not an image", ctype="text/plain")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ok.png")
            self.end_headers()
        elif path == "/redirect-ftp":
            self.send_response(302)
            self.send_header("Location", "ftp://127.0.0.1/x.png")
            self.end_headers()
        elif path == "/redirect-file":
            self.send_response(302)
            self.send_header("Location", "file:///etc/passwd")
            self.end_headers()
        else:
            self._send(404, b"no", ctype="text/plain")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that hung up early (the limits) is expected
        pass


@pytest.fixture(scope="module")
def server():
    srv = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


# --------------------------------------------------------------------------------------------------
# http(s)
# --------------------------------------------------------------------------------------------------


def test_http_image_is_fetched_and_decoded(server):
    assert np.array_equal(np.asarray(load_image(f"{server}/ok.png")), PIXELS)
    assert np.array_equal(np.asarray(load_image(f"{server}/redirect", max_bytes=BIG)), PIXELS)
    assert np.array_equal(
        np.asarray(load_image(f"{server.upper().replace('HTTP', 'HTTP', 1)}/ok.png")), PIXELS
    )


@pytest.mark.parametrize("path", ["/big-declared", "/big-undeclared"])
def test_http_over_the_size_limit_names_url_and_limit(server, path):
    url = f"{server}{path}"
    with pytest.raises(ValueError, match=rf"{url}.*limit of {BIG} bytes") as err:
        load_image(url, max_bytes=BIG)
    if path == "/big-declared":
        assert "Content-Length" in str(err.value)


def test_http_timeouts_name_url_and_limit(server):
    for path in ("/slow", "/trickle"):
        t0 = time.monotonic()
        with pytest.raises(ValueError, match=rf"{server}{path}.*timed out.*0.5 s"):
            load_image(f"{server}{path}", timeout=0.5)
        assert time.monotonic() - t0 < 4.0  # abandoned, not waited out (the server takes 5 s)


def test_http_errors_are_clear(server):
    with pytest.raises(ValueError, match=r"missing\.png.*HTTP 404"):
        load_image(f"{server}/missing.png")
    with pytest.raises(ValueError, match=r"/text'? is not a readable image"):
        load_image(f"{server}/text")
    with pytest.raises(ValueError, match=r"redirect-file.*'file:///etc/passwd' is not allowed"):
        load_image(f"{server}/redirect-file")
    with pytest.raises(
        ValueError, match=r"redirect-ftp' redirects to 'ftp://127.0.0.1/x.png'.*only http\(s\)"
    ):
        load_image(f"{server}/redirect-ftp")
    with pytest.raises(ValueError, match=r"127\.0\.0\.1:1/x\.png.*could not be fetched"):
        load_image("http://127.0.0.1:1/x.png", timeout=5)
    with pytest.raises(ValueError, match="max_bytes=0"):
        load_image(f"{server}/ok.png", max_bytes=0)


def test_other_schemes_are_refused():
    for url in ("ftp://example.org/a.png", "file:///etc/hostname"):
        with pytest.raises(ValueError, match=rf"scheme '{url.split(':')[0]}'.*expected http, https, data"):
            load_image(url)


# --------------------------------------------------------------------------------------------------
# data:
# --------------------------------------------------------------------------------------------------


def test_data_urls():
    b64 = base64.b64encode(PNG).decode()
    for url in (
        f"data:image/png;base64,{b64}",
        f"data:;base64,{b64}",
        f"DATA:image/png;base64,{b64[:40]}\n{b64[40:]}",  # whitespace inside base64 is allowed
        "data:image/png," + urllib.parse.quote_from_bytes(PNG),
    ):
        assert np.array_equal(np.asarray(load_image(url)), PIXELS), url[:30]


def test_bad_data_urls():
    b64 = base64.b64encode(PNG).decode()
    with pytest.raises(ValueError, match=r"limit of 100 bytes"):
        load_image(f"data:image/png;base64,{b64}", max_bytes=100)
    with pytest.raises(ValueError, match=r"limit of 100 bytes"):
        load_image("data:image/png," + urllib.parse.quote_from_bytes(PNG), max_bytes=100)
    with pytest.raises(ValueError, match="media type 'text/plain'"):
        load_image(f"data:text/plain;base64,{b64}")
    with pytest.raises(ValueError, match="not valid base64"):
        load_image("data:image/png;base64,@@@@")
    with pytest.raises(ValueError, match="no ','"):
        load_image("data:image/png;base64")
    with pytest.raises(
        ValueError, match=r"data URL 'data:image/png;base64,aGVsbG8=' is not a readable image"
    ):
        load_image("data:image/png;base64,aGVsbG8=")


# --------------------------------------------------------------------------------------------------
# torch tensors
# --------------------------------------------------------------------------------------------------


def _expected_rgb(arr_hwc: np.ndarray) -> np.ndarray:
    return np.asarray(load_image(arr_hwc))  # the numpy path (already tested) as the oracle


@pytest.mark.parametrize("channels", [1, 3, 4])
@pytest.mark.parametrize("layout", ["chw", "hwc"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_tensor_layouts_and_dtypes(channels, layout, dtype):
    hwc = RNG.integers(0, 256, size=(6, 11, channels), dtype=np.uint8)
    if channels == 4:
        hwc[..., 3] = 255  # opaque: the comparison is about layout, not about compositing
    t = torch.from_numpy(hwc.copy())
    if dtype != torch.uint8:
        t = t.to(torch.float64) / 255.0
        if dtype in (torch.float16, torch.bfloat16):  # not exact: compare within one grey level
            t = t.to(dtype)
            got = np.asarray(load_image(t.permute(2, 0, 1) if layout == "chw" else t)).astype(int)
            assert np.abs(got - _expected_rgb(hwc).astype(int)).max() <= 1
            return
        t = t.to(dtype)
    if layout == "chw":
        t = t.permute(2, 0, 1)
    got = load_image(t)
    assert got.mode == "RGB" and got.size == (11, 6)
    assert np.array_equal(np.asarray(got), _expected_rgb(hwc))


def test_tensor_grayscale_ambiguous_and_autograd():
    hw = RNG.integers(0, 256, size=(5, 8), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_image(torch.from_numpy(hw))), _expected_rgb(hw))
    # first and last dims both in (1, 3, 4): read as C x H x W
    chw = RNG.integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(load_image(torch.from_numpy(chw))), chw.transpose(1, 2, 0))
    f = torch.rand(3, 4, 6, requires_grad=True)
    expected = (f.detach().permute(1, 2, 0).double() * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(np.asarray(load_image(f)), expected)


@pytest.mark.parametrize(
    "tensor, exc, pattern",
    [
        (torch.zeros(1, 3, 4, 4, dtype=torch.uint8), ValueError, r"shape \[1, 3, 4, 4\].*a batch"),
        (torch.zeros(5, 6, 7, dtype=torch.uint8), ValueError, r"shape \[5, 6, 7\].*C in 1, 3, 4"),
        (torch.zeros(8, dtype=torch.uint8), ValueError, r"shape \[8\]"),
        (torch.zeros(3, 0, 5, dtype=torch.uint8), ValueError, "empty"),
        (torch.full((3, 2, 2), float("nan")), ValueError, "12 NaN or Inf"),
        (torch.tensor([[0.5, float("inf")]]), ValueError, "1 NaN or Inf"),
        (torch.tensor([[0.5, 1.5]]), ValueError, r"\[0.5, 1.5\]; expected \[0, 1\]"),
        (torch.tensor([[-0.1, 0.5]]), ValueError, r"\[-0.1, 0.5\]; expected \[0, 1\]"),
        (torch.zeros(3, 4, 4, dtype=torch.int64), TypeError, "torch.int64"),
        (torch.zeros(4, 4, dtype=torch.bool), TypeError, "torch.bool"),
    ],
)
def test_bad_tensors(tensor, exc, pattern):
    with pytest.raises(exc, match=pattern):
        load_image(tensor)


def test_unsupported_type_lists_what_is_accepted():
    with pytest.raises(TypeError, match="torch tensor.*URL"):
        load_image(3.5)


def test_explainer_accepts_url_and_tensor_like_pil():
    """The public API takes the new inputs where it took a PIL image: same maps."""
    from mmx_fast import ExplainConfig, Explainer
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("qwen2_vl", seed=0)
    ex = Explainer(model, processor, ExplainConfig(method="msea-arc", max_new_tokens=3, backend="torch"))
    arr = RNG.integers(0, 256, size=(56, 56, 3), dtype=np.uint8)
    ref = ex.explain(Image.fromarray(arr), "What is it?")
    url = "data:image/png;base64," + base64.b64encode(_png(arr)).decode()
    for image in (url, torch.from_numpy(arr).permute(2, 0, 1)):
        got = ex.explain(image, "What is it?")
        assert got.answer_ids == ref.answer_ids
        assert torch.equal(got.maps, ref.maps)
