"""The evaluation runner: generate each answer once, explain it with every requested method, score it with
TAM's metrics, append one JSON line per sample, resume, shard over ranks, merge and report.

Per sample (:func:`evaluate_one`):

1. the image is loaded (a missing image is recorded as ``missing_image``; an unreadable one as ``error``);
2. the answer is generated ONCE, greedily, at scale 1.0 (``max_new_tokens``, TAM: 256), by the first
   method's adapter;
3. every method explains that same answer (forced ids) from ONE shared batched teacher-forced forward
   over the union of the methods' scales (``Explainer.explain_methods``), so all methods score the same
   words on the same hidden states;
4. the uint8 maps (``Explanation.map_uint8``) are scored with :func:`~mmx_fast.eval.metrics.evaluate_sample`.

TAM also explains the stop token it generated (its last map) and merges it into the preceding word;
``include_stop_token=True`` does the same (off by default: the engine's answers exclude the stop token).

Output folder (``out``):

- ``shard-RRR-of-WWW.jsonl``: one JSON object per line per finished sample, written by rank RRR of a
  WWW-process run. Each line is written with ONE ``os.write`` on an ``O_APPEND`` descriptor, then
  ``fsync``: a killed run leaves at most one partial last line, which readers ignore and the owning rank
  truncates before appending again. A re-run skips every sample that already has an ``ok`` record with all
  requested methods in any shard file (whatever the world size of the run that wrote it).
- ``run.json``: the settings that make records comparable (model, data, prompt, placement, ...), written
  (atomically) only once the model has loaded, so a run that fails to start leaves nothing behind; a re-run
  with different settings into the same folder is refused. A folder holding our output names (shard files,
  ``results.jsonl``, ``summary.json``, ``table.md``, ``maps``) but no ``run.json`` is refused: those files
  are not ours to append to or replace.
- after the run (rank 0, after a barrier): ``results.jsonl`` (one record per selected sample, in data-set
  order, deduplicated by sample id: the last ``ok`` record with all methods wins), ``summary.json``
  (pooled metrics per method and the counts) and ``table.md`` (printed too).
- ``maps/<index>.npz`` with ``save_maps=True``: the uint8 maps of each method (``<method>`` [T, h, w]) and
  ``answer_ids``, written atomically before the sample's line.

Distributed: under ``torchrun`` (``WORLD_SIZE > 1``) the process group is initialised (gloo on CPU, nccl on
CUDA), rank r evaluates the selected samples with ``index % world_size == r`` on ``cuda:LOCAL_RANK`` (or the
CPU), then all ranks meet at a barrier and rank 0 merges every shard file and reports.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_bytes
from .datasets import EvalDataset, Sample, load_dataset, load_mask
from .metrics import MERGES, PLACEMENTS, SampleScores, box_in_mask, evaluate_sample, pool
from .words import WordTyper, get_word_typer, group_words, retokenization_mismatch, token_pieces, word_labels

RECORD_VERSION = 1
METHOD_NAMES = {
    "msea-arc": "MSEA + ARC (msea-arc)",
    "tam": "TAM (tam)",
    "logit-lens": "Logit lens / CAM (logit-lens)",
}
SHARD_GLOB = "shard-*.jsonl"
# sample ids: 2 = escaped (datasets.sample_id); 1 = the unescaped ids of earlier versions (equal whenever no id
# holds a '%')
SAMPLE_ID_SCHEME = 2
OUTPUT_NAMES = ("results.jsonl", "summary.json", "table.md", "maps")
MAX_DIST_TIMEOUT_MIN = 7 * 24 * 60.0


# --------------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------------
@dataclass
class EvalOptions:
    """Everything a run needs (the CLI fills it from its arguments)."""

    model: str
    data: str
    out: str
    methods: tuple[str, ...] = ("msea-arc", "tam", "logit-lens")
    limit: int | None = None
    layout: str = "auto"
    prompt: str | None = None
    max_new_tokens: int = 256
    placement: str = "stretch"
    word_typer: Any = "auto"
    merge: str = "tam"
    include_stop_token: bool = False
    device: str = "auto"
    dtype: str = "auto"
    backend: str = "auto"
    save_maps: bool = False
    progress: bool = True
    dist_timeout_min: float = 360.0

    def check(self) -> None:
        from ..config import METHODS

        if not self.methods:
            raise ValueError("no methods given; expected one or more of " + ", ".join(METHODS))
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown method(s) {bad}; expected some of {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {list(self.methods)} repeat a method")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit} is not allowed; expected a positive integer")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} is not allowed; expected >= 1")
        if self.placement not in PLACEMENTS:
            raise ValueError(
                f"placement={self.placement!r} is not allowed; expected one of {', '.join(PLACEMENTS)}"
            )
        if self.merge not in MERGES:
            raise ValueError(f"merge={self.merge!r} is not allowed; expected one of {', '.join(MERGES)}")
        self._check_runtime()

    def _check_runtime(self) -> None:
        """--device, --dtype, --backend, --prompt, --dist-timeout-min: checked before anything loads."""
        from ..config import BACKENDS
        from ..loading import resolve_device as _device
        from ..loading import resolve_dtype

        if not isinstance(self.device, str):
            raise ValueError(f"device={self.device!r} is not allowed; expected auto, cpu, cuda or cuda:N")
        dev = _device(self.device)
        if dev.startswith("cuda:"):
            import torch

            n = torch.cuda.device_count()
            if int(dev.split(":")[1]) >= n:
                raise ValueError(f"device={self.device!r} is not allowed; this machine has {n} CUDA GPU(s)")
        if self.dtype != "auto":
            resolve_dtype(self.dtype, "cpu")
        if self.backend not in BACKENDS:
            raise ValueError(
                f"backend={self.backend!r} is not allowed; expected one of {', '.join(BACKENDS)}"
            )
        if self.prompt is not None:
            try:
                self.prompt.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(
                    f"prompt {self.prompt!r} holds bytes that are not valid UTF-8; expected text"
                ) from None
        t = self.dist_timeout_min
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= MAX_DIST_TIMEOUT_MIN:
            raise ValueError(
                f"dist_timeout_min={t!r} is not allowed; expected minutes, > 0 and <= {MAX_DIST_TIMEOUT_MIN:g}"
            )


# --------------------------------------------------------------------------------------------------------
# distributed
# --------------------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized: bool = False  # by us


def init_distributed(timeout_min: float = 360.0) -> DistInfo:
    """Initialise torch.distributed when ``WORLD_SIZE > 1`` (torchrun): nccl when CUDA is available, else gloo."""
    world = _env_int("WORLD_SIZE", 1, 1)
    if world == 1:
        return DistInfo()
    rank = _env_int("RANK", 0, 0)
    local = _env_int("LOCAL_RANK", rank, 0)
    if rank >= world:
        raise ValueError(f"RANK={rank} is out of range for WORLD_SIZE={world}; expected 0 .. {world - 1}")
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local, False)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    dist.init_process_group(
        backend="nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=float(timeout_min))
    )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local, True)


def _env_int(name: str, default: int, low: int) -> int:
    """An integer environment variable set by torchrun (``default`` when unset or empty), at least ``low``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        v = int(text)
    except ValueError:
        v = low - 1
    if v < low:
        raise ValueError(f"{name}={text!r} is not allowed; expected an integer >= {low} (torchrun sets it)")
    return v


