"""Stage B ranks the answer rows from the logits generation computed (docs/design.md §1.3, "scores from
generation"): no vocabulary row is scored twice, and the rankings are the same as a pass over W_U gives.

- generated answers, several families, float32 and bfloat16: the rankings from generation's scores equal
  today's pass over every row (and the float32 reference), and the scores path really ran (rows counted,
  lm_head called once per generated token and never again);
- forced answers: the scale-1.0 forward never applies lm_head, and one pass over W_U ranks every row;
- the certification itself on synthetic scores: scores from another summation order are certified; a
  crowd of near-ties at the cut falls back to the pass, which still gives the reference's rankings.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from mmx_fast import ExplainConfig, ops
from mmx_fast.adapters import get_adapter
from mmx_fast.fast import Explainer
from mmx_fast.pipeline import text_side
from mmx_fast.reference.rankings import topk_ranking
from mmx_fast.testing import tiny_model

torch_rankings = importlib.import_module("mmx_fast.ops.rankings")

K = 50


def _image(seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (112, 112, 3), dtype=np.uint8))


def _stats_delta(before: dict) -> dict:
    return {key: torch_rankings.CERTIFY_STATS[key] - before[key] for key in before}


class _HeadCalls:
    """Counts the calls of the model's lm_head (its output embeddings) inside the block."""

    def __init__(self, model):
        self.head, self.calls = model.get_output_embeddings(), 0

    def __enter__(self):
        def hook(*_):
            self.calls += 1

        self._h = self.head.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self._h.remove()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "internvl", "gemma3"])
def test_generated_rankings_from_scores_equal_the_pass(family, dtype):
    """The answer rows ranked from generation's kept logits equal today's pass over W_U on every row (every
    precision) and the float32 reference; the rows went through the scores path."""
    model, processor = tiny_model(family, seed=1, dtype=dtype)
    ad = get_adapter(model, processor)
    w_u = ad.lm_head_weight()
    base = ad.prepare(_image(1), "Describe the picture in detail.", 1.0)
    keep = torch_rankings.score_keep(K, w_u.shape[0])
    (answer,), (states,), (scores,) = ad.generate_scored([base], 8, keep)
    assert answer and scores is not None and scores.values.shape == (len(answer), keep)
    assert scores.dtype == dtype
    text = text_side(base, answer)
    pred_prompt, pred_answer = text.predicting_positions()
    h = states[pred_prompt + pred_answer]
    z = states[base.visual_positions]
    scored = (len(pred_prompt), scores.values, scores.ids, scores.dtype)
    for precision in ("float32", "certified-bf16"):
        today, k0_today = ops.rankings_topk_base(h, w_u, K, z, "torch", precision)
        before = dict(torch_rankings.CERTIFY_STATS)
        ranks, k0 = ops.rankings_topk_base(h, w_u, K, z, "torch", precision, scored)
        delta = _stats_delta(before)
        assert torch.equal(ranks, today) and k0 == k0_today
        assert delta["score_rows"] == len(answer)
        if dtype == torch.float32:  # float32 logits are within ~1e-6 of the reference's: always certified
            assert delta["score_fallback_rows"] == 0
        else:  # bfloat16 logits bound the rest more loosely; most rows must still certify
            assert delta["score_fallback_rows"] < len(answer)
    assert torch.equal(ranks, topk_ranking(h, w_u, K))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_explain_generated_scores_path_equals_pass_and_scores_no_row_twice(monkeypatch, dtype):
    """End to end: explain with a generated answer gives the same maps with and without generation's scores;
    with them, lm_head runs once per generated token (generation's own calls, nothing after) and the pass
    over W_U ranks only the prompt rows (plus fillers up to the GEMM's minimum rows)."""
    fast = importlib.import_module("mmx_fast.fast")
    model, processor = tiny_model("qwen2_vl", seed=2, dtype=dtype)
    img = _image(2)
    ex = Explainer(model, processor, ExplainConfig(rankings_precision="float32"))
    before = dict(torch_rankings.CERTIFY_STATS)
    with _HeadCalls(model) as spy:
        with_scores = ex.explain(img, "What is in the picture?")
    delta = _stats_delta(before)
    T = len(with_scores.answer_ids)
    assert T > 1
    assert spy.calls in (T, T + 1)  # one per generated token (+ the stop token's round), none afterwards
    assert delta["score_rows"] == T and delta["score_fallback_rows"] < T
    monkeypatch.setattr(fast, "_keep_scores", lambda configs, adapter: 0)
    before = dict(torch_rankings.CERTIFY_STATS)
    without = ex.explain(img, "What is in the picture?")
    assert _stats_delta(before)["score_rows"] == 0
    assert without.answer_ids == with_scores.answer_ids
    assert torch.equal(with_scores.maps, without.maps)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_forced_answer_scale_one_forward_never_applies_lm_head(family, monkeypatch):
    """A forced answer: no lm_head call anywhere (the forwards run the base model only), and one pass over
    W_U ranks every prompt and answer row, with the base id, in one call."""
    model, processor = tiny_model(family, seed=3)
    calls = []
    real = ops.rankings_topk_base

    def spy(h, w_u, k, z, backend="auto", precision="auto", scores=None):
        calls.append((h.shape[0], scores))
        return real(h, w_u, k, z, backend, precision, scores)

    monkeypatch.setattr(ops, "rankings_topk_base", spy)
    ex = Explainer(model, processor, ExplainConfig())
    with _HeadCalls(model) as head:
        exp = ex.explain(_image(3), "What is here?", answer="A red car on a road.")
    assert head.calls == 0
    prompt_rows = len(text_side(ex.adapter.prepare(_image(3), "What is here?", 1.0), []).prompt_ids)
    assert calls == [(prompt_rows + len(exp.answer_ids), None)]


