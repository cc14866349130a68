"""Prefix-only scale passes (docs/design.md §2): the extra-scale forwards stop at the last visual token.

Under causal attention the visual tokens' states do not depend on anything after them, so the prefix-only
forward must give the full forward's visual states (within float32 noise) on every tiny family, with the
family's own position ids (Qwen's M-RoPE included); the fast path built on it must still equal the oracle,
which keeps full forwards."""

from __future__ import annotations

import pytest
import torch
from test_adapters import PROMPT, SCALES, image_for

from mmx_fast import ExplainConfig
from mmx_fast.adapters import get_adapter
from mmx_fast.adapters.generation import length_buckets, visual_prefix
from mmx_fast.fast import Explainer
from mmx_fast.reference import explain
from mmx_fast.testing import tiny_model

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "llava", "internvl"]
ANSWER = [300, 301, 302, 303, 304, 305, 306]

_CACHE: dict[str, tuple] = {}


def _load(family: str) -> tuple:
    if family not in _CACHE:
        model, processor = tiny_model(family, seed=0)
        _CACHE[family] = (model, processor, get_adapter(model, processor))
    return _CACHE[family]


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    return _load(request.param)


def test_prefix_stops_at_last_visual_token(setup):
    _, _, ad = setup
    p = ad.prepare(image_for(ad.family), PROMPT, 0.5)
    cut = visual_prefix(p, ad.token_keys)
    last = int(p.visual_positions.max())
    assert cut.length == last + 1 < p.length  # the instruction and the template tail are dropped
    for k in ad.token_keys:
        if k in p.inputs:
            assert torch.equal(cut.inputs[k], p.inputs[k][..., : last + 1])
    for k in set(p.inputs) - set(ad.token_keys):  # pixels, grids: whole
        assert cut.inputs[k] is p.inputs[k]
    assert torch.equal(cut.visual_positions, p.visual_positions)
    assert p.length == p.inputs["input_ids"].shape[-1]  # the original is untouched


@pytest.mark.parametrize("scale", SCALES)
def test_prefix_visual_states_equal_full_forward(setup, scale):
    _, _, ad = setup
    p = ad.prepare(image_for(ad.family), PROMPT, scale)
    full = ad.forward_hidden(p, ANSWER)
    (pre,) = ad.forward_hidden_rows([p], [ANSWER], [True])
    vis = p.visual_positions
    assert pre.shape == (int(vis.max()) + 1, full.shape[1])
    assert full.shape[0] == p.length + len(ANSWER) > pre.shape[0]
    torch.testing.assert_close(pre[vis], full[vis], atol=2e-5, rtol=0)
    torch.testing.assert_close(pre, full[: pre.shape[0]], atol=2e-5, rtol=0)
    # the visual states carry signal: a forward that ignored the image would not match a changed image
    other = ad.forward_hidden_rows([ad.prepare(image_for(ad.family, 7), PROMPT, scale)], [[]], [True])[0]
    if other.shape == pre.shape:
        assert (other[vis] - pre[vis]).abs().max() > 1e-4


@pytest.mark.parametrize("family", [f for f in FAMILIES if f.startswith("qwen")])
def test_qwen_mrope_positions_of_the_prefix(family):
    """Qwen's get_rope_index on the cut sequence gives the full sequence's positions on the prefix."""
    model, _, ad = _load(family)
    p = ad.prepare(image_for(ad.family), PROMPT, 1.0)
    cut = visual_prefix(p, ad.token_keys)
    kw = {k: v for k, v in p.inputs.items() if k in ("image_grid_thw", "mm_token_type_ids", "attention_mask")}
    kc = {k: v for k, v in cut.inputs.items() if k in kw}
    full_pos, _ = model.model.get_rope_index(p.inputs["input_ids"], **kw)
    cut_pos, _ = model.model.get_rope_index(cut.inputs["input_ids"], **kc)
    assert torch.equal(cut_pos, full_pos[..., : cut.length])
    # not vacuous: the visual tokens have 2-D positions (height / width rows differ from the temporal one)
    vis = p.visual_positions
    assert not torch.equal(full_pos[1, 0, vis], full_pos[2, 0, vis])