def _barrier(info: DistInfo) -> None:
    if info.world_size <= 1:
        return
    import torch
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


# --------------------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------------------
def resolve_device(device: str, local_rank: int = 0) -> str:
    import torch

    if device == "auto":
        return f"cuda:{local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch sees no CUDA GPU; use --device cpu or auto")
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device


def check_model_spec(spec: str, dtype: str = "auto") -> None:
    """Validate --model and --dtype without loading weights (so a bad run writes nothing)."""
    from ..loading import ModelLoadError, resolve_dtype, resolve_model

    if dtype != "auto":
        resolve_dtype(dtype, "cpu")
    try:
        resolve_model(spec)
    except ModelLoadError as e:
        raise ValueError(f"--{e}") from None


def load_model(spec: str, device: str = "cpu", dtype: str = "auto"):
    """(model, processor) for ``spec`` through ``mmx_fast.load``: ``tiny:<family>`` (random weights) or a
    local folder / cached hub id (``local_files_only``; processors load without torchvision). ``dtype="auto"``
    follows the checkpoint's own dtype."""
    from ..loading import ModelLoadError, load, quiet_transformers

    try:
        with quiet_transformers():
            return load(spec, device=device, dtype=dtype)
    except ModelLoadError as e:
        raise ValueError(f"--{e}") from None


# --------------------------------------------------------------------------------------------------------
# append-only JSON lines
# --------------------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------------------
# one sample
# --------------------------------------------------------------------------------------------------------


