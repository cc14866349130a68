"""Where kept results (``"keep": true``) live: one small interface, three backends (docs/design.md §6).

A kept result is stored as its finished parts, ``report.html`` and ``maps.npz`` (bytes), under the request id,
so any process configured with the same store can serve ``/v1/explain/{id}/report.html`` and ``.../maps.npz``:

- ``memory``: this process only (the ``keep_max`` newest), lost on restart;
- ``dir:PATH``: one file per part in PATH (a volume several replicas mount), written atomically (a temporary
  file, then ``os.replace``), expired after ``ttl_s`` and capped at ``max_bytes`` in all (oldest evicted
  first); only files named like ours are ever read, evicted or deleted;
- ``redis://host:port/db``: one key per part with a TTL (``SET ... EX``); the two parts are written in one
  MULTI/EXEC transaction. Memory policy is Redis's own (``maxmemory``); a result over ``max_bytes`` is refused.
"""

from __future__ import annotations

import collections
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Protocol

PARTS = ("report.html", "maps.npz")
_RID = re.compile(r"^[0-9a-f]{32}$")
_FILE = re.compile(r"^([0-9a-f]{32})\.(report\.html|maps\.npz)$")


def valid_id(rid: str) -> bool:
    """Ids are ours (uuid4 hex): anything else is not a kept result (and never reaches a path or a key)."""
    return bool(_RID.match(rid))


class ResultStore(Protocol):
    def put(self, rid: str, parts: dict[str, bytes]) -> None: ...

    def get(self, rid: str, part: str) -> bytes | None: ...

    def describe(self) -> str: ...


class MemoryStore:
    def __init__(self, keep_max: int, ttl_s: float) -> None:
        self.keep_max, self.ttl_s = keep_max, ttl_s
        self._items: collections.OrderedDict[str, tuple[float, dict[str, bytes]]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, rid: str, parts: dict[str, bytes]) -> None:
        with self._lock:
            self._items[rid] = (time.time(), dict(parts))
            while len(self._items) > self.keep_max:
                self._items.popitem(last=False)

    def get(self, rid: str, part: str) -> bytes | None:
        with self._lock:
            item = self._items.get(rid)
            if item is None:
                return None
            if self.ttl_s and time.time() - item[0] > self.ttl_s:
                del self._items[rid]
                return None
            return item[1].get(part)

    def describe(self) -> str:
        return "memory"


class DirectoryStore:
    def __init__(self, path: str | os.PathLike, ttl_s: float, max_bytes: int) -> None:
        self.path = Path(path).expanduser()
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"result store dir:{self.path} is not a directory")
        self.path.mkdir(parents=True, exist_ok=True)
        self.ttl_s, self.max_bytes = ttl_s, max_bytes

    def put(self, rid: str, parts: dict[str, bytes]) -> None:
        size = sum(len(v) for v in parts.values())
        if size > self.max_bytes:
            raise ValueError(f"kept result of {size} bytes exceeds the store's cap of {self.max_bytes} bytes")
        self._evict(room=size)
        for part in PARTS:  # maps first: a visible report always has its maps
            if part not in parts:
                continue
            fd, tmp = tempfile.mkstemp(prefix=f".{rid}.", suffix=".tmp", dir=self.path)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(parts[part])
                os.replace(tmp, self.path / f"{rid}.{part}")
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def get(self, rid: str, part: str) -> bytes | None:
        if not valid_id(rid) or part not in PARTS:
            return None
        p = self.path / f"{rid}.{part}"
        try:
            st = p.stat()
            if self.ttl_s and time.time() - st.st_mtime > self.ttl_s:
                p.unlink(missing_ok=True)
                return None
            return p.read_bytes()
        except FileNotFoundError:
            return None

    def _evict(self, room: int) -> None:
        """Delete our expired files, then our oldest ones until ``room`` more bytes fit under the cap (another
        replica may be doing the same: a file already gone is fine)."""
        now, files = time.time(), []
        with os.scandir(self.path) as it:
            for e in it:
                if not _FILE.match(e.name):
                    continue
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                if self.ttl_s and now - st.st_mtime > self.ttl_s:
                    Path(e.path).unlink(missing_ok=True)
                else:
                    files.append((st.st_mtime, st.st_size, e.path))
        total = sum(f[1] for f in files)
        for _, size, path in sorted(files):
            if total + room <= self.max_bytes:
                break
            Path(path).unlink(missing_ok=True)
            total -= size

    def describe(self) -> str:
        return f"dir:{self.path}"


class RedisStore:
    def __init__(self, url: str, ttl_s: float, max_bytes: int) -> None:
        try:
            import redis
        except ImportError as e:
            raise ValueError(
                f"result store {url!r} needs the redis client: pip install 'mmx-fast[serve]' ({e})"
            ) from None
        self.url, self.ttl_s, self.max_bytes = url, ttl_s, max_bytes
        self._r = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            self._r.ping()
        except redis.RedisError as e:
            raise ValueError(f"result store {url!r} cannot be reached: {e}") from None

    def _key(self, rid: str, part: str) -> str:
        return f"mmx_fast:result:{rid}:{part}"

    def put(self, rid: str, parts: dict[str, bytes]) -> None:
        size = sum(len(v) for v in parts.values())
        if size > self.max_bytes:
            raise ValueError(f"kept result of {size} bytes exceeds the store's cap of {self.max_bytes} bytes")
        ttl = max(1, round(self.ttl_s)) if self.ttl_s else None
        with self._r.pipeline(transaction=True) as p:
            for part, data in parts.items():
                p.set(self._key(rid, part), data, ex=ttl)
            p.execute()

    def get(self, rid: str, part: str) -> bytes | None:
        if not valid_id(rid) or part not in PARTS:
            return None
        return self._r.get(self._key(rid, part))

    def describe(self) -> str:
        scheme, _, rest = self.url.partition("://")
        return f"{scheme}://{rest.split('@')[-1]}"  # never a password in logs or /readyz


def open_store(spec: str, *, ttl_s: float, max_bytes: int, keep_max: int) -> ResultStore:
    """``memory``, ``dir:PATH`` or ``redis://...`` / ``rediss://...`` -> a store; ValueError naming the spec."""
    if spec == "memory":
        return MemoryStore(keep_max, ttl_s)
    if spec.startswith("dir:") and len(spec) > 4:
        return DirectoryStore(spec[4:], ttl_s, max_bytes)
    if spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(spec, ttl_s, max_bytes)
    raise ValueError(
        f"--result-store {spec!r} is not allowed; expected memory, dir:PATH or redis://host:port/db"
    )
