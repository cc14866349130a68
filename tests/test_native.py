"""The native C++ kernels (``csrc/``, ``torch.ops.mmx_fast.*``, wrappers in :mod:`mmx_fast.native`): the build,
a full-size check, thread-count independence, ``torch.compile``, the fake / CUDA registrations and the
forced-off / failed-build fallbacks. The per-stage comparisons with the reference are in
``tests/test_stage_<stage>.py`` (``test_native_*`` and the every-backend tests).

The extension is compiled on first use (about 15 s on 2 cores). Where it cannot be built, these tests skip
with the compiler's reason, except in CI (``CI=true``), where they must run and a failed build fails.
``MMX_FAST_NATIVE=0`` in the environment skips them (deliberately disabled).

Accuracy follows the flash-attention rule (docs/design.md §4): the native error against a float64 reference
is at most twice the error of the plain reference run in the inputs' precision, plus a small absolute floor.
Rankings must be equal, not close.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import refine_case, scattered_rankings, structured_maps

from mmx_fast import native, ops
from mmx_fast.constants import CANCELLATION_FLOOR

torch_rankings = importlib.import_module("mmx_fast.ops.rankings")  # the torch backend of each stage
torch_refine = importlib.import_module("mmx_fast.ops.refine")
ref_rbo = importlib.import_module("mmx_fast.reference.rankings")
ref_filters = importlib.import_module("mmx_fast.reference.refine")
ref_arc = importlib.import_module("mmx_fast.reference.refine")

ROOT = Path(__file__).resolve().parents[1]
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
K = 50
DTYPES = (torch.float32, torch.bfloat16)


# Tests of the switches and fallbacks run in subprocesses and need no build here.
_NO_BUILD_NEEDED = {
    "test_forced_off_is_unavailable_and_callers_fall_back",
    "test_failed_build_warns_once_and_forced_on_raises",
    "test_sources_are_found",
}


@pytest.fixture(scope="module")
def _build_error():
    """Build / load the extension once for the module: None when loaded, else why it is not."""
    if os.environ.get(native.ENV_VAR, "auto").strip().lower() in ("0", "off", "false", "no"):
        return f"native kernels disabled by {native.ENV_VAR}=0"
    try:
        native.load()
    except RuntimeError as err:
        if CI:
            pytest.fail(f"CI=true but the native kernels could not be built: {err}")
        return f"native C++ kernels cannot be built here (a C++ compiler is needed): {err}"
    return None


@pytest.fixture(autouse=True)
def _needs_native(request, _build_error):
    if _build_error is not None and request.node.originalname not in _NO_BUILD_NEEDED:
        pytest.skip(_build_error)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full, capture_output=True, text=True
    )


# --------------------------------------------------------------------------------------------------
# Stage B1: top-k rankings
# --------------------------------------------------------------------------------------------------


def test_topk_rankings_realistic_size_equal_reference():
    """Qwen2-VL-2B sizes (V = 151,936, d = 1536, 70 text rows, k = 50): equal to the materialised sort."""
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(151_936, 1536, generator=g, dtype=torch.bfloat16)
    h = torch.randn(70, 1536, generator=g)
    assert torch.equal(native.rankings_topk(h, w, K), ref_rbo.topk_ranking(h, w, K))


# --------------------------------------------------------------------------------------------------
# Stage B2: RBO of every pair
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Rank Gaussian filter and stage C (refine)
# --------------------------------------------------------------------------------------------------


def test_native_agrees_with_vectorised_path():
    """The two CPU backends side by side at the realistic refine / RBO sizes (a sanity check of both)."""
    a_t, ctx, weights = refine_case((17, 23), 5, t=50, c_prompt=20)
    for flt in (True, False):
        torch.testing.assert_close(
            native.refine(a_t, ctx, weights, flt),
            torch_refine.refine_torch(a_t, ctx, weights, flt),
            rtol=0,
            atol=2e-5,
        )
    a, b = scattered_rankings(50, K, 120, 3), scattered_rankings(70, K, 120, 4)
    torch.testing.assert_close(
        native.rankings_rbo(a, b, 0.9, "ext"), ops.rankings_rbo(a, b, 0.9, "ext", backend="torch")
    )


# --------------------------------------------------------------------------------------------------
# Threads, registration, torch.compile
# --------------------------------------------------------------------------------------------------


def test_results_identical_for_one_and_two_threads():
    g = torch.Generator().manual_seed(8)
    h, w = torch.randn(9, 64, generator=g), torch.randn(5000, 64, generator=g).bfloat16()
    a, b = scattered_rankings(17, K, 90, 5), scattered_rankings(23, K, 90, 6)
    a_t, ctx, weights = refine_case((17, 23), 9)
    x = structured_maps(7, (24, 24), 2)

    def run():
        return (
            native.rankings_topk(h, w, K, tile=512),
            native.rankings_rbo(a, b, 0.9, "ext"),
            native.refine(a_t, ctx, weights, True),
            native.refine(a_t, ctx, weights, False),
            native.refine_filter(x),
        )

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(before)
    for x1, x2 in zip(one, two):
        assert torch.equal(x1, x2)


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
def test_ops_registered_with_schemas_fake_and_cuda_kernels():
    for name in ("rankings_topk", "rankings_rbo", "refine", "refine_filter"):
        op = getattr(torch.ops.mmx_fast, name).default
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CPU"), name
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "CUDA"), name
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(3, 8, generator=g), torch.randn(40, 8, generator=g)
    ranks = native.rankings_topk(h, w, 5)
    a_t, ctx, weights = torch.rand(2, 5, 6), torch.rand(3, 5, 6), torch.rand(2, 3)
    checks = [
        (torch.ops.mmx_fast.rankings_topk.default, (h, w, 5, 0)),
        (torch.ops.mmx_fast.rankings_rbo.default, (ranks[:2], ranks, 0.9, "ext")),
        (torch.ops.mmx_fast.refine.default, (a_t, ctx, weights, True, CANCELLATION_FLOOR)),
        (torch.ops.mmx_fast.refine_filter.default, (a_t,)),
    ]
    for op, args in checks:
        torch.library.opcheck(op, args)
    meta = torch.ops.mmx_fast.rankings_topk(h.to("meta"), w.to("meta"), 5)
    assert meta.shape == (3, 5) and meta.dtype == torch.int64 and meta.device.type == "meta"


def _pipeline(h, w, a_t, ctx):
    ranks = native.rankings_topk(h, w, 16)
    r = native.rankings_rbo(ranks[-a_t.shape[0] :], ranks, 0.9, "ext")
    return ranks, native.refine(a_t, ctx, 1 - r, True) * 2


@pytest.mark.filterwarnings("ignore:.*torch.jit.script_method.*:DeprecationWarning")
@pytest.mark.parametrize("backend", ["inductor", "aot_eager"])
def test_torch_compile_traces_the_ops(backend):
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(6, 32, generator=g), torch.randn(300, 32, generator=g)
    a_t, ctx = torch.rand(4, 5, 7, generator=g), torch.rand(6, 5, 7, generator=g)
    torch._dynamo.reset()
    compiled = torch.compile(_pipeline, backend=backend, fullgraph=True)
    ranks, maps = compiled(h, w, a_t, ctx)
    eager_ranks, eager_maps = _pipeline(h, w, a_t, ctx)
    assert torch.equal(ranks, eager_ranks)
    torch.testing.assert_close(maps, eager_maps, rtol=0, atol=1e-6)
    assert float(maps.max()) == 2.0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CUDA impls call Triton)")
def test_cuda_impls_match_cpu():
    g = torch.Generator().manual_seed(2)
    h, w = torch.randn(7, 64, generator=g), torch.randn(3000, 64, generator=g)
    a, b = scattered_rankings(5, K, 70, 1), scattered_rankings(9, K, 70, 2)
    a_t, ctx, weights = refine_case((17, 23), 3)
    cpu = (native.rankings_topk(h, w, K), native.rankings_rbo(a, b), native.refine(a_t, ctx, weights))
    cuda = (
        native.rankings_topk(h.cuda(), w.cuda(), K),
        native.rankings_rbo(a.cuda(), b.cuda()),
        native.refine(a_t.cuda(), ctx.cuda(), weights.cuda()),
    )
    assert torch.equal(cuda[0].cpu(), cpu[0])
    torch.testing.assert_close(cuda[1].cpu(), cpu[1], rtol=0, atol=2e-6)
    torch.testing.assert_close(cuda[2].cpu(), cpu[2], rtol=0, atol=2e-5)


# --------------------------------------------------------------------------------------------------
# Switches and fallbacks (subprocesses: the state is per process)
# --------------------------------------------------------------------------------------------------


def test_forced_off_is_unavailable_and_callers_fall_back():
    proc = _run(
        """
        import torch, pytest
        from mmx_fast import native, ops
        from mmx_fast.ops.refine import refine_torch
        assert native.available() is False
        for call in (native.load, lambda: native.refine(torch.rand(1, 3, 3), torch.rand(1, 3, 3), torch.ones(1, 1))):
            with pytest.raises(RuntimeError, match="MMX_FAST_NATIVE=0"):
                call()
        assert not hasattr(torch.ops.mmx_fast, "refine")  # nothing was loaded
        a, c, w = torch.rand(2, 4, 5), torch.rand(3, 4, 5), torch.rand(2, 3)
        with __import__("warnings").catch_warnings():
            __import__("warnings").simplefilter("ignore")
            out = ops.refine(a, c, w, True, backend="native")
        assert torch.equal(out, refine_torch(a, c, w, True))
        print("OK")
        """,
        MMX_FAST_NATIVE="0",
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_failed_build_warns_once_and_forced_on_raises(tmp_path):
    """A broken compiler (CXX=false) and an empty cache: ``auto`` gives ONE warning and False; ``1`` raises."""
    proc = _run(
        """
        import os, warnings, pytest
        from mmx_fast import native
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert native.available() is False
            assert native.available() is False
        msgs = [str(w.message) for w in caught if "native C++ kernels" in str(w.message)]
        assert len(msgs) == 1 and "vectorised torch path" in msgs[0], msgs
        assert native.build_error() is not None
        os.environ["MMX_FAST_NATIVE"] = "1"
        with pytest.raises(RuntimeError, match="MMX_FAST_NATIVE=1"):
            native.available()
        os.environ["MMX_FAST_NATIVE"] = "bogus"
        with pytest.raises(ValueError, match="MMX_FAST_NATIVE='bogus'"):
            native.available()
        print("OK")
        """,
        MMX_FAST_NATIVE="auto",
        CXX="false",
        TORCH_EXTENSIONS_DIR=str(tmp_path),
    )
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_sources_are_found():
    files = native.source_files()
    assert files and all(f.is_file() and f.suffix == ".cpp" for f in files)