def generate_answer(
    adapter: Any, prompt_inputs: Any, max_new_tokens: int, keep_stop: bool
) -> tuple[list[int], int | None]:
    """Greedy answer ids (stop token excluded) and the stop token id if generation ended on one (only looked
    for with ``keep_stop``; otherwise None)."""
    if not keep_stop:
        return adapter.generate(prompt_inputs, max_new_tokens), None
    import torch

    model = adapter.model
    inputs = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in prompt_inputs.inputs.items()}
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=adapter._pad_id(),
        )
    stops = adapter.stop_token_ids()
    answer: list[int] = []
    for tok in out[0, prompt_inputs.length :].tolist():
        if tok in stops:
            return answer, int(tok)
        answer.append(int(tok))
    return answer, None


@dataclass
class Runner:
    """Holds the model's explainers, the word typer and the scoring settings for a sequence of samples."""

    model: Any
    processor: Any
    methods: tuple[str, ...]
    typer: WordTyper
    max_new_tokens: int = 256
    placement: str = "stretch"
    merge: str = "tam"
    include_stop_token: bool = False
    backend: str = "auto"
    explainers: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..config import ExplainConfig
        from ..fast import Explainer

        for m in self.methods:
            cfg = ExplainConfig(method=m, max_new_tokens=self.max_new_tokens, backend=self.backend)
            self.explainers[m] = Explainer(self.model, self.processor, cfg)

    @property
    def adapter(self) -> Any:
        return self.explainers[self.methods[0]].adapter

    def evaluate_one(self, sample: Sample, save_maps_dir: Path | None = None) -> dict:
        """The JSON record of one sample (see the module docstring); never raises for a bad sample."""
        from ..images import load_image

        rec: dict[str, Any] = {"v": RECORD_VERSION, "id": sample.id, "index": sample.index}
        if not sample.image_exists:
            rec.update(status="missing_image", error=f"image file {sample.image!r} does not exist")
            return rec
        t0 = time.perf_counter()
        try:
            image = load_image(sample.image)
            ad = self.adapter
            tok = ad.tokenizer
            ids, stop = generate_answer(
                ad, ad.prepare(image, sample.prompt, 1.0), self.max_new_tokens, self.include_stop_token
            )
            explained = ids + ([stop] if stop is not None else [])
            t_gen = time.perf_counter() - t0
            raw, decoded = token_pieces(tok, explained)
            words, groups = group_words(raw, decoded) if explained else ([], [])
            labels = word_labels(self.typer, words, sample.categories)
            mask = load_mask(sample.mask) if sample.mask_exists else None
            box = None
            if self.placement == "crop" and mask is not None:
                box = box_in_mask(ad.view_box(image), mask.shape)
            methods: dict[str, Any] = {}
            times = {"generate": round(t_gen, 4)}
            arrays: dict[str, np.ndarray] = {"answer_ids": np.asarray(explained, dtype=np.int64)}
            # every method from the SAME teacher-forced forward (one batched pass over the union of scales)
            t1 = time.perf_counter()
            first = self.explainers[self.methods[0]]
            exps = first.explain_methods(
                image,
                sample.prompt,
                [self.explainers[m].config for m in self.methods],
                answer=list(explained),
            )
            times["explain_all_methods"] = round(time.perf_counter() - t1, 4)
            for m, exp in zip(self.methods, exps):
                if list(exp.answer_ids) != explained:
                    raise RuntimeError(f"method {m} explained ids {exp.answer_ids}, expected {explained}")
                maps = (
                    np.stack([exp.map_uint8(i) for i in range(len(exp))])
                    if len(exp)
                    else np.zeros((0, *exp.grid), np.uint8)
                )
                scores = evaluate_sample(maps, groups, labels, mask, box=box, merge=self.merge)
                methods[m] = scores.to_dict()
                arrays[m] = maps
                times[m] = round(exp.timings.get("attribution", 0.0), 4)
            if save_maps_dir is not None:
                buf = io.BytesIO()
                np.savez_compressed(buf, **arrays)
                atomic_write_bytes(save_maps_dir / f"{sample.index:07d}.npz", buf.getvalue())
            rec.update(
                status="ok",
                answer=tok.decode(ids, skip_special_tokens=True),
                answer_ids=ids,
                stop_token=stop,
                tokens=decoded,
                words=words,
                groups=groups,
                labels=labels,
                grid=list(maps.shape[1:]) if len(explained) else None,
                mask_missing=mask is None,
                placement_box=list(box) if box is not None else None,
                retokenization_mismatch=retokenization_mismatch(tok, explained),
                methods=methods,
                time_s=times,
            )
        except Exception as e:  # recorded, counted, retried by a re-run
            rec.update(
                status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8)
            )
        return rec


