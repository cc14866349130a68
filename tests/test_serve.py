"""``mmx-fast serve``: the real server (uvicorn in a subprocess on a free port, a tiny model saved to a
temp folder) driven over HTTP with httpx, against ``Explainer.explain`` run in this process.

Two servers start side by side (module fixtures):
- ``main``: no auth (bound to 127.0.0.1), batching (max_batch 8, max_wait 150 ms), small limits;
- ``guarded``: bearer auth, max_batch 2, max_wait 1 s, max_queue 2 (a lone request waits for a batch-mate,
  so queueing, queue-full, cancellation, deadlines and the SIGTERM drain can be observed); its last test
  stops it.

A third, ``ops`` (started for the operations tests at the end), has small admission bounds, image URLs, a
Redis result store (a real ``redis-server`` started by the ``redis_url`` fixture) and a drain grace period.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from mmx_fast import ExplainConfig, Explainer  # noqa: E402
from mmx_fast.serve.batcher import Batcher, QueueFull  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PROMPT = "What is in the image?"
KEY = "test-key-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    # the same thread count as this process, so that single requests reproduce explain() bit for bit
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    env.pop("MMX_FAST_DEBUG", None)
    return env


def _serve_cmd(model_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mmx_fast",
        "serve",
        "--model",
        str(model_dir),
        "--log-level",
        "warning",
        *args,
    ]


class Server:
    def __init__(self, model_dir: Path, *args: str, key: str | None = None) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = key
        self.log = open(model_dir.parent / f"server-{self.port}.log", "w+b")  # noqa: SIM115
        self.proc = subprocess.Popen(
            _serve_cmd(model_dir, "--port", str(self.port), *args),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=REPO,
        )

    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def wait_ready(self, timeout: float = 240.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


def _save_tiny(folder: Path) -> None:
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("qwen2_vl")
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    processor.to_json_file(str(folder / "processor_config.json"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve") / "tiny-qwen"
    _save_tiny(folder)
    return folder


@pytest.fixture(scope="module")
def servers(model_dir):
    key_file = model_dir.parent / "keys.txt"
    key_file.write_text(f"# one key per line\n{KEY}\n")
    limits = ["--max-body-bytes", "300000", "--max-image-pixels", "120000", "--max-aspect-ratio", "8",
              "--max-prompt-chars", "1000", "--max-prompt-tokens", "64", "--max-answer-tokens", "16",
              "--max-new-tokens", "8"]  # fmt: skip
    store = model_dir.parent / "kept"  # a directory store: tests/test_serve.py::test_kept_results_are_shared
    main = Server(
        model_dir, "--max-batch", "8", "--max-wait-ms", "150", "--result-store", f"dir:{store}", *limits
    )
    guarded = Server(
        model_dir, "--api-key-file", str(key_file), "--max-batch", "2", "--max-wait-ms", "1000",
        "--max-queue", "2", "--drain-grace-s", "0", "--access-log", "text", key=KEY,
    )  # fmt: skip
    try:
        main.wait_ready()
        guarded.wait_ready()
        yield {"main": main, "guarded": guarded}
    finally:
        main.stop()
        guarded.stop()


@pytest.fixture(scope="module")
def main(servers) -> Server:
    return servers["main"]


@pytest.fixture(scope="module")
def guarded(servers) -> Server:
    return servers["guarded"]


@pytest.fixture(scope="module")
def local():
    """The same tiny model in this process: the oracle for every response."""
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("qwen2_vl")
    cache: dict = {}

    def explainer(cfg: ExplainConfig) -> Explainer:
        if cfg not in cache:
            cache[cfg] = Explainer(model, processor, cfg)
        return cache[cfg]

    return explainer


def _image(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _b64(img: Image.Image) -> str:
    return base64.b64encode(_png(img)).decode()


def _body(img, prompt=PROMPT, answer=None, config=None, **kw) -> dict:
    body = {"image": _b64(img), "prompt": prompt, "maps_format": "float32", **kw}
    if answer is not None:
        body["answer"] = answer
    if config is not None:
        body["config"] = config
    return body


def _maps(resp: dict) -> torch.Tensor:
    from mmx_fast.client import decode_maps

    return decode_maps(resp["maps"])


def _default_cfg(**kw) -> ExplainConfig:
    return ExplainConfig(
        method="msea-arc", max_new_tokens=8, **kw
    )  # main's default: min(32, --max-new-tokens)


def _metric(text: str, name: str, labels: str = "") -> float:
    pat = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    m = re.search(r"^" + pat + "$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def _post_many(url: str, bodies: list[dict], headers=None) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as c:
        return await asyncio.gather(*(c.post(url + "/v1/explain", json=b, headers=headers) for b in bodies))


# ---------------------------------------------------------------------------------------------------
# main server: correctness, batching, limits
def test_health_ready_docs(main):
    assert httpx.get(main.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(main.url + "/readyz").json()
    assert ready["status"] == "ready" and ready["max_batch"] == 8
    assert ready["model"]["family"] == "qwen2_vl" and ready["native_ops"]["error"] is None
    schema = httpx.get(main.url + "/openapi.json").json()
    assert "/v1/explain" in schema["paths"] and "/metrics" in schema["paths"]
    assert httpx.get(main.url + "/docs").status_code == 200
    lim = httpx.get(main.url + "/v1/limits").json()
    assert lim["limits"]["max_prompt_tokens"] == 64 and lim["max_batch"] == 8


def test_single_request_equals_explain_exactly(main, local):
    img = _image(90, 70, 1)
    r = httpx.post(main.url + "/v1/explain", json=_body(img, answer="A cat on a mat."), timeout=60)
    assert r.status_code == 200, r.text
    d = r.json()
    exp = local(_default_cfg()).explain(img, PROMPT, "A cat on a mat.")
    assert d["answer_ids"] == exp.answer_ids and d["answer_tokens"] == exp.answer_tokens
    assert d["answer"] == "A cat on a mat." and d["answer_forced"] is True
    assert tuple(d["grid"]) == exp.grid and d["batch_size"] == 1
    assert torch.equal(_maps(d), exp.maps)  # a batch of one is the same computation: bit-identical
    assert set(d["timings"]) == {"queue", "decode", "generate", "forward", "attribution", "encode", "total"}
    # generated answer (no "answer"), another method, uint8 and float16 maps
    cfg = {"method": "tam", "max_new_tokens": 5}
    r = httpx.post(main.url + "/v1/explain", json=_body(img, config=cfg, maps_format="uint8"), timeout=60)
    d = r.json()
    exp = local(ExplainConfig(method="tam", max_new_tokens=5)).explain(img, PROMPT)
    assert d["answer_ids"] == exp.answer_ids and d["answer_forced"] is False
    got = np.frombuffer(base64.b64decode(d["maps"]["data"]), np.uint8).reshape(d["maps"]["shape"])
    np.testing.assert_array_equal(got, np.stack([exp.map_uint8(i) for i in range(len(exp))]))
    r = httpx.post(main.url + "/v1/explain", json=_body(img, answer=[5, 6, 7], maps_format="float16"))
    exp = local(_default_cfg()).explain(img, PROMPT, [5, 6, 7])
    torch.testing.assert_close(_maps(r.json()), exp.maps, atol=1e-3, rtol=0)  # float16 rounding


def test_concurrent_requests_are_batched_and_equal_explain(main, local):
    before = httpx.get(main.url + "/metrics").text
    imgs = [_image(60 + 10 * i, 90 - 5 * i, 10 + i) for i in range(6)]
    answers = ["A dog.", "Two red cars on the road.", [40, 41], None, "Yes.", None]
    prompts = [PROMPT, "Describe the picture.", PROMPT, "Where is the boat?", "Is it a cat?", PROMPT]
    bodies = [_body(im, p, a) for im, p, a in zip(imgs, prompts, answers)]
    rs = asyncio.run(_post_many(main.url, bodies))
    assert [r.status_code for r in rs] == [200] * 6, [r.text for r in rs]
    worst = 0.0
    for im, p, a, r in zip(imgs, prompts, answers, rs):
        d = r.json()
        exp = local(_default_cfg()).explain(im, p, a)
        assert d["answer_ids"] == exp.answer_ids
        # batched rows are padded: equal to the single call within float32 noise
        torch.testing.assert_close(_maps(d), exp.maps, atol=1e-5, rtol=0)
        worst = max(worst, float((_maps(d) - exp.maps).abs().max()))
    assert max(r.json()["batch_size"] for r in rs) > 1
    after = httpx.get(main.url + "/metrics").text
    n = _metric(after, "mmx_fast_batch_size_count") - _metric(before, "mmx_fast_batch_size_count")
    total = _metric(after, "mmx_fast_batch_size_sum") - _metric(before, "mmx_fast_batch_size_sum")
    assert total == 6 and n < 6  # fewer explain_batch calls than requests
    assert _metric(after, "mmx_fast_stage_seconds_count", 'stage="forward"') >= 6
    print(f"max |batched - single| = {worst:.3g}")


def test_a_bad_request_in_a_batch_fails_alone(main, local):
    good = [_image(70, 70, 30 + i) for i in range(3)]
    bodies = [_body(im, answer="A bird.") for im in good]
    truncated = _png(_image(80, 60, 3))[:200]
    bodies.insert(1, {"image": base64.b64encode(truncated).decode(), "prompt": PROMPT})
    # passes every check but fails inside explain_batch: the processor refuses a second image token
    bodies.insert(3, _body(good[0], "what is <|image_pad|> here", answer="A bird."))
    rs = asyncio.run(_post_many(main.url, bodies))
    codes = [r.status_code for r in rs]
    assert codes == [200, 422, 200, 422, 200], [r.text for r in rs]
    assert rs[1].json()["error"]["field"] == "image"
    assert "image_pad" in rs[3].json()["error"]["message"]
    for im, r in zip(good, [rs[0], rs[2], rs[4]]):
        exp = local(_default_cfg()).explain(im, PROMPT, "A bird.")
        torch.testing.assert_close(_maps(r.json()), exp.maps, atol=1e-5, rtol=0)


def _err(r) -> tuple[int, str | None]:
    return r.status_code, r.json()["error"]["field"]


def test_every_limit_names_its_field(main):
    url = main.url + "/v1/explain"
    img = _image(64, 48, 5)

    def post(**kw):
        return httpx.post(url, json=_body(img, **kw), timeout=60)

    # body bytes: refused from Content-Length, before the body is read
    r = httpx.post(url, content=b"{" + b" " * 300_001 + b"}", headers={"content-type": "application/json"})
    assert _err(r) == (413, "body")
    r = httpx.post(url, json={"image": _b64(Image.new("RGB", (400, 301))), "prompt": PROMPT})
    assert _err(r) == (413, "image") and "120000 pixels" in r.json()["error"]["message"]
    r = httpx.post(url, json={"image": _b64(Image.new("RGB", (270, 30))), "prompt": PROMPT})
    assert _err(r) == (422, "image") and "aspect ratio" in r.json()["error"]["message"]
    assert _err(post(prompt="x" * 1001)) == (413, "prompt")
    assert _err(post(prompt="one two three four five six seven eight nine ten " * 8)) == (413, "prompt")
    assert _err(post(prompt=" ")) == (422, "prompt")
    assert _err(post(answer=list(range(17)))) == (413, "answer")
    assert _err(post(answer="one two three " * 6)) == (413, "answer")
    r = post(answer=[1, 10**9])
    assert _err(r) == (422, "answer") and "out of range" in r.json()["error"]["message"]
    assert _err(post(config={"max_new_tokens": 9})) == (413, "config.max_new_tokens")
    assert _err(post(config={"scales": [0.25, 0.5, 0.75, 1.0, 1.5]})) == (413, "config.scales")
    assert _err(post(config={"scales": [1.0, 3.0]})) == (413, "config.scales")
    assert _err(post(config={"scales": [0.5]})) == (422, "config.scales")
    assert _err(post(config={"top_k": 99})) == (422, "config.top_k")
    assert _err(post(config={"backend": "torch"})) == (422, "config")
    assert _err(post(maps_format="png")) == (422, "maps_format")
    assert _err(post(colour="red")) == (422, "colour")
    assert _err(post(timeout_s=-1)) == (422, "timeout_s")
    assert _err(httpx.post(url, json={"image": _b64(img)})) == (422, "prompt")
    assert _err(httpx.post(url, json={"image": "not base64!", "prompt": PROMPT})) == (422, "image")
    r = httpx.post(url, json={"image": "http://127.0.0.1:1/cat.png", "prompt": PROMPT})
    assert _err(r) == (422, "image") and "--allow-image-urls" in r.json()["error"]["message"]
    assert httpx.post(url, content=b"hello", headers={"content-type": "text/plain"}).status_code == 415
    metrics = httpx.get(main.url + "/metrics").text
    assert _metric(metrics, "mmx_fast_errors_total", 'kind="too_large"') >= 8
    assert _metric(metrics, "mmx_fast_errors_total", 'kind="invalid"') >= 10


def test_multipart_upload_keep_report_and_client(main, local, tmp_path):
    from mmx_fast.client import ServerError, explain

    img = _image(84, 56, 7)
    files = {"image": ("photo.png", _png(img), "image/png")}
    data = {"prompt": PROMPT, "answer_ids": "[50, 51, 52]", "maps_format": "float32", "keep": "true",
            "overlays": "true", "config": '{"method": "logit-lens"}'}  # fmt: skip
    r = httpx.post(main.url + "/v1/explain", files=files, data=data, timeout=60)
    assert r.status_code == 200, r.text
    d = r.json()
    exp = local(ExplainConfig(method="logit-lens", max_new_tokens=8, keep_scale_maps=True)).explain(
        img, PROMPT, [50, 51, 52]
    )
    assert torch.equal(_maps(d), exp.maps)
    assert len(d["overlays"]) == 3
    assert Image.open(io.BytesIO(base64.b64decode(d["overlays"][0]))).size == img.size
    html = httpx.get(main.url + d["report_url"])
    assert html.status_code == 200 and "<html" in html.text.lower()
    z = np.load(io.BytesIO(httpx.get(main.url + d["npz_url"]).content))
    np.testing.assert_array_equal(z["maps"], exp.maps.numpy())
    assert httpx.get(main.url + "/v1/explain/nope/report.html").status_code == 404
    # the Python client: a path (its file bytes), a PIL image; errors as ServerError
    path = tmp_path / "p.png"
    img.save(path)
    got = explain(main.url, path, PROMPT, answer="A small dog.")
    ref = local(_default_cfg()).explain(img, PROMPT, "A small dog.")
    assert got.answer_ids == ref.answer_ids and torch.equal(got.maps, ref.maps)
    assert got.image.size == img.size and got.overlay(0).size == img.size
    with pytest.raises(ServerError) as e:
        explain(main.url, img, PROMPT, answer=list(range(40)))
    assert e.value.status == 413 and e.value.field == "answer"


def test_refuses_public_bind_without_auth(model_dir, capsys):
    from mmx_fast.cli import main as cli

    assert cli(["serve", "--model", str(model_dir), "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "--api-key-file" in err and "--insecure-no-auth" in err
    short = model_dir.parent / "short.txt"
    short.write_text("abc\n")
    assert cli(["serve", "--model", str(model_dir), "--api-key-file", str(short)]) == 2
    assert "16 characters" in capsys.readouterr().err
    assert cli(["serve", "--model", str(model_dir), "--max-aspect-ratio", "0.5"]) == 2
    assert "max_aspect_ratio" in capsys.readouterr().err


def test_operations_options_are_checked_before_serving(model_dir, capsys, tmp_path):
    from mmx_fast.cli import main as cli

    base = ["serve", "--model", str(model_dir)]
    assert cli([*base, "--result-store", "s3://bucket"]) == 2
    assert "--result-store 's3://bucket' is not allowed" in capsys.readouterr().err
    assert cli([*base, "--result-store", "redis://127.0.0.1:1/0"]) == 2  # nothing listens on port 1
    assert "cannot be reached" in capsys.readouterr().err
    assert cli([*base, "--max-inflight-bytes", "1000", "--max-body-bytes", "2000"]) == 2
    assert "max_inflight_bytes=1000" in capsys.readouterr().err
    assert cli([*base, "--drain-grace-s", "-1"]) == 2
    assert "drain_grace_s" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert cli([*base, "--result-store", f"dir:{tmp_path / 'file'}"]) == 2
    assert "is not a directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# guarded server: auth, queueing, backpressure, cancellation, deadlines, drain
def test_auth(guarded, local):
    url = guarded.url
    img = _image(64, 64, 9)
    body = _body(img, answer="A cat.")
    assert httpx.get(url + "/healthz").status_code == 200  # probes stay open
    assert httpx.get(url + "/readyz").status_code == 200
    r = httpx.post(url + "/v1/explain", json=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["kind"] == "unauthorized"
    bad = {"Authorization": "Bearer wrong-key-0123456789abcdef"}
    assert httpx.post(url + "/v1/explain", json=body, headers=bad).status_code == 401
    assert httpx.get(url + "/metrics").status_code == 401
    # two at once: a full batch of 2 runs at once (a lone request would wait max_wait_ms for a mate)
    rs = asyncio.run(_post_many(url, [body, body], headers=guarded.headers()))
    assert [r.status_code for r in rs] == [200, 200]
    assert [r.json()["batch_size"] for r in rs] == [2, 2]
    exp = local(ExplainConfig(max_new_tokens=32)).explain(img, PROMPT, "A cat.")
    torch.testing.assert_close(_maps(rs[0].json()), exp.maps, atol=1e-5, rtol=0)


def _depth(server: Server) -> int:
    return httpx.get(server.url + "/readyz").json().get("queue_depth", -1)


def _wait_depth(server: Server, n: int, timeout: float = 20) -> None:
    t0 = time.monotonic()
    while _depth(server) < n:
        assert time.monotonic() - t0 < timeout, f"queue never reached {n}"
        time.sleep(0.02)


def _start_posts(server: Server, bodies: list[dict]) -> tuple[threading.Thread, list]:
    out: list = []
    t = threading.Thread(
        target=lambda: out.extend(asyncio.run(_post_many(server.url, bodies, server.headers())))
    )
    t.start()
    return t, out


def test_queue_full_is_503_with_retry_after(guarded):
    img = _image(64, 64, 11)
    # two configs cannot share a batch: both wait in the queue (max_queue 2) for a batch-mate
    t, out = _start_posts(guarded, [_body(img, answer="A.", config={"method": "tam"}),
                                    _body(img, answer="B.", config={"method": "logit-lens"})])  # fmt: skip
    _wait_depth(guarded, 2)
    r = httpx.post(guarded.url + "/v1/explain", json=_body(img, answer="C."), headers=guarded.headers())
    assert r.status_code == 503 and r.json()["error"]["kind"] == "queue_full"
    assert int(r.headers["retry-after"]) >= 1
    t.join(120)
    assert [x.status_code for x in out] == [200, 200]  # the queued ones were served


def test_client_disconnect_cancels_queued_work(guarded):
    metrics = lambda: httpx.get(guarded.url + "/metrics", headers=guarded.headers()).text  # noqa: E731
    before = metrics()
    body = httpx.Request("POST", guarded.url + "/v1/explain", json=_body(_image(64, 64, 12), answer="X."),
                         headers=guarded.headers())  # fmt: skip
    raw = b"".join(
        [f"POST /v1/explain HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n".encode(),
         b"Content-Type: application/json\r\n", f"Content-Length: {len(body.content)}\r\n\r\n".encode(),
         body.content]
    )  # fmt: skip
    with socket.create_connection(("127.0.0.1", guarded.port)) as s:
        s.sendall(raw)
        _wait_depth(guarded, 1)  # queued, waiting for a batch-mate
    t0 = time.monotonic()
    while _metric(metrics(), "mmx_fast_errors_total", 'kind="cancelled"') < 1:
        assert time.monotonic() - t0 < 20, "the disconnect was not noticed"
        time.sleep(0.05)
    assert _depth(guarded) == 0
    time.sleep(1.2)  # past max_wait_ms: a request still queued would have run by now
    after = metrics()
    assert _metric(after, "mmx_fast_batch_size_count") == _metric(before, "mmx_fast_batch_size_count")
    assert _metric(after, "mmx_fast_explanations_total") == _metric(before, "mmx_fast_explanations_total")


def test_deadline_gives_504_and_drops_queued_work(guarded):
    body = _body(_image(64, 64, 13), answer="Y.", timeout_s=0.3)
    r = httpx.post(guarded.url + "/v1/explain", json=body, headers=guarded.headers())
    assert r.status_code == 504 and r.json()["error"]["kind"] == "timeout"
    assert _depth(guarded) == 0


def test_text_access_log_line(guarded):
    r = httpx.get(guarded.url + "/v1/limits", headers={"X-Request-ID": "text-log-1"})
    assert r.status_code == 401 and r.json()["error"]["request_id"] == "text-log-1"
    time.sleep(0.3)
    line = next(x for x in guarded.output().splitlines() if "request_id=text-log-1" in x)
    assert re.match(
        r'^127\.0\.0\.1:\d+ "GET /v1/limits" 401 [0-9.]+ms in=0 out=\d+ error=unauthorized ', line
    ), line


def test_sigterm_drains_every_queued_request_and_exits_0(guarded):
    img = _image(64, 64, 14)
    t, out = _start_posts(guarded, [_body(img, answer="P.", config={"method": "tam"}),
                                    _body(img, answer="Q.", config={"method": "logit-lens"})])  # fmt: skip
    _wait_depth(guarded, 2)
    guarded.proc.send_signal(signal.SIGTERM)
    # it stops accepting at once (the queued requests still wait for max_wait_ms)
    t0 = time.monotonic()
    refused = False
    while time.monotonic() - t0 < 0.8 and not refused:
        try:
            httpx.get(guarded.url + "/healthz", timeout=0.5)
            time.sleep(0.05)
        except httpx.HTTPError:
            refused = True
    t.join(120)
    assert [x.status_code for x in out] == [200, 200], [x.text for x in out]
    assert guarded.proc.wait(60) == 0, guarded.output()
    assert refused


# ---------------------------------------------------------------------------------------------------
# the batcher alone (no server)
def test_batcher_groups_by_config_isolates_failures_and_bounds_the_queue():
    calls = []

    def run(cfg, images, prompts, answers):
        calls.append((cfg.method, list(images)))
        if "bad" in images:
            raise ValueError("bad image")
        return [f"{cfg.method}:{im}" for im in images]

    async def go():
        b = Batcher(run, max_batch=3, max_wait_ms=200, max_queue=5)
        a, t = ExplainConfig(method="msea-arc"), ExplainConfig(method="tam")
        items = [b.submit(im, "p", None, c) for im, c in [("1", a), ("2", t), ("bad", a), ("3", a), ("4", a)]]
        with pytest.raises(QueueFull):
            b.submit("6", "p", None, a)
        results = await asyncio.gather(*(it.future for it in items), return_exceptions=True)
        b.stop()
        return results

    results = asyncio.run(go())
    assert results[0] == "msea-arc:1" and results[1] == "tam:2" and results[3] == "msea-arc:3"
    assert results[4] == "msea-arc:4"
    assert isinstance(results[2], ValueError)
    # first batch: the three oldest msea-arc requests (max_batch), failing, then re-run one by one
    assert calls[0] == ("msea-arc", ["1", "bad", "3"])
    assert calls[1:4] == [("msea-arc", ["1"]), ("msea-arc", ["bad"]), ("msea-arc", ["3"])]
    assert sorted(calls[4:]) == [("msea-arc", ["4"]), ("tam", ["2"])]


def test_bind_rules_and_ray_arguments(tmp_path):
    from mmx_fast.serve import ServeError, check_bind, is_local
    from mmx_fast.serve.ray_app import settings_from_args

    assert is_local("127.0.0.1") and is_local("::1") and is_local("localhost") and not is_local("0.0.0.0")
    check_bind("127.0.0.1", False, False)  # loopback: auth may be off
    check_bind("0.0.0.0", True, False)  # keys given
    check_bind("0.0.0.0", False, True)  # explicitly waived
    with pytest.raises(ServeError, match="--api-key-file"):
        check_bind("10.1.2.3", False, False)
    keys = tmp_path / "k"
    keys.write_text(KEY + "\n")
    # what `serve run mmx_fast.serve.ray_app:build_app key=value ...` passes: strings
    settings, opts = settings_from_args(
        {"model": "tiny:qwen2_vl", "replicas": "3", "num_gpus": "1", "max_batch": "16", "max_wait_ms": "5",
         "allow_image_urls": "true", "max_image_pixels": "1000000", "api_key_file": str(keys)}
    )  # fmt: skip
    assert opts == {"replicas": 3, "num_cpus": 1.0, "num_gpus": 1.0}
    assert settings.max_batch == 16 and settings.max_wait_ms == 5.0 and settings.allow_image_urls is True
    assert settings.limits.max_image_pixels == 1_000_000 and settings.api_keys == (KEY,)
    with pytest.raises(ValueError, match="colour"):
        settings_from_args({"model": "x", "colour": "red"})


def test_image_url_fetch_is_bounded(tmp_path):
    """--allow-image-urls: the fetch is bounded by max_body_bytes and errors name the field."""
    import functools
    import http.server

    from mmx_fast.serve.app import _fetch_image_url
    from mmx_fast.serve.limits import ApiError, Limits

    (tmp_path / "small.png").write_bytes(_png(_image(20, 20, 0)))
    (tmp_path / "big.bin").write_bytes(b"x" * 5000)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        limits = Limits(max_body_bytes=4096)
        assert (
            asyncio.run(_fetch_image_url(base + "/small.png", limits))
            == (tmp_path / "small.png").read_bytes()
        )
        for path, status in (("/big.bin", 413), ("/missing.png", 422)):
            with pytest.raises(ApiError) as e:
                asyncio.run(_fetch_image_url(base + path, limits))
            assert (e.value.status, e.value.field) == (status, "image")
    finally:
        httpd.shutdown()


# ---------------------------------------------------------------------------------------------------
# hostile inputs on the service (issue 21): deep JSON, lone surrogates, EXIF orientation
def test_deeply_nested_json_is_422_not_500(main):
    url = main.url + "/v1/explain"
    deep = "[" * 100_000 + "]" * 100_000
    img = _b64(_image(64, 48, 40))
    cases = [
        deep,  # the whole body
        '{"image": "' + img + '", "prompt": "hi", "config": {"scales": ' + deep + "}}",  # inside config
        '{"image": "' + img + '", "prompt": "hi", "answer": ' + "[" * 40 + "]" * 40 + "}",  # over the limit
    ]
    for body in cases:
        r = httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60)
        assert _err(r) == (422, "body") and "nests JSON deeper" in r.json()["error"]["message"], r.text
    files = {"image": ("x.png", _png(_image(64, 48, 40)), "image/png")}
    r = httpx.post(url, files=files, data={"prompt": "hi", "config": deep}, timeout=60)
    assert _err(r) == (422, "config") and "nests JSON deeper" in r.json()["error"]["message"]


def test_lone_surrogate_is_422_naming_the_field(main):
    import json

    img = _image(64, 48, 41)
    for field, body in (
        ("prompt", _body(img, prompt="what \ud800 is it")),
        ("answer", _body(img, answer="a \udfff")),
    ):
        r = httpx.post(main.url + "/v1/explain", content=json.dumps(body),
                       headers={"content-type": "application/json"}, timeout=60)  # fmt: skip
        assert _err(r) == (422, field) and "surrogate" in r.json()["error"]["message"], r.text


def test_exif_orientation_is_applied_as_in_the_library(main, local, tmp_path):
    """An orientation-6 JPEG (stored 96 x 48, shown 48 x 96): the service decodes it as the library does."""
    from mmx_fast.images import load_image

    stored = _image(96, 48, 42)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    stored.save(path, format="JPEG", exif=exif, quality=95)
    upright = load_image(str(path))
    assert upright.size == (48, 96)
    data = path.read_bytes()
    exp = local(_default_cfg()).explain(upright, PROMPT, "A dog.")
    body = {
        "image": base64.b64encode(data).decode(),
        "prompt": PROMPT,
        "answer": "A dog.",
        "maps_format": "float32",
    }
    r1 = httpx.post(main.url + "/v1/explain", json=body, timeout=60)
    files = {"image": ("rotated.jpg", data, "image/jpeg")}
    form = {"prompt": PROMPT, "answer": "A dog.", "maps_format": "float32"}
    r2 = httpx.post(main.url + "/v1/explain", files=files, data=form, timeout=60)
    for r in (r1, r2):
        assert r.status_code == 200, r.text
        assert r.json()["image_size"] == [48, 96]
        torch.testing.assert_close(_maps(r.json()), exp.maps, atol=1e-5, rtol=0)


def test_overlay_encoding_stops_at_the_deadline(local):
    from mmx_fast.serve.encode import overlays
    from mmx_fast.serve.limits import ApiError

    img = _image(64, 48, 51)
    exp = local(_default_cfg()).explain(img, PROMPT, "A red car.")
    pngs = overlays(exp, time.perf_counter() + 60, 60.0)
    assert len(pngs) == len(exp) and Image.open(io.BytesIO(base64.b64decode(pngs[0]))).size == img.size
    with pytest.raises(ApiError) as e:
        overlays(exp, time.perf_counter() - 0.001, 2.0)  # the deadline has passed: nothing more is encoded
    assert (e.value.status, e.value.field) == (504, "overlays") and "0 of" in e.value.message


# ---------------------------------------------------------------------------------------------------
# request ids, access log, metrics, OpenAI-format requests (main server)
def _access_lines(server: Server) -> list[dict]:
    import json

    return [json.loads(line) for line in server.output().splitlines() if line.startswith('{"id"')]


def test_request_id_traceparent_and_access_log(main):
    img = _image(64, 48, 43)
    trace = "0af7651916cd43dd8448eb211c80319c"
    hdrs = {"X-Request-ID": "order-7-retry-2", "traceparent": f"00-{trace}-b7ad6b7169203331-01"}
    r = httpx.post(main.url + "/v1/explain", json=_body(img, answer="A cat."), headers=hdrs, timeout=60)
    assert r.status_code == 200 and r.headers["x-request-id"] == "order-7-retry-2"
    assert r.json()["request_id"] == "order-7-retry-2"
    bad = httpx.post(
        main.url + "/v1/explain", json=_body(img, prompt=" "), headers={"X-Request-ID": "no spaces!"}
    )
    rid = bad.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid) and bad.json()["error"]["request_id"] == rid  # generated
    time.sleep(0.3)  # the access log line is written after the response
    lines = {d["id"]: d for d in _access_lines(main)}
    ok, err = lines["order-7-retry-2"], lines[rid]
    assert ok["route"] == "/v1/explain" and ok["status"] == 200 and ok["trace_id"] == trace
    assert ok["batch_size"] == 1 and ok["answer_tokens"] == 3 and ok["config"]["method"] == "msea-arc"
    assert ok["bytes_in"] == len(httpx.Request("POST", "/", json=_body(img, answer="A cat.")).content)
    assert ok["bytes_out"] == len(r.content) and ok["queue_ms"] >= 0 and ok["model_ms"] > 0
    assert err["status"] == 422 and err["error"] == "invalid" and err["client"].startswith("127.0.0.1:")


def test_metrics_an_sre_pages_on(main):
    text = httpx.get(main.url + "/metrics").text
    for name in ("process_resident_memory_bytes", "process_open_fds", "mmx_fast_http_requests_in_flight",
                 "mmx_fast_admission_inflight_bytes", "mmx_fast_batch_reruns_total"):  # fmt: skip
        assert re.search(rf"^{name} [0-9.e+]+$", text, re.M), name
    assert _metric(text, "mmx_fast_http_connections") >= 1  # this scrape's own connection
    assert _metric(text, "mmx_fast_http_requests_in_flight") == 1  # this scrape
    for kind in ("internal", "store", "overloaded", "draining", "timeout"):  # present before any such error
        assert re.search(rf'^mmx_fast_errors_total\{{kind="{kind}"\}} ', text, re.M), kind
    m = re.search(r"^mmx_fast_build_info\{(.*)\} 1.0$", text, re.M)
    assert m and 'model_type="qwen2_vl"' in m.group(1) and 'dtype="float32"' in m.group(1)
    assert 'device="cpu"' in m.group(1) and 'version="' in m.group(1)
    # refusals have a latency series of their own (here the 413s / 422s of the limits test, and this one)
    httpx.post(
        main.url + "/v1/explain",
        content=b"{" + b" " * 300_001 + b"}",
        headers={"content-type": "application/json"},
    )
    text = httpx.get(main.url + "/metrics").text
    assert _metric(text, "mmx_fast_http_request_seconds_count", 'route="/v1/explain",status="413"') >= 1


def test_a_failing_batch_is_counted_and_logged_with_request_ids(main):
    before = _metric(httpx.get(main.url + "/metrics").text, "mmx_fast_batch_reruns_total")
    good = _body(_image(70, 70, 44), answer="A bird.")
    poison = _body(_image(70, 70, 45), "what is <|image_pad|> here", answer="A bird.")

    async def go():
        async with httpx.AsyncClient(timeout=120) as c:
            return await asyncio.gather(
                c.post(main.url + "/v1/explain", json=good, headers={"X-Request-ID": "good-1"}),
                c.post(main.url + "/v1/explain", json=poison, headers={"X-Request-ID": "poison-1"}),
            )

    rs = asyncio.run(go())
    assert [r.status_code for r in rs] == [200, 422]
    assert rs[0].json()["batch_size"] == 2  # they shared a batch (max_wait_ms 150)
    assert _metric(httpx.get(main.url + "/metrics").text, "mmx_fast_batch_reruns_total") == before + 1
    lines = [x for x in main.output().splitlines() if "re-running its requests one by one" in x]
    assert any("good-1" in x and "poison-1" in x for x in lines), lines


def _chat_body(img, text=PROMPT, answer=None, **kw) -> dict:
    url = "data:image/png;base64," + _b64(img)
    body = {"model": "Qwen/Qwen2-VL-2B-Instruct", "temperature": 0, "max_tokens": 64,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": text}]}],
            "maps_format": "float32", **kw}  # fmt: skip
    if answer is not None:
        body["answer"] = answer
    return body


def test_openai_format_explanations(main, local):
    img = _image(80, 64, 46)
    exp = local(_default_cfg()).explain(img, PROMPT, "A cat on a mat.")
    forms = ["A cat on a mat.", {"role": "assistant", "content": "A cat on a mat."}, list(exp.answer_ids)]
    for answer in forms:
        r = httpx.post(main.url + "/v1/explanations", json=_chat_body(img, answer=answer), timeout=60)
        assert r.status_code == 200, r.text
        d = r.json()
        assert d["answer_ids"] == exp.answer_ids and d["prompt"] == PROMPT  # text answers come back as ids
        assert torch.equal(_maps(d), exp.maps)
    url = main.url + "/v1/explanations"
    two = _chat_body(img)
    two["messages"][0]["content"].append(two["messages"][0]["content"][0])
    sys_msg = _chat_body(img)
    sys_msg["messages"].insert(0, {"role": "system", "content": "Be brief."})
    remote = _chat_body(img)
    remote["messages"][0]["content"][0]["image_url"]["url"] = "http://127.0.0.1:1/cat.png"
    for body, field in ((two, "messages[0].content"), (sys_msg, "messages"), (remote, "image"),
                        ({**_chat_body(img), "colour": "red"}, "colour")):  # fmt: skip
        r = httpx.post(url, json=body, timeout=60)
        assert _err(r) == (422, field), r.text
    assert "--allow-image-urls" in httpx.post(url, json=remote).json()["error"]["message"]


# ---------------------------------------------------------------------------------------------------
# the result store
def test_directory_store_is_atomic_expires_and_is_capped(tmp_path):
    from mmx_fast.serve.store import DirectoryStore

    foreign = tmp_path / "notes.txt"
    foreign.write_text("not ours")
    st = DirectoryStore(tmp_path, ttl_s=3600, max_bytes=2500)
    ids = [f"{i:032x}" for i in range(3)]
    for i, rid in enumerate(ids):
        st.put(rid, {"maps.npz": bytes([i]) * 500, "report.html": b"<html>" + bytes([i]) * 494})
        os.utime(tmp_path / f"{rid}.maps.npz", (1e9 + i, 1e9 + i))  # oldest first, whatever the clock
        os.utime(tmp_path / f"{rid}.report.html", (1e9 + i, 1e9 + i))
    st.ttl_s = 0  # no expiry while checking the cap
    st.put("f" * 32, {"maps.npz": b"x" * 500})
    assert (
        st.get(ids[0], "maps.npz") is None and st.get(ids[2], "maps.npz") == bytes([2]) * 500
    )  # oldest evicted
    assert sum(p.stat().st_size for p in tmp_path.iterdir() if p != foreign) <= 2500
    assert foreign.read_text() == "not ours" and not list(tmp_path.glob(".*.tmp"))
    assert st.get("../notes", "maps.npz") is None and st.get(ids[2], "../../x") is None
    st.ttl_s = 60  # the files are dated 2001: expired
    assert st.get(ids[2], "maps.npz") is None and not (tmp_path / f"{ids[2]}.maps.npz").exists()
    with pytest.raises(ValueError, match="cap"):
        st.put("e" * 32, {"maps.npz": b"x" * 3000})


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    """A real redis-server on a free port (Debian's redis-server package), no persistence."""
    import shutil

    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed: apt-get install redis-server (see .ci/run)"
    port = _free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    import redis

    client = redis.Redis(port=port)
    t0 = time.monotonic()
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() - t0 < 30 and proc.poll() is None, "redis-server did not start"
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(30)


@pytest.fixture(scope="module")
def ops(model_dir, redis_url):
    server = Server(
        model_dir, "--result-store", redis_url, "--allow-image-urls", "--max-overlay-pixels", "200000",
        "--max-body-bytes", "6000000", "--max-inflight-bytes", "8000000", "--max-parsing", "1",
        "--max-image-pixels", "1200000", "--drain-grace-s", "6", "--max-wait-ms", "20",
    )  # fmt: skip
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def test_kept_results_are_shared_by_processes_with_the_same_store(main, ops, redis_url, model_dir, local):
    """keep: true through one server, served by a second process configured with the same store (a
    directory for main, Redis for ops); a 1100 px image (over the kept-image size) is kept too."""
    img = _image(90, 60, 47)
    r1 = httpx.post(main.url + "/v1/explain", json=_body(img, answer="A cat.", keep=True), timeout=60)
    big = _image(1100, 600, 48)
    r2 = httpx.post(ops.url + "/v1/explain", json=_body(big, answer="A cat.", keep=True), timeout=120)
    assert r1.status_code == 200 and r2.status_code == 200, (r1.text, r2.text)
    replicas = [Server(model_dir, "--result-store", f"dir:{model_dir.parent / 'kept'}"),
                Server(model_dir, "--result-store", redis_url)]  # fmt: skip
    try:
        for rep, r, im in zip(replicas, (r1, r2), (img, big)):
            rep.wait_ready()
            d = r.json()
            html = httpx.get(rep.url + d["report_url"])
            assert html.status_code == 200 and "<html" in html.text.lower()
            z = np.load(io.BytesIO(httpx.get(rep.url + d["npz_url"]).content))
            cfg = ExplainConfig(method="msea-arc", max_new_tokens=8 if rep is replicas[0] else 32,
                                keep_scale_maps=True)  # fmt: skip
            exp = local(cfg).explain(im, PROMPT, "A cat.")
            torch.testing.assert_close(torch.from_numpy(z["maps"]), exp.maps, atol=1e-5, rtol=0)
            assert httpx.get(rep.url + "/v1/explain/" + "0" * 32 + "/maps.npz").status_code == 404
    finally:
        for rep in replicas:
            rep.stop()


# ---------------------------------------------------------------------------------------------------
# ops server: overlays bound, URL deadline, admission, drain
def test_overlays_are_bounded_before_the_model_runs(ops):
    img = _image(500, 300, 49)  # 150,000 pixels: one overlay fits max_overlay_pixels=200000, two do not
    r = httpx.post(ops.url + "/v1/explain", json=_body(img, answer=[5], overlays=True), timeout=60)
    assert r.status_code == 200 and len(r.json()["overlays"]) == 1
    r = httpx.post(ops.url + "/v1/explain", json=_body(img, answer=[5, 6], overlays=True), timeout=60)
    assert _err(r) == (413, "overlays") and "max_overlay_pixels" in r.json()["error"]["message"]
    r = httpx.post(
        ops.url + "/v1/explain", json=_body(img, overlays=True), timeout=60
    )  # generated: budget 32
    assert _err(r) == (413, "overlays")


def test_image_url_fetch_counts_against_the_request_deadline(ops):
    """A server that drips its answer one byte at a time: the request's own deadline cuts the fetch."""
    state = {"sent": 0, "closed_early": False}
    srv = socket.create_server(("127.0.0.1", 0))

    def drip():
        conn, _ = srv.accept()
        with conn:
            try:
                conn.recv(65536)
                for b in b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nX-Slow: " + b"x" * 200:
                    conn.sendall(bytes([b]))
                    state["sent"] += 1
                    time.sleep(0.1)
            except OSError:
                state["closed_early"] = True

    t = threading.Thread(target=drip, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/slow.png"
    r = httpx.post(
        ops.url + "/v1/explain", json={"image": url, "prompt": PROMPT, "timeout_s": 1.5}, timeout=60
    )
    assert r.status_code == 504 and r.json()["error"]["field"] == "image", r.text
    assert "deadline of 1.5 s" in r.json()["error"]["message"]
    t.join(30)
    srv.close()
    assert state["closed_early"] and state["sent"] < 240  # it never got to the end of its headers


def test_a_flood_of_large_bodies_stays_within_the_memory_bound(ops):
    """A scaled-down flood (benches/bench_serve.py --scenario flood runs 96 x 9 MB): 24 clients at once, each
    with a ~4 MB body, against max_inflight_bytes 8 MB and one parse slot. Most are refused with 503 +
    Retry-After before their body is read; the server's resident memory stays within a bound set by the
    admission settings, not by the number of clients."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("serve_load", REPO / "benches" / "serve_load.py")
    load = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load)
    RssSampler, flood, noise_png_body, rss_bytes = (
        load.RssSampler,
        load.flood,
        load.noise_png_body,
        load.rss_bytes,
    )

    body = noise_png_body(1040)  # a ~3.2 MB PNG, ~4.3 MB of JSON
    assert 4_000_000 < len(body) < 6_000_000
    idle = rss_bytes(ops.proc.pid)
    with RssSampler(ops.proc.pid) as rss:
        results = asyncio.run(flood(ops.url, body, 24))
    codes = [s for s, _, _ in results]
    assert codes.count(200) >= 1 and codes.count(503) >= 12, codes
    assert set(codes) <= {200, 503}, codes
    assert all(int(ra) >= 1 for s, _, ra in results if s == 503)
    time.sleep(0.3)
    refused = [d for d in _access_lines(ops) if d["status"] == 503 and d.get("error") == "overloaded"]
    assert len(refused) >= 12 and all(
        d["bytes_in"] == 0 for d in refused
    )  # answered without reading the body
    # 24 bodies held and parsed at once would cost 24 x (4.3 MB body + 4.3 MB text + 3.2 MB PNG + 3.2 MB
    # pixels) = ~360 MB; admitted, at most 8 MB of bodies plus one body being parsed are held
    grew = (rss.peak - idle) / 2**20
    print(f"flood: idle RSS {idle / 2**20:.0f} MiB, peak +{grew:.0f} MiB, {codes.count(503)} x 503")
    assert grew < 120, f"RSS grew {grew:.0f} MiB during the flood"


def test_chunked_body_is_refused_while_streaming(ops):
    """A body without Content-Length is counted as it streams in: with 5 MB of another request's body
    reserved (its headers announced it; it is still uploading), a chunked body is refused with 503 once it
    would pass max_inflight_bytes (8 MB), although it is still under max_body_bytes (6 MB)."""
    held = socket.create_connection(("127.0.0.1", ops.port))
    held.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 5000000\r\n\r\n{")  # fmt: skip
    try:
        t0 = time.monotonic()
        while _metric(httpx.get(ops.url + "/metrics").text, "mmx_fast_admission_inflight_bytes") < 5_000_000:
            assert time.monotonic() - t0 < 20, "the held request was not admitted"
            time.sleep(0.05)

        def gen():
            yield b'{"prompt": "hi", "image": "'
            for _ in range(5):
                yield b"A" * 1_000_000

        r = httpx.post(ops.url + "/v1/explain", content=gen(), headers={"content-type": "application/json"})
        assert r.status_code == 503 and r.json()["error"]["kind"] == "overloaded", r.text
        # a client that asks before uploading (Expect: 100-continue, as curl does) gets the 503 instead of
        # "100 Continue", without sending a byte of its body
        with socket.create_connection(("127.0.0.1", ops.port), timeout=30) as ask:
            ask.sendall(b"POST /v1/explain HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: 4000000\r\nExpect: 100-continue\r\n\r\n")  # fmt: skip
            head = ask.recv(65536)
        assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: " in head.lower(), head[:200]
        assert (
            int(r.headers["retry-after"]) >= 1
            and "max_inflight_bytes=8000000" in r.json()["error"]["message"]
        )
    finally:
        held.close()
    t0 = time.monotonic()  # the held request's client went away: its reservation is released
    while _metric(httpx.get(ops.url + "/metrics").text, "mmx_fast_admission_inflight_bytes") > 0:
        assert time.monotonic() - t0 < 20, "the reservation of a client that left was not released"
        time.sleep(0.05)


def test_drain_is_visible_to_a_balancer_before_the_listener_closes(ops):
    img = _image(64, 64, 50)
    ops.proc.send_signal(signal.SIGTERM)
    ready = httpx.get(ops.url + "/readyz", timeout=5)
    assert ready.status_code == 503 and ready.json()["status"] == "draining"
    r = httpx.post(ops.url + "/v1/explain", json=_body(img, answer="A."), timeout=60)  # still served
    assert r.status_code == 200, r.text
    assert ops.proc.wait(60) == 0, ops.output()
    with pytest.raises(httpx.HTTPError):
        httpx.get(ops.url + "/healthz", timeout=2)
