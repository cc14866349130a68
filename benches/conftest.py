"""pytest-benchmark configuration for ``pytest benches/``.

Quick mode (only the smallest sizes; a tiny model end to end) is on when any of:
- ``--quick`` is given;
- ``MMX_BENCH_QUICK=1`` is set;
- benchmarks are disabled (``--benchmark-disable``: every case then runs once as a smoke test), unless
  ``MMX_BENCH_QUICK=0`` says otherwise.

Clock: CPU time of the process on a CPU (``time.process_time``; ``MMX_BENCH_TIMER=wall`` for wall time),
wall time on CUDA; see :func:`bench_timer`. Threads: ``MMX_BENCH_THREADS`` (default 1), see
:func:`bench_threads`.

Timing: each case is called once to warm up and to estimate its cost, then ``benchmark.pedantic`` runs
``rounds = clamp(MMX_BENCH_TARGET_S / cost, MIN, MAX)`` rounds (defaults: 1.5 s target, 3 to 30 rounds),
so that slow reference calls (seconds) do not run pytest-benchmark's default 5+ rounds each.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from benches.cases import quick_mode  # noqa: E402


def pytest_addoption(parser):
    parser.addoption(
        "--quick",
        action="store_true",
        default=False,
        help="mmx_fast benches: only the smallest sizes (also MMX_BENCH_QUICK=1, or --benchmark-disable)",
    )


def _is_quick(config) -> bool:
    disabled = bool(config.getoption("benchmark_disable", default=False))
    return config.getoption("--quick") or quick_mode(default=disabled)


def bench_threads() -> int:
    """CPU threads for the benchmarks: ``MMX_BENCH_THREADS``, default 1. On the shared 2-core development
    machine, 2 intra-op threads made timings swing by up to 600x whenever another process held a core
    (every small op's OpenMP barrier waits for a preempted thread); 1 thread is stable."""
    return max(1, int(os.environ.get("MMX_BENCH_THREADS", "1")))


def pytest_configure(config):
    quick = _is_quick(config)
    if not torch.cuda.is_available():
        torch.set_num_threads(bench_threads())
    # the parametrisation in the bench modules reads the environment at collection time
    os.environ["MMX_BENCH_QUICK"] = "1" if quick else "0"


def pytest_report_header(config):
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return (
        f"mmx_fast benches: {'QUICK' if _is_quick(config) else 'full'} mode, device {dev}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )


@pytest.fixture(scope="session")
def quick(pytestconfig) -> bool:
    return _is_quick(pytestconfig)


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def bench_timer():
    """The clock pytest-benchmark reads (``@pytest.mark.benchmark(timer=...)`` in the bench modules).

    CUDA: wall time (``time.perf_counter``; the callables synchronise). CPU with one thread: the process's
    CPU time (``time.process_time``) unless ``MMX_BENCH_TIMER=wall``: on the shared machine it does not count
    the time other processes hold our core, so ratios measured minutes apart stay comparable (on a quiet
    machine it equals wall time for single-threaded work). With more threads CPU time would add the threads
    up, so wall time is used."""
    if torch.cuda.is_available() or bench_threads() > 1:
        return time.perf_counter
    return (
        time.perf_counter if os.environ.get("MMX_BENCH_TIMER", "cpu").lower() == "wall" else time.process_time
    )


TARGET_S = float(os.environ.get("MMX_BENCH_TARGET_S", "1.5"))
MIN_ROUNDS = int(os.environ.get("MMX_BENCH_MIN_ROUNDS", "3"))
MAX_ROUNDS = int(os.environ.get("MMX_BENCH_MAX_ROUNDS", "30"))


def run_bench(benchmark, fn, group: str, provider: str, info: dict | None = None, min_rounds=None):
    """Benchmark ``fn`` (no arguments) under ``group`` as ``provider``; returns fn's result.

    Disabled benchmarks (``--benchmark-disable``) call fn once. Otherwise one warm-up call estimates the
    cost and picks the number of rounds (see the module docstring)."""
    benchmark.group = group
    benchmark.extra_info.update(info or {})
    benchmark.extra_info["provider"] = provider
    benchmark.extra_info["threads"] = torch.get_num_threads()
    benchmark.extra_info["timer"] = getattr(benchmark._timer, "__name__", str(benchmark._timer))
    if benchmark.disabled:  # pedantic then calls fn once, untimed
        return benchmark.pedantic(fn, rounds=1, iterations=1)
    t0 = time.perf_counter()
    fn()
    cost = time.perf_counter() - t0
    lo = MIN_ROUNDS if min_rounds is None else min_rounds
    rounds = int(max(lo, min(MAX_ROUNDS, TARGET_S / max(cost, 1e-6))))
    benchmark.extra_info["rounds"] = rounds
    return benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)
