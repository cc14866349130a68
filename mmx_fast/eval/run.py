"""The evaluation runner: generate each answer once, explain it with every requested method, score it with
TAM's metrics, append one JSON line per sample, resume, shard over ranks, merge and report.

The concerns, one module each: ``options`` (what a run needs), ``distributed`` (torchrun), ``store`` (the
output folder: JSON-line shards, ``run.json``), ``runner`` (one sample), ``summary`` (the pooled metrics and
the table); this module runs them. The model loads through ``mmx_fast.cli_common``'s ``--model`` wrapper of
``mmx_fast.load``.

Per sample (:meth:`mmx_fast.eval.runner.Runner.evaluate_one`):

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

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cli_common import load_model_option, resolve_model_option
from ..io import atomic_write_bytes
from .datasets import load_dataset
from .distributed import DistInfo, barrier, init_distributed, rank_device
from .options import EvalOptions
from .runner import Runner
from .store import (
    JsonlAppender,
    check_run_settings,
    is_complete,
    json_line,
    prepare_out,
    read_all_shards,
    run_settings,
    select_records,
    shard_path,
)
from .summary import format_table, summarize
from .words import get_word_typer


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
        settings = run_settings(opts, dataset, typer)
        if model_and_processor is None:
            source = resolve_model_option(opts.model)  # before anything is written
        if out.is_dir():
            check_run_settings(out, settings, dataset.samples, write=False)  # refuse before loading
        prepare_out(out, opts.save_maps)
        done_records, _ = read_all_shards(out)
        done = {r["id"] for r in done_records if is_complete(r, opts.methods)}
        mine = [s for s in samples if s.index % info.world_size == info.rank and s.id not in done]
        if mine:
            if model_and_processor is None:
                device = rank_device(opts.device, info.local_rank)
                model_and_processor = load_model_option(source, device, opts.dtype)
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
            check_run_settings(out, settings, dataset.samples, write=True)
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
    barrier(info)
    if failure is not None:
        raise failure
    if info.rank != 0:
        return None

    # a run with nothing to evaluate loads no model; its results are still of these settings
    check_run_settings(out, settings, dataset.samples, write=True)
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
