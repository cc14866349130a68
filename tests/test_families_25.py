"""Issue 25, more model families on tiny real-architecture models: Idefics3, LLaVA-NeXT-Video, GLM-4.1V /
GLM-4.5V / GLM-4.6V, Qwen3.5 / Qwen3.5-MoE, Aya Vision, LLaVA-OneVision-1.5, EXAONE 4.5, ViP-LLaVA, PaddleOCR-VL;
and the model types refused with their reason (no spatial grid of visual tokens, or cross-attention only).

Per type: the adapter and registry line; the grid on two images of different aspect ratios; the visual-token
count check (one token short is an error naming the model type); ``explain_fast`` == ``reference.explain`` on
every preset (forced answer) and on a generated answer; a planted pattern through the model's own vision code
(its patch order, merge / pixel shuffle, tiling) comes back on the right cells of the canonical grid.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from test_explain import ANSWER, PRESETS, PROMPT, photo
from test_tiled import _canonical
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling

from mmx_fast import ExplainConfig, explain_fast
from mmx_fast.adapters import get_adapter, model_type_info
from mmx_fast.adapters.aya_vision import AyaVisionAdapter
from mmx_fast.adapters.glm4v import Glm4vAdapter
from mmx_fast.adapters.idefics3 import Idefics3Adapter
from mmx_fast.adapters.llava import VipLlavaAdapter
from mmx_fast.adapters.llava_next import LlavaNextVideoAdapter
from mmx_fast.adapters.qwen2_vl import PaddleOCRVLAdapter, QwenStyleAdapter
from mmx_fast.adapters.qwen3_vl import Qwen35Adapter
from mmx_fast.reference import explain
from mmx_fast.testing import FAMILIES, tiny_model

ADAPTER = {
    "idefics3": Idefics3Adapter,
    "llava_next_video": LlavaNextVideoAdapter,
    "glm4v": Glm4vAdapter,
    "glm4v_moe": Glm4vAdapter,
    "glm46v": Glm4vAdapter,
    "qwen3_5": Qwen35Adapter,
    "qwen3_5_moe": Qwen35Adapter,
    "aya_vision": AyaVisionAdapter,
    "llava_onevision1_5": QwenStyleAdapter,
    "exaone4_5": QwenStyleAdapter,
    "vipllava": VipLlavaAdapter,
    "paddleocr_vl": PaddleOCRVLAdapter,
}
NEW = list(ADAPTER)
DYNAMIC = [
    "glm4v",
    "glm4v_moe",
    "glm46v",
    "qwen3_5",
    "qwen3_5_moe",
    "llava_onevision1_5",
    "exaone4_5",
]
# (grid of photo(131, 97), grid of photo(60, 110)): dynamic resolution follows the aspect ratio (Qwen's smart
# resize, 28 px per token); the tiled types: the stitched tiles of their layout.
GRIDS = {
    **{n: ((3, 5), (4, 2)) for n in [*DYNAMIC, "paddleocr_vl"]},
    "idefics3": ((4, 4), (4, 4)),
    "aya_vision": ((4, 4), (4, 2)),
    "llava_next_video": ((6, 8), (8, 4)),
    "vipllava": ((8, 8), (8, 8)),  # CLIP 112 px, centre crop, patch 14
}
IMAGES = ((131, 97, 0), (60, 110, 1))
_CACHE: dict[str, tuple] = {}


def _family(name):
    if name not in _CACHE:
        model, processor = tiny_model(name, seed=0)
        _CACHE[name] = (name, model, processor, get_adapter(model, processor))
    return _CACHE[name]


@pytest.fixture(scope="module", params=NEW)
def fam(request):
    return _family(request.param)


def test_registry_and_tiny_models_list_every_new_type():
    for name, cls in ADAPTER.items():
        assert model_type_info(name).adapter is cls and name in FAMILIES


def test_adapter_and_grid(fam):
    name, model, _, ad = fam
    assert type(ad) is ADAPTER[name] and model.config.model_type == name
    for (w, h, seed), grid in zip(IMAGES, GRIDS[name]):
        p = ad.prepare(photo(w, h, seed), PROMPT, 1.0)
        assert p.grid == grid, (name, p.grid)
        n = p.visual_positions.numel()
        ids = p.inputs["input_ids"][0]
        assert bool((ids[p.visual_positions] == ad.image_token_id).all())
        if p.views is None:  # single view: every image token is a grid cell
            assert n == grid[0] * grid[1] == int((ids == ad.image_token_id).sum())
        else:  # tiled: the views tile the canonical grid's boxes; the thumbnail / global view covers all
            assert max(v.stop for v in p.views) == n and any(v.box == (0.0, 0.0, 1.0, 1.0) for v in p.views)
        s, e = p.prompt_span
        assert int(p.visual_positions.max()) < s < e and ad.tokenizer.decode(ids[s:e]).strip() == PROMPT


def test_visual_token_count_mismatch_names_the_model_type(fam, monkeypatch):
    name, _, _, ad = fam
    run = ad.run_processor
    tid = ad.image_token_id

    def one_short(*a, **kw):
        out = run(*a, **kw)
        ids = out["input_ids"][0]
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[int((ids == tid).nonzero()[-1])] = False
        for key in ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"):
            if key in out:
                out[key] = out[key][:, keep]
        return out

    monkeypatch.setattr(ad, "run_processor", one_short)
    with pytest.raises(ValueError, match=rf"^{name}: found \d+ visual tokens but .* predicts \d+"):
        ad.prepare(photo(112, 112), PROMPT)


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
        assert torch.isfinite(ref.maps).all() and ref.maps.amax() > 0
        assert any(not torch.allclose(ref.maps[i], ref.maps[i + 1]) for i in range(len(ref.maps) - 1))
        torch.testing.assert_close(fast.maps, ref.maps, atol=1e-4, rtol=0)


def test_fast_equals_reference_generated(fam):
    _, model, processor, _ = fam
    cfg = ExplainConfig(method="msea-arc", max_new_tokens=5)
    img = photo(60, 110, 1)
    ref = explain(model, processor, img, PROMPT, config=cfg)
    fast = explain_fast(model, processor, img, PROMPT, config=cfg)
    assert ref.answer_ids and fast.answer_ids == ref.answer_ids
    torch.testing.assert_close(fast.maps, ref.maps, atol=1e-4, rtol=0)


# --------------------------------------------------------------------------------------------------------------
# planted patterns through each model's own vision code


def _identity_decoder(monkeypatch, model):
    inner = model.model
    decoder = getattr(inner, "language_model", None) or inner.text_model
    monkeypatch.setattr(
        decoder,
        "forward",
        lambda inputs_embeds=None, **kw: BaseModelOutputWithPast(last_hidden_state=inputs_embeds),
    )


def _read_dim0(model, processor, image, answer_id=7, scales=(1.0,)):
    """Explain ``answer_id`` whose unembedding row reads hidden dim 0 (the planted value), fast and reference."""
    w_u = model.get_output_embeddings().weight.data
    saved = w_u[answer_id].clone()
    w_u[answer_id] = 0
    w_u[answer_id, 0] = 1.0
    try:
        cfg = ExplainConfig(method="logit-lens", scales=scales, keep_scale_maps=True)
        ref = explain(model, processor, image, "Where?", answer=[answer_id], config=cfg)
        fast = explain_fast(model, processor, image, "Where?", answer=[answer_id], config=cfg)
    finally:
        w_u[answer_id] = saved
    torch.testing.assert_close(fast.raw_maps, ref.raw_maps, atol=1e-6, rtol=0)
    return ref.raw_maps[0]


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_resolution_bright_block_lands_on_its_cells(name, monkeypatch):
    """A 140x84 black image with a white block on its top-left 56x28 pixels: the processor's patches (14 px,
    in its own order) go through a vision model replaced by "each merged token = the mean pixel of its 2x2
    patches" (consecutive patch rows, the model's merge convention) into hidden dim 0; the decoder is the
    identity. The grid is 3x5 (84/28 x 140/28): the block covers cells (0, 0) and (0, 1) fully, nothing else
    exceeds the background."""
    model, processor = tiny_model(name, seed=0)
    visual = model.model.visual
    hidden = model.config.text_config.hidden_size

    def vision(pixel_values, grid_thw=None, **kw):
        per_patch = pixel_values.float().mean(-1)  # [patches]
        merged = per_patch.reshape(-1, 4).mean(-1)  # 2x2 merge groups are consecutive rows
        feats = torch.zeros(merged.shape[0], hidden)
        feats[:, 0] = merged
        return BaseModelOutputWithPooling(last_hidden_state=feats, pooler_output=feats)

    monkeypatch.setattr(visual, "forward", vision)
    _identity_decoder(monkeypatch, model)
    img = Image.new("RGB", (140, 84))
    img.paste((255, 255, 255), (0, 0, 56, 28))
    m = _read_dim0(model, processor, img)
    assert m.shape == (3, 5)
    bright, dark = m[0, :2], torch.cat([m[0, 2:], m[1:].reshape(-1)])
    assert bright.min() > dark.max() + 1.0  # normalised pixels: white ~ +1.8, black ~ -1.8
    torch.testing.assert_close(dark, torch.full_like(dark, float(dark[0])), atol=1e-5, rtol=0)


def test_paddleocr_vl_bright_block_lands_on_its_cells(monkeypatch):
    """PaddleOCR-VL's patches are row-major over the whole patch grid and its projector merges 2x2 blocks itself
    (the model's own reshape, kept): the vision encoder is replaced by "each patch = its mean pixel", the
    projector's layers by "the mean of the merged block into hidden dim 0". The 140x84 image's white top-left
    56x28 block lights cells (0, 0) and (0, 1) of the 3x5 grid, nothing else."""
    model, processor = tiny_model("paddleocr_vl", seed=0)
    inner = model.model
    width = model.config.vision_config.hidden_size
    hidden = model.config.text_config.hidden_size

    def vision(pixel_values=None, grid_thw=None, **kw):
        per_patch = pixel_values.float().reshape(pixel_values.shape[1], -1).mean(-1)
        return BaseModelOutputWithPooling(last_hidden_state=per_patch[:, None].expand(-1, width).contiguous())

    def first(x):
        out = torch.zeros(*x.shape[:-1], 4 * width)
        out[..., 0] = x.mean(-1)
        return out

    def second(x):
        out = torch.zeros(*x.shape[:-1], hidden)
        out[..., 0] = x[..., 0]
        return out

    proj = inner.projector
    monkeypatch.setattr(inner.visual, "forward", vision)
    for name, fn in (
        ("pre_norm", lambda x: x),
        ("linear_1", first),
        ("act", lambda x: x),
        ("linear_2", second),
    ):
        monkeypatch.setattr(getattr(proj, name), "forward", fn)
    _identity_decoder(monkeypatch, model)
    img = Image.new("RGB", (140, 84))
    img.paste((255, 255, 255), (0, 0, 56, 28))
    m = _read_dim0(model, processor, img)
    assert m.shape == (3, 5)
    bright, dark = m[0, :2], torch.cat([m[0, 2:], m[1:].reshape(-1)])
    assert bright.min() > dark.max() + 1.0
    torch.testing.assert_close(dark, torch.full_like(dark, float(dark[0])), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["idefics3", "aya_vision"])
def test_tile_lands_on_its_box(name, monkeypatch):
    """112x112 -> 2x2 tiles of 56 px (order (0,0), (0,1), (1,0), (1,1)) + the global tile; a tile's 4x4 patches
    pixel-shuffle (the model's own code) to 2x2 tokens; canonical grid 4x4. Plant on tile 1 = (row 0, col 1),
    its top-left 2x2 patches: only canonical cell (0, 2) is lit, at half strength (the global tile, which saw
    nothing, covers it too)."""
    model, processor = tiny_model(name, seed=0)
    plant = lambda t, r, c: 1.0 if (t == 1 and r < 2 and c < 2) else 0.0  # noqa: E731
    image = Image.new("RGB", (112, 112))
    if name == "aya_vision":  # the pixel shuffle lives in Aya's projector: keep it, replace what follows
        m = _aya_canonical(model, processor, image, plant, monkeypatch)
    else:
        m = _canonical(model, processor, image, plant, cls_token=False, monkeypatch=monkeypatch)
    expect = torch.zeros(4, 4)
    expect[0, 2] = 0.5
    torch.testing.assert_close(m, expect, atol=1e-6, rtol=0)


def _aya_canonical(model, processor, image, plant, monkeypatch):
    inner = model.model
    width = model.config.vision_config.hidden_size
    hidden = model.config.text_config.hidden_size
    patch = model.config.vision_config.patch_size

    def vision(pixel_values=None, **kw):
        n, _, h, w = pixel_values.shape
        gh, gw = h // patch, w // patch
        vals = torch.tensor([[plant(t, r, c) for r in range(gh) for c in range(gw)] for t in range(n)])
        feats = vals[..., None].expand(n, gh * gw, width).contiguous()
        return BaseModelOutputWithPooling(last_hidden_state=feats, hidden_states=(feats,) * 8)

    projector = inner.multi_modal_projector
    shuffle = projector.pixel_shuffle

    def project(x):
        y = shuffle(x)
        out = torch.zeros(*y.shape[:-1], hidden)
        out[..., 0] = y.mean(-1)
        return out

    monkeypatch.setattr(inner.vision_tower, "forward", vision)
    monkeypatch.setattr(projector, "forward", project)
    _identity_decoder(monkeypatch, model)
    return _read_dim0(model, processor, image)


def test_llava_next_video_images_unpad_as_llava_next(monkeypatch):
    """LLaVA-NeXT-Video's images: 112x28 -> 1x2 tiles of 56 px, stitched 4x8 cells, padded rows 0 and 3 removed
    by the model; plant 1 on the right tile's patch (1, 0) and 5 on its padded row 0: canonical (2x8) cell (0, 4)
    is lit at half strength, the padded row never appears, the newline embedding (9) never lands on a cell."""
    model, processor = tiny_model("llava_next_video", seed=0)

    def plant(t, r, c):
        if t == 2 and r == 1 and c == 0:
            return 1.0
        return 5.0 if (t == 2 and r == 0) else 0.0

    m = _canonical(
        model,
        processor,
        Image.new("RGB", (112, 28)),
        plant,
        cls_token=True,
        newline=9.0,
        monkeypatch=monkeypatch,
    )
    expect = torch.zeros(2, 8)
    expect[0, 4] = 0.5
    torch.testing.assert_close(m, expect, atol=1e-6, rtol=0)


def test_vipllava_patch_lands_on_its_cell(monkeypatch):
    """ViP-LLaVA's 112x112 input: 8x8 CLIP patches (CLS dropped by the model), two vision layers concatenated by
    its projector (replaced by their mean into hidden dim 0): a plant on patch (2, 5) lights exactly cell (2, 5)."""
    model, processor = tiny_model("vipllava", seed=0)
    m = _canonical(
        model,
        processor,
        Image.new("RGB", (112, 112)),
        lambda t, r, c: 1.0 if (r, c) == (2, 5) else 0.0,
        cls_token=True,
        monkeypatch=monkeypatch,
    )
    expect = torch.zeros(8, 8)
    expect[2, 5] = 1.0
    torch.testing.assert_close(m, expect, atol=1e-6, rtol=0)


REFUSED_TYPES = {
    "idefics": "cross-attention",
    "idefics2": "perceiver resampler",
    "blip-2": "Q-Former",
    "instructblip": "Q-Former",
    "kosmos-2": "latent queries",
    "florence2": "encoder-decoder",
    "t5gemma2": "encoder-decoder",
}


@pytest.mark.parametrize("name", list(REFUSED_TYPES))
def test_types_without_a_grid_are_refused_with_the_reason(name):
    from types import SimpleNamespace

    import transformers

    from mmx_fast.adapters import REFUSED

    assert name in transformers.models.auto.modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    assert REFUSED_TYPES[name] in REFUSED[name]
    with pytest.raises(
        ValueError, match=rf"model type '{name}' cannot be explained: .*{REFUSED_TYPES[name]}"
    ):
        get_adapter(SimpleNamespace(config=SimpleNamespace(model_type=name)), None)


@pytest.mark.parametrize("name", ["qwen3_5", "glm4v", "exaone4_5", "paddleocr_vl"])
def test_new_dynamic_types_refuse_video_with_the_reason(name):
    """Their video layouts are not explained (not tested here): a video is refused naming the types that do."""
    _, model, processor, _ = _family(name)
    frames = [photo(56, 56, k) for k in range(2)]
    with pytest.raises(
        ValueError, match=rf"model type '{name}' does not take video; video is explained for: qwen2_vl"
    ):
        explain_fast(model, processor, frames, PROMPT, answer=ANSWER)
