"""Load bench of ``mmx-fast serve``: throughput and latency vs concurrency, dynamic batching on vs off; and
two hostile-load scenarios (``--scenario flood|poison``, see ``flood_main`` / ``poison_main``).

    python benches/bench_serve.py [--model tiny|2b] [--concurrency 1 4 16 64] [--requests N]
                                  [--max-batch 16] [--max-wait-ms 10] [--out table.md]
    python benches/bench_serve.py --scenario flood [--clients 96] [--side 1500]
    python benches/bench_serve.py --scenario poison [--concurrency 16] [--requests 192] [--poison-every 16]

For each setting (batching off = ``--max-batch 1``; on = ``--max-batch N``) a real server is started in a
subprocess (uvicorn, the model built in that process) and driven over HTTP by closed-loop clients: at
concurrency c, c clients each send their next request as soon as the previous one returned. Requests are
the production path: a 224x224 image (a different one per request), a prompt and a forced answer of ~10
tokens, default method (msea-arc, three scales). The servers run ``MMX_BENCH_THREADS`` (default 1) torch
threads. Reported: explanations/s, p50 / p95 latency, the server
process's CPU time per explanation (user + system, from /proc: unlike wall-clock throughput it does not
move when other jobs share the machine), the mean batch size the server formed, and the speed-ups of
batching on over off at the same concurrency (throughput ratio; CPU-per-explanation ratio).

Models: ``tiny`` (``mmx_fast.testing.tiny_model("qwen2_vl")``) and ``2b`` (Qwen2-VL-2B's dimensions with 2
text + 2 vision layers, ``benches/models.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ANSWER = "A red car is parked on the left side of the street."
PROMPT = "Describe the picture in detail."


def _load(model: str):
    if model == "tiny":
        from mmx_fast.testing import tiny_model

        return tiny_model("qwen2_vl")
    from benches.models import qwen2vl_2b_like

    return qwen2vl_2b_like(max_image_side=224)


def _server_main(args) -> int:
    """The server side (``--_server``): the bench model built in this process, served by mmx_fast.serve."""
    from mmx_fast.serve import run
    from mmx_fast.serve.app import ServeSettings
    from mmx_fast.serve.limits import Limits

    if args.production_defaults:  # the flood: every admission / queue / limit setting at its default
        settings = ServeSettings(model=f"bench:{args.model}", port=args.port, access_log="off")
        return run(settings, log_level="warning", load_model=lambda: _load(args.model))
    settings = ServeSettings(
        model=f"bench:{args.model}",
        port=args.port,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=1024,
        # the default generation budget is min(32, max_new_tokens)
        limits=Limits(request_timeout_s=600, max_new_tokens=args.max_new_tokens),
        access_log="off",
    )
    return run(settings, log_level="warning", load_model=lambda: _load(args.model))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bodies(n: int, forced: bool) -> list[dict]:
    from benches.models import bench_image

    out = []
    for i in range(n):
        buf = io.BytesIO()
        bench_image(224, 224, seed=i).save(buf, format="PNG")
        body = {
            "image": base64.b64encode(buf.getvalue()).decode(),
            "prompt": PROMPT,
            "maps_format": "float16",
        }
        if forced:
            body["answer"] = ANSWER
        out.append(body)
    return out


async def _drive(
    url: str, bodies: list[dict], concurrency: int, n: int
) -> tuple[float, list[float], list[int]]:
    import httpx

    latencies: list[float] = []
    batch_sizes: list[int] = []
    next_i = 0
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker():
            nonlocal next_i
            while next_i < n:
                i = next_i
                next_i += 1
                t0 = time.perf_counter()
                r = await client.post(url + "/v1/explain", json=bodies[i % len(bodies)])
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"request {i}: HTTP {r.status_code}: {r.text[:300]}")
                batch_sizes.append(r.json()["batch_size"])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return wall, latencies, batch_sizes


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


class _Server:
    """A bench server in a subprocess: ``python benches/bench_serve.py --_server ...``."""

    def __init__(
        self, model: str, max_batch: int, max_wait_ms: float, max_new_tokens: int, *extra: str
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT))
        # intra-op threads of the server (MMX_BENCH_THREADS, default 1, as the other benches): idle OpenMP
        # threads spin, which would count as CPU time and steal the cores the clients need
        env["OMP_NUM_THREADS"] = os.environ.get("MMX_BENCH_THREADS", "1")
        cmd = [sys.executable, __file__, "--_server", "--model", model, "--port", str(self.port),
               "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
               "--max-new-tokens", str(max_new_tokens), *extra]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env)

    def wait_ready(self) -> None:
        import httpx

        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() - t0 > 900:
                raise RuntimeError("the server did not get ready in 900 s")
            time.sleep(0.5)

    def cpu_seconds(self) -> float | None:
        """CPU time (user + system) the server process has used so far; None where /proc is missing."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _measure(servers: dict, concurrencies, n_of, bodies, reps: int) -> dict:
    """{(name, c): stats}; the servers run side by side and are driven alternately (name by name, repetition
    by repetition), so a noisy shared machine slows each alike; per point the repetition with the median
    throughput is kept."""
    for s in servers.values():
        s.wait_ready()
    for s in servers.values():
        asyncio.run(_drive(s.url, bodies, 4, 8))  # warm-up
    out = {}
    for c in concurrencies:
        n = n_of(c)
        runs: dict[str, list] = {name: [] for name in servers}
        for _ in range(reps):
            for name, s in servers.items():
                cpu0 = s.cpu_seconds()
                wall, lat, bs = asyncio.run(_drive(s.url, bodies, c, n))
                cpu1 = s.cpu_seconds()
                cpu = (cpu1 - cpu0) / n if cpu0 is not None and cpu1 is not None else float("nan")
                runs[name].append(
                    {"throughput": n / wall, "p50": _pct(lat, 0.5), "p95": _pct(lat, 0.95),
                     "batch": statistics.mean(bs), "n": n, "cpu": cpu}
                )  # fmt: skip
        for name, rs in runs.items():
            rs.sort(key=lambda r: r["throughput"])
            r = out[(name, c)] = rs[len(rs) // 2]
            print(
                f"  {name:>3} c={c:>2}: {r['throughput']:6.2f} expl/s, p50 {r['p50']:.3f} s, "
                f"p95 {r['p95']:.3f} s, mean batch {r['batch']:.1f}, server CPU {1000 * r['cpu']:.0f} ms/expl "
                f"({n} requests x {reps} reps)",
                flush=True,
            )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=("tiny", "2b"), default="tiny")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--requests", type=int, default=0, help="requests per point (default max(24, 3 x c))")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument(
        "--answer",
        choices=("forced", "generated"),
        default="forced",
        help="forced: the production path (the answer comes with the request); generated: the server "
        "generates the answer greedily (--max-new-tokens)",
    )
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per point (median kept)")
    ap.add_argument("--out", help="also write the markdown table here")
    ap.add_argument("--scenario", choices=("throughput", "flood", "poison"), default="throughput")
    ap.add_argument("--clients", type=int, default=96, help="flood: clients sending at once")
    ap.add_argument(
        "--side", type=int, default=1500, help="flood: side of the noise PNG (1500: a ~9 MB body)"
    )
    ap.add_argument(
        "--poison-every", type=int, default=16, help="poison: one request in N fails in its batch"
    )
    ap.add_argument("--_server", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--production-defaults", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._server:
        return _server_main(args)
    if args.scenario == "flood":
        return flood_main(args)
    if args.scenario == "poison":
        return poison_main(args)

    def n_of(c: int) -> int:
        return args.requests or max(24, 3 * c)

    bodies = _bodies(32, forced=args.answer == "forced")
    print(f"model {args.model}, {args.answer} answers; batching off (max_batch 1) vs on (max_batch "
          f"{args.max_batch}, max_wait {args.max_wait_ms:g} ms)", flush=True)  # fmt: skip
    servers = {
        "off": _Server(args.model, 1, 0.0, args.max_new_tokens),
        "on": _Server(args.model, args.max_batch, args.max_wait_ms, args.max_new_tokens),
    }
    try:
        res = _measure(servers, args.concurrency, n_of, bodies, args.reps)
    finally:
        for s in servers.values():
            s.stop()
    off = {c: res[("off", c)] for c in args.concurrency}
    on = {c: res[("on", c)] for c in args.concurrency}
    lines = [
        "| model | answer | concurrency | batching off: expl/s | p50 (s) | p95 (s) | CPU ms/expl | batching on: "
        "expl/s | p50 (s) | p95 (s) | CPU ms/expl | mean batch | speed-up (throughput) | speed-up (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in args.concurrency:
        a, b = off[c], on[c]
        lines.append(
            f"| {args.model} | {args.answer} | {c} | {a['throughput']:.2f} | {a['p50']:.3f} | {a['p95']:.3f} | "
            f"{1000 * a['cpu']:.0f} | {b['throughput']:.2f} | {b['p50']:.3f} | {b['p95']:.3f} | "
            f"{1000 * b['cpu']:.0f} | {b['batch']:.1f} | {b['throughput'] / a['throughput']:.2f}x | "
            f"{a['cpu'] / b['cpu']:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n")
    return 0


def _metric(text: str, name: str, labels: str = "") -> float:
    import re

    pat = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+-]+)"
    m = re.search(r"^" + pat + "$", text, re.M)
    return float(m.group(1)) if m else 0.0


