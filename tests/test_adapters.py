"""Adapters on tiny real-architecture models (Qwen2-VL, Qwen2.5-VL, LLaVA, InternVL), with real processors.

Images are synthesised (gradients + shapes, odd sizes); nothing downloads (tests/conftest.py sets HF_HUB_OFFLINE).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mmx_fast.adapters import (
    MODEL_TYPES,
    InternVLAdapter,
    LlavaAdapter,
    Qwen2VLAdapter,
    adapter_class,
    get_adapter,
    supported_model_types,
    tiny_model_types,
)
from mmx_fast.testing import tiny_model

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "llava", "internvl"]
FIXED = ["llava", "internvl"]
PROMPT = "What color is the car on the left?"
SCALES = (0.5, 0.75, 1.0)


def make_image(w: int, h: int, seed: int = 0) -> Image.Image:
    """A gradient with a few filled shapes and a little noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    arr = np.stack(
        [255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 127 + 120 * np.sin((x + 2 * y) / 7.0)], axis=-1
    )
    arr += rng.normal(0, 6, size=arr.shape)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="RGB")
    d = ImageDraw.Draw(img)
    d.ellipse((w // 5, h // 5, w // 2, h // 2), fill=(230, 20, 20))
    d.rectangle((w // 2, h // 2, w - 3, h - 4), fill=(20, 40, 220))
    d.polygon([(2, h - 2), (w // 3, h // 2), (w // 2, h - 2)], fill=(30, 200, 60))
    return img


# Qwen: 150x110 gives merged grids 2x3, 3x4, 4x5 at scales 0.5, 0.75, 1.0 (min pixels 56*56).
IMAGES = {"dynamic": (150, 110), "fixed": (67, 53)}


def image_for(family: str, seed: int = 0) -> Image.Image:
    w, h = IMAGES["fixed" if family in FIXED else "dynamic"]
    return make_image(w, h, seed)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param


_CACHE: dict[str, tuple] = {}


@pytest.fixture(scope="module")
def setup(family):
    if family not in _CACHE:
        model, processor = tiny_model(family)
        _CACHE[family] = (model, processor, get_adapter(model, processor))
    return _CACHE[family]


# --------------------------------------------------------------------------------------------------------------
# tiny models


def test_tiny_model_shapes_and_determinism(family, setup):
    model, processor, _ = setup
    tok = processor.tokenizer
    cfg = model.config.get_text_config()
    assert cfg.vocab_size == len(tok) == model.get_output_embeddings().weight.shape[0]
    assert 1000 <= len(tok) <= 2000
    assert cfg.hidden_size == 64 and cfg.num_hidden_layers == 2
    assert not model.training
    eos = model.generation_config.eos_token_id
    assert tok.convert_ids_to_tokens(eos) == ("</s>" if family == "llava" else "<|im_end|>")
    assert tok.pad_token_id is not None and model.generation_config.pad_token_id == tok.pad_token_id
    again, _ = tiny_model(family, seed=0)
    other, _ = tiny_model(family, seed=1)
    w0 = model.get_input_embeddings().weight
    assert torch.equal(w0, again.get_input_embeddings().weight)
    assert not torch.equal(w0, other.get_input_embeddings().weight)


def test_tiny_model_rejects_unknown_family():
    with pytest.raises(ValueError, match="gpt2.*qwen2_vl"):
        tiny_model("gpt2")


def test_tiny_model_bfloat16():
    model, processor = tiny_model("llava", dtype=torch.bfloat16)
    ad = get_adapter(model, processor)
    p = ad.prepare(make_image(40, 30), PROMPT, 0.75)
    h = ad.forward_hidden(p, [5, 6])
    assert h.dtype == torch.bfloat16 and h.shape == (p.length + 2, 64) and torch.isfinite(h).all()


# --------------------------------------------------------------------------------------------------------------
# (a) teacher-forced states == generate's states


def test_forward_hidden_matches_generate(setup):
    model, _, ad = setup
    p = ad.prepare(image_for(ad.family), PROMPT, 1.0)
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
    assert len(new) == n
    steps = out.hidden_states
    ref = torch.cat([steps[0][-1][0]] + [steps[t][-1][0] for t in range(1, n)], dim=0)
    h = ad.forward_hidden(p, new[:-1])
    assert h.shape == ref.shape == (p.length + n - 1, model.config.get_text_config().hidden_size)
    torch.testing.assert_close(h, ref, atol=1e-5, rtol=0)
    # they are what lm_head consumes: greedy picks from them reproduce the generated tokens
    with torch.no_grad():
        picks = (h[p.length - 1 :] @ ad.lm_head_weight().T).argmax(-1).tolist()
    assert picks == new


# --------------------------------------------------------------------------------------------------------------
# (b) visual positions vs grid


def test_visual_positions_fill_grid(setup):
    _, processor, ad = setup
    img = image_for(ad.family)
    grids = []
    for s in SCALES:
        p = ad.prepare(img, PROMPT, s)
        ids = p.inputs["input_ids"][0]
        n = p.visual_positions.numel()
        assert n == p.grid[0] * p.grid[1] > 0
        assert (ids[p.visual_positions] == ad.image_token_id).all()
        assert int((ids == ad.image_token_id).sum()) == n
        assert torch.equal(p.visual_positions, torch.arange(p.visual_positions[0], p.visual_positions[0] + n))
        assert p.scale == s
        grids.append(p.grid)
        if ad.dynamic_resolution:
            thw = p.inputs["image_grid_thw"][0].tolist()
            assert p.grid == (thw[1] // 2, thw[2] // 2) and p.coverage == (1.0, 1.0)
            assert p.image.size == (max(1, round(img.width * s)), max(1, round(img.height * s)))
        else:
            assert p.coverage == (s, s)
            assert p.image.size == p.base_image.size
    if ad.dynamic_resolution:
        assert grids == [(2, 3), (3, 4), (4, 5)]
    else:
        side = 8 if ad.family == "llava" else 4
        assert grids == [(side, side)] * 3


def test_qwen_min_pixels_clamp():
    model, processor = tiny_model("qwen2_vl")
    ad = get_adapter(model, processor)
    p = ad.prepare(make_image(20, 9), PROMPT, 0.5)  # 10x4 px: the processor's min pixels lift it to 2x2+
    assert p.image.size == (10, 4)
    assert p.visual_positions.numel() == p.grid[0] * p.grid[1] >= 4


# --------------------------------------------------------------------------------------------------------------
# (c) prompt span


@pytest.mark.parametrize(
    "prompt",
    [
        PROMPT,
        "assistant",
        "USER: describe the image ASSISTANT:",
        "  Is there a dog?",
        "Count the cars.\nThen stop.",
    ],
)
def test_prompt_span_is_instruction_text_only(setup, prompt):
    _, processor, ad = setup
    tok = processor.tokenizer
    p = ad.prepare(image_for(ad.family), prompt, 1.0)
    s, e = p.prompt_span
    ids = p.input_ids
    assert 0 < s < e < len(ids)
    assert s > int(p.visual_positions.max())
    special = set(tok.all_special_ids) | {ad.image_token_id}
    assert not special.intersection(ids[s:e])
    assert tok.decode(ids[s:e]).strip() == prompt.strip()
    # the span sits exactly between the template's image part and its end-of-turn part
    before = tok.decode(ids[:s], skip_special_tokens=False)
    after = tok.decode(ids[e:], skip_special_tokens=False)
    head = {"qwen2_vl": "<|vision_end|>", "llava": "<image>\n", "internvl": "</img>\n"}[ad.family]
    tail = " ASSISTANT:" if ad.family == "llava" else "<|im_end|>\n<|im_start|>assistant\n"
    assert before.endswith(head)
    assert after == tail


def test_prompt_span_empty_prompt(setup):
    _, _, ad = setup
    p = ad.prepare(image_for(ad.family), "", 1.0)
    s, e = p.prompt_span
    assert s == e and s > int(p.visual_positions.max())


# --------------------------------------------------------------------------------------------------------------
# (d) batched forward / generate == per row


def test_forward_hidden_batch_matches_rows(setup):
    _, _, ad = setup
    img, other = image_for(ad.family, 0), image_for(ad.family, 1).resize((91, 77))
    prompts = [ad.prepare(img, PROMPT, s) for s in SCALES] + [ad.prepare(other, "Describe it.", 1.0)]
    answers = [[], [11, 12], [13, 14, 15, 16, 17], [300, 301, 302]]
    rows = ad.forward_hidden_batch(prompts, answers)
    assert len(rows) == len(prompts)
    for p, a, h in zip(prompts, answers, rows):
        single = ad.forward_hidden(p, a)
        assert h.shape == single.shape == (p.length + len(a), 64)
        torch.testing.assert_close(h, single, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="answers"):
        ad.forward_hidden_batch(prompts, answers[:2])


def test_generate_batch_matches_rows(setup):
    _, _, ad = setup
    img, other = image_for(ad.family, 0), image_for(ad.family, 1).resize((88, 101))
    prompts = [ad.prepare(img, PROMPT, s) for s in SCALES] + [
        ad.prepare(other, "Describe it in detail.", 1.0)
    ]
    singles = [ad.generate(p, 6) for p in prompts]
    assert singles[-1], "the tiny model should produce some answer tokens"
    assert ad.generate_batch(prompts, 6) == singles


# --------------------------------------------------------------------------------------------------------------
# (e) fixed-size canvases


def test_scale_one_is_processor_output(setup):
    _, processor, ad = setup
    for img in (image_for(ad.family), make_image(90, 61, seed=3), make_image(40, 130, seed=4)):
        p = ad.prepare(img, PROMPT, 1.0)
        own = processor(images=[img], text=[ad.chat_text(PROMPT)], return_tensors="pt", **ad.processor_kwargs)
        assert torch.equal(p.inputs["pixel_values"], own["pixel_values"])
        assert torch.equal(p.inputs["input_ids"], own["input_ids"])


@pytest.mark.parametrize("family", FIXED, indirect=False)
def test_fixed_canvas_geometry(family):
    model, processor = tiny_model(family)
    ad = get_adapter(model, processor)
    img = make_image(90, 61, seed=2)
    base = ad.processed_image(img)
    side = base.width
    assert base.size == (side, side) == (112, 112)
    fill = np.array(ad.canvas_fill(), dtype=np.uint8)
    mean = np.array(processor.image_processor.image_mean)
    assert np.array_equal(fill, np.round(mean * 255).astype(np.uint8))
    for s in (0.5, 0.75):
        p = ad.prepare(img, PROMPT, s)
        canvas = np.asarray(p.image)
        k = round(side * s)
        assert canvas.shape == (side, side, 3)
        assert np.array_equal(canvas[:k, :k], np.asarray(base.resize((k, k), Image.BILINEAR)))
        outside = np.ones((side, side), dtype=bool)
        outside[:k, :k] = False
        assert (canvas[outside] == fill).all()
        # the processor only rescaled and normalised the canvas
        px = p.inputs["pixel_values"][0].permute(1, 2, 0).numpy()
        std = np.array(processor.image_processor.image_std)
        np.testing.assert_allclose(px, (canvas / 255.0 - mean) / std, atol=1e-5)
    big = ad.prepare(img, PROMPT, 1.5)
    k = round(side * 1.5)
    expected = np.asarray(base.resize((k, k), Image.BILINEAR))[:side, :side]
    assert np.array_equal(np.asarray(big.image), expected) and big.coverage == (1.5, 1.5)
    with pytest.raises(ValueError, match="scale"):
        ad.prepare(img, PROMPT, 0.0)


# --------------------------------------------------------------------------------------------------------------
# (f) registry


def test_get_adapter_picks_family(setup):
    model, processor, ad = setup
    expected = {
        "qwen2_vl": Qwen2VLAdapter,
        "qwen2_5_vl": Qwen2VLAdapter,
        "llava": LlavaAdapter,
        "internvl": InternVLAdapter,
    }[model.config.model_type]
    assert type(ad) is expected
    assert model.config.model_type in supported_model_types()


def test_get_adapter_unknown_model_type():
    fake = SimpleNamespace(config=SimpleNamespace(model_type="gpt2"))
    with pytest.raises(ValueError, match=r"'gpt2'.*qwen2_vl.*llava.*internvl"):
        get_adapter(fake, None)
    with pytest.raises(ValueError, match="model_type"):
        get_adapter(object(), None)


def test_get_adapter_processor_mismatch():
    qwen, qwen_proc = tiny_model("qwen2_vl")
    llava, llava_proc = tiny_model("llava")
    with pytest.raises(ValueError, match=r"LlavaProcessor.*'qwen2_vl'"):
        get_adapter(qwen, llava_proc)
    with pytest.raises(ValueError, match=r"Qwen2VLProcessor.*'llava'"):
        get_adapter(llava, qwen_proc)
    with pytest.raises(ValueError, match=r"'llava'"):
        get_adapter(llava, llava_proc.tokenizer)


def test_registry_is_the_one_family_list():
    """The CLI and the tiny-model builder take their family lists from the registry; each entry is consistent
    with its adapter class and names a real transformers processor class."""
    import transformers

    from mmx_fast import cli, testing

    # issue 15 families (tests/test_families.py), then the tiled ones (tests/test_tiled.py)
    families = ["qwen3_vl", "qwen3_vl_moe", "gemma3", "paligemma"]
    tiled = ["llava_next", "llava_onevision", "smolvlm"]
    # issue 25 (tests/test_families_25.py)
    more = [
        "idefics3",
        "llava_next_video",
        "glm4v",
        "glm4v_moe",
        "glm46v",
        "aya_vision",
        "llava_onevision1_5",
    ]
    more += ["exaone4_5", "vipllava", "paddleocr_vl", "qwen3_5", "qwen3_5_moe"]
    every = FAMILIES + families + tiled + more
    assert supported_model_types() == list(MODEL_TYPES) == list(cli.SUPPORTED_FAMILIES) == every
    assert tiny_model_types() == tuple(every)
    assert testing.FAMILIES == tiny_model_types() + ("internvl_tiled",)  # a variant: InternVL with tiling on
    for name, info in MODEL_TYPES.items():
        assert info.name == name and adapter_class(name) is info.adapter
        assert name in info.adapter.config_types and info.processor_class in info.adapter.processor_classes
        assert hasattr(transformers, info.processor_class)
    with pytest.raises(ValueError, match=r"'gpt2'.*qwen2_vl"):
        adapter_class("gpt2")


def test_pad_id_and_old_name(setup):
    _, processor, ad = setup
    assert ad.pad_id() == ad._pad_id() == processor.tokenizer.pad_token_id


def test_every_model_type_has_one_tiny_declaration():
    """A family is its adapter, one registry line and one declaration (mmx_fast/tiny/families.py): every
    declaration names a registry model type and real transformers classes; every model type has exactly one
    declaration under its own name."""
    import transformers

    from mmx_fast.tiny import TINY_MODELS
    from mmx_fast.tiny.families import DECLARATIONS

    assert [d.name for d in DECLARATIONS] == list(TINY_MODELS)
    assert set(MODEL_TYPES) <= set(TINY_MODELS)
    for name, decl in TINY_MODELS.items():
        assert decl.model_type in MODEL_TYPES, name
        assert hasattr(transformers, decl.model) and hasattr(transformers, decl.config.name), name
        assert decl.processor.name in MODEL_TYPES[decl.model_type].adapter.processor_classes, name
        assert decl.image_size % 28 == 0 and decl.tokens.end_of_turn in decl.tokens.special, name


def test_tiny_declaration_placeholders_resolve():
    """The placeholders of a declaration: TEXT (shared decoder + the tokenizer's ids), Merge / Call bases under
    their keyword arguments, Token ids, Size of the build's image size; containers are copied."""
    from mmx_fast.tiny import tiny_tokenizer
    from mmx_fast.tiny.build import resolve
    from mmx_fast.tiny.declare import SQUARE, TEXT, Call, Merge, Size, Token

    tok = tiny_tokenizer("llava")
    shared = [1, 2]
    got = resolve(
        Merge(
            TEXT, eos_token_id=Token("<image>"), sides=Size(lambda s: [s, 2 * s]), box=SQUARE, shared=shared
        ),
        tok,
        56,
    )
    assert got["vocab_size"] == len(tok) == 1157 and got["hidden_size"] == 64
    assert (
        got["pad_token_id"] == tok.convert_tokens_to_ids("<pad>") and got["bos_token_id"] == tok.bos_token_id
    )
    assert (
        got["eos_token_id"] == tok.convert_tokens_to_ids("<image>") != tok.eos_token_id
    )  # kwargs over bases
    assert got["sides"] == [56, 112] and got["box"] == {"height": 56, "width": 56}
    assert got["shared"] == shared and got["shared"] is not shared
    cfg = resolve(Call("LlamaConfig", TEXT, num_hidden_layers=3), tok, 56)
    assert type(cfg).__name__ == "LlamaConfig" and cfg.num_hidden_layers == 3 and cfg.vocab_size == 1157
