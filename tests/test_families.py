"""Issue 15, non-tiled families: Qwen3-VL (and Qwen3-VL-MoE), Gemma 3 (fixed size, pan-and-scan off) and
PaliGemma (prefix-LM, no chat template) on tiny real-architecture models; the visual-token count check; the
registry-level refusal of cross-attention-only models (Mllama).

Per family: ``explain_fast`` equals ``reference.explain`` for every preset on two images of different aspect
ratios with a forced answer, and on a generated answer; TAM's preset equals TAM as published; the teacher-forced
states equal generation's; batched rows equal single rows; the grid, visual positions and prompt span.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_explain import ANSWER, PRESETS, PROMPT, photo, tam_as_published_for

from mmx_fast import ExplainConfig, explain_fast
from mmx_fast.adapters import (
    REFUSED,
    Gemma3Adapter,
    PaliGemmaAdapter,
    Qwen3VLAdapter,
    get_adapter,
    model_type_info,
)
from mmx_fast.reference import explain
from mmx_fast.testing import tiny_model

NEW = ["qwen3_vl", "qwen3_vl_moe", "gemma3", "paligemma"]
ADAPTER = {
    "qwen3_vl": Qwen3VLAdapter,
    "qwen3_vl_moe": Qwen3VLAdapter,
    "gemma3": Gemma3Adapter,
    "paligemma": PaliGemmaAdapter,
}
# (expected grid of photo(131, 97), of photo(60, 110)): Qwen's smart resize follows the aspect ratio; the
# fixed-size families resize to a square input (tiny: 112 px, patch 14; Gemma 3 pools 2x2).
GRIDS = {
    "qwen3_vl": ((3, 5), (4, 2)),
    "qwen3_vl_moe": ((3, 5), (4, 2)),
    "gemma3": ((4, 4), (4, 4)),
    "paligemma": ((8, 8), (8, 8)),
}
IMAGES = ((131, 97, 0), (60, 110, 1))

_CACHE: dict[str, tuple] = {}


@pytest.fixture(scope="module", params=NEW)
def fam(request):
    if request.param not in _CACHE:
        model, processor = tiny_model(request.param, seed=0)
        _CACHE[request.param] = (request.param, model, processor, get_adapter(model, processor))
    return _CACHE[request.param]


def test_adapter_and_grid(fam):
    name, model, processor, ad = fam
    assert type(ad) is ADAPTER[name] and model.config.model_type == name
    assert model_type_info(name).adapter is ADAPTER[name]
    for (w, h, seed), grid in zip(IMAGES, GRIDS[name]):
        for s in (0.5, 0.75, 1.0):
            p = ad.prepare(photo(w, h, seed), PROMPT, s)
            ids = p.inputs["input_ids"][0]
            n = p.visual_positions.numel()
            assert n == p.grid[0] * p.grid[1] == int((ids == ad.image_token_id).sum())
            assert torch.equal(
                p.visual_positions, torch.arange(int(p.visual_positions[0]), int(p.visual_positions[0]) + n)
            )
            if s == 1.0:
                assert p.grid == grid
            if not ad.dynamic_resolution:
                assert p.grid == grid and p.coverage == (s, s)


@pytest.mark.parametrize("prompt", [PROMPT, "assistant", "  Is there a dog?", "Count the cars.\nThen stop."])
def test_prompt_span(fam, prompt):
    name, _, processor, ad = fam
    tok = processor.tokenizer
    p = ad.prepare(photo(), prompt, 1.0)
    s, e = p.prompt_span
    ids = p.input_ids
    assert int(p.visual_positions.max()) < s < e < len(ids)
    assert not (set(tok.all_special_ids) | {ad.image_token_id}).intersection(ids[s:e])
    assert tok.decode(ids[s:e]).strip() == prompt.strip()
    after = tok.decode(ids[e:], skip_special_tokens=False)
    tail = {
        "gemma3": "<end_of_turn>\n<start_of_turn>model\n",
        "paligemma": "\n",
    }.get(name, "<|im_end|>\n<|im_start|>assistant\n")
    assert after == tail
    if name == "paligemma":  # the prefix-LM layout: <image>*N <bos> TEXT \n, no chat template
        assert ids[s - 1] == tok.bos_token_id and int(p.visual_positions.max()) == s - 2


def test_scale_one_is_processor_output(fam):
    _, _, processor, ad = fam
    for w, h, seed in IMAGES:
        img = photo(w, h, seed)
        p = ad.prepare(img, PROMPT, 1.0)
        own = processor(images=[img], text=[ad.chat_text(PROMPT)], return_tensors="pt", **ad.processor_kwargs)
        assert torch.equal(p.inputs["pixel_values"], own["pixel_values"])
        assert torch.equal(p.inputs["input_ids"], own["input_ids"])
    assert "labels" not in p.inputs


def test_forward_hidden_matches_generate(fam):
    """Teacher-forced states equal generation's (for PaliGemma this needs the answer's token_type_ids = 1: with
    0 the answer would join the bidirectional prefix), and greedy picks from them replay the answer."""
    _, model, _, ad = fam
    p = ad.prepare(photo(), PROMPT, 1.0)
    n = 5
    with torch.no_grad():
        out = model.generate(
            **p.inputs,
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            use_cache=True,
            output_hidden_states=True,
            return_dict_in_generate=True,
            pad_token_id=ad.pad_id(),
        )
    new = out.sequences[0, p.length :].tolist()
    ref = torch.cat([out.hidden_states[0][-1][0]] + [out.hidden_states[t][-1][0] for t in range(1, n)], 0)
    h = ad.forward_hidden(p, new[:-1])
    torch.testing.assert_close(h, ref, atol=1e-5, rtol=0)
    with torch.no_grad():
        picks = (h[p.length - 1 :] @ ad.lm_head_weight().T).argmax(-1).tolist()
    assert picks == new


def test_paligemma_answer_is_causal_suffix():
    _, model, _, ad = _family("paligemma")
    p = ad.prepare(photo(), PROMPT, 1.0)
    batch, _, _ = ad.collate([p], [[5, 6, 7]], side="right")
    assert batch["token_type_ids"][0].tolist() == [0] * p.length + [1, 1, 1]
    assert not ad.causal_visual_states
    # the visual states depend on the instruction after them (bidirectional prefix): a different prompt moves them
    q = ad.prepare(photo(), "Describe the picture in detail.", 1.0)
    hp, hq = ad.forward_hidden(p, []), ad.forward_hidden(q, [])
    assert not torch.allclose(hp[p.visual_positions], hq[q.visual_positions], atol=1e-4)


def _family(name):
    if name not in _CACHE:
        model, processor = tiny_model(name, seed=0)
        _CACHE[name] = (name, model, processor, get_adapter(model, processor))
    return _CACHE[name]


def test_batched_rows_equal_single_rows(fam):
    _, _, _, ad = fam
    prompts = [ad.prepare(photo(), PROMPT, s) for s in (0.5, 1.0)] + [
        ad.prepare(photo(60, 110, 1), "Describe it.", 1.0)
    ]
    answers = [[11, 12], [13, 14, 15, 16], []]
    for p, a, h in zip(prompts, answers, ad.forward_hidden_batch(prompts, answers)):
        torch.testing.assert_close(h, ad.forward_hidden(p, a), atol=1e-5, rtol=0)
    assert ad.generate_batch(prompts, 5) == [ad.generate(p, 5) for p in prompts]


@pytest.mark.parametrize("method", PRESETS)
def test_fast_equals_reference_forced(fam, method):
    name, model, processor, _ = fam
    cfg = ExplainConfig(method=method)
    for (w, h, seed), grid in zip(IMAGES, GRIDS[name]):
        img = photo(w, h, seed)
        ref = explain(model, processor, img, PROMPT, answer=ANSWER, config=cfg)
        fast = explain_fast(model, processor, img, PROMPT, answer=ANSWER, config=cfg)
        assert ref.grid == fast.grid == grid
        assert fast.answer_ids == ref.answer_ids and len(ref.answer_ids) >= 5
        assert ref.maps.shape == (len(ref.answer_ids),) + grid
        assert torch.isfinite(ref.maps).all() and ref.maps.amax() > 0
        # maps differ between tokens: a constant result would fail here
        assert any(not torch.allclose(ref.maps[i], ref.maps[i + 1]) for i in range(len(ref.maps) - 1))
        torch.testing.assert_close(fast.maps, ref.maps, atol=1e-4, rtol=0)


def test_fast_equals_reference_generated(fam):
    _, model, processor, _ = fam
    cfg = ExplainConfig(method="msea-arc", max_new_tokens=5)
    for w, h, seed in IMAGES:
        img = photo(w, h, seed)
        ref = explain(model, processor, img, PROMPT, config=cfg)
        fast = explain_fast(model, processor, img, PROMPT, config=cfg)
        assert ref.answer_ids, "the tiny model should answer something"
        assert fast.answer_ids == ref.answer_ids
        torch.testing.assert_close(fast.maps, ref.maps, atol=1e-4, rtol=0)
        forced = explain(model, processor, img, PROMPT, answer=ref.answer_ids, config=cfg)
        torch.testing.assert_close(forced.maps, ref.maps, atol=1e-5, rtol=0)


def test_tam_preset_equals_tam_as_published(fam):
    _, model, processor, ad = fam
    img = photo(60, 110, 1)
    exp = explain(model, processor, img, PROMPT, answer=ANSWER, config=ExplainConfig(method="tam"))
    want = tam_as_published_for(ad, img, exp)
    got = np.stack([exp.map_uint8(i) for i in range(len(exp.answer_ids))])
    assert np.array_equal(got, want)
    assert (got.reshape(len(got), -1).max(1) > 0).mean() >= 0.5


# --------------------------------------------------------------------------------------------------------------
# never silent: the located visual tokens must be what the geometry predicts


def test_gemma3_begin_of_image_id_is_refused_not_a_1x1_map():
    """Gemma 3's processor reports <start_of_image> as its image_token_id; locating that id finds ONE
    position, which the square-grid geometry used to read as a 1x1 map. Now it is an error naming the model."""
    _, model, processor, ad = _family("gemma3")
    assert processor.image_token_id != ad.image_token_id  # the trap the adapter avoids
    naive = type(
        "NaiveGemma3", (Gemma3Adapter,), {"image_token_id": property(lambda s: s.processor.image_token_id)}
    )
    bad = naive(model, processor)
    with pytest.raises(ValueError, match=r"^gemma3: found 1 visual tokens but .* predicts 16"):
        bad.prepare(photo(), PROMPT, 1.0)
    with pytest.raises(ValueError, match="^gemma3: "):
        bad.prepare(photo(), PROMPT, 0.5)


@pytest.mark.parametrize("name", ["qwen3_vl", "paligemma", "llava", "internvl", "qwen2_vl"])
def test_visual_token_count_mismatch_names_model_type(name, monkeypatch):
    _, model, processor, ad = _family(name)
    want = ad.expected_visual_tokens(ad.prepare(photo(), PROMPT, 1.0).inputs)
    monkeypatch.setattr(type(ad), "expected_visual_tokens", lambda self, inputs: want + 1)
    with pytest.raises(ValueError, match=rf"^{name}: found {want} visual tokens but .* predicts {want + 1}"):
        ad.prepare(photo(), PROMPT, 1.0)


# --------------------------------------------------------------------------------------------------------------
# refusal: a model the logit lens cannot explain


def test_mllama_is_refused_with_the_reason():
    fake = SimpleNamespace(config=SimpleNamespace(model_type="mllama"))
    with pytest.raises(ValueError, match=r"'mllama' cannot be explained.*cross-attention.*no visual token"):
        get_adapter(fake, None)
    with pytest.raises(ValueError, match="cross-attention"):
        model_type_info("mllama")
    assert "mllama" in REFUSED
    import transformers

    assert "mllama" in transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def test_mllama_folder_is_refused_by_the_loader(tmp_path):
    import json

    from mmx_fast.loading import ModelLoadError, resolve_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mllama"}))
    with pytest.raises(ModelLoadError, match="cross-attention"):
        resolve_model(str(tmp_path))
