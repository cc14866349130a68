"""Scale-out on Ray Serve: replicas of the same FastAPI app, one model and one dynamic batcher each.

Three ways to run it (README "Serving"):

- ``mmx-fast serve --model PATH --ray --replicas 4 [--num-gpus-per-replica 1]``: starts (or joins, with
  ``RAY_ADDRESS``) a Ray cluster and serves until interrupted;
- ``serve run mmx_fast.serve.ray_app:build_app model=PATH replicas=4``: Ray's own CLI (arguments as
  ``key=value``, any ``ServeSettings`` / ``Limits`` field);
- a ``serve.yaml`` for ``serve deploy`` on a multi-node cluster, with
  ``import_path: mmx_fast.serve.ray_app:build_app`` and the same keys under ``args``.

Ray's proxy routes each HTTP request to a replica (its own backpressure: ``max_ongoing_requests`` per
replica, beyond which it answers 503); inside the replica the request meets the same limits, batcher,
metrics and auth as under ``mmx-fast serve``. ``/metrics`` is per replica. Kept results are shared by the
replicas when ``result_store`` names a shared store (``result_store=redis://host:6379/0`` or
``dir:/shared/volume``): each replica opens the same store (``store.py``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .app import ServeSettings, StateHolder, create_app
from .limits import Limits


def deployment(settings: ServeSettings, *, replicas: int = 1, num_cpus: float = 1, num_gpus: float = 0):
    """A bound Ray Serve application: ``serve.run(deployment(settings, replicas=2))``."""
    from ray import serve

    @serve.deployment(
        name="mmx-fast",
        num_replicas=replicas,
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus},
        # what one replica accepts before Ray's proxy answers 503: its queue plus one running batch
        max_ongoing_requests=settings.max_queue + settings.max_batch,
    )
    @serve.ingress()
    class MmxFastReplica:
        def __init__(self, settings: ServeSettings) -> None:
            from . import load_state

            self._settings = settings
            self._state = load_state(settings)  # one model per replica, loaded in the replica

        def __serve_build_asgi_app__(self):
            return create_app(StateHolder(self._state), self._settings, on_shutdown=self._state.close)

    return MmxFastReplica.bind(settings)


def settings_from_args(args: dict[str, Any]) -> tuple[ServeSettings, dict[str, Any]]:
    """``key=value`` arguments (strings from ``serve run``, or typed from a serve.yaml) -> settings and the
    Ray options (``replicas``, ``num_cpus``, ``num_gpus``)."""
    args = dict(args)
    ray_opts = {
        "replicas": int(args.pop("replicas", 1)),
        "num_cpus": float(args.pop("num_cpus", 1)),
        "num_gpus": float(args.pop("num_gpus", 0)),
    }
    if "api_key_file" in args:
        from . import read_api_keys

        args["api_keys"] = read_api_keys(args.pop("api_key_file"))
    limit_names = {f.name: f for f in dataclasses.fields(Limits)}
    limits = {k: type(limit_names[k].default)(args.pop(k)) for k in list(args) if k in limit_names}
    fields = {f.name: f for f in dataclasses.fields(ServeSettings)}
    unknown = sorted(set(args) - set(fields) - {"limits"})
    if unknown:
        raise ValueError(
            f"unknown argument(s) {unknown}; expected ServeSettings fields ({', '.join(fields)}), Limits fields "
            f"({', '.join(limit_names)}) or replicas / num_cpus / num_gpus"
        )
    typed: dict[str, Any] = {}
    for k, v in args.items():
        default = getattr(ServeSettings(), k)
        if isinstance(default, bool) and isinstance(v, str):
            typed[k] = v.strip().lower() in ("1", "true", "yes")
        elif isinstance(default, (int, float)) and not isinstance(default, bool):
            typed[k] = type(default)(v)
        else:
            typed[k] = v
    return ServeSettings(**typed, limits=Limits(**limits)), ray_opts


def build_app(args: dict[str, Any]):
    """Entry point for ``serve run mmx_fast.serve.ray_app:build_app model=...`` and serve.yaml."""
    settings, opts = settings_from_args(args)
    return deployment(settings, **opts)


def run(settings: ServeSettings, *, replicas: int = 1, num_cpus: float = 1, num_gpus: float = 0) -> int:
    """``mmx-fast serve --ray``: serve on Ray until interrupted."""
    import signal
    import threading

    import ray
    from ray import serve

    ray.init(ignore_reinit_error=True)  # RAY_ADDRESS joins an existing cluster
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(deployment(settings, replicas=replicas, num_cpus=num_cpus, num_gpus=num_gpus), route_prefix="/")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.shutdown()  # replicas finish their in-flight requests (graceful_shutdown_timeout_s)
    ray.shutdown()
    return 0