# --------------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------------
def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def summarize(
    dataset: EvalDataset,
    samples: Sequence[Sample],
    methods: Sequence[str],
    chosen: dict[str, dict],
    settings: dict[str, Any],
    ignored_lines: int = 0,
) -> dict[str, Any]:
    """Pooled metrics per method over the complete records, and every count a reader needs."""
    complete = [chosen[s.id] for s in samples if s.id in chosen and is_complete(chosen[s.id], methods)]
    counts = {
        "selected": len(samples),
        "evaluated": len(complete),
        "missing_image": sum(1 for s in samples if chosen.get(s.id, {}).get("status") == "missing_image"),
        "error": sum(1 for s in samples if chosen.get(s.id, {}).get("status") == "error"),
        "unfinished": sum(1 for s in samples if s.id not in chosen),
        "missing_mask": sum(1 for r in complete if r.get("mask_missing")),
        "empty_answer": sum(1 for r in complete if not r.get("answer_ids")),
        "retokenization_mismatch": sum(1 for r in complete if r.get("retokenization_mismatch")),
        "ignored_lines": ignored_lines,
    }
    counts["incomplete"] = (
        len(samples) - counts["evaluated"] - counts["missing_image"] - counts["error"] - counts["unfinished"]
    )
    errors = {
        s.id: chosen[s.id].get("error") for s in samples if chosen.get(s.id, {}).get("status") == "error"
    }
    return {
        "dataset": dataset.summary(),
        "settings": settings,
        "methods": {m: pool(r["methods"][m] for r in complete).to_dict() for m in methods},
        "counts": counts,
        "errors": dict(list(errors.items())[:20]),
    }


