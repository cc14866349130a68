"""Tiled families (docs/design.md §1.2, tiled models): LLaVA-NeXT, LLaVA-OneVision (any-res with unpadding and
``image_newline``), InternVL with dynamic tiling and SmolVLM image splitting, on tiny real-architecture models.

- the fast path equals the reference (every preset, two aspect ratios, forced and generated answers);
- geometry: values planted on known patches of known tiles (through the model's own stitching, unpadding,
  pixel shuffle and newline insertion) come back on the right canonical cells;
- never silent: a visual-token count the geometry does not predict is an error naming the model type.
"""

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from test_explain import PROMPT, photo
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling

from mmx_fast import ExplainConfig, explain_fast
from mmx_fast.adapters import get_adapter
from mmx_fast.fast import Explainer
from mmx_fast.reference import explain
from mmx_fast.testing import tiny_model

HAS_NUM2WORDS = importlib.util.find_spec("num2words") is not None
SMOLVLM = pytest.param(
    "smolvlm",
    marks=pytest.mark.skipif(
        not HAS_NUM2WORDS, reason="the SmolVLM processor needs num2words (the dev extra)"
    ),
)
TILED = ["llava_next", "llava_onevision", "internvl_tiled", SMOLVLM]
PRESETS = ["msea-arc", "tam", "logit-lens"]
ANSWER = "The cat is sleeping on a blue sofa."
# two aspect ratios per family: LLaVA-NeXT / OneVision 112x28 -> 1x2 tiles whose stitched 4x8 grid loses its
# padded top and bottom rows (unpadding); InternVL 112x112 -> 2x2 tiles + thumbnail, 168x84 -> 1x2 + thumbnail
SIZES = {
    "llava_next": [(112, 28), (60, 100)],
    "llava_onevision": [(112, 28), (112, 112)],
    "internvl_tiled": [(112, 112), (168, 84)],
    "smolvlm": [(112, 112), (168, 84)],
}


@pytest.fixture(scope="module", params=TILED)
def tiled_model(request):
    model, processor = tiny_model(request.param, seed=0)
    return request.param, model, processor


@pytest.mark.parametrize("size", [0, 1])
@pytest.mark.parametrize("method", PRESETS)
def test_fast_equals_reference_tiled(tiled_model, method, size):
    name, model, processor = tiled_model
    image = photo(*SIZES[name][size])
    cfg = ExplainConfig(method=method)
    ref = explain(model, processor, image, PROMPT, answer=ANSWER, config=cfg)
    fast = explain_fast(model, processor, image, PROMPT, answer=ANSWER, config=cfg)
    assert fast.answer_ids == ref.answer_ids and len(ref.answer_ids) >= 5
    assert fast.grid == ref.grid
    assert ref.maps.shape == (len(ref.answer_ids),) + tuple(ref.grid)
    assert ref.maps.amax() > 0 and not torch.isnan(ref.maps).any()
    assert not torch.allclose(ref.maps[1], ref.maps[2]) or not torch.allclose(ref.maps[3], ref.maps[4])
    torch.testing.assert_close(fast.maps, ref.maps, atol=1e-4, rtol=0)


def test_generated_answer_fast_equals_reference_tiled(tiled_model):
    name, model, processor = tiled_model
    image = photo(*SIZES[name][0])
    cfg = ExplainConfig(method="msea-arc", max_new_tokens=4)
    ref = explain(model, processor, image, PROMPT, config=cfg)
    fast = explain_fast(model, processor, image, PROMPT, config=cfg)
    assert fast.answer_ids == ref.answer_ids and ref.answer_ids
    torch.testing.assert_close(fast.maps, ref.maps, atol=1e-4, rtol=0)


def test_explain_batch_equals_single_calls_tiled(tiled_model):
    """Rows with different tile counts in one batch (generation left-padded, forwards right-padded, the per-image
    tile tensors padded with empty tiles): each row equals its single call."""
    name, model, processor = tiled_model
    ex = Explainer(model, processor, ExplainConfig(method="msea-arc", max_new_tokens=4))
    images = [photo(*SIZES[name][0]), photo(*SIZES[name][1], seed=1)]
    prompts = [PROMPT, "Describe the picture in detail."]
    answers = [ANSWER, None]
    batch = ex.explain_batch(images, prompts, answers)
    for im, p, a, b in zip(images, prompts, answers, batch):
        single = ex.explain(im, p, a)
        assert b.answer_ids == single.answer_ids and b.answer_ids
        torch.testing.assert_close(b.maps, single.maps, atol=1e-4, rtol=0)


