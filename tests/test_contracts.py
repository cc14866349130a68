"""API contracts: bad inputs give clear errors, and the fast path never builds vocab x visual tensors."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from mmx_fast import ExplainConfig, explain_fast
from mmx_fast.images import load_image
from mmx_fast.reference import explain
from mmx_fast.testing import tiny_model


def photo(w=224, h=224, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def qwen():
    return tiny_model("qwen2_vl", seed=0)


class ShapeRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.fixture(scope="module")
def llava224():
    return tiny_model("llava", seed=0, image_size=224)  # 16 x 16 = 256 visual tokens, hidden 64


@pytest.mark.parametrize("method", ["msea-arc", "logit-lens", "tam"])
def test_no_vocab_sized_tensor_over_visual_tokens(llava224, method):
    model, processor = llava224
    vocab = model.get_output_embeddings().weight.shape[0]
    from mmx_fast.adapters import get_adapter

    n_visual = len(
        get_adapter(model, processor).prepare(photo(), "Describe the picture.", 1.0).visual_positions
    )
    answer = "The cat is on the sofa."
    assert n_visual > len(processor.tokenizer(answer)["input_ids"]) + 10  # text rows stay below n_visual
    rec = ShapeRecorder()
    with rec:
        exp = explain_fast(
            model,
            processor,
            photo(),
            "Describe the picture.",
            answer=answer,
            config=ExplainConfig(method=method),
        )
    assert exp.maps.shape[0] > 0
    assert rec.shapes, "the recorder saw nothing"
    bad = [s for s in rec.shapes if vocab in s and any(d >= n_visual for d in s if d != vocab)]
    assert not bad, f"vocab x visual-sized tensors were built: {bad[:5]}"
    # the recorder does catch such tensors: the reference path builds one (TAM-style logits) for tam
    rec2 = ShapeRecorder()
    with rec2:
        explain(
            model,
            processor,
            photo(),
            "Describe the picture.",
            answer=answer,
            config=ExplainConfig(method="tam"),
        )
    assert [s for s in rec2.shapes if vocab in s and any(d >= n_visual for d in s if d != vocab)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "msea_arc"}, "method='msea_arc'.*msea-arc, tam, logit-lens"),
        ({"scales": ()}, "scales"),
        ({"scales": (0.0, 1.0)}, "scales"),
        ({"scales": (-1.0, 1.0)}, "scales"),
        ({"scales": (0.5, 0.5, 1.0)}, "duplicates"),
        ({"scales": (0.5,)}, "1.0"),
        ({"scales": (100.0, 1.0)}, "scales"),
        ({"top_k": 0}, "top_k=0"),
        ({"top_k": 65}, "top_k=65"),
        ({"rbo_p": 0}, "rbo_p"),
        ({"rbo_p": 1}, "rbo_p"),
        ({"rbo_p": float("nan")}, "rbo_p"),
        ({"rbo_variant": "extended"}, "rbo_variant"),
        ({"aggregate": "median"}, "aggregate"),
        ({"mitigation": "eci"}, "mitigation"),
        ({"base": "mean"}, "base"),
        ({"backend": "cuda"}, "backend"),
    ],
)
def test_bad_config_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExplainConfig(**kwargs)


def test_presets_and_overrides():
    assert ExplainConfig().scales == (0.5, 0.75, 1.0)
    assert ExplainConfig(method="tam").is_exact_tam
    c = ExplainConfig(method="tam", scales=(0.5, 1.0))
    assert c.mitigation == "tam" and c.scales == (0.5, 1.0) and not c.is_exact_tam
    assert ExplainConfig(method="logit-lens").filter is False
    assert ExplainConfig(method="msea-arc", aggregate="max").aggregate == "max"


def test_bad_images(tmp_path):
    txt = tmp_path / "notes.jpg"
    txt.write_text("not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(txt)
    with pytest.raises(ValueError, match="does not exist"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(TypeError, match="int"):
        load_image(3)
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((4, 4, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 5, 3), dtype=np.uint8))
    good = np.zeros((6, 5, 3), dtype=np.uint8)
    (tmp_path / "trunc.png").write_bytes(_png_bytes(good)[:40])
    with pytest.raises(ValueError, match="corrupt|truncated|readable"):
        load_image(tmp_path / "trunc.png")


def _png_bytes(arr):
    import io

    b = io.BytesIO()
    Image.fromarray(arr).save(b, format="PNG")
    return b.getvalue()


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "CMYK", "I;16", "LA", "1"])
def test_odd_modes_become_rgb(mode):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (9, 11, 3), dtype=np.uint8))
    img = (
        base.convert(mode)
        if mode != "I;16"
        else Image.fromarray((rng.random((9, 11)) * 65535).astype(np.uint16))
    )
    out = load_image(img)
    assert out.mode == "RGB" and out.size == (11, 9)
    if mode == "RGBA":  # transparent pixels show white
        rgba = base.convert("RGBA")
        rgba.putalpha(0)
        assert np.all(np.asarray(load_image(rgba)) == 255)


def test_bad_call_arguments(qwen):
    model, processor = qwen
    for fn in (explain, explain_fast):
        with pytest.raises(ValueError, match="prompt"):
            fn(model, processor, photo(), "   ")
        with pytest.raises(TypeError, match="prompt"):
            fn(model, processor, photo(), None)
        with pytest.raises(ValueError, match="out of range"):
            fn(model, processor, photo(), "Hi?", answer=[1, 10**7])
        with pytest.raises(TypeError, match="answer"):
            fn(model, processor, photo(), "Hi?", answer=[1.5])
        with pytest.raises(TypeError, match="config"):
            fn(model, processor, photo(), "Hi?", config={"method": "tam"})
    with pytest.raises(ValueError, match="model_type|supported"):
        explain(torch.nn.Linear(2, 2), processor, photo(), "Hi?")
    exp = explain_fast(model, processor, photo(), "Hi?", answer="The cat.")
    with pytest.raises(IndexError, match="out of range"):
        exp.overlay(len(exp.answer_ids))


def test_all_zero_maps_stay_zero_never_nan(qwen):
    """A model whose unembedding is zero gives zero maps everywhere, for every preset, no NaN."""
    model, processor = tiny_model("qwen2_vl", seed=1)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    for method in ("msea-arc", "tam", "logit-lens"):
        for fn in (explain, explain_fast):
            exp = fn(
                model,
                processor,
                photo(112, 112),
                "Hi?",
                answer=[5, 6, 7],
                config=ExplainConfig(method=method),
            )
            assert not torch.isnan(exp.maps).any()
            assert torch.equal(exp.maps, torch.zeros_like(exp.maps))


def test_base_vocab_id_chunked_equals_reference_including_ties():
    from mmx_fast.ops.rankings import rankings_base_torch as base_vocab_id_chunked
    from mmx_fast.reference import base_vocab_id

    g = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.bfloat16):
        w = torch.randn(1000, 16, generator=g).to(dtype)
        z = torch.randn(7, 16, generator=g).to(dtype)
        for chunk in (64, 333, 4096):
            assert base_vocab_id_chunked(z, w, chunk=chunk) == base_vocab_id(z, w)
    w = torch.randint(-2, 3, (500, 8), generator=g).float()
    z = torch.ones(3, 8)
    k = base_vocab_id(z, w)
    w[400] = w[k]  # an exact tie in a later chunk: the smaller id wins
    assert base_vocab_id_chunked(z, w, chunk=100) == base_vocab_id(z, w) == k


def test_view_box_places_overlays_on_the_region_the_grid_shows(tmp_path):
    """LLaVA's processor centre-crops: its grid shows the central square of a wide photo, and overlays /
    reports put the map there; Qwen2-VL sees the whole image."""
    wide = photo(200, 100)
    model, processor = tiny_model("llava", seed=0)
    for fn in (explain, explain_fast):
        exp = fn(model, processor, wide, "What is in the image?", answer="A red house.")
        assert exp.view_box == pytest.approx((0.25, 0.0, 0.75, 1.0), abs=0.02)
        assert exp.box_pixels() == (50, 0, 150, 100)
        over = np.asarray(exp.overlay(0))
        src = np.asarray(wide)
        assert np.array_equal(over[:, :50], src[:, :50]) and np.array_equal(over[:, 150:], src[:, 150:])
        assert not np.array_equal(over[:, 50:150], src[:, 50:150])
    exp.to_html(tmp_path / "r.html")
    assert "left: 25.0000%" in (tmp_path / "r.html").read_text()
    qm, qp = tiny_model("qwen2_vl", seed=0)
    assert explain_fast(qm, qp, wide, "What is in the image?", answer="A red house.").view_box is None