def test_bucketed_rows_equal_single_rows(setup):
    """Mixed prefix-only and full rows of several images, several buckets: each equals its row alone."""
    _, _, ad = setup
    img, other = image_for(ad.family, 0), image_for(ad.family, 1).resize((91, 77))
    prompts = [ad.prepare(img, PROMPT, s) for s in SCALES] + [ad.prepare(other, "Describe it.", 0.5)]
    prompts += [ad.prepare(other, "Describe it.", 1.0)]
    answers = [ANSWER, ANSWER, ANSWER, [11, 12], [11, 12]]
    flags = [True, True, False, True, False]
    calls = []
    orig = ad.forward_hidden_batch
    ad.forward_hidden_batch = lambda r, a: (
        calls.append([x.length + len(y) for x, y in zip(r, a)]) or orig(r, a)
    )
    try:
        rows = ad.forward_hidden_rows(prompts, answers, flags)
    finally:
        ad.forward_hidden_batch = orig
    assert sorted(n for c in calls for n in c) == sorted(h.shape[0] for h in rows)
    for c in calls:  # every batch within the padding budget
        assert len(c) * max(c) - sum(c) <= ad.bucket_waste * sum(c)
    for p, a, f, h in zip(prompts, answers, flags, rows):
        want = ad.forward_hidden(p, a)
        n = int(p.visual_positions.max()) + 1 if f else p.length + len(a)
        assert h.shape[0] == n
        torch.testing.assert_close(h, want[:n], atol=2e-5, rtol=0)
    with pytest.raises(ValueError, match="prefix_only"):
        ad.forward_hidden_rows(prompts, answers, flags[:2])


def test_length_buckets():
    lengths = [100, 30, 95, 31, 200, 29, 100, 5]
    b = length_buckets(lengths, 0.1, 10_000)
    assert sorted(i for g in b for i in g) == list(range(len(lengths)))
    for g in b:
        n = [lengths[i] for i in g]
        assert len(g) * max(n) - sum(n) <= 0.1 * sum(n)
    assert [sorted(g) for g in b] == [[4], [0, 2, 6], [1, 3, 5], [7]]
    # no waste allowed: equal lengths only; a token cap splits big buckets
    assert [sorted(g) for g in length_buckets([10, 10, 9], 0.0, 100)] == [[0, 1], [2]]
    assert length_buckets([10, 10, 10], 0.5, 20) == [[0, 1], [2]]
    assert length_buckets([50], 0.1, 20) == [[0]]  # a row longer than the cap runs alone
    assert length_buckets([], 0.1, 20) == []
    with pytest.raises(ValueError, match="max_waste"):
        length_buckets([1], -1, 20)
    with pytest.raises(ValueError, match="max_tokens"):
        length_buckets([1], 0.1, 0)


@pytest.mark.parametrize("answer", ["forced", "generated"])
def test_fast_with_prefix_equals_oracle(setup, answer):
    """The fast path runs the extra scales prefix-only (the scale-1.0 row is the only full-length one, and
    only when the answer is forced); its maps equal the oracle's, which runs every scale in full."""
    model, processor, ad = setup
    cfg = ExplainConfig(method="msea-arc", max_new_tokens=5)
    forced = "The car is red." if answer == "forced" else None
    ex = Explainer(model, processor, cfg)
    seen = []
    orig = ex.adapter.forward_hidden_rows
    ex.adapter.forward_hidden_rows = lambda p, a, f: seen.append((p, a, f)) or orig(p, a, f)
    try:
        got = ex.explain(image_for(ad.family), PROMPT, forced)
    finally:
        ex.adapter.forward_hidden_rows = orig
    want = explain(model, processor, image_for(ad.family), PROMPT, answer=forced, config=cfg)
    assert got.answer_ids == want.answer_ids and got.answer_ids
    torch.testing.assert_close(got.maps, want.maps, atol=1e-4, rtol=0)
    ((prompts, _, flags),) = seen
    assert [p.scale for p in prompts] == ([0.5, 0.75, 1.0] if forced else [0.5, 0.75])
    assert flags == [p.scale != 1.0 for p in prompts]
