"""Admission before any parsing (docs/design.md §6): what a request may make us hold is reserved when its
headers arrive, before its body is read.

- **Bytes in flight**: a request reserves its ``Content-Length`` (a chunked body: each chunk as it streams in)
  against ``max_inflight_bytes``; once its image is decoded the reservation becomes the decoded pixels' size,
  and it is released when the response is sent. Over the bound: 503 + Retry-After, the body left unread.
- **Parse slots**: JSON parsing, base64 decoding and image decoding (where a body costs about 3x its size)
  run in at most ``max_parsing`` requests at once, on a worker pool of that size, never on the event loop.
  A request waits for a slot within its own deadline.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time

from .limits import ApiError


def overloaded(message: str, retry_after_s: int = 1) -> ApiError:
    return ApiError(503, "overloaded", message, headers={"Retry-After": str(retry_after_s)})


class Ticket:
    """One request's reservation; ``release`` is idempotent."""

    def __init__(self, admission: Admission, n: int) -> None:
        self._adm, self.bytes = admission, n

    def grow(self, n: int) -> None:
        """``n`` more bytes (a chunk of a body without Content-Length); 503 if they do not fit."""
        self._adm._take(n, self.bytes)
        self.bytes += n

    def resize(self, n: int) -> None:
        """What this request holds from now on (the decoded image instead of its encoded body); never refused:
        the image was already decoded within the old reservation and the parse slot."""
        with self._adm._lock:
            self._adm.bytes += n - self.bytes
            self.bytes = n

    def release(self) -> None:
        with self._adm._lock:
            self._adm.bytes -= self.bytes
            self.bytes = 0


class Admission:
    def __init__(self, max_bytes: int, max_parsing: int, metrics=None) -> None:
        self.max_bytes, self.max_parsing = max_bytes, max_parsing
        self.bytes = 0
        self._lock = threading.Lock()
        self._slots: asyncio.Semaphore | None = None
        self.parsing = 0
        self.metrics = metrics
        self.pool = concurrent.futures.ThreadPoolExecutor(max_parsing, thread_name_prefix="mmx-fast-decode")

    def _take(self, n: int, held: int) -> None:
        with self._lock:
            if self.bytes + n > self.max_bytes:
                busy = self.bytes
            else:
                self.bytes += n
                return
        raise overloaded(
            f"the server is busy: {busy} bytes of request bodies are in flight and {held + n} more would exceed "
            f"max_inflight_bytes={self.max_bytes}; retry later"
        )

    def admit(self, content_length: int) -> Ticket:
        """Reserve ``content_length`` bytes (0 for a chunked body) or raise 503 without reading anything."""
        self._take(content_length, 0)
        return Ticket(self, content_length)

    @contextlib.asynccontextmanager
    async def slot(self, deadline: float, timeout_s: float):
        """One of ``max_parsing`` parse/decode slots, waited for until ``deadline`` (then 504)."""
        if self._slots is None:  # created on the serving loop
            self._slots = asyncio.Semaphore(self.max_parsing)
        try:
            await asyncio.wait_for(self._slots.acquire(), max(0.0, deadline - time.perf_counter()))
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"the request waited longer than its deadline of {timeout_s:g} s for a parse slot "
                f"(max_parsing={self.max_parsing})",
                headers={"Retry-After": "1"},
            ) from None
        self.parsing += 1
        try:
            yield
        finally:
            self.parsing -= 1
            self._slots.release()

    async def run(self, fn, *args):
        """``fn(*args)`` on the decode pool (bounded, off the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