def test_scored_rows_certify_other_summation_orders_and_fall_back_on_crowds():
    """Synthetic scores: a row-by-row float32 GEMV (another summation order than the reference's GEMM) is
    certified and equals the reference; a row whose top-k cut sits in a crowd of ids tied within the bound
    falls back (ok False), and rankings_topk_base then ranks it by the pass: still the reference's."""
    g = torch.Generator().manual_seed(5)
    v, d, k = 6000, 96, 20
    w = torch.randn(v, d, generator=g)
    h = torch.randn(24, d, generator=g)
    # row 3: a crowd of 300 ids whose scores are all within ~1e-7 of each other across the top-k cut
    crowd = torch.randperm(v, generator=g)[:300]
    w[crowd] = h[3] / h[3].norm() * 5 + 1e-7 * torch.randn(300, d, generator=g)
    rows = torch.arange(8, 24)
    logits = torch.stack([w @ h[i] for i in rows.tolist()])  # one GEMV per row
    keep = torch_rankings.score_keep(k, v)
    values, ids = torch.topk(logits, keep, dim=1)
    ranks, ok = torch_rankings.rankings_scored_torch(h, w, k, rows, values, ids, torch.float32)
    ref = topk_ranking(h, w, k)
    assert bool(ok.all())
    assert torch.equal(ranks, ref[8:])
    rows = torch.arange(0, 8)  # includes the crowded row 3
    logits = torch.stack([w @ h[i] for i in rows.tolist()])
    values, ids = torch.topk(logits, keep, dim=1)
    ranks, ok = torch_rankings.rankings_scored_torch(h, w, k, rows, values, ids, torch.float32)
    assert not bool(ok[3]) and bool(ok[torch.arange(8) != 3].all())
    assert torch.equal(ranks[ok], ref[:8][ok])
    z = torch.randn(4, d, generator=g)
    full, k0 = ops.rankings_topk_base(h, w, k, z, "torch", "float32", (0, values, ids, torch.float32))
    assert torch.equal(full, ref)
    assert k0 == int(torch.argmin(w @ z.sum(0)))


def test_scores_refused_when_float32_matmuls_may_run_in_lower_precision():
    """``torch.set_float32_matmul_precision`` other than "highest" voids the float32 bound: no row is
    certified from scores (they all run the pass), and the rankings are still the reference's."""
    g = torch.Generator().manual_seed(6)
    w, h = torch.randn(3000, 32, generator=g), torch.randn(6, 32, generator=g)
    values, ids = torch.topk(h @ w.T, torch_rankings.score_keep(5, 3000), dim=1)
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        _, ok = torch_rankings.rankings_scored_torch(h, w, 5, torch.arange(6), values, ids, torch.float32)
    finally:
        torch.set_float32_matmul_precision(old)
    assert not bool(ok.any())
    _, ok = torch_rankings.rankings_scored_torch(h, w, 5, torch.arange(6), values, ids, torch.float32)
    assert bool(ok.all())


