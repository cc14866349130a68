"""Hostile-load scenarios for ``mmx-fast serve`` (used by ``bench_serve.py --scenario flood|poison``; the flood
also runs scaled down in tests/test_serve.py): a flood of large request bodies against the memory bound, and
a poison request among good ones against throughput."""

from __future__ import annotations

import asyncio
import base64
import io
import statistics
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def noise_png_body(side: int, prompt: str = "What is in the image?", answer: str = "A picture.") -> bytes:
    """A JSON body whose image is a ``side`` x ``side`` noise PNG (incompressible: ~3 bytes per pixel, ~4 as
    base64): 1500 px gives a ~9 MB body."""
    import json

    img = Image.fromarray(np.random.default_rng(side).integers(0, 255, (side, side, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    b64 = base64.b64encode(buf.getvalue()).decode()
    return json.dumps({"image": b64, "prompt": prompt, "answer": answer, "maps_format": "none"}).encode()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class RssSampler:
    """Samples a process's resident memory every ``every_s`` in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, every_s: float = 0.01) -> None:
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, RuntimeError):
                return
            time.sleep(self.every_s)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


async def flood(url: str, body: bytes, clients: int, headers: dict | None = None, timeout: float = 300):
    """``clients`` concurrent POSTs of ``body`` to /v1/explain: [(status, seconds, Retry-After)]; status 0
    (and the exception's name instead of Retry-After) when the connection closed without an answer."""
    import httpx

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    hdrs = {"content-type": "application/json", **(headers or {})}
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as c:

        async def one():
            t0 = time.perf_counter()
            try:
                r = await c.post(url + "/v1/explain", content=body, headers=hdrs)
            except httpx.HTTPError as e:  # the connection closed before an answer: status 0
                return 0, time.perf_counter() - t0, type(e).__name__
            return r.status_code, time.perf_counter() - t0, r.headers.get("retry-after")

        return await asyncio.gather(*(one() for _ in range(clients)))


def summarize(results) -> dict:
    by: dict[int, list[float]] = {}
    for status, s, _ in results:
        by.setdefault(status, []).append(s)

    def pct(xs, q):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]

    return {
        status: {"n": len(xs), "p50_s": pct(xs, 0.5), "p99_s": pct(xs, 0.99), "mean_s": statistics.mean(xs)}
        for status, xs in sorted(by.items())
    }
