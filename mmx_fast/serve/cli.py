"""The ``mmx-fast serve`` subcommand: its arguments and what it runs (see ``mmx_fast.cli`` for the rest)."""

from __future__ import annotations

import argparse
import dataclasses

from .limits import Limits


def add_serve_parser(sub) -> None:
    """Add the ``serve`` subcommand to the ``mmx-fast`` subparsers ``sub``."""
    from .. import METHODS
    from ..cli_common import positive_int as _positive_int

    sv = sub.add_parser(
        "serve",
        help="serve attribution over HTTP (dynamic batching, limits, metrics); needs mmx-fast[serve]",
        description="An HTTP service (FastAPI + uvicorn): POST /v1/explain, /healthz, /readyz, /metrics, /docs. "
        "See README 'Serving' and mmx_fast/serve.",
    )
    sv.set_defaults(func=cmd_serve)

    sv.add_argument(
        "--model", required=True, metavar="ID_OR_PATH", help="as for explain (tiny:qwen2_vl, a folder)"
    )
    sv.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    sv.add_argument("--port", type=int, default=8000, help="default 8000")
    sv.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    sv.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto")
    sv.add_argument("--method", choices=METHODS, default="msea-arc", help="default method of requests")
    sv.add_argument(
        "--max-batch", type=_positive_int("--max-batch"), default=8, help="default 8; 1 = no batching"
    )
    sv.add_argument("--max-wait-ms", type=float, default=10.0, help="how long a batch gathers (default 10)")
    sv.add_argument(
        "--max-queue", type=_positive_int("--max-queue"), default=64, help="waiting requests before 503"
    )
    sv.add_argument(
        "--keep-max",
        type=_positive_int("--keep-max"),
        default=64,
        help="kept results (--result-store memory)",
    )
    _add_operations_arguments(sv)
    sv.add_argument("--api-key-file", metavar="FILE", help="bearer tokens, one per line; enables auth")
    sv.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow a non-loopback --host without --api-key-file (a proxy in front authenticates)",
    )
    sv.add_argument("--allow-image-urls", action="store_true", help="let requests name http(s) image URLs")
    sv.add_argument("--ray", action="store_true", help="run as a Ray Serve application (needs mmx-fast[ray])")
    sv.add_argument("--replicas", type=_positive_int("--replicas"), default=1, help="Ray Serve replicas")
    sv.add_argument(
        "--num-cpus-per-replica", type=float, default=1.0, metavar="N", help="Ray: CPUs per replica"
    )
    sv.add_argument(
        "--num-gpus-per-replica", type=float, default=0.0, metavar="N", help="Ray: GPUs per replica"
    )

    for f in dataclasses.fields(Limits):
        sv.add_argument(
            "--" + f.name.replace("_", "-"),
            type=type(f.default),
            default=f.default,
            metavar="N",
            help=f"per-request limit (default {f.default})",
        )
    sv.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def _add_operations_arguments(sv) -> None:
    """Result store, admission, access log and drain (README "Serving")."""
    sv.add_argument(
        "--result-store",
        default="memory",
        metavar="STORE",
        help="where kept results live: memory (this process), dir:PATH (a volume replicas share) or "
        "redis://host:port/db (default memory)",
    )
    sv.add_argument(
        "--result-ttl-s", type=float, default=3600.0, metavar="S", help="kept results expire (3600)"
    )
    sv.add_argument(
        "--result-store-max-bytes", type=int, default=1 << 30, metavar="N", help="dir store size cap (1 GiB)"
    )
    sv.add_argument(
        "--max-inflight-bytes",
        type=int,
        default=0,
        metavar="N",
        help="request bytes held at once (bodies, then decoded images); beyond it 503 before the body is read "
        "(default: 1/192 of memory, 32-128 MiB)",
    )
    sv.add_argument(
        "--max-parsing",
        type=int,
        default=0,
        metavar="N",
        help="requests parsed / decoded at once, on a worker pool of that size (default: CPUs, 2-8)",
    )
    sv.add_argument(
        "--access-log", choices=("json", "text", "off"), default="json", help="one line per request (json)"
    )
    sv.add_argument(
        "--drain-grace-s",
        type=float,
        default=5.0,
        metavar="S",
        help="after SIGTERM, /readyz answers 503 this long while requests are served, then the listener "
        "closes (default 5)",
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from .. import serve
    from ..cli_common import CliError, resolve_model_option

    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise CliError(
            f"mmx-fast serve needs the serve extra: pip install 'mmx-fast[serve]' ({e})", code=1
        ) from None
    try:
        keys = serve.read_api_keys(args.api_key_file) if args.api_key_file else ()
        serve.check_bind(args.host, bool(keys), args.insecure_no_auth)
        limits = serve.Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(serve.Limits)})
        if not 0 <= args.max_wait_ms <= 10_000:
            raise ValueError(f"--max-wait-ms={args.max_wait_ms} is not allowed; expected 0 to 10000")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port={args.port} is not allowed; expected 0 to 65535")
    except ValueError as e:
        raise CliError(str(e)) from None
    resolve_model_option(args.model)  # fail fast on a bad --model, before anything starts
    try:
        settings = serve.ServeSettings(
        model=args.model, host=args.host, port=args.port, device=args.device, dtype=args.dtype,
        method=args.method, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
        keep_max=args.keep_max, api_keys=keys, allow_image_urls=args.allow_image_urls, limits=limits,
        max_inflight_bytes=args.max_inflight_bytes, max_parsing=args.max_parsing, access_log=args.access_log,
        drain_grace_s=args.drain_grace_s, result_store=args.result_store, result_ttl_s=args.result_ttl_s,
        result_store_max_bytes=args.result_store_max_bytes,
    )  # fmt: skip
        from .store import open_store

        open_store(settings.result_store, ttl_s=settings.result_ttl_s,
                   max_bytes=settings.result_store_max_bytes, keep_max=settings.keep_max)  # fmt: skip
    except ValueError as e:
        raise CliError(str(e)) from None
    if args.ray:
        from . import ray_app

        return ray_app.run(
            settings,
            replicas=args.replicas,
            num_cpus=args.num_cpus_per_replica,
            num_gpus=args.num_gpus_per_replica,
        )
    return serve.run(settings, log_level=args.log_level)