def test_kept_scale_maps_fast_equals_reference_tiled(tiled_model):
    name, model, processor = tiled_model
    cfg = ExplainConfig(method="msea-arc", keep_scale_maps=True)
    image = photo(*SIZES[name][1])
    ref = explain(model, processor, image, PROMPT, answer=ANSWER, config=cfg)
    fast = explain_fast(model, processor, image, PROMPT, answer=ANSWER, config=cfg)
    assert set(ref.scale_maps) == {0.5, 0.75, 1.0}
    for s, m in ref.scale_maps.items():
        assert m.shape[1:] == tuple(ref.grid)  # tiled: each scale's views combined on the canonical grid
        torch.testing.assert_close(fast.scale_maps[s], m, atol=1e-5, rtol=0)


def test_layouts_are_what_the_issue_asks_for():
    """InternVL: 2x2 tiles + thumbnail; LLaVA-NeXT: padded rows removed and newlines dropped."""
    model, processor = tiny_model("internvl_tiled")
    p = get_adapter(model, processor).prepare(photo(112, 112), PROMPT)
    assert [v.name for v in p.views] == ["tile 0,0", "tile 0,1", "tile 1,0", "tile 1,1", "thumbnail"]
    assert p.grid == (4, 4) and p.visual_positions.numel() == 20
    model, processor = tiny_model("llava_next")
    ad = get_adapter(model, processor)
    p = ad.prepare(photo(112, 28), PROMPT)
    assert p.grid == (2, 8)  # stitched 1x2 tiles = 4x8 cells, the top and bottom (padding) rows removed
    image_tokens = int((p.inputs["input_ids"][0] == ad.image_token_id).sum())
    assert image_tokens == 16 + 2 * (8 + 1)  # thumbnail + 2 rows of 8 cells and a newline each
    assert p.visual_positions.numel() == 16 + 16  # the newlines are not cells


# --------------------------------------------------------------------------------------------------
# Geometry: plant values on known patches, read them back on the canonical grid
# --------------------------------------------------------------------------------------------------


def _plant(monkeypatch, model, plant, cls_token: bool, newline: float = 0.0) -> int:
    """Replace the vision tower by ``plant`` (tile index, patch row, patch col) -> value on every channel,
    the projector by the channel mean on hidden dim 0, the decoder by the identity, and make one vocab id read
    dim 0. Everything between (tile order, pixel shuffle, stitching, unpadding, newlines, the scatter into the
    sequence) is the model's own code. Returns that vocab id."""
    inner = model.model
    tower = getattr(inner, "vision_tower", None) or inner.vision_model
    projector = getattr(inner, "multi_modal_projector", None) or inner.connector.modality_projection
    decoder = getattr(inner, "language_model", None) or inner.text_model
    width = model.config.vision_config.hidden_size
    patch = model.config.vision_config.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch

    def vision(pixel_values=None, **kw):
        n, _, h, w = pixel_values.shape
        gh, gw = h // patch, w // patch
        vals = torch.tensor(
            [[plant(t, r, c) for r in range(gh) for c in range(gw)] for t in range(n)], dtype=torch.float32
        )
        feats = vals[..., None].expand(n, gh * gw, width).contiguous()
        if cls_token:
            feats = torch.cat([torch.zeros(n, 1, width), feats], 1)
        return BaseModelOutputWithPooling(last_hidden_state=feats, hidden_states=(feats,) * 8)

    hidden = model.config.text_config.hidden_size

    def project(x):
        out = torch.zeros(*x.shape[:-1], hidden)
        out[..., 0] = x.mean(-1)
        return out

    monkeypatch.setattr(tower, "forward", vision)
    monkeypatch.setattr(projector, "forward", project)
    monkeypatch.setattr(
        decoder,
        "forward",
        lambda inputs_embeds=None, **kw: BaseModelOutputWithPast(last_hidden_state=inputs_embeds),
    )
    if getattr(inner, "image_newline", None) is not None:
        monkeypatch.setattr(inner, "image_newline", torch.nn.Parameter(torch.full((hidden,), newline)))
    return 7