def test_k0_folded_into_the_float32_pass_equals_the_reference():
    """float32 precision: k0 rides along the exact pass as the row -s (one pass over W_U, no separate GEMV)
    and equals ``reference.base_vocab_id``; a crowd of ids tied at the minimum falls back to the GEMV
    (still the reference's k0, ties to the smaller id), as do fewer than 4 ranking rows."""
    from mmx_fast.reference.rankings import base_vocab_id

    g = torch.Generator().manual_seed(7)
    v, d = 5000, 64
    w = torch.randn(v, d, generator=g)
    h = torch.randn(9, d, generator=g)
    z = torch.randn(5, d, generator=g)
    before = dict(torch_rankings.CERTIFY_STATS)
    ranks, k0 = ops.rankings_topk_base(h, w, 10, z, "torch", "float32")
    delta = _stats_delta(before)
    assert torch.equal(ranks, topk_ranking(h, w, 10)) and k0 == base_vocab_id(z, w)
    assert delta["base_calls"] == 1 and delta["base_fallbacks"] == 0
    # 40 ids tied (within float32 rounding) at the minimum: more than the k = 10 candidates -> GEMV fallback
    s = z.sum(0)
    crowd = torch.randperm(v, generator=g)[:40]
    w[crowd] = -s / s.norm() * 10 + 1e-7 * torch.randn(40, d, generator=g)
    before = dict(torch_rankings.CERTIFY_STATS)
    ranks, k0 = ops.rankings_topk_base(h, w, 10, z, "torch", "float32")
    assert _stats_delta(before)["base_fallbacks"] == 1
    assert torch.equal(ranks, topk_ranking(h, w, 10)) and k0 == base_vocab_id(z, w)
    before = dict(torch_rankings.CERTIFY_STATS)
    ranks, k0 = ops.rankings_topk_base(h[:2], w, 10, z, "torch", "float32")
    assert _stats_delta(before)["base_fallbacks"] == 1 and k0 == base_vocab_id(z, w)


def test_native_candidates_are_the_best_scores_of_their_own_dot_products():
    """``native.rankings_candidates``: per row the ``keep`` best scores, descending, each within the float32
    bound of the exact dot product, ties toward the smaller id; float32 and bfloat16 W_U."""
    from mmx_fast import native

    assert native.available(), native.build_error()
    g = torch.Generator().manual_seed(8)
    for r, v, d, wdt in (
        (7, 1000, 37, torch.float32),
        (5, 3000, 1536, torch.float32),
        (4, 900, 40, torch.bfloat16),
    ):
        h, w = torch.randn(r, d, generator=g), torch.randn(v, d, generator=g).to(wdt)
        vals, ids = native.rankings_candidates(h, w, 60)
        exact = h.double() @ w.double().T
        bound = 2 * d * 2.0**-24 * h.double().norm(dim=1, keepdim=True) * w.double().norm(dim=1).max()
        assert bool(((vals.double() - exact.gather(1, ids)).abs() <= bound).all())
        assert bool((vals[:, 1:] <= vals[:, :-1]).all())
        # nothing left out scores above the last kept one by more than the bound
        left = exact.scatter(1, ids, float("-inf"))
        assert bool((left.max(1).values <= vals[:, -1].double() + bound[:, 0]).all())
    # exact ties: equal rows of W_U -> the smaller ids first
    w = torch.randn(1, 16, generator=g).repeat(300, 1)
    vals, ids = native.rankings_candidates(torch.randn(2, 16, generator=g), w, 10)
    assert ids.tolist() == [list(range(10))] * 2


@pytest.mark.parametrize("wdt", [torch.float32, torch.bfloat16], ids=str)
def test_native_float32_candidate_pass_equals_reference_with_ties_and_fallbacks(wdt):
    """Stage B on the native backend, float32 precision: the candidate pass + certification gives the
    reference's rankings and k0 (ties toward the smaller id), and a row whose cut sits in a crowd of near-ties
    falls back to the exact pass (counted), still equal."""
    from mmx_fast.reference.rankings import base_vocab_id

    g = torch.Generator().manual_seed(9)
    v, d, k = 8000, 48, 10
    w = torch.randn(v, d, generator=g)
    h = torch.randn(20, d, generator=g)
    crowd = torch.randperm(v, generator=g)[:200]
    w[crowd] = h[4] / h[4].norm() * 8 + 1e-7 * torch.randn(200, d, generator=g)  # row 4: near-ties at the cut
    w[7] = w[5]  # exact ties between two ids
    w, h = w.to(wdt), h.to(wdt)
    z = torch.randn(6, d, generator=g).to(wdt)
    before = dict(torch_rankings.CERTIFY_STATS)
    ranks, k0 = ops.rankings_topk_base(h, w, k, z, "native", "float32")
    delta = _stats_delta(before)
    assert torch.equal(ranks, topk_ranking(h, w, k)) and k0 == base_vocab_id(z, w)
    assert delta["candidate_rows"] == 20 and delta["candidate_fallback_rows"] >= 1
    assert delta["candidate_fallback_rows"] < 20 and delta["base_fallbacks"] == 0
