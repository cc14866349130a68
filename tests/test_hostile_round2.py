"""Hostile inputs, round 2 (issue 21): code in a model folder, memory blown before the limits, deadlines that
did not hold, missing weights, stale saves, batch-dependent TAM maps, malformed HTTP, bad videos and configs.

Memory attacks run in a subprocess that reports its peak RSS growth (``ru_maxrss``) over its own idle state
after the imports and after the attack input exists: the attack itself must stay under ``MEM_BOUND``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmx_fast import images
from mmx_fast.cli import main
from mmx_fast.loading import ModelLoadError

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "mmx_fast" / "assets" / "grace_hopper.jpg"
PROMPT = "Who is in the picture?"
ERR = "mmx-fast: error: "
MARKER = ".mmx-fast-result.json"
MEM_BOUND = 300 * 2**20  # bytes above idle any memory attack may cost (issue 21)


def _env(**extra) -> dict:
    # the installed package (editable), not the repository root on sys.path: its kernels/ folder would shadow
    # Hugging Face's kernels package (ENV.md)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONSAFEPATH="1")
    env.pop("MMX_FAST_DEBUG", None)
    env.pop("PYTHONPATH", None)
    env.update(extra)
    return env


def _cli(*args, env=None, timeout: float = 300):
    return subprocess.run(
        [sys.executable, "-m", "mmx_fast", *args],
        capture_output=True,
        env=env or _env(),
        cwd=REPO,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _one_error(stderr: bytes | str) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERR), text
    return lines[0]


def _peak_growth(setup: str, attack: str, timeout: float = 120) -> tuple[int, str]:
    """Run ``setup`` then ``attack`` in a fresh interpreter; (peak RSS growth of the attack in bytes, what the
    attack printed). The growth is ru_maxrss after minus before the attack (ru_maxrss is a high-water mark:
    the attack's own peak, whatever it freed afterwards)."""
    code = textwrap.dedent(
        """
        import resource, sys
        {setup}
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
        {attack}
        except (ValueError, TypeError) as e:
            print("REFUSED", type(e).__name__, str(e)[:400])
        else:
            print("ACCEPTED")
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print("GROWTH", (after - before) * 1024)
        """
    ).format(
        setup=textwrap.dedent(setup).strip(), attack=textwrap.indent(textwrap.dedent(attack).strip(), "    ")
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=timeout
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    return int(lines[-1].split()[1]), "\n".join(lines[:-1])


# ---------------------------------------------------------------------------------------------------
# 1. a model folder's own code never runs unless the caller opts in
def _save_tiny(family: str, folder: Path):
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model(family)
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    processor.to_json_file(str(folder / "processor_config.json"))
    return model


EVIL = """
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from transformers import CLIPImageProcessorPil, LlavaProcessor


class EvilImageProcessor(CLIPImageProcessorPil):
    pass


class EvilProcessor(LlavaProcessor):
    pass
"""


@pytest.fixture(scope="module")
def tiny_llava_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "tiny-llava"
    _save_tiny("llava", folder)
    return folder


def _evil_copy(src: Path, dst: Path, json_name: str) -> Path:
    import shutil

    shutil.copytree(src, dst)
    marker = dst.parent / f"{dst.name}-code-ran"
    (dst / "evil.py").write_text(EVIL.format(marker=str(marker)))
    cfg_path = dst / json_name
    cfg = json.loads(cfg_path.read_text())
    if json_name == "config.json":
        cfg["auto_map"] = {"AutoModelForImageTextToText": "evil.EvilModel"}
    else:
        cfg["auto_map"] = {
            "AutoProcessor": "evil.EvilProcessor",
            "AutoImageProcessor": "evil.EvilImageProcessor",
        }
    cfg_path.write_text(json.dumps(cfg))
    return marker


@pytest.mark.parametrize("json_name", ["preprocessor_config.json", "processor_config.json", "config.json"])
def test_item1_model_folder_code_is_refused_and_never_run(tiny_llava_folder, tmp_path, json_name):
    import mmx_fast

    folder = tmp_path / "evil-model"
    marker = _evil_copy(tiny_llava_folder, folder, json_name)
    with pytest.raises(ModelLoadError, match=rf"{json_name}.*evil\.py.*trust_remote_code=True") as e:
        mmx_fast.load(str(folder), device="cpu")
    assert "auto_map" in str(e.value)
    assert not marker.exists()
    # the CLI: one error line, nothing asked on stdout, the code never ran
    r = _cli("explain", "--model", str(folder), "--image", str(PHOTO), "--prompt", PROMPT, "--answer", "A.",
             "--out", str(tmp_path / "out"), "-q")  # fmt: skip
    line = _one_error(r.stderr)
    assert r.returncode == 2 and json_name in line and "--trust-remote-code" in line, line
    assert b"[y/N]" not in r.stdout + r.stderr and r.stdout == b""
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_item1_trust_remote_code_is_the_explicit_opt_in(tiny_llava_folder, tmp_path):
    folder = tmp_path / "evil-model"
    marker = _evil_copy(tiny_llava_folder, folder, "processor_config.json")  # AutoProcessor reads it here
    env = _env(HF_HOME=str(tmp_path / "hf-home"))  # transformers copies the code into its modules cache
    r = _cli("explain", "--model", str(folder), "--image", str(PHOTO), "--prompt", PROMPT, "--answer", "A.",
             "--out", str(tmp_path / "out"), "-q", "--trust-remote-code", env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    assert marker.read_text() == "ran"  # the opt-in reached transformers, which ran the folder's code
    assert (tmp_path / "out" / "grace_hopper" / "maps.npz").is_file()


def test_item1_trust_remote_code_is_a_bool(tiny_llava_folder):
    import mmx_fast

    with pytest.raises(ValueError, match="trust_remote_code='yes'.*True or False"):
        mmx_fast.load(str(tiny_llava_folder), device="cpu", trust_remote_code="yes")


# ---------------------------------------------------------------------------------------------------
# 2. data: URLs refused from their length, decoded in bounded chunks
@pytest.mark.parametrize(
    "build, max_bytes",
    [
        ('"data:image/png," + "%00" * (12 * 2**20)', 8 << 20),  # the case (over 3x the limit)
        ('"data:image/png," + "A" * (9 * 2**20)', 8 << 20),  # within 3x: refused while decoding
        ('"data:image/png;base64," + "AAAA" * (4 * 2**20)', 8 << 20),  # 12 MiB of base64 bytes
        ('"data:image/png;base64," + " " * (40 * 2**20) + "AAAA"', 8 << 20),  # padding with whitespace
    ],
)
def test_item2_data_url_memory_is_bounded(build, max_bytes):
    growth, out = _peak_growth(
        f"from mmx_fast.images import load_image\nurl = {build}",
        f"load_image(url, max_bytes={max_bytes})",
    )
    assert out.startswith("REFUSED ValueError") and "max_bytes" in out, out
    assert growth < MEM_BOUND // 4, f"{growth / 2**20:.0f} MiB"


def test_item2_data_urls_still_decode():
    buf = io.BytesIO()
    Image.new("RGB", (5, 3), (10, 200, 30)).save(buf, format="PNG")
    import base64
    import urllib.parse

    raw = buf.getvalue()
    b64 = base64.b64encode(raw).decode()
    wrapped = "\n".join(b64[i : i + 7] for i in range(0, len(b64), 7))  # line breaks anywhere
    for url in (
        "data:image/png;base64," + b64,
        "data:image/png;base64," + wrapped,
        "data:image/png," + urllib.parse.quote_from_bytes(raw),
    ):
        im = images.load_image(url)
        assert im.size == (5, 3) and im.getpixel((1, 1)) == (10, 200, 30)
    # a percent escape cut by a chunk boundary decodes whole
    old = images._DATA_CHUNK
    try:
        images._DATA_CHUNK = 4
        assert images.load_image("data:image/png," + urllib.parse.quote_from_bytes(raw)).size == (5, 3)
        assert images.load_image("data:image/png;base64," + wrapped).size == (5, 3)
    finally:
        images._DATA_CHUNK = old


# ---------------------------------------------------------------------------------------------------
# 3. a video file: frames counted from the container, only the sampled ones decoded and kept
def _write_mp4(path: Path, n: int, w: int, h: int, rate: int = 30, audio_only: bool = False) -> Path:
    av = pytest.importorskip("av")
    with av.open(str(path), mode="w") as out:
        if audio_only:
            stream = out.add_stream("aac", rate=8000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            for _ in range(4):
                for packet in stream.encode(frame):
                    out.mux(packet)
        else:
            stream = out.add_stream("mpeg4", rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"g": "1000"}
            yuv = np.full((h * 3 // 2, w), 128, np.uint8)
            yuv[:h] = 16
            for k in range(n):
                yuv[: h // 4, : w // 4] = (
                    16 + k % 220
                )  # the frame number in a corner of Y, to check the sampling
                for packet in stream.encode(av.VideoFrame.from_ndarray(yuv, format="yuv420p")):
                    out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_item3_long_video_costs_only_the_sampled_frames(tmp_path):
    path = _write_mp4(tmp_path / "long.mp4", 150, 1280, 720)
    assert path.stat().st_size < 400_000
    growth, out = _peak_growth(
        f"from mmx_fast.video import read_video_file\nimport numpy as np\npath = {str(path)!r}",
        "v = read_video_file(path)\nprint('FRAMES', len(v), [int(np.asarray(f)[5, 5, 0]) for f in v.frames])",
    )
    assert "ACCEPTED" in out, out
    frames = json.loads(out.split("FRAMES ", 1)[1].splitlines()[0].split(" ", 1)[1])
    got = np.round(np.array(frames) * 219 / 255)  # video-range luma 16 + k back from the RGB value
    want = np.linspace(0, 149, 16).round() % 220
    assert len(frames) == 16 and np.abs(got - want).max() <= 4, (got, want)  # lossy: samples are 10 apart
    # 150 decoded 720p frames kept would be > 400 MB; 16 kept are 44 MB
    assert growth < MEM_BOUND, f"{growth / 2**20:.0f} MiB"


def test_item3_frames_x_pixels_are_bounded_before_decoding(tmp_path, monkeypatch):
    from mmx_fast import video

    path = _write_mp4(tmp_path / "clip.mp4", 20, 64, 48)
    monkeypatch.setattr(video, "MAX_DECODED_PIXELS", 10 * 64 * 48)
    decoded = []
    import av

    real = av.container.InputContainer.decode

    def counting(self, *a, **k):
        for f in real(self, *a, **k):
            decoded.append(f)
            yield f

    monkeypatch.setattr(av.container.InputContainer, "decode", counting)
    with pytest.raises(ValueError, match=r"clip\.mp4.*more than 10 frames of 64x48.*MAX_DECODED_PIXELS"):
        video.read_video_file(path)
    assert decoded == []


# ---------------------------------------------------------------------------------------------------
# 4. a tensor or array over the pixel limit is refused from its shape
@pytest.mark.parametrize(
    "setup, attack",
    [
        ("import torch\nt = torch.zeros(1, 1, 1).expand(3, 11000, 11000)", "load_image(t)"),
        (
            "import torch\nt = torch.zeros(1, 1, 1, dtype=torch.uint8).expand(11000, 11000, 3)",
            "load_image(t)",
        ),
        ("import numpy as np\na = np.broadcast_to(np.zeros((1, 1, 1)), (11000, 11000, 3))", "load_image(a)"),
        ("import torch\nt = torch.zeros(1, 1).expand(200000, 10)", "load_image(t)"),  # aspect ratio
    ],
)
def test_item4_oversized_tensor_refused_from_its_shape(setup, attack):
    growth, out = _peak_growth("from mmx_fast.images import load_image\n" + setup, attack)
    assert out.startswith("REFUSED ValueError") and ("MAX_PIXELS" in out or "MAX_ASPECT" in out), out
    assert growth < 50 * 2**20, f"{growth / 2**20:.0f} MiB"


def test_item4_float_tensor_within_limits_converts_exactly():
    g = torch.Generator().manual_seed(0)
    t = torch.rand(3, 70, 50, generator=g)
    got = np.asarray(images.load_image(t))
    want = (t.permute(1, 2, 0).double() * 255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(got, want)
    bad = t.clone()
    bad[1, 60, 3] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or Inf"):
        images.load_image(bad)
    with pytest.raises(ValueError, match=r"values in \[0.000119537, 1.49991\]; expected \[0, 1\]"):
        images.load_image(t * 1.5)


# ---------------------------------------------------------------------------------------------------
# 5, 16, 19. URLs: one wall-clock deadline; malformed responses are ValueErrors; bad timeouts
class _Server:
    """A local TCP server answering every connection with ``handler(conn)`` in a thread."""

    def __init__(self, handler):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.handler = handler
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/x.png"

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            try:
                conn.recv(65536)
                self.handler(conn, self.stop)
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.sock.close()


@contextlib.contextmanager
def _server(handler):
    s = _Server(handler)
    try:
        yield s
    finally:
        s.close()


def _drip_headers(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stop.wait(0.2):
        conn.sendall(b"X-Drip: 1\r\n")


def _drip_body(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    while not stop.wait(0.2):
        conn.sendall(b"\x00")


@pytest.mark.parametrize("handler", [_drip_headers, _drip_body], ids=["headers", "body"])
def test_item5_one_deadline_covers_headers_and_body(handler):
    with _server(handler) as s:
        t0 = time.monotonic()
        with pytest.raises(ValueError, match=r"timed out.*within 1 s \(timeout\)"):
            images.load_image(s.url, timeout=1.0)
        took = time.monotonic() - t0
    # each drip arrives well within the timeout: only a wall-clock deadline ends this (the server never stops)
    assert took < 5.0, took


def test_item5_the_callers_deadline_comes_first():
    with _server(_drip_body) as s:
        t0 = time.monotonic()
        with pytest.raises(ValueError, match="timed out"):
            images.fetch_url(s.url, timeout=60.0, deadline=time.monotonic() + 0.5)
        assert time.monotonic() - t0 < 5.0
        with pytest.raises(ValueError, match="timed out"):  # a deadline already past: nothing is waited for
            images.load_image(s.url, deadline=time.monotonic() - 1)


def test_item5_a_fast_server_is_fetched_whole():
    buf = io.BytesIO()
    Image.new("RGB", (7, 4), (1, 2, 3)).save(buf, format="PNG")
    body = buf.getvalue()

    def ok(conn, stop):
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )

    with _server(ok) as s:
        assert images.fetch_url(s.url, timeout=10) == body
        assert images.load_image(s.url, timeout=10).size == (7, 4)


def _send(data: bytes):
    def handler(conn, stop):
        conn.sendall(data)

    return handler


@pytest.mark.parametrize(
    "reply, what",
    [
        (b"garbage\r\n\r\n", "BadStatusLine"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", "IncompleteRead"),
        (b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 70000 + b"\r\n\r\n", "LineTooLong"),
        (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(120)) + b"\r\n", "100 headers"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk"),
        (b"", "RemoteDisconnected"),
    ],
)
def test_item16_malformed_http_responses_are_value_errors(reply, what):
    with _server(_send(reply)) as s:
        with pytest.raises(ValueError, match=r"^image URL 'http://127\.0\.0\.1:\d+/x\.png' ") as e:
            images.load_image(s.url, timeout=5)
    assert "malformed" in str(e.value) or "could not be fetched" in str(e.value), e.value


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, float("nan"), 0, -1, True])
def test_item19_timeout_must_be_finite_and_bounded(timeout):
    with pytest.raises(ValueError, match=re.escape(f"timeout={timeout!r}") + r".*\(0, 3600\]"):
        images.load_image("http://127.0.0.1:9/x.png", timeout=timeout)


def test_item19_meta_and_sparse_tensors():
    with pytest.raises(ValueError, match=r"meta device"):
        images.load_image(torch.zeros(3, 8, 8, device="meta"))
    with pytest.raises(ValueError, match=r"sparse_coo.*dense"):
        images.load_image(torch.zeros(8, 8).to_sparse())
    with pytest.raises(ValueError, match=r"sparse_csr.*dense"):
        images.load_image(torch.zeros(8, 8).to_sparse_csr())
    with pytest.raises(TypeError, match="complex"):
        images.load_image(torch.zeros(3, 8, 8, dtype=torch.complex64))


# ---------------------------------------------------------------------------------------------------
# 6. one image decoder (EXIF included) for every path
def _rotated_jpeg() -> bytes:
    arr = np.zeros((48, 96, 3), np.uint8)
    arr[:, :48] = (250, 0, 0)  # left half red as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", exif=exif, quality=95)
    return buf.getvalue()


def test_item6_one_decoder_turns_exif_upright_for_bytes_files_and_urls(tmp_path, monkeypatch):
    import base64

    data = _rotated_jpeg()
    upright = images.decode_image(data, "upload")
    assert upright.size == (48, 96)  # stored 96 x 48, shown upright
    assert np.asarray(upright)[5, 24, 0] > 200  # the red half is now on top
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    calls = []
    real = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    for source in (path, "data:image/jpeg;base64," + base64.b64encode(data).decode()):
        im = images.load_image(source)
        np.testing.assert_array_equal(np.asarray(im), np.asarray(upright.convert("RGB")))
    assert len(calls) == 2  # the file and the URL went through the one decoder
    with pytest.raises(ValueError, match="upload is empty"):
        real(b"", "upload")
    with pytest.raises(ValueError, match="upload is not a readable image"):
        real(b"not an image", "upload")


def test_item6_cli_explains_the_upright_image(tmp_path, capsys):
    path = tmp_path / "sideways.jpg"
    path.write_bytes(_rotated_jpeg())
    out = tmp_path / "out"
    rc = main(["explain", "--model", "tiny:qwen2_vl", "--image", str(path), "--prompt", PROMPT, "--answer",
               "A cat.", "--out", str(out), "-q"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    info = json.loads((out / "sideways" / "explanation.json").read_text())
    assert (info["image"]["width"], info["image"]["height"]) == (48, 96)


# ---------------------------------------------------------------------------------------------------
# 7. missing weights are refused, naming them
@pytest.fixture(scope="module")
def holey_folder(tiny_llava_folder, tmp_path_factory) -> tuple[Path, list[str]]:
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("models") / "holey"
    shutil.copytree(tiny_llava_folder, folder)
    weights = load_file(str(folder / "model.safetensors"))
    dropped = sorted(k for k in weights if ".layers." in k and "language_model" in k)[:12]
    assert len(dropped) == 12
    save_file({k: v for k, v in weights.items() if k not in dropped}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    return folder, dropped


def test_item7_missing_weights_are_refused_by_default(holey_folder, tiny_llava_folder):
    import mmx_fast

    folder, dropped = holey_folder
    with pytest.raises(
        ModelLoadError, match=r"lacks 12 of the model's tensors .*allow_missing_weights=True"
    ) as e:
        mmx_fast.load(str(folder), device="cpu")
    assert any(d.split(".", 1)[1] in str(e.value) or d in str(e.value) for d in dropped), e.value
    with pytest.warns(UserWarning, match="12 tensors are missing"):
        model, _ = mmx_fast.load(str(folder), device="cpu", allow_missing_weights=True)
    assert model is not None
    mmx_fast.load(str(tiny_llava_folder), device="cpu")  # a complete checkpoint loads as before


def test_item7_cli_refuses_and_opts_in(holey_folder, tmp_path):
    folder, _ = holey_folder
    args = [
        "explain",
        "--model",
        str(folder),
        "--image",
        str(PHOTO),
        "--prompt",
        PROMPT,
        "--answer",
        "A.",
        "-q",
    ]
    r = _cli(*args, "--out", str(tmp_path / "a"))
    line = _one_error(r.stderr)
    assert r.returncode == 2 and "lacks 12" in line and "--allow-missing-weights" in line, line
    r = _cli(*args, "--out", str(tmp_path / "b"), "--allow-missing-weights")
    assert r.returncode == 0, r.stderr.decode()


# ---------------------------------------------------------------------------------------------------
# 8, 9. saving over an earlier result; retrying a save that failed midway
@pytest.fixture(scope="module")
def long_and_short():
    from mmx_fast import ExplainConfig, explain_fast
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("llava")
    photo = Image.open(PHOTO).convert("RGB").resize((64, 80))
    cfg = ExplainConfig(method="logit-lens")
    long = explain_fast(model, processor, photo, PROMPT, answer="one two three four five six seven eight nine ten",
                        config=cfg)  # fmt: skip
    short = explain_fast(model, processor, photo, PROMPT, answer="one two", config=cfg)
    assert len(long) > len(short) >= 1
    return long, short


def _listed(folder: Path) -> set[str]:
    return set(json.loads((folder / MARKER).read_text())["files"])


def test_item8_saving_a_shorter_result_removes_the_longer_ones_files(tmp_path, long_and_short):
    long, short = long_and_short
    out = tmp_path / "res"
    long.save(out)
    (out / "notes.txt").write_text("mine")  # the user's own file stays
    short.save(out)
    present = {p.name for p in out.iterdir()} - {MARKER, "notes.txt"}
    assert present == {"maps.npz", "explanation.json"} | {f"token_{i:03d}.png" for i in range(len(short))}
    assert _listed(out) == present
    assert json.loads((out / "explanation.json").read_text())["answer_ids"] == list(short.answer_ids)
    assert (out / "notes.txt").read_text() == "mine"


def test_item9_a_save_that_failed_midway_can_be_retried(tmp_path, long_and_short, monkeypatch):
    from mmx_fast import io as mio

    long, _ = long_and_short
    out = tmp_path / "res"
    real, n = mio.atomic_write_bytes, []

    def disk_full(path, data):
        if Path(path).name.startswith("token_") and len(n) >= 2:
            raise OSError(28, "No space left on device")
        n.append(path)
        real(path, data)

    monkeypatch.setattr(mio, "atomic_write_bytes", disk_full)
    with pytest.raises(OSError, match="No space left"):
        long.save(out)
    assert (out / "maps.npz").exists() and (out / MARKER).exists()  # what was written is claimed
    monkeypatch.setattr(mio, "atomic_write_bytes", real)
    long.save(out)  # the retry is allowed
    present = {p.name for p in out.iterdir()} - {MARKER}
    assert present == _listed(out) and len(present) == 2 + len(long)


def test_item8_a_hand_edited_marker_cannot_make_save_delete_other_files(tmp_path, long_and_short):
    _, short = long_and_short
    out = tmp_path / "res"
    short.save(out)
    (out / "precious.txt").write_text("keep")
    info = json.loads((out / MARKER).read_text())
    info["files"].append("precious.txt")
    (out / MARKER).write_text(json.dumps(info))
    short.save(out)
    assert (out / "precious.txt").read_text() == "keep"


# ---------------------------------------------------------------------------------------------------
# 10. tam maps do not depend on what else shares the batch
def _batch_shaped_rounding(model):
    """Make the decoder round like a kernel whose blocking depends on the batch's shape (as BLAS / cuBLAS may
    choose by M): for a batch of B rows each state gets (B - 1) 1e-3 times its neighbouring feature added;
    nothing for one row. TAM's maps are 8-bit by construction, so a rounding-sized change flips a cell only
    now and then (2-5 of 2,048 in the issue); 1e-3 flips some cells on every run (a uniform scale would not:
    the maps are normalised).
    The machine where issue 21 was found did this by itself (2-5 uint8 cells of 2,048 on tiny LLaVA); this
    CPU happens to round batched rows alike, so the hook makes the test independent of the machine."""
    from mmx_fast.adapters.generation import decoder_of

    def hook(_module, _args, output):
        hs = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        hs.add_((hs.shape[0] - 1) * 1e-3 * hs.roll(1, dims=-1))

    return decoder_of(model).register_forward_hook(hook)


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_item10_tam_batches_equal_single_runs_bitwise(family):
    from mmx_fast import ExplainConfig
    from mmx_fast.fast import Explainer
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model(family)
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    b = Image.fromarray(rng.integers(0, 255, (150, 90, 3), dtype=np.uint8))
    handle = _batch_shaped_rounding(model)
    try:
        for cfg in (
            ExplainConfig(method="tam", max_new_tokens=6),
            ExplainConfig(method="tam", scales=(0.5, 1.0)),
        ):
            ex = Explainer(model, processor, cfg)
            for answers in (None, ["A cat on a mat.", "A cat on the mat."]):
                batch = ex.explain_batch([a, b], [PROMPT, PROMPT], answers)
                for k, im in enumerate((a, b)):
                    one = ex.explain(im, PROMPT, None if answers is None else answers[k])
                    assert batch[k].answer_ids == one.answer_ids
                    assert torch.equal(batch[k].maps, one.maps), (family, cfg.scales, k)
                    for i in range(len(one)):
                        np.testing.assert_array_equal(
                            np.asarray(batch[k].heatmap(i)), np.asarray(one.heatmap(i))
                        )
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------------
# 15, 17. Video objects and video paths
def test_item15_video_objects_are_checked():
    from mmx_fast.video import MAX_FRAMES, Video

    f = Image.new("RGB", (32, 24))
    with pytest.raises(ValueError, match="0 frames.*1 to 256"):
        Video(())
    with pytest.raises(ValueError, match=f"{MAX_FRAMES + 344} frames"):
        Video((f,) * (MAX_FRAMES + 344))
    for fps in (float("nan"), -1, 0, float("inf"), 1e-300, True, "2"):
        with pytest.raises(ValueError, match=r"fps=.*from 0\.01 to 1000"):
            Video((f, f), fps)
    with pytest.raises(TypeError, match="frame 1 is a str"):
        Video((f, "frame.png"))
    with pytest.raises(ValueError, match="frame 1 is 24x32 but frame 0 is 32x24"):
        Video((f, Image.new("RGB", (24, 32))))
    v = Video([f.convert("L"), f.convert("RGBA")], 3)
    assert isinstance(v.frames, tuple) and all(x.mode == "RGB" for x in v.frames) and v.fps == 3.0


def test_item15_fps_zero_never_reaches_qwen2_5_vl():
    from mmx_fast import ExplainConfig, explain_fast
    from mmx_fast.testing import tiny_model
    from mmx_fast.video import Video

    model, processor = tiny_model("qwen2_5_vl")
    f = Image.new("RGB", (56, 56), (90, 20, 200))
    with pytest.raises(ValueError, match="fps=0"):
        explain_fast(model, processor, Video((f, f), 0), PROMPT, answer="A.", config=ExplainConfig())


def test_item17_bad_video_paths(tmp_path):
    from mmx_fast.video import read_video_file

    audio = _write_mp4(tmp_path / "sound.mp4", 0, 0, 0, audio_only=True)
    with pytest.raises(ValueError, match=r"sound\.mp4'? has no video stream \(its streams: audio\)"):
        read_video_file(audio)
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(ValueError, match=r"dir\.mp4' is a directory"):
        read_video_file(tmp_path / "dir.mp4")
    os.mkfifo(tmp_path / "pipe.mp4")
    with pytest.raises(ValueError, match=r"pipe\.mp4' is not a regular file"):
        read_video_file(tmp_path / "pipe.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 2000)
    with pytest.raises(ValueError, match=r"junk\.mp4' cannot be read as a video"):
        read_video_file(tmp_path / "junk.mp4")


# ---------------------------------------------------------------------------------------------------
# 18. configs that are not what they claim
def _config_folder(tmp_path: Path, cfg_text: str) -> Path:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(cfg_text)
    return folder


def test_item18_model_type_must_be_a_string(tmp_path, capsys):
    import mmx_fast

    folder = _config_folder(tmp_path, json.dumps({"model_type": ["llava"]}))
    with pytest.raises(ModelLoadError, match=r"model_type is a list \(\['llava'\]\); expected a string"):
        mmx_fast.load(str(folder))
    rc = main(["explain", "--model", str(folder), "--image", str(PHOTO), "--prompt", PROMPT, "--out",
               str(tmp_path / "o"), "-q"])  # fmt: skip
    assert rc == 2 and "model_type is a list" in _one_error(capsys.readouterr().err)


def test_item18_deeply_nested_config(tmp_path):
    import mmx_fast

    folder = _config_folder(tmp_path, '{"model_type": "llava", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ModelLoadError, match="config.json is nested too deeply"):
        mmx_fast.load(str(folder))
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    (folder / "tokenizer_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelLoadError, match="tokenizer_config.json is nested too deeply"):
        mmx_fast.load(str(folder))


# ---------------------------------------------------------------------------------------------------
# 20. the CLI in-process with a redirected stdout, and as a subprocess
def test_item20_cli_in_process_with_redirected_stdout(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["explain", "--model", "tiny:llava", "--image", str(PHOTO), "--prompt", PROMPT, "--answer",
                   "A.", "--out", str(tmp_path / "o"), "-q"])  # fmt: skip
    assert rc == 0, err.getvalue()
    report = tmp_path / "o" / "grace_hopper" / "report.html"
    assert out.getvalue() == f"{report.resolve()}\n" and report.is_file()


def test_item20_cli_as_a_subprocess(tmp_path):
    r = _cli("explain", "--model", "tiny:llava", "--image", str(PHOTO), "--prompt", PROMPT, "--answer", "A.",
             "--out", str(tmp_path / "o"), "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    report = tmp_path / "o" / "grace_hopper" / "report.html"
    assert r.stdout == os.fsencode(report.resolve()) + b"\n" and report.is_file()


# ---------------------------------------------------------------------------------------------------
# found while looking for the next kind (issue 21's closing note)
def test_next_the_number_of_msea_scales_is_bounded():
    from mmx_fast import ExplainConfig
    from mmx_fast.config import MAX_SCALES

    scales = [1.0] + [1.0 + k / 100_000 for k in range(1, 100_000)]  # 100,000 distinct scales: a forward each
    with pytest.raises(
        ValueError, match=f"ExplainConfig.scales of 100000 scales .* at most {MAX_SCALES}"
    ) as e:
        ExplainConfig(scales=scales)
    assert len(str(e.value)) < 200
    assert len(ExplainConfig(scales=[1.0 + k / 8 for k in range(MAX_SCALES)]).scales) == MAX_SCALES
    with pytest.raises(ValueError, match=f"of more than {MAX_SCALES} scales"):
        ExplainConfig(scales=itertools.count(1))  # endless: never listed whole


def test_next_video_files_with_too_many_frames_are_refused_before_decoding(tmp_path, monkeypatch):
    from mmx_fast import video

    path = _write_mp4(tmp_path / "many.mp4", 12, 32, 32)
    monkeypatch.setattr(video, "MAX_DECODED_FRAMES", 10)
    with pytest.raises(ValueError, match=r"more than 10 frames of 32x32.*10 frames \(MAX_DECODED_FRAMES\)"):
        video.read_video_file(path)


def test_next_a_video_of_many_large_frames_is_refused_from_the_headers(tmp_path, monkeypatch):
    from mmx_fast import video

    frame = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000)).save(frame)  # 12 MP, within MAX_PIXELS; 100 of them: 1.2 G pixels
    decoded = []
    real = images.decode_image
    monkeypatch.setattr(images, "decode_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    with pytest.raises(
        ValueError, match=r"a video of 100 frames \(frames 0\.\.83\) has more than 1000000000 pixels"
    ):
        video.load_video([frame] * 100)
    assert decoded == []
    small = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="MAX_VIDEO_PIXELS"):
        video.Video((Image.new("RGB", (10000, 10000)),) * 11)
    assert len(video.load_video([small, np.zeros((8, 8, 3), np.uint8), torch.zeros(3, 8, 8)])) == 3


def test_next_url_frames_are_bounded_as_they_arrive(monkeypatch):
    import base64

    from mmx_fast import video

    buf = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    monkeypatch.setattr(video, "MAX_VIDEO_PIXELS", 5 * 300 * 200)
    fetched = []
    real = images.load_image
    monkeypatch.setattr(images, "load_image", lambda *a, **k: fetched.append(1) or real(*a, **k))
    with pytest.raises(ValueError, match=r"frames 0\.\.5\) has more than 300000 pixels"):
        video.load_video([url] * 50)
    assert len(fetched) == 6  # stopped at the first frame over the bound, not after all 50
    with pytest.raises(ValueError, match="max_frames=True"):
        video.read_video_file(PHOTO, max_frames=True)


def test_next_a_pipe_in_a_model_folder_is_refused_without_opening_it(tiny_llava_folder, tmp_path):
    import shutil

    import mmx_fast

    folder = tmp_path / "m"
    shutil.copytree(tiny_llava_folder, folder)
    (folder / "tokenizer_config.json").unlink()
    os.mkfifo(folder / "tokenizer_config.json")  # transformers would block opening it, forever
    with pytest.raises(ModelLoadError, match=r"tokenizer_config\.json is not a regular file"):
        mmx_fast.load(str(folder), device="cpu")
