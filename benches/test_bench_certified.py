"""Stage B's pass over W_U: the bare float32 ``H @ W_U.T`` + ``topk``, the exact fast path and the certified
bfloat16 pass (docs/design.md §5), side by side per size (``benches/cases.py: certified_callables``).

Every case first checks that the certified rankings equal the float32 ones and records how many rows fell
back to the exact pass (``extra_info["fallback_rows"]``).
"""

from __future__ import annotations

import pytest
import torch

from benches.cases import CERTIFIED_PROVIDERS, certified_callables, certified_cases, quick_mode
from benches.conftest import bench_timer, run_bench

pytestmark = pytest.mark.benchmark(timer=bench_timer())
CASES = certified_cases(quick_mode())


@pytest.fixture(scope="module")
def _inputs(device):
    cache: dict = {}

    def get(case):
        if case not in cache:
            from mmx_fast.ops import rankings as torch_rankings

            cache.clear()
            fns = certified_callables(case, device)
            torch_rankings.reset_certify_stats()
            cert = fns["certified"]()  # builds W_U's bfloat16 copy once, outside the timing
            stats = torch_rankings.reset_certify_stats()
            assert torch.equal(cert.cpu(), fns["float32"]().cpu()), "certified rankings differ from float32"
            cache[case] = (fns, stats)
        return cache[case]

    return get


@pytest.mark.parametrize("provider", CERTIFIED_PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_certified(benchmark, case, provider, device, _inputs):
    fns, stats = _inputs(case)
    info = {
        **case.info(),
        "device": str(device),
        "fallback_rows": stats["fallback_rows"],
        "certified_rows": stats["rows"],
    }
    run_bench(benchmark, fns[provider], case.group, provider, info)
