"""``mmx-fast eval``'s output folder: append-only JSON-line shard files (one ``os.write`` per line, fsync; a
partial last line is ignored and cut by its owner), ``run.json`` (the settings), and which records count.
The folder's layout is described in :mod:`mmx_fast.eval.run`."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import atomic_write_bytes
from .datasets import EvalDataset, Sample
from .metrics import SampleScores

if TYPE_CHECKING:
    from .options import EvalOptions
    from .words import WordTyper

SHARD_GLOB = "shard-*.jsonl"
# sample ids: 2 = escaped (datasets.sample_id); 1 = the unescaped ids of earlier versions (equal whenever no id
# holds a '%')
SAMPLE_ID_SCHEME = 2
OUTPUT_NAMES = ("results.jsonl", "summary.json", "table.md", "maps")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict], int]:
    """(complete records, number of ignored lines). A trailing line without its newline (a write cut short)
    and lines that are not JSON objects are ignored and counted."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return [], 0
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    bad = 1 if tail.strip() else 0
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line, parse_constant=_no_constant)
        except ValueError:  # not JSON, not UTF-8, or NaN / Infinity (never written by us)
            bad += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("id"), str):
            records.append(rec)
        else:
            bad += 1
    return records, bad


def truncate_partial_tail(path: str | os.PathLike) -> int:
    """Cut a trailing partial line (bytes after the last newline); returns how many bytes were cut."""
    p = Path(path)
    if not p.exists():
        return 0
    size = p.stat().st_size
    if size == 0:
        return 0
    with open(p, "rb+") as f:
        # scan backwards for the last newline
        pos, block = size, 65536
        keep = 0
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            i = chunk.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        if keep == size:
            return 0
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    return size - keep


