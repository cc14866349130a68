"""``mmx-fast serve``: attribution maps over HTTP (FastAPI + uvicorn), with dynamic batching, backpressure,
per-request limits, Prometheus metrics, graceful drain and optional bearer auth. Install with
``pip install 'mmx-fast[serve]'``; Ray Serve scale-out with ``'mmx-fast[serve,ray]'`` (``ray_app.py``).

    from mmx_fast.serve import ServeSettings, load_state, create_app, StateHolder
    app = create_app(StateHolder(load_state(settings)), settings)
"""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path

from .limits import ApiError, Limits

log = logging.getLogger("mmx_fast.serve")

__all__ = [
    "ApiError",
    "Limits",
    "ServeError",
    "ServeSettings",
    "StateHolder",
    "check_bind",
    "create_app",
    "load_state",
    "read_api_keys",
    "run",
]


class ServeError(ValueError):
    """A bad serve setting (reported by the CLI as one line)."""


def __getattr__(name):  # fastapi is an optional dependency: import it only when the app is used
    if name in (
        "ServeSettings",
        "StateHolder",
        "create_app",
        "ServeState",
    ):  # settings.py / state.py / app.py
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'mmx_fast.serve' has no attribute {name!r}")


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_api_keys(path: str | os.PathLike) -> tuple[str, ...]:
    """One key per line (blank lines and ``#`` comments ignored); each at least 16 characters."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ServeError(f"--api-key-file {str(path)!r}: cannot read it ({e.strerror or e})") from None
    keys = tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")
    )
    if not keys:
        raise ServeError(f"--api-key-file {str(path)!r} holds no key; expected one key per line")
    short = [i + 1 for i, k in enumerate(keys) if len(k) < 16 or any(c.isspace() for c in k)]
    if short:
        raise ServeError(
            f"--api-key-file {str(path)!r}: key(s) number {short} are shorter than 16 characters or contain "
            "spaces; expected random tokens of at least 16 characters (e.g. `openssl rand -hex 32`)"
        )
    return keys


def check_bind(host: str, has_keys: bool, insecure_no_auth: bool) -> None:
    """Auth may be off only on a loopback address, unless explicitly waived."""
    if has_keys or is_local(host) or insecure_no_auth:
        return
    raise ServeError(
        f"--host {host!r} is reachable from other machines but no --api-key-file was given; pass "
        "--api-key-file FILE (bearer tokens), bind to 127.0.0.1, or pass --insecure-no-auth if a proxy in "
        "front of this server authenticates requests"
    )


def load_state(settings, load_model=None):
    """Load the model named by ``settings.model`` and build the ServeState (warm-up included)."""
    from .app import ServeState

    if load_model is None:
        from ..cli_common import load_model_option, resolve_device_option, resolve_model_option

        source = resolve_model_option(settings.model)
        device, dtype_name, torch_dtype = resolve_device_option(settings.device, settings.dtype, source)
        model, processor = load_model_option(source, device, torch_dtype)
        info = {
            "id": settings.model,
            "family": source.family,
            "random_weights": source.tiny,
            "device": device,
            "dtype": dtype_name,
        }
    else:
        model, processor = load_model()
        info = {"id": settings.model}
    return ServeState(model, processor, settings, model_info=info)


def run(settings, *, log_level: str = "info", load_model=None) -> int:
    """Load the model (``settings.model``, or ``load_model() -> (model, processor)``), serve until SIGTERM /
    SIGINT, drain, return 0.

    Drain (docs/design.md §6): the first SIGTERM / SIGINT marks the process draining, so ``/readyz`` answers
    503 for ``settings.drain_grace_s`` while requests are still served (a load balancer sees it and stops
    routing here); then the listener closes, queued and running requests finish, and the process exits 0. A
    second signal skips the rest of the grace period."""
    import signal
    import threading

    import uvicorn

    from .access_log import configure_logging
    from .app import StateHolder, create_app

    configure_logging(log_level)
    check_bind(settings.host, bool(settings.api_keys), True)  # the CLI checked the waiver already
    state = load_state(settings, load_model)
    holder = StateHolder(state)
    app = create_app(holder, settings, on_shutdown=state.close)  # drains the queue

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=int(settings.limits.request_timeout_s) + 5,
        access_log=False,  # ours (access_log.py) has the request id, timings and sizes
    )

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            if holder.draining or settings.drain_grace_s <= 0:
                return super().handle_exit(sig, frame)
            holder.draining = True
            log.warning(
                "signal %s: draining; /readyz answers 503 for %g s, then the listener closes",
                sig,
                settings.drain_grace_s,
            )
            t = threading.Timer(settings.drain_grace_s, super().handle_exit, (sig, frame))
            t.daemon = True
            t.start()

    server = DrainingServer(config)
    state.metrics.connections.set_function(lambda: len(server.server_state.connections))
    # uvicorn re-raises the signal it caught after a graceful shutdown, which would make the exit status
    # "killed by SIGTERM"; a drained server is a clean exit, so the re-raised signal is ignored.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    return 0
