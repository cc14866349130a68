"""Issue 25, ``targets=``: explain only chosen answer tokens (indices, or words grouped as ``word_maps`` groups
them) on the fast path, the ``Explainer``, the reference ``explain`` and the CLI; each target's map equals
its map in the full run (same context: the prompt and every answer token before it), for every preset."""

from __future__ import annotations

import pytest
import torch
from test_explain import ANSWER, PRESETS, PROMPT, photo

from mmx_fast import ExplainConfig, Explainer, explain_fast
from mmx_fast.reference import explain
from mmx_fast.testing import tiny_model

_CACHE: dict[str, tuple] = {}


def _model(name: str = "qwen2_vl"):
    if name not in _CACHE:
        _CACHE[name] = tiny_model(name, seed=0)
    return _CACHE[name]


@pytest.mark.parametrize("method", PRESETS)
@pytest.mark.parametrize("fn", [explain_fast, explain], ids=["fast", "reference"])
def test_targets_maps_equal_the_full_runs_maps(fn, method):
    model, processor = _model()
    img = photo(131, 97, 0)
    cfg = ExplainConfig(method=method, keep_scale_maps=True)
    full = fn(model, processor, img, PROMPT, answer=ANSWER, config=cfg)
    T = len(full.answer_ids)
    assert T >= 6
    picks = [1, T - 3, -1]  # the last one: nothing after it; a negative index counts from the end
    got = fn(model, processor, img, PROMPT, answer=ANSWER, config=cfg, targets=picks)
    pos = [1, T - 3, T - 1]
    assert got.token_positions == tuple(pos) and got.to_dict()["token_positions"] == pos
    assert got.answer_ids == [full.answer_ids[p] for p in pos]
    assert got.answer_tokens == [full.answer_tokens[p] for p in pos]
    assert got.answer_text == full.answer_text and len(got) == 3
    assert got.maps.shape == (3, *full.maps.shape[1:])
    torch.testing.assert_close(got.maps, full.maps[pos], atol=1e-5, rtol=0)
    torch.testing.assert_close(got.raw_maps, full.raw_maps[pos], atol=1e-5, rtol=0)
    for s in cfg.scales:
        torch.testing.assert_close(got.scale_maps[s], full.scale_maps[s][pos], atol=1e-5, rtol=0)
    # maps differ between the chosen tokens: a constant result fails here
    assert not torch.allclose(got.maps[0], got.maps[1])
    # an early target alone: the answer after it is never forwarded, the map is still the full run's
    early = fn(model, processor, img, PROMPT, answer=ANSWER, config=cfg, targets=[2])
    torch.testing.assert_close(early.maps, full.maps[[2]], atol=1e-5, rtol=0)


def test_targets_by_word_on_a_generated_answer_fast_and_reference():
    model, processor = _model()
    img = photo(60, 110, 1)
    cfg = ExplainConfig(max_new_tokens=8)
    full = explain_fast(model, processor, img, PROMPT, config=cfg)
    words, _ = full.word_maps()
    assert len(words) >= 2, full.answer_tokens
    word = words[-1]
    from mmx_fast.words import group_words

    groups = group_words(full.answer_pieces, full.answer_tokens)[1]
    pos = sorted({t for w, g in zip(words, groups) if w == word for t in g})
    for fn in (explain_fast, explain):
        got = fn(model, processor, img, PROMPT, config=cfg, targets=[word])
        assert got.token_positions == tuple(pos) and got.answer_ids == [full.answer_ids[p] for p in pos]
        torch.testing.assert_close(got.maps, full.maps[pos], atol=1e-4, rtol=0)


def test_explainer_targets_per_image_and_tensor_batch():
    model, processor = _model()
    ex = Explainer(model, processor, "logit-lens")
    imgs = torch.stack([torch.rand(3, 56, 84, generator=torch.Generator().manual_seed(k)) for k in range(2)])
    full = ex.explain_batch(imgs, [PROMPT, PROMPT], answers=[ANSWER, ANSWER])
    got = ex.explain_batch(imgs, [PROMPT, PROMPT], answers=[ANSWER, ANSWER], targets=[[0], None])
    assert got[0].token_positions == (0,) and got[1].token_positions is None
    torch.testing.assert_close(got[0].maps, full[0].maps[[0]], atol=1e-5, rtol=0)
    torch.testing.assert_close(got[1].maps, full[1].maps, atol=1e-5, rtol=0)
    # the tensor rows are the images: same maps as the list of [C, H, W] tensors
    one = ex.explain(imgs[1], PROMPT, ANSWER, targets=3)
    torch.testing.assert_close(one.maps, full[1].maps[[3]], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "targets, err, match",
    [
        ([], ValueError, r"targets=\[\] selects no token; pass None"),
        ([1.5], TypeError, r"targets=\[1.5\] is not supported; expected None, or a list of answer token"),
        ([True], TypeError, "is not supported"),
        ([99], IndexError, r"target token index 99 is out of range; the answer has \d+ tokens"),
        (["zebra"], ValueError, r"target word 'zebra' is not a word of the answer; its words are: "),
        ([" "], ValueError, "is empty"),
    ],
)
def test_bad_targets_are_refused_with_the_reason(targets, err, match):
    model, processor = _model()
    for fn in (explain_fast, explain):
        with pytest.raises(err, match=match):
            fn(model, processor, photo(), PROMPT, answer=ANSWER, targets=targets)


def test_explain_batch_targets_length_must_match():
    model, processor = _model()
    with pytest.raises(ValueError, match="expected None or one entry"):
        Explainer(model, processor).explain_batch([photo(), photo()], [PROMPT, PROMPT], targets=[[0]])
    with pytest.raises(ValueError, match=r"images tensor of shape \(3, 56, 56\) is not supported"):
        Explainer(model, processor).explain_batch(torch.rand(3, 56, 56), [PROMPT])
