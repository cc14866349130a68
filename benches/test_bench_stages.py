"""Per-stage benchmarks: reference vs fast, side by side per size (``benchmark.group``).

Stages logit_lens, rankings (top-k + RBO), refine, refine_filter (the rank Gaussian filter) and msea on their
own; sizes in ``benches/cases.py``. Providers: ``reference``, ``fast`` (``backend="auto"``) and, when auto
picks the native C++ kernels (CPU) or Triton (CUDA), ``torch`` (the vectorised torch path). In quick mode each case also checks that the fast output agrees with
the reference's, so the two providers are known to do the same work.
"""

from __future__ import annotations

import pytest

from benches.cases import (
    all_stage_cases,
    check_agreement,
    default_device,
    fast_backend,
    quick_mode,
    reference_skip_reason,
    stage_callables,
    stage_providers,
)
from benches.conftest import bench_timer, run_bench

pytestmark = pytest.mark.benchmark(timer=bench_timer())
CASES = all_stage_cases(quick_mode())
PROVIDERS = stage_providers(default_device())


@pytest.fixture(scope="module")
def _inputs(device):
    """Per-case callables, built once per case and shared by both providers (same inputs)."""
    cache: dict = {}

    def get(case):
        if case not in cache:
            cache.clear()  # one case's inputs at a time (W_U itself is cached in cases.unembedding)
            cache[case] = stage_callables(case, device, providers=PROVIDERS)
        return cache[case]

    return get


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_stage(benchmark, case, provider, device, quick, _inputs):
    if provider == "reference":
        reason = reference_skip_reason(case, device)
        if reason and not quick:
            pytest.skip(f"reference skipped on CPU at this size: {reason}")
    fns = _inputs(case)
    info = {**case.info(), "device": str(device), "fast_backend": fast_backend(case.stage, device, case)}
    out = run_bench(benchmark, fns[provider], case.group, provider, info)
    if quick and provider != "reference":
        check_agreement(case, fns["reference"](), out)
