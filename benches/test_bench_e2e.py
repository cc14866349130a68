"""End-to-end and MSEA-forward benchmarks on a real-architecture Qwen2-VL.

Full mode: Qwen2-VL-2B's dimensions (hidden 1536, vocabulary 151,936, tied embeddings) with 2 text and 2
vision layers on the CPU (all 28 / 32 in bfloat16 on CUDA), images of 224 and 448 pixels (64 and 256 visual
tokens at scale 1.0), greedy answers of exactly 20 tokens. Quick mode: the project's tiny Qwen2-VL.

Groups: ``e2e | ...`` holds ``reference`` (``mmx_fast.reference.explain``), ``fast`` (``explain_fast``),
``floor`` (prompt + ``generate`` + the extra scales' prefix-only forwards; the medians of its two parts,
``generate`` alone and the extra-scale forwards, go to ``extra_info``) and ``floor-full`` (the floor before
issue 16: one padded full-length forward over the extra scales);
``MSEA forward | ...`` holds one full forward per scale (``reference``), one padded full-length batch
(``padded``) and the fast path's prefix-only extra scales, length-bucketed (``fast``);
``forced batch | ...`` holds n forced-answer requests in one ``explain_batch`` (``batch``) vs one
``explain`` each (``one-by-one``); ``extra_info['explanations_per_s']`` = n / median.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from benches.cases import quick_mode
from benches.conftest import bench_timer, run_bench
from benches.e2e import (
    QUICK_ANSWER_TOKENS,
    SUITE_PROVIDERS,
    E2ECase,
    batch_callables,
    batch_sizes,
    build_model,
    default_spec,
    e2e_callables,
    e2e_cases,
    forward_callables,
)
from benches.models import bench_image

pytestmark = pytest.mark.benchmark(timer=bench_timer())
CASES = e2e_cases(quick_mode())


@pytest.fixture(scope="session")
def e2e_model(quick, device):
    spec = default_spec(quick, device)
    model, processor = build_model(spec, str(device))
    return spec, model, processor


@pytest.fixture(scope="module")
def _e2e(e2e_model):
    cache: dict = {}

    def get(case):
        if case not in cache:
            _, model, processor = e2e_model
            cache[case] = e2e_callables(model, processor, case)
        return cache[case]

    return get


def _info(spec, case, facts, device) -> dict:
    return {
        "kind": "e2e",
        "model": spec.label,
        "image": case.image,
        "answer_tokens": case.answer_tokens,
        "visual_tokens": facts["visual_tokens"],
        "n": facts["visual_tokens"]["1.0"],
        "grid": facts["grid"],
        "prompt_len": facts["prompt_len"],
        "device": str(device),
    }


@pytest.mark.parametrize("provider", SUITE_PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_e2e(benchmark, case, provider, e2e_model, _e2e, device):
    spec, _, _ = e2e_model
    fns, facts = _e2e(case)
    group = f"e2e | {spec.label} | image {case.image}px, T={case.answer_tokens}"
    facts["floor_parts"].clear()
    facts["timings"].get(provider, []).clear()
    out = run_bench(benchmark, fns[provider], group, provider, _info(spec, case, facts, device))
    if provider in ("floor", "floor-full") and facts["floor_parts"]:
        gen, fwd = zip(*facts["floor_parts"])
        benchmark.extra_info["floor_generate_s"] = statistics.median(gen)
        benchmark.extra_info["floor_extra_forward_s"] = statistics.median(fwd)
    if provider in ("reference", "fast"):
        parts = facts["timings"][provider]
        for key in sorted({k for t in parts for k in t}):
            benchmark.extra_info[f"timings_{key}_s"] = statistics.median(t.get(key, 0.0) for t in parts)
        assert out.maps.shape[0] == case.answer_tokens
        assert torch.isfinite(out.maps).all()


@pytest.mark.parametrize("provider", ("reference", "padded", "fast"))
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_msea_forward(benchmark, case, provider, e2e_model, device):
    spec, model, processor = e2e_model
    fns = forward_callables(model, processor, case)
    group = f"MSEA forward | {spec.label} | image {case.image}px, T={case.answer_tokens}"
    info = {"kind": "forward", "model": spec.label, "image": case.image, "answer_tokens": case.answer_tokens}
    out = run_bench(benchmark, fns[provider], group, provider, {**info, "device": str(device)})
    assert len(out) == 3


# --------------------------------------------------------------------------------------------------
# One end-to-end row per geometry kind beyond Qwen2-VL's dynamic one: tiled, fixed, video (docs/design.md §1.2)
# --------------------------------------------------------------------------------------------------

TILED_CASE = E2ECase(112, QUICK_ANSWER_TOKENS)  # the tiny InternVL: 2x2 tiles + thumbnail at every scale


@pytest.fixture(scope="module")
def tiled_model(device):
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("internvl_tiled", seed=0)
    with torch.no_grad():  # never stop early: exact answer lengths
        model.get_output_embeddings().weight[model.generation_config.eos_token_id] = 0
    return model.to(device), processor, e2e_callables(model.to(device), processor, TILED_CASE)


@pytest.mark.parametrize("provider", SUITE_PROVIDERS)
def test_e2e_tiled(benchmark, provider, tiled_model, device):
    _, _, (fns, facts) = tiled_model
    label = "tiny InternVL, dynamic tiling (d 64, 2 layers)"
    group = f"e2e tiled | {label} | image {TILED_CASE.image}px, T={TILED_CASE.answer_tokens}"
    info = {
        "kind": "e2e",
        "geometry": "tiled",
        "model": label,
        "image": TILED_CASE.image,
        "answer_tokens": TILED_CASE.answer_tokens,
        "grid": facts["grid"],
        "device": str(device),
    }
    out = run_bench(benchmark, fns[provider], group, provider, info)
    if provider in ("reference", "fast"):
        assert out.maps.shape == (TILED_CASE.answer_tokens, *facts["grid"])
        assert torch.isfinite(out.maps).all()


# Fixed-size geometry: the tiny LLaVA (one 112x112 view, a 4x4 visual grid at every scale).
FIXED_CASE = E2ECase(112, QUICK_ANSWER_TOKENS)
# Video: the tiny Qwen2-VL with 4 frames in place of the image (t = 2 after Qwen's temporal merge).
VIDEO_CASE = E2ECase(112, QUICK_ANSWER_TOKENS)
VIDEO_FRAMES = 4


def _never_stop(model):
    """Zero the EOS row of the output embedding: greedy answers of exactly the requested length."""
    with torch.no_grad():
        model.get_output_embeddings().weight[model.generation_config.eos_token_id] = 0


@pytest.fixture(scope="module")
def fixed_model(device):
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("llava", seed=0)
    _never_stop(model)
    model = model.to(device)
    return model, processor, e2e_callables(model, processor, FIXED_CASE)


@pytest.fixture(scope="module")
def video_model(device):
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("qwen2_vl", seed=0)
    _never_stop(model)
    model = model.to(device)
    frames = [bench_image(*VIDEO_CASE.size, seed=i) for i in range(VIDEO_FRAMES)]
    return model, processor, e2e_callables(model, processor, VIDEO_CASE, frames=frames)


@pytest.mark.parametrize("provider", SUITE_PROVIDERS)
def test_e2e_fixed(benchmark, provider, fixed_model, device):
    _, _, (fns, facts) = fixed_model
    label = "tiny LLaVA, fixed size (d 64, 2 layers)"
    group = f"e2e fixed | {label} | image {FIXED_CASE.image}px, T={FIXED_CASE.answer_tokens}"
    info = {
        "kind": "e2e",
        "geometry": "fixed",
        "model": label,
        "image": FIXED_CASE.image,
        "answer_tokens": FIXED_CASE.answer_tokens,
        "grid": facts["grid"],
        "device": str(device),
    }
    out = run_bench(benchmark, fns[provider], group, provider, info)
    if provider in ("reference", "fast"):
        assert out.maps.shape == (FIXED_CASE.answer_tokens, *facts["grid"])
        assert torch.isfinite(out.maps).all()


@pytest.mark.parametrize("provider", SUITE_PROVIDERS)
def test_e2e_video(benchmark, provider, video_model, device):
    _, _, (fns, facts) = video_model
    label = "tiny Qwen2-VL, video (d 64, 2 layers)"
    group = f"e2e video | {label} | {VIDEO_FRAMES} frames {VIDEO_CASE.image}px, T={VIDEO_CASE.answer_tokens}"
    info = {
        "kind": "e2e",
        "geometry": "video",
        "model": label,
        "image": VIDEO_CASE.image,
        "frames": VIDEO_FRAMES,
        "answer_tokens": VIDEO_CASE.answer_tokens,
        "grid": facts["grid"],
        "temporal": facts["temporal"],
        "device": str(device),
    }
    out = run_bench(benchmark, fns[provider], group, provider, info)
    assert facts["temporal"] == VIDEO_FRAMES // 2
    if provider in ("reference", "fast"):
        assert out.maps.shape == (VIDEO_CASE.answer_tokens, facts["temporal"], *facts["grid"])
        assert torch.isfinite(out.maps).all()


@pytest.mark.parametrize("provider", ("batch", "one-by-one"))
@pytest.mark.parametrize("n", batch_sizes(quick_mode()))
def test_forced_batch(benchmark, n, provider, e2e_model, device):
    spec, model, processor = e2e_model
    image = CASES[0].image
    fns = batch_callables(model, processor, n, image=image, answer_tokens=CASES[0].answer_tokens)
    group = f"forced batch | {spec.label} | image {image}px, T={CASES[0].answer_tokens}, n={n}"
    info = {"kind": "batch", "model": spec.label, "image": image, "n": n, "device": str(device)}
    out = run_bench(benchmark, fns[provider], group, provider, info)
    if not benchmark.disabled:
        benchmark.extra_info["explanations_per_s"] = n / benchmark.stats.stats.median
    assert len(out) == n and all(torch.isfinite(e.maps).all() for e in out)
