"""Request ids, trace context and the access log (docs/design.md §6).

``RequestContext`` is a plain ASGI middleware (it never reads the body): it takes the client's ``X-Request-ID``
(1-128 characters of ``[A-Za-z0-9._:-]``) or makes one, echoes it on the response, puts it (and a valid W3C
``traceparent``) into every log line of that request through a context variable, counts bytes in and out and
the HTTP requests in flight, observes the latency of every answer (503 and 504 included) and writes one access
log line per request: JSON (default) or text, or none (``--access-log off``). Routes add their own fields
(queue / model ms, batch size, answer tokens, config, error kind) to ``request.state.access``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("mmx_fast_request_id", default="-")
trace_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("mmx_fast_trace_id", default="-")

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
access_logger = logging.getLogger("mmx_fast.access")


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``trace_id`` to every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        if not hasattr(record, "trace_id"):
            record.trace_id = trace_id_var.get()
        return True


def configure_logging(level: str) -> None:
    """``mmx_fast.serve`` log lines on stderr with the request id and trace id; the access log (its own logger) on
    stdout, one line per request, the message as is."""
    log = logging.getLogger("mmx_fast.serve")
    if not any(getattr(h, "_mmx_fast", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stderr)
        h._mmx_fast = True  # type: ignore[attr-defined]
        h.addFilter(ContextFilter())
        h.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s request_id=%(request_id)s "
                              "trace_id=%(trace_id)s %(message)s")
        )  # fmt: skip
        log.addHandler(h)
        a = logging.StreamHandler(sys.stdout)
        a._mmx_fast = True  # type: ignore[attr-defined]
        a.setFormatter(logging.Formatter("%(message)s"))
        access_logger.addHandler(a)
        access_logger.propagate = False
    log.setLevel(level.upper())
    access_logger.setLevel(logging.INFO)


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return v.decode("latin-1")
    return None


def _route(scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestContext:
    def __init__(self, app, holder, mode: str) -> None:
        self.app, self.holder, self.mode = app, holder, mode

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        given = _header(scope, b"x-request-id")
        rid = given if given is not None and _ID.match(given) else uuid.uuid4().hex
        tp = _header(scope, b"traceparent")
        m = _TRACEPARENT.match(tp) if tp else None
        trace_id = m.group(1) if m else "-"
        access = {"id": rid}
        scope.setdefault("state", {})["access"] = access
        scope["state"]["request_id"] = rid
        tokens = (request_id_var.set(rid), trace_id_var.set(trace_id))
        io = {"in": 0, "out": 0, "status": 500}
        metrics = self.holder.state.metrics if self.holder.state is not None else None

        async def counted_receive():
            msg = await receive()
            if msg["type"] == "http.request":
                io["in"] += len(msg.get("body", b""))
            return msg

        async def tagged_send(msg):
            if msg["type"] == "http.response.start":
                io["status"] = msg["status"]
                msg["headers"] = [*msg.get("headers", []), (b"x-request-id", rid.encode())]
            elif msg["type"] == "http.response.body":
                io["out"] += len(msg.get("body", b""))
            await send(msg)

        if metrics is not None:
            metrics.http_in_flight.inc()
        try:
            await self.app(scope, counted_receive, tagged_send)
        finally:
            total = time.perf_counter() - t0
            route = _route(scope)
            if metrics is not None:
                metrics.http_in_flight.dec()
                metrics.http_seconds.labels(route, str(io["status"])).observe(total)
            if self.mode != "off":
                line = {
                    "id": rid,
                    "method": scope.get("method"),
                    "route": route,
                    "path": scope.get("path"),
                    "status": io["status"],
                    "total_ms": round(total * 1000, 2),
                    **{k: v for k, v in access.items() if k != "id"},
                    "bytes_in": io["in"],
                    "bytes_out": io["out"],
                    "client": "{}:{}".format(*scope["client"]) if scope.get("client") else None,
                    "trace_id": None if trace_id == "-" else trace_id,
                }
                access_logger.info(self._format(line))
            for var, tok in zip((request_id_var, trace_id_var), tokens):
                var.reset(tok)

    def _format(self, line: dict) -> str:
        if self.mode == "json":
            return json.dumps(line, separators=(",", ":"), default=str)
        keys = ("queue_ms", "model_ms", "batch_size", "answer_tokens", "error")
        extra = " ".join(f"{k}={line[k]}" for k in keys if line.get(k) is not None)
        return (
            f'{line["client"]} "{line["method"]} {line["path"]}" {line["status"]} {line["total_ms"]}ms '
            f"in={line['bytes_in']} out={line['bytes_out']} {extra} request_id={line['id']} "
            f"trace_id={line['trace_id'] or '-'}"
        ).replace("  ", " ")
