"""Ray Serve scale-out (``mmx_fast.serve.ray_app``) on a local Ray instance (CPU): two replicas of the app,
one tiny model each, answering over Ray's HTTP proxy exactly as ``Explainer.explain`` does.

Ray is heavy (a ~80 MB wheel, a local cluster that takes tens of seconds to start on 2 cores), so this test
is marked ``ray`` and runs only with ``MMX_FAST_RAY_TESTS=1``: ``make test-ray`` (run by CI) sets it (and installs the
``ray`` extra).
"""

from __future__ import annotations

import asyncio
import os

import pytest
import torch

pytestmark = [
    pytest.mark.ray,
    pytest.mark.skipif(
        os.environ.get("MMX_FAST_RAY_TESTS") != "1",
        reason="Ray tests run with MMX_FAST_RAY_TESTS=1 (make test-ray)",
    ),
]


def test_ray_serve_replicas_answer_like_explain(tmp_path):
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    httpx = pytest.importorskip("httpx")
    from test_serve import PROMPT, _body, _free_port, _image, _maps, _save_tiny

    from mmx_fast import ExplainConfig, Explainer
    from mmx_fast.serve.ray_app import build_app
    from mmx_fast.testing import tiny_model

    model_dir = tmp_path / "tiny-qwen"
    _save_tiny(model_dir)
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # the same arguments `serve run mmx_fast.serve.ray_app:build_app ...` passes (strings)
        app = build_app({"model": str(model_dir), "replicas": "2", "num_cpus": "0.5", "max_batch": "4",
                         "max_wait_ms": "100", "max_prompt_tokens": "64"})  # fmt: skip
        serve.run(app, route_prefix="/", name="mmx-fast")
        url = f"http://127.0.0.1:{port}"
        imgs = [_image(60 + 8 * i, 80, 40 + i) for i in range(6)]
        bodies = [_body(im, answer="A dog on the grass.") for im in imgs]

        async def post_all():
            async with httpx.AsyncClient(timeout=120) as c:
                return await asyncio.gather(*(c.post(url + "/v1/explain", json=b) for b in bodies))

        rs = asyncio.run(post_all())
        assert [r.status_code for r in rs] == [200] * 6, [r.text for r in rs]
        model, processor = tiny_model("qwen2_vl")
        ex = Explainer(model, processor, ExplainConfig(max_new_tokens=32))
        for im, r in zip(imgs, rs):
            exp = ex.explain(im, PROMPT, "A dog on the grass.")
            torch.testing.assert_close(_maps(r.json()), exp.maps, atol=1e-5, rtol=0)
        # the replica's own limits apply behind Ray's proxy
        r = httpx.post(url + "/v1/explain", json=_body(imgs[0], prompt="word " * 100), timeout=60)
        assert r.status_code == 413 and r.json()["error"]["field"] == "prompt"
        assert httpx.get(url + "/readyz", timeout=30).json()["status"] == "ready"
    finally:
        serve.shutdown()
        ray.shutdown()