def _printable(value: Any) -> str:
    """``value`` as text that encodes to UTF-8 (a folder name with undecodable bytes shows them as ``\\udcXX``)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def format_table(summary: dict[str, Any]) -> str:
    """The paper-shaped markdown table (method x Obj-IoU / Func-IoU / F1-IoU, plus precision / recall, in %)."""
    ds = {k: _printable(v) if isinstance(v, str) else v for k, v in summary["dataset"].items()}
    st = {k: _printable(v) if isinstance(v, str) else v for k, v in summary["settings"].items()}
    c = summary["counts"]
    lines = [
        f"### {ds['name']} ({ds['layout']}), model `{st['model']}`",
        "",
        "| Method | Obj-IoU | Func-IoU | F1-IoU | Precision | Recall |",
        "|:--|--:|--:|--:|--:|--:|",
    ]
    n_obj = n_func = 0
    for m, r in summary["methods"].items():
        name = METHOD_NAMES.get(m, m)
        lines.append(
            f"| {name} | {_fmt(r['obj_iou'])} | {_fmt(r['func_iou'])} | {_fmt(r['f1_iou'])} "
            f"| {_fmt(r['precision'])} | {_fmt(r['recall'])} |"
        )
        n_obj, n_func = r["n_obj"], r["n_func"]
    lines += [
        "",
        f"Values in %, pooled over the data set (TAM's eval.py): Obj-IoU over {n_obj} noun objects, Func-IoU over "
        f"{n_func} function words. Samples: {c['selected']} selected, {c['evaluated']} evaluated, "
        f"{c['missing_image']} missing image, {c['error']} errors, {c['unfinished'] + c['incomplete']} unfinished; "
        f"{c['missing_mask']} evaluated with a missing mask (empty mask, as TAM); {c['empty_answer']} empty answers; "
        f"{c['retokenization_mismatch']} answers TAM would have dropped (re-tokenization mismatch).",
        f"Word typer: {st['word_typer']}{'' if st['word_typer_exact'] else ' (approximate, not TAM NLTK typing)'}; "
        f"placement: {st['placement']}; merge: {st['merge']}; stop token explained: {st['include_stop_token']}; "
        f'max new tokens: {st["max_new_tokens"]}; prompt: "{ds["prompt"]}".',
    ]
    if ds["problems"]:
        lines.append("Data set notes: " + "; ".join(map(_printable, ds["problems"])) + ".")
    return "\n".join(lines) + "\n"


def _settings(opts: EvalOptions, dataset: EvalDataset, typer: WordTyper) -> dict[str, Any]:
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


def _read_run_settings(out: Path) -> dict[str, Any] | None:
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


def _check_run_settings(out: Path, settings: dict[str, Any], samples: Sequence[Sample], write: bool) -> None:
    """Refuse an ``out`` holding results of other settings; with ``write``, record ``settings`` there when it
    has none yet (called once the model has loaded: a run that fails to start writes nothing)."""
    old = _read_run_settings(out)
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


def _prepare_out(out: Path, save_maps: bool) -> None:
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


def run_eval(
    opts: EvalOptions,
    *,
    model_and_processor: tuple[Any, Any] | None = None,
    dist: DistInfo | None = None,
    after_sample: Callable[[dict], None] | None = None,
    echo: bool = True,
) -> dict[str, Any] | None:
    """Run (or resume) an evaluation; returns the summary on rank 0, None on other ranks.

    model_and_processor: an already-loaded model (else ``opts.model`` is loaded).
    dist:               the distributed context (default: from the environment, initialising torchrun's group).
    after_sample:       called with each new record after it is written (tests use it to simulate a crash).
    """
    opts.check()
    own_group = dist is None
    info = init_distributed(opts.dist_timeout_min) if own_group else dist
    try:
        return _run(opts, info, model_and_processor, after_sample, echo)
    finally:
        if own_group and info.initialized:
            import torch.distributed as tdist

            tdist.destroy_process_group()


def _run(opts, info: DistInfo, model_and_processor, after_sample, echo) -> dict[str, Any] | None:
    from tqdm.auto import tqdm

    out = Path(opts.out)
    failure: BaseException | None = None
    try:
        dataset = load_dataset(opts.data, opts.layout, opts.prompt)
        samples = dataset.samples[: opts.limit] if opts.limit else list(dataset.samples)
        typer = get_word_typer(opts.word_typer)
        settings = _settings(opts, dataset, typer)
        if model_and_processor is None:
            check_model_spec(opts.model, opts.dtype)  # before anything is written
        if out.is_dir():
            _check_run_settings(out, settings, dataset.samples, write=False)  # refuse before loading
        _prepare_out(out, opts.save_maps)
        done_records, _ = read_all_shards(out)
        done = {r["id"] for r in done_records if is_complete(r, opts.methods)}
        mine = [s for s in samples if s.index % info.world_size == info.rank and s.id not in done]
        if mine:
            if model_and_processor is None:
                device = resolve_device(opts.device, info.local_rank)
                model_and_processor = load_model(opts.model, device, opts.dtype)
            model, processor = model_and_processor
            runner = Runner(
                model,
                processor,
                tuple(opts.methods),
                typer,
                max_new_tokens=opts.max_new_tokens,
                placement=opts.placement,
                merge=opts.merge,
                include_stop_token=opts.include_stop_token,
                backend=opts.backend,
            )
            # the model has loaded: now the folder is a run of these settings (every rank may write it:
            # same content, atomic)
            _check_run_settings(out, settings, dataset.samples, write=True)
            maps_dir = out / "maps" if opts.save_maps else None
            if maps_dir is not None:
                maps_dir.mkdir(exist_ok=True)
            bar = tqdm(
                total=len(mine),
                desc=f"eval {dataset.name}"
                + (f" [rank {info.rank}/{info.world_size}]" if info.world_size > 1 else ""),
                unit="sample",
                disable=not opts.progress or info.rank != 0,
                file=sys.stderr,
            )
            with JsonlAppender(shard_path(out, info.rank, info.world_size)) as writer, bar:
                for s in mine:
                    rec = runner.evaluate_one(s, maps_dir)
                    rec["rank"] = info.rank
                    writer.append(rec)
                    bar.update(1)
                    if after_sample is not None:
                        after_sample(rec)
    except BaseException as e:  # still meet the other ranks at the barrier, then re-raise
        failure = e
    _barrier(info)
    if failure is not None:
        raise failure
    if info.rank != 0:
        return None

    # a run with nothing to evaluate loads no model; its results are still of these settings
    _check_run_settings(out, settings, dataset.samples, write=True)
    records, ignored = read_all_shards(out)
    chosen = select_records(records, samples, opts.methods)
    summary = summarize(dataset, samples, opts.methods, chosen, settings, ignored)
    merged = b"".join(json_line(chosen[s.id]) for s in samples if s.id in chosen)
    atomic_write_bytes(out / "results.jsonl", merged)
    atomic_write_bytes(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    table = format_table(summary)
    atomic_write_bytes(out / "table.md", table.encode())
    if echo:
        print(table, end="", flush=True)
    return summary