def flood_main(args) -> int:
    """``--clients`` clients each POST a ~9 MB body (a ``--side`` px noise PNG) at once to a server with every
    admission / queue / limit setting at its default. Reported: the server's idle RSS, its peak during the
    flood (sampled every 10 ms from /proc) and after, the answers by status with the latency the client saw,
    and the server-side mean latency of the 503s (from mmx_fast_http_request_seconds: the client sees a 503
    only after uploading its whole body unless it sends Expect: 100-continue)."""
    import httpx

    from benches.serve_load import RssSampler, flood, noise_png_body, rss_bytes, summarize

    body = noise_png_body(args.side)
    server = _Server(args.model, 8, 10.0, 16, "--production-defaults")
    try:
        server.wait_ready()
        asyncio.run(_drive(server.url, _bodies(4, True), 2, 4))  # warm-up
        time.sleep(2)
        idle = rss_bytes(server.proc.pid)
        t0 = time.perf_counter()
        with RssSampler(server.proc.pid) as rss:
            res = asyncio.run(flood(server.url, body, args.clients))
        wall = time.perf_counter() - t0
        time.sleep(2)
        after = rss_bytes(server.proc.pid)
        m = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    lab = 'route="/v1/explain",status="503"'
    n503 = _metric(m, "mmx_fast_http_request_seconds_count", lab)
    server_503 = _metric(m, "mmx_fast_http_request_seconds_sum", lab) / n503 if n503 else float("nan")
    mib = 2**20
    print(
        f"flood: {args.clients} clients x {len(body) / 1e6:.1f} MB body ({args.side} px noise PNG), {wall:.1f} s"
    )
    print(f"  server RSS idle {idle / mib:.0f} MiB, peak {rss.peak / mib:.0f} MiB (+{(rss.peak - idle) / mib:.0f}),"
          f" 2 s after {after / mib:.0f} MiB (+{(after - idle) / mib:.0f})")  # fmt: skip
    for status, st in summarize(res).items():
        print(
            f"  HTTP {status}: {st['n']} answers, client-side p50 {st['p50_s']:.2f} s, p99 {st['p99_s']:.2f} s"
        )
    print(
        f"  503s answered by the server in {1000 * server_503:.1f} ms on average (mmx_fast_http_request_seconds)"
    )
    return 0


