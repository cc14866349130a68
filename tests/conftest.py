import os

import pytest
import torch
from helpers import DTYPES, N_TEXT, TOP_K, D, V

# Triton kernels can only run on CPU through the interpreter, and it must be switched on before any
# @triton.jit decorator runs, i.e. before mmx_fast.kernels is imported anywhere.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def vocab():
    """A realistic unembedding, float32 (930 MB) and bfloat16, made once per module that asks for it."""
    g = torch.Generator().manual_seed(1234)
    w32 = torch.randn(V, D, generator=g).mul_(0.02)
    out = {torch.float32: w32, torch.bfloat16: w32.to(torch.bfloat16)}
    yield out
    out.clear()


@pytest.fixture(scope="module")
def text_hidden():
    """Hidden states of the 70 text positions (20 prompt + 50 answer), as the final norm leaves them."""
    g = torch.Generator().manual_seed(99)
    return torch.randn(N_TEXT, D, generator=g)


@pytest.fixture(scope="module")
def ref_rankings(vocab, text_hidden):
    """The reference rankings (materialised logits + stable sort), once per dtype."""
    from mmx_fast.reference.rankings import topk_ranking

    return {dt: topk_ranking(text_hidden.to(dt), vocab[dt], TOP_K) for dt in DTYPES}


@pytest.fixture
def stage_backend_env(monkeypatch, request):
    """For the stage tests (``tests/test_stage_*.py``, via ``pytestmark``): no ambient MMX_FAST_BACKEND may
    redirect ``auto``; the launcher tests (``test_triton_*``) need triton, the C++ op tests
    (``test_native_*``) the native build."""
    from helpers import backend_or_skip, kernels_or_none

    monkeypatch.delenv("MMX_FAST_BACKEND", raising=False)
    name = request.node.originalname
    if name.startswith("test_triton_") and kernels_or_none() is None:
        pytest.skip("triton is not installed (or mmx_fast.kernels does not import)")
    if name.startswith("test_native_"):
        backend_or_skip("native")