def json_line(record: dict) -> bytes:
    """``record`` as one UTF-8 JSON line (no NaN). Text that cannot be UTF-8 (a lone surrogate: a path with
    undecodable bytes) is written as ``\\uXXXX`` escapes, which read back to the same string."""
    try:
        return (
            json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n"
        ).encode()
    except UnicodeEncodeError:
        return (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()


class JsonlAppender:
    """Appends records to one file: each line with a single ``os.write`` on an ``O_APPEND`` fd, then fsync."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.cut = truncate_partial_tail(self.path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def append(self, record: dict) -> None:
        data = json_line(record)
        n = os.write(self.fd, data)
        if n != len(data):  # a regular file only writes short when the disk is full: say so, never go on
            raise OSError(f"short write to {str(self.path)!r} ({n} of {len(data)} bytes); is the disk full?")
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def shard_path(out: str | os.PathLike, rank: int, world_size: int) -> Path:
    return Path(out) / f"shard-{rank:03d}-of-{world_size:03d}.jsonl"


def read_all_shards(out: str | os.PathLike) -> tuple[list[dict], int]:
    """Every complete record of every shard file in ``out`` (sorted file order, then line order)."""
    records, bad = [], 0
    for p in sorted(Path(out).glob(SHARD_GLOB)):
        if not p.is_file():
            raise ValueError(f"{str(p)!r} is not a file; remove it or use another --out")
        try:
            r, b = read_jsonl(p)
        except OSError as e:
            raise ValueError(f"{str(p)!r} cannot be read: {e.strerror or e}") from None
        records.extend(r)
        bad += b
    return records, bad


def _scores_ok(scores: Any) -> bool:
    if not isinstance(scores, dict):
        return False
    try:
        s = SampleScores.from_dict(scores)
    except (TypeError, ValueError, AttributeError, OverflowError):
        return False
    values = [*s.obj_iou, *s.func_iou, *s.precision, *s.recall]
    return all(math.isfinite(v) for v in values)


def is_complete(record: dict, methods: Sequence[str]) -> bool:
    """An ``ok`` record holding well-formed scores of every method in ``methods`` (a record damaged on disk
    is not complete: its sample is evaluated again)."""
    got = record.get("methods")
    return (
        record.get("status") == "ok"
        and isinstance(got, dict)
        and all(m in got and _scores_ok(got[m]) for m in methods)
    )


def select_records(
    records: Sequence[dict], samples: Sequence[Sample], methods: Sequence[str]
) -> dict[str, dict]:
    """One record per sample id: the last complete one, else the last one at all (dedupe by id)."""
    wanted = {s.id for s in samples}
    best: dict[str, dict] = {}
    for rec in records:
        sid = rec.get("id")
        if sid not in wanted:
            continue
        prev = best.get(sid)
        if prev is None or is_complete(rec, methods) or not is_complete(prev, methods):
            best[sid] = rec
    return best


def run_settings(opts: EvalOptions, dataset: EvalDataset, typer: WordTyper) -> dict[str, Any]:
    """What makes two runs' records comparable (recorded in ``run.json``)."""
    return {
        "model": opts.model,
        "data": str(Path(opts.data).resolve()),
        "layout": dataset.layout,
        "prompt": dataset.prompt,
        "max_new_tokens": opts.max_new_tokens,
        "placement": opts.placement,
        "merge": opts.merge,
        "include_stop_token": opts.include_stop_token,
        "word_typer": typer.name,
        "word_typer_exact": bool(getattr(typer, "exact", False)),
        "sample_ids": SAMPLE_ID_SCHEME,
    }


def read_run_settings(out: Path) -> dict[str, Any] | None:
    """The settings in ``out/run.json`` (None when there is none); a folder with our output files but no
    run.json is not ours (``ValueError``)."""
    path = out / "run.json"
    if not path.exists() and not path.is_symlink():
        ours = sorted(p.name for p in out.glob(SHARD_GLOB)) + [n for n in OUTPUT_NAMES if (out / n).exists()]
        if ours:
            raise ValueError(
                f"--out {str(out)!r} holds {', '.join(ours[:3])} but no run.json, so not an mmx-fast eval folder "
                "(or its run.json was removed); nothing there is replaced: use another --out"
            )
        return None
    try:
        old = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:  # ValueError: not JSON, not UTF-8
        raise ValueError(f"{str(path)!r} is unreadable ({e}); remove it or use another --out") from None
    if not isinstance(old, dict):
        raise ValueError(f"{str(path)!r} is not a settings object; remove it or use another --out")
    return old


def check_run_settings(out: Path, settings: dict[str, Any], samples: Sequence[Sample], write: bool) -> None:
    """Refuse an ``out`` holding results of other settings; with ``write``, record ``settings`` there when it
    has none yet (called once the model has loaded: a run that fails to start writes nothing)."""
    old = read_run_settings(out)
    if old is None:
        if write:
            atomic_write_bytes(out / "run.json", (json.dumps(settings, indent=2) + "\n").encode())
        return
    if "sample_ids" not in old and not any("%" in s.id for s in samples):
        old = {**old, "sample_ids": SAMPLE_ID_SCHEME}  # the ids of earlier versions are the same ids
    diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
    if diff:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"--out {str(out)!r} holds results of a run with other settings ({what}); use another --out "
            "or remove that folder"
        )


def prepare_out(out: Path, save_maps: bool) -> None:
    """Create ``out`` (and ``out/maps``); every failure is a ``ValueError`` naming the path."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not out.is_dir():
            raise FileExistsError(f"{str(out)!r} exists and is not a directory")
        for p in out.glob(SHARD_GLOB):
            if not p.is_file():
                raise ValueError(f"{str(p)!r} is not a file; remove it or use another --out")
        if save_maps and (out / "maps").exists() and not (out / "maps").is_dir():
            raise ValueError(f"{str(out / 'maps')!r} exists and is not a directory; --save-maps writes there")
    except OSError as e:
        raise ValueError(f"--out {str(out)!r} cannot be used: {e.strerror or e}") from None
