"""End to end on tiny real-architecture models: the reference, the fast path, and TAM as published."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmx_fast import ExplainConfig, Explanation, explain_fast
from mmx_fast.fast import Explainer
from mmx_fast.reference import explain
from mmx_fast.testing import tiny_model

FAMILIES = ["qwen2_vl", "llava", "internvl"]
PRESETS = ["msea-arc", "tam", "logit-lens"]
PROMPT = "What is the cat doing on the sofa?"
ANSWER = "The cat is sleeping on a blue sofa near the window."


def photo(w=131, h=97, seed=0):
    """A small synthetic 'photo': gradient sky, a sun, a house and noise (odd size on purpose)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    arr = np.stack([120 + 100 * y / h, 150 + 60 * x / w, 230 - 80 * y / h], -1)
    arr += rng.normal(0, 6, arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse([w * 0.65, h * 0.1, w * 0.85, h * 0.35], fill=(250, 220, 60))
    d.rectangle([w * 0.15, h * 0.5, w * 0.5, h * 0.95], fill=(150, 40, 30))
    d.polygon([(w * 0.1, h * 0.5), (w * 0.325, h * 0.25), (w * 0.55, h * 0.5)], fill=(90, 60, 40))
    return img


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    model, processor = tiny_model(request.param, seed=0)
    return request.param, model, processor


@pytest.mark.parametrize("method", PRESETS)
def test_reference_end_to_end(family_model, method):
    family, model, processor = family_model
    exp = explain(model, processor, photo(), PROMPT, answer=ANSWER, config=ExplainConfig(method=method))
    assert isinstance(exp, Explanation)
    T = len(exp.answer_ids)
    assert T >= 5 and len(exp.answer_tokens) == T
    assert exp.maps.shape == (T,) + tuple(exp.grid)
    assert exp.maps.dtype == torch.float32
    assert not torch.isnan(exp.maps).any()
    assert exp.maps.min() >= 0 and exp.maps.max() <= 1
    assert exp.maps.amax(dim=(1, 2)).max() > 0  # not all zero
    # maps differ between tokens: a constant result would fail here
    assert not torch.allclose(exp.maps[1], exp.maps[2]) or not torch.allclose(exp.maps[3], exp.maps[4])


@pytest.mark.parametrize("method", PRESETS)
def test_fast_equals_reference(family_model, method):
    family, model, processor = family_model
    cfg = ExplainConfig(method=method)
    ref = explain(model, processor, photo(), PROMPT, answer=ANSWER, config=cfg)
    fast = explain_fast(model, processor, photo(), PROMPT, answer=ANSWER, config=cfg)
    assert fast.answer_ids == ref.answer_ids
    assert fast.answer_tokens == ref.answer_tokens
    assert fast.grid == ref.grid
    torch.testing.assert_close(fast.maps, ref.maps, atol=1e-4, rtol=0)


def test_forced_answer_equal_to_generated_gives_same_maps(family_model):
    family, model, processor = family_model
    cfg = ExplainConfig(method="msea-arc", max_new_tokens=6)
    gen = explain(model, processor, photo(), PROMPT, config=cfg)
    forced = explain(model, processor, photo(), PROMPT, answer=gen.answer_ids, config=cfg)
    assert forced.answer_ids == gen.answer_ids
    torch.testing.assert_close(forced.maps, gen.maps, atol=1e-6, rtol=0)
    fast = explain_fast(model, processor, photo(), PROMPT, config=cfg)
    assert fast.answer_ids == gen.answer_ids
    torch.testing.assert_close(fast.maps, gen.maps, atol=1e-4, rtol=0)


def test_explain_batch_equals_single_calls(family_model):
    family, model, processor = family_model
    ex = Explainer(model, processor, ExplainConfig(method="msea-arc", max_new_tokens=5))
    images = [photo(131, 97, 0), photo(90, 120, 1), photo(64, 64, 2)]
    prompts = [PROMPT, "Describe the picture in detail.", "Where is the boat?"]
    answers = [ANSWER, None, None]
    batch = ex.explain_batch(images, prompts, answers)
    assert len(batch) == 3
    for im, p, a, b in zip(images, prompts, answers, batch):
        single = ex.explain(im, p, a)
        assert b.answer_ids == single.answer_ids
        torch.testing.assert_close(b.maps, single.maps, atol=1e-4, rtol=0)


def test_empty_answer_gives_empty_explanation(family_model):
    family, model, processor = family_model
    for fn in (explain, explain_fast):
        exp = fn(model, processor, photo(), PROMPT, answer=[], config=ExplainConfig())
        assert exp.maps.shape == (0,) + tuple(exp.grid)
        assert exp.answer_ids == []


# --- TAM as published, restated step by step on the same model outputs --------------------------------
def tam_as_published(tokens, L0, prompt_span, vis_positions, grid, logit_list, tokenizer, num_rounds):
    """xmed-lab/TAM's TAM() workflow, restated (not vendored): round 0 recursion over prompt tokens, ECI
    with a scipy least-squares fit, joint min-max normalisation, rank Gaussian filter, uint8."""
    from scipy.optimize import minimize_scalar

    s, e = prompt_span

    def tok_strings(ids):
        text = tokenizer.batch_decode([ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)[0]
        return tokenizer.tokenize(text)

    prompt = tok_strings(tokens[s:e])
    answer = tok_strings(tokens[L0:])
    txt_all = prompt + answer

    def filt(img):
        out = np.zeros_like(img)
        padded = np.pad(img, 1, mode="reflect")
        ax = np.array(range(9)) - 4
        for i in range(1, img.shape[0] + 1):
            for j in range(1, img.shape[1] + 1):
                win = np.sort(padded[i - 1 : i + 2, j - 1 : j + 2].flatten())
                mean = win.mean()
                if mean > 0:
                    sigma = win.std() / mean
                    if sigma == 0:  # TAM: NaN here; both sides define it as the median
                        out[i - 1, j - 1] = win[4]
                        continue
                    k = np.exp(-(ax**2) / (2 * sigma**2))
                    k = k / np.sum(k)
                    out[i - 1, j - 1] = (win * k).sum()
        return out

    def step(target, store):
        if isinstance(target, int):
            round_idx, vis_idx = target, len(prompt) + target
        else:
            round_idx, u = target
            vis_idx = u
        if round_idx == 0 and isinstance(target, int):
            first = None
            for u in range(len(prompt) + 1):
                m = step([0, u], store)
                if u == 0:
                    first = m
            return first
        if round_idx == 0:
            if u == len(prompt):
                cls = tokens[L0 - 1]
            elif u == 0:
                cls = int(logit_list[0][0, s].argmax(0))
            else:
                cls = tokens[s + u]
        else:
            cls = tokens[L0 + round_idx]
        scores = torch.cat([logit_list[r][0, :, cls] for r in range(round_idx + 1)], -1).clip(min=0)
        scores = scores.detach().cpu().float().numpy()
        txt = np.concatenate([scores[s:e], scores[L0 - 1 : L0], scores[L0:]], -1)
        img = scores[vis_positions]
        store.append(img)
        if len(store) > 1 and vis_idx < len(txt_all):
            keep = [i for i in range(vis_idx) if i < len(txt_all) and txt_all[i] != txt_all[vis_idx]]
            w = txt[keep]
            w = w / (w.sum() + 1e-8)
            interf = (np.stack([store[i] for i in keep], 0) * w.reshape(-1, 1)).sum(0)
            x = minimize_scalar(lambda b: np.sum((img - interf * b) ** 2)).x
            img = (img - interf * x).clip(min=0)
        txt = txt[:-1]
        allv = np.concatenate([img, txt], 0)
        with np.errstate(invalid="ignore"):  # TAM divides 0 by 0 for a constant score vector (NaN -> 0)
            allv = (allv - allv.min()) / (allv.max() - allv.min())
        img = allv[: len(img)]
        return (filt(img.reshape(grid)) * 255).astype("uint8")

    store = []
    return np.stack([step(t, store) for t in range(num_rounds)])


def tam_as_published_for(ad, img, exp) -> np.ndarray:
    """``tam_as_published`` on the model's own scale-1.0 states for ``exp``'s answer, with the logits shaped as
    TAM's demo makes them: the prompt as one round, then one row per answer token."""
    base = ad.prepare(img, PROMPT, 1.0)
    h = ad.forward_hidden(base, exp.answer_ids)
    logits = torch.nn.functional.linear(h, ad.lm_head_weight())  # lm_head on the last-layer states
    L0 = base.length
    logit_list = [logits[None, :L0]] + [
        logits[None, L0 + r - 1 : L0 + r] for r in range(1, len(exp.answer_ids))
    ]
    return tam_as_published(
        base.input_ids + exp.answer_ids,
        L0,
        base.prompt_span,
        base.visual_positions.numpy(),
        base.grid,
        logit_list,
        ad.tokenizer,
        len(exp.answer_ids),
    )


def test_tam_preset_equals_tam_as_published(family_model):
    family, model, processor = family_model
    from mmx_fast.adapters import get_adapter

    ad = get_adapter(model, processor)
    img = photo()
    exp = explain(model, processor, img, PROMPT, answer=ANSWER, config=ExplainConfig(method="tam"))
    want = tam_as_published_for(ad, img, exp)
    got = np.stack([exp.map_uint8(i) for i in range(len(exp.answer_ids))])
    assert got.shape == want.shape
    assert np.array_equal(got, want)
    # the comparison is not vacuous: most maps carry signal
    assert (got.reshape(len(got), -1).max(1) > 0).mean() >= 0.5


def test_explain_methods_share_one_forward_and_equal_single_configs(family_model):
    family, model, processor = family_model
    configs = [ExplainConfig(method=m) for m in PRESETS]
    ex = Explainer(model, processor, ExplainConfig(max_new_tokens=5))
    calls = []
    orig = ex.adapter.forward_hidden_rows
    ex.adapter.forward_hidden_rows = lambda rows, answers, flags: (
        calls.append(flags) or orig(rows, answers, flags)
    )
    many = ex.explain_methods(photo(), PROMPT, configs, answer=ANSWER)
    # one set of forwards over the union of scales (0.5, 0.75 prefix-only; 1.0 in full for the rankings)
    assert calls == [[True, True, False]]
    ex.adapter.forward_hidden_rows = orig
    for cfg, got in zip(configs, many):
        want = explain(model, processor, photo(), PROMPT, answer=ANSWER, config=cfg)
        assert got.config == cfg
        torch.testing.assert_close(got.maps, want.maps, atol=1e-4, rtol=0)


def test_generation_states_replace_the_scale_one_forward(family_model):
    """Generated answers reuse the states generation computed: the batched forward runs only the other
    scales, and those states equal the teacher-forced ones."""
    family, model, processor = family_model
    from mmx_fast.adapters import get_adapter

    ad = get_adapter(model, processor)
    prompts = [ad.prepare(photo(), PROMPT, 1.0), ad.prepare(photo(90, 120, 1), "Where is the boat?", 1.0)]
    for batch in (prompts[:1], prompts):
        answers, states = ad.generate_with_states(batch, 6)
        for p, a, st in zip(batch, answers, states):
            assert st.shape[0] == p.length + len(a) - 1
            if a:
                want = ad.forward_hidden(p, a)[: p.length + len(a) - 1]
                torch.testing.assert_close(st, want, atol=2e-5, rtol=0)
    ex = Explainer(model, processor, ExplainConfig(method="msea-arc", max_new_tokens=5))
    rows = []
    orig = ex.adapter.forward_hidden_rows
    ex.adapter.forward_hidden_rows = lambda r, a, f: rows.append(f) or orig(r, a, f)
    exp = ex.explain(photo(), PROMPT)
    ex.adapter.forward_hidden_rows = orig
    if exp.answer_ids:
        assert rows == [[True, True]]  # scales 0.5 and 0.75 only, both prefix-only
        ref = explain(
            model, processor, photo(), PROMPT, config=ExplainConfig(method="msea-arc", max_new_tokens=5)
        )
        assert ref.answer_ids == exp.answer_ids
        torch.testing.assert_close(exp.maps, ref.maps, atol=1e-4, rtol=0)