def _canonical(model, processor, image, plant, cls_token, newline=0.0, monkeypatch=None, scales=(1.0,)):
    k = _plant(monkeypatch, model, plant, cls_token, newline)
    w_u = model.get_output_embeddings().weight.data
    saved = w_u[k].clone()
    w_u[k] = 0
    w_u[k, 0] = 1.0  # the planted id reads hidden dim 0
    try:
        cfg = ExplainConfig(method="logit-lens", scales=scales, keep_scale_maps=True)
        ref = explain(model, processor, image, "Where?", answer=[k], config=cfg)
        fast = explain_fast(model, processor, image, "Where?", answer=[k], config=cfg)
    finally:
        w_u[k] = saved
    torch.testing.assert_close(fast.raw_maps, ref.raw_maps, atol=1e-6, rtol=0)
    return ref.raw_maps[0]


@pytest.fixture
def fresh(request):
    return tiny_model(request.param, seed=0)


@pytest.mark.parametrize("fresh", ["internvl_tiled", SMOLVLM], indirect=True)
def test_tile_lands_on_its_box(fresh, monkeypatch):
    """InternVL / SmolVLM: 112x112 -> 2x2 tiles (order (0,0), (0,1), (1,0), (1,1)) + thumbnail (SmolVLM: global
    image); a tile's 4x4 patches pixel-shuffle to 2x2 tokens; canonical grid 4x4. Plant on tile 1 = (row 0, col 1), its top-left 2x2 patches: only canonical
    cell (0, 2) is lit, at half strength (the thumbnail, which saw nothing, covers it too)."""
    model, processor = fresh
    m = _canonical(
        model,
        processor,
        Image.new("RGB", (112, 112)),
        lambda t, r, c: 1.0 if (t == 1 and r < 2 and c < 2) else 0.0,
        cls_token=model.config.model_type == "internvl",
        monkeypatch=monkeypatch,
    )
    expect = torch.zeros(4, 4)
    expect[0, 2] = 0.5
    torch.testing.assert_close(m, expect, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fresh", ["internvl_tiled", SMOLVLM], indirect=True)
def test_thumbnail_covers_the_whole_grid(fresh, monkeypatch):
    """Plant on the thumbnail (last view) only: its 2x2 tokens are resized onto all 4x4 canonical cells; every
    cell is lit at half the resized value, top-left strongest where the plant was."""
    model, processor = fresh
    m = _canonical(
        model,
        processor,
        Image.new("RGB", (112, 112)),
        lambda t, r, c: 1.0 if (t == 4 and r < 2 and c < 2) else 0.0,
        cls_token=model.config.model_type == "internvl",
        monkeypatch=monkeypatch,
    )
    thumb = torch.zeros(1, 1, 2, 2)
    thumb[0, 0, 0, 0] = 1.0
    expect = (
        torch.nn.functional.interpolate(thumb, size=(4, 4), mode="bilinear", align_corners=False)[0, 0] / 2
    )
    torch.testing.assert_close(m, expect, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fresh", ["internvl_tiled", SMOLVLM], indirect=True)
def test_scales_average_over_every_view(fresh, monkeypatch):
    """Scales (0.5, 1.0): a constant plant on every view of every scale comes back constant: each cell averages
    exactly the views covering it (InternVL at 0.5: the 56x56 image is one tile, no thumbnail; SmolVLM resizes it
    back to 2x2 tiles + global)."""
    model, processor = fresh
    m = _canonical(
        model,
        processor,
        Image.new("RGB", (112, 112)),
        lambda t, r, c: 2.0,
        cls_token=model.config.model_type == "internvl",
        monkeypatch=monkeypatch,
        scales=(0.5, 1.0),
    )
    torch.testing.assert_close(m, torch.full((4, 4), 2.0), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fresh", ["llava_next", "llava_onevision"], indirect=True)
def test_anyres_unpadding_and_newlines(fresh, monkeypatch):
    """112x28 -> best resolution 56x112: 1x2 tiles (pixel_values: base, left, right), stitched 4x8 cells; the
    model removes padded rows 0 and 3. Plant 1 on the right tile's patch (row 1, col 0) and 5 on its padded row
    0: canonical (2x8) cell (0, 4) is lit at half strength (the thumbnail saw nothing), the padded row never
    appears, and the newline embedding (set to 9) never lands on a cell."""
    model, processor = fresh
    onevision = model.config.model_type == "llava_onevision"

    def plant(t, r, c):
        if t == 2 and r == 1 and c == 0:
            return 1.0
        if t == 2 and r == 0:
            return 5.0
        return 0.0

    m = _canonical(
        model,
        processor,
        Image.new("RGB", (112, 28)),
        plant,
        cls_token=not onevision,
        newline=9.0,
        monkeypatch=monkeypatch,
    )
    expect = torch.zeros(2, 8)
    expect[0, 4] = 0.5
    torch.testing.assert_close(m, expect, atol=1e-6, rtol=0)


@pytest.mark.parametrize("fresh", ["llava_onevision"], indirect=True)
def test_onevision_shrunk_grid_keeps_tile_quadrants(fresh, monkeypatch):
    """112x112 -> 2x2 tiles, 8x8 cells, more than anyres_max_2 allows: the model shrinks the grid to 5x5. Plant 1
    on the whole top-left tile: the top-left cells are lit, the bottom rows and right columns stay dark."""
    model, processor = fresh
    m = _canonical(
        model,
        processor,
        Image.new("RGB", (112, 112)),
        lambda t, r, c: 1.0 if t == 1 else 0.0,
        cls_token=False,
        monkeypatch=monkeypatch,
    )
    assert m.shape == (5, 5)
    assert (m[:2, :2] > 0.2).all()
    assert (m[3:, :] == 0).all() and (m[:, 3:] == 0).all()


# --------------------------------------------------------------------------------------------------
# Never silent
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llava_next", "internvl_tiled", SMOLVLM, "llava", "internvl", "qwen2_vl"])
def test_token_count_mismatch_names_the_model_type(name, monkeypatch):
    """One visual token too few in the sequence (a processor / config disagreement): an error naming the model
    type, never a 1x1 or shifted map."""
    model, processor = tiny_model(name, seed=0)
    ad = get_adapter(model, processor)
    run = ad.run_processor
    tid = ad.image_token_id

    def one_short(*a, **kw):
        out = run(*a, **kw)
        ids = out["input_ids"][0]
        drop = int((ids == tid).nonzero()[-1])
        keep = torch.ones_like(ids, dtype=torch.bool)
        keep[drop] = False
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            if key in out:
                out[key] = out[key][:, keep]
        return out

    monkeypatch.setattr(ad, "run_processor", one_short)
    with pytest.raises(ValueError, match=rf"^{model.config.model_type}: found \d+ visual tokens"):
        ad.prepare(photo(112, 112), PROMPT)


def test_tiled_layout_disagreeing_with_config_is_an_error():
    """The model config's pinpoints differ from the processor's: the layout the model would build does not
    match the tokens the processor wrote."""
    model, processor = tiny_model("llava_next", seed=0)
    model.config.image_grid_pinpoints = [[56, 56]]
    with pytest.raises(ValueError, match=r"^llava_next: found \d+ visual tokens but the .* tiled layout"):
        get_adapter(model, processor).prepare(photo(112, 28), PROMPT)


def test_internvl_max_patches_is_the_processors_own():
    """``processor.image_processor.max_patches`` bounds the tiles (here 1: a single tile, no thumbnail)."""
    model, processor = tiny_model("internvl_tiled", seed=0)
    processor.image_processor.max_patches = 1
    p = get_adapter(model, processor).prepare(photo(112, 112), PROMPT)
    assert [v.name for v in p.views] == ["tile 0,0"] and p.grid == (2, 2)
    assert np.prod(p.grid) == p.visual_positions.numel()
