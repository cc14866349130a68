"""The ``tam`` preset on the fast path (``mmx_fast.ops.tam``): TAM's numbers bit for bit, from only what TAM
reads. Each piece against the full-vocabulary computation it replaces, then the preset end to end against
``tam_as_published`` (TAM's ``TAM()`` restated in tests/test_explain.py) on the same states."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_explain import ANSWER, PROMPT, photo, tam_as_published

from mmx_fast import ExplainConfig, explain_fast
from mmx_fast.adapters import get_adapter
from mmx_fast.ops import tam as tam_ops
from mmx_fast.reference.tam import tam_least_squares, tam_logit_groups, tam_rank_gaussian_filter
from mmx_fast.testing import tiny_model


# --- (a) class columns: the same bits as lm_head over the whole vocabulary ------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab, d", [(4096, 256), (1213, 64), (5000, 128)])
def test_class_logits_equal_full_lm_head_bitwise(vocab, d, dtype):
    g = torch.Generator().manual_seed(vocab + d)
    w = (torch.randn(vocab, d, generator=g) * 0.05).to(dtype)
    h = torch.randn(70, d, generator=g)
    for groups in ([(0, 70)], [(0, 40)] + [(39 + t, 40 + t) for t in range(1, 30)], [(0, 3), (3, 5)]):
        full = torch.cat([F.linear(h[None, a:b].to(dtype), w)[0] for a, b in groups]).float()
        for m in (1, 5, 17, 40):
            ids = torch.randint(0, vocab, (m,), generator=g).tolist()
            ids[-1] = vocab - 1  # the vocabulary's tail
            got = tam_ops.class_logits(h, w, ids, groups)
            assert got.shape == (full.shape[0], m)
            assert torch.equal(got, full[:, ids])


def test_column_layout_blocks_pad_and_tail():
    rows, where = tam_ops.column_layout([5, 40, 1210], 1213)
    assert rows[:64].tolist() == list(range(64))  # blocks 0 and 2, padded with blocks 1 and 3
    assert rows[64:].tolist() == list(range(1200, 1213))  # the tail (1213 % 16 rows), last
    assert [int(rows[j]) for j in where] == [5, 40, 1210]


# --- (b) the certified argmax ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tam_argmax_equals_full_argmax_including_ties(dtype, monkeypatch):
    monkeypatch.setattr(tam_ops, "STREAM_ROWS", 512)  # several streamed chunks
    g = torch.Generator().manual_seed(11)
    vocab, d = 3000, 96
    for trial in range(6):
        w = (torch.randn(vocab, d, generator=g) * 0.05).to(dtype)
        h = torch.randn(30, d, generator=g)
        groups = [(0, 20)] + [(19 + t, 20 + t) for t in range(1, 11)]
        pos = [3, 25][trial % 2]
        a, b = next(gr for gr in groups if gr[0] <= pos < gr[1])
        row = F.linear(h[None, a:b].to(dtype), w)[0, pos - a].float()
        k = int(torch.argmax(row))
        if trial >= 2:  # an exact tie with a later id, then with an earlier one: the smaller id wins
            other = (k + 1234) % vocab
            w[other] = w[k]
            row = F.linear(h[None, a:b].to(dtype), w)[0, pos - a].float()
            assert torch.equal(row[other], row[k])
        want = int(torch.argmax(row))
        assert tam_ops.tam_argmax(h, w, pos, groups) == want
    zero = torch.zeros(vocab, d, dtype=dtype)  # every logit 0: the fallback finds id 0
    assert tam_ops.tam_argmax(torch.randn(5, d), zero, 2, [(0, 5)]) == 0


def test_tam_argmax_falls_back_on_near_ties(monkeypatch):
    """Two ids whose logits differ by less than the bound, one of them outside the candidates: the
    certificate fails and the exact streamed row decides (a wrong fallback would return the other id)."""
    monkeypatch.setattr(tam_ops, "CANDIDATES", 1)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(700, 32, generator=g) * 0.05
    h = torch.randn(6, 32, generator=g)
    k = int(torch.argmax(F.linear(h[None], w)[0, 1]))
    w[600] = w[k] * (1 + 1e-7)
    calls = []
    orig = tam_ops._exact_row_argmax
    monkeypatch.setattr(tam_ops, "_exact_row_argmax", lambda *a: calls.append(1) or orig(*a))
    want = int(torch.argmax(F.linear(h[None], w)[0, 1]))
    assert tam_ops.tam_argmax(h, w, 1, [(0, 6)]) == want
    assert calls == [1]


# --- the filter and the fit -----------------------------------------------------------------------
def test_vectorised_filter_equals_tam_per_cell_filter_bitwise():
    rng = np.random.default_rng(0)
    for trial in range(80):
        hh, ww = rng.integers(2, 24, 2)
        dt = np.float32 if trial % 2 else np.float64
        x = (rng.random((hh, ww)) * rng.choice([1e-3, 1.0, 50.0])).astype(dt)
        x[x < rng.random() * x.max() * 0.5] = 0
        if trial % 5 == 0:
            x[:3, :3] = 0.25  # constant windows: their median
        got, want = tam_ops.rank_gaussian_filter(x), tam_rank_gaussian_filter(x)
        assert got.dtype == want.dtype == dt
        assert np.array_equal(got, want)
    z = np.zeros((4, 5), np.float32)
    assert np.array_equal(tam_ops.rank_gaussian_filter(z), z)


def test_tam_fit_is_scipys_fit_and_closed_form_the_exact_optimum():
    pytest.importorskip("scipy")
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(1)
    differ = 0
    for _ in range(20):
        a = rng.random(300).astype(np.float32)
        b = (a * rng.random() + rng.random(300).astype(np.float32) * 0.3).astype(np.float32)
        x_tam = tam_least_squares(a, b, "tam")
        assert x_tam == minimize_scalar(lambda x, a=a, b=b: np.sum((a - b * x) ** 2)).x
        x_exact = tam_least_squares(a, b, "closed-form")
        assert x_exact == pytest.approx(float(a.astype(np.float64) @ b) / float(b.astype(np.float64) @ b))
        assert abs(x_tam - x_exact) <= 1e-3 * abs(x_exact)
        differ += x_tam != x_exact
    assert differ > 0  # the two fits are different functions
    assert tam_least_squares(a, np.zeros_like(a), "closed-form") == 0
    with pytest.raises(ValueError, match="fit='lsq'"):
        tam_least_squares(a, b, "lsq")


def test_tam_fit_config():
    assert ExplainConfig(method="tam").tam_fit == "tam"
    c = ExplainConfig(method="tam", tam_fit="closed-form")
    assert c.tam_fit == "closed-form" and not c.is_exact_tam
    with pytest.raises(ValueError, match=r"tam_fit='scipy'.*tam, closed-form"):
        ExplainConfig(method="tam", tam_fit="scipy")


def test_missing_scipy_is_named_with_the_switch_and_the_alternative(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "scipy" else real(n, *a))
    model, processor = tiny_model("qwen2_vl", seed=0)
    with pytest.raises(ImportError, match=r"tam_fit='tam'.*scipy.*tam_fit='closed-form'"):
        explain_fast(model, processor, photo(), PROMPT, answer=ANSWER, config=ExplainConfig(method="tam"))
    exp = explain_fast(
        model,
        processor,
        photo(),
        PROMPT,
        answer=ANSWER,
        config=ExplainConfig(method="tam", tam_fit="closed-form"),
    )
    assert exp.maps.shape[0] == len(exp.answer_ids)
    ExplainConfig(method="msea-arc").check_runtime()  # ARC never needs scipy


# --- the preset end to end: uint8-identical to TAM restated, on the same states -----------------------
CASES = [
    ("qwen2_vl", 0, (131, 97), PROMPT, ANSWER),
    ("qwen2_vl", 3, (112, 150), "Describe the picture in detail.", None),
    ("llava", 0, (131, 97), PROMPT, None),
    ("llava", 5, (90, 120), "Where is the boat?", "A boat is on the left near the trees."),
    ("internvl", 0, (131, 97), PROMPT, ANSWER),
    ("internvl", 2, (100, 100), "What color is the house?", None),
]


@pytest.mark.parametrize("family, seed, size, prompt, answer", CASES)
def test_tam_preset_uint8_identical_to_tam_restated(family, seed, size, prompt, answer):
    pytest.importorskip("scipy")
    model, processor = tiny_model(family, seed=seed)
    ad = get_adapter(model, processor)
    img = photo(*size, seed=seed)
    base = ad.prepare(img, prompt, 1.0)
    L = base.length
    w = ad.lm_head_weight()
    if answer is None:  # generated: TAM's demo, one lm_head call per round on generation's states
        (ids,), (h,) = ad.generate_with_states([base], 8)
        groups = tam_logit_groups(h.shape[0], L, len(ids), per_round=True)
    else:  # forced: one teacher-forced forward, one lm_head call over all positions
        ids = ad.encode_answer(answer)
        h = ad.forward_hidden(base, ids)
        groups = tam_logit_groups(h.shape[0], L, len(ids), per_round=False)
    assert len(ids) >= 3
    logits = torch.cat([F.linear(h[None, a:b], w)[0] for a, b in groups])
    logit_list = [logits[None, :L]] + [logits[None, L + r - 1 : L + r] for r in range(1, len(ids))]
    want = tam_as_published(
        base.input_ids + ids,
        L,
        base.prompt_span,
        base.visual_positions.numpy(),
        base.grid,
        logit_list,
        ad.tokenizer,
        len(ids),
    )
    exp = explain_fast(
        model, processor, img, prompt, answer=answer, config=ExplainConfig(method="tam", max_new_tokens=8)
    )
    assert exp.answer_ids == ids
    got = np.stack([exp.map_uint8(i) for i in range(len(ids))])
    assert got.shape == want.shape
    assert np.array_equal(got, want)
    assert (got.reshape(len(got), -1).max(1) > 0).mean() >= 0.5  # not vacuous: most maps carry signal


def test_closed_form_fit_differs_from_tams_and_stays_close():
    """``tam_fit="closed-form"`` is a different method (the exact optimum): equal to TAM restated with the
    closed form, and within one uint8 level of TAM's own fit."""
    pytest.importorskip("scipy")
    model, processor = tiny_model("qwen2_vl", seed=0)
    cfg = ExplainConfig(method="tam")
    a = explain_fast(model, processor, photo(), PROMPT, answer=ANSWER, config=cfg)
    b = explain_fast(
        model, processor, photo(), PROMPT, answer=ANSWER, config=cfg.with_(tam_fit="closed-form")
    )
    ua = np.stack([a.map_uint8(i) for i in range(len(a.answer_ids))]).astype(int)
    ub = np.stack([b.map_uint8(i) for i in range(len(b.answer_ids))]).astype(int)
    assert np.abs(ua - ub).max() <= 2
    from mmx_fast.reference import explain

    ref = explain(model, processor, photo(), PROMPT, answer=ANSWER, config=cfg.with_(tam_fit="closed-form"))
    assert torch.equal(ref.maps, b.maps)


def test_max_row_norm_is_cached_per_weight_and_recomputed_after_a_change():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(300, 16, generator=g)
    want = float(torch.linalg.vector_norm(w, dim=1).max())
    assert tam_ops.max_row_norm(w) == pytest.approx(want, rel=1e-6)
    assert tam_ops._NORMS[id(w)][2] == tam_ops.max_row_norm(w)  # cached
    with torch.no_grad():
        w[7] *= 10  # an in-place change bumps the version counter: recomputed
    assert tam_ops.max_row_norm(w) == pytest.approx(float(torch.linalg.vector_norm(w, dim=1).max()), rel=1e-6)
    other = w.clone()
    other[3] *= 100
    assert tam_ops.max_row_norm(other) == pytest.approx(float(torch.linalg.vector_norm(other[3])), rel=1e-6)