def poison_main(args) -> int:
    """Throughput of ``--requests`` requests from ``--concurrency`` closed-loop clients, all good vs one in
    ``--poison-every`` a request that fails inside its batch (a second image token in the prompt), which
    makes its batch re-run one request at a time. Reported: explanations/s of the good requests in each run,
    and mmx_fast_batch_reruns_total."""
    import httpx

    c = args.concurrency[0]
    n = args.requests or 192
    good = _bodies(32, forced=True)
    poisoned = [dict(b, prompt="what is <|image_pad|> here") if i % args.poison_every == 0 else b
                for i, b in enumerate(good * (n // len(good) + 1))][:n]  # fmt: skip
    server = _Server(args.model, args.max_batch, args.max_wait_ms, args.max_new_tokens)
    out = {}
    try:
        server.wait_ready()
        asyncio.run(_drive(server.url, good, 4, 8))  # warm-up
        for name, bodies in (("all good", good), ("with poison", poisoned)):
            before = _metric(httpx.get(server.url + "/metrics").text, "mmx_fast_batch_reruns_total")
            wall, ok, bad = asyncio.run(_drive_tolerant(server.url, bodies, c, n))
            reruns = _metric(httpx.get(server.url + "/metrics").text, "mmx_fast_batch_reruns_total") - before
            out[name] = (ok / wall, ok, bad, reruns)
            print(
                f"  {name:>11}: {ok / wall:6.2f} good expl/s ({ok} good, {bad} refused, {reruns:.0f} batch re-runs)"
            )
    finally:
        server.stop()
    a, b = out["all good"][0], out["with poison"][0]
    print(f"poison (1 in {args.poison_every}, c={c}, max_batch {args.max_batch}): {a:.2f} -> {b:.2f} good expl/s "
          f"({b / a:.2f}x)")  # fmt: skip
    return 0


async def _drive_tolerant(url: str, bodies: list[dict], concurrency: int, n: int) -> tuple[float, int, int]:
    """Like ``_drive`` but a 4xx answer is counted, not raised: (wall s, good answers, refused answers)."""
    import httpx

    counts = {"ok": 0, "bad": 0}
    next_i = 0
    async with httpx.AsyncClient(timeout=600) as client:

        async def worker():
            nonlocal next_i
            while next_i < n:
                i = next_i
                next_i += 1
                r = await client.post(url + "/v1/explain", json=bodies[i % len(bodies)])
                counts["ok" if r.status_code == 200 else "bad"] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0, counts["ok"], counts["bad"]


if __name__ == "__main__":
    sys.exit(main())
