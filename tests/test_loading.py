"""``mmx_fast.load``: save_pretrained folders of every tiny family load offline, without torchvision, and
explain exactly like the in-memory model; dtype follows the checkpoint; the attention choice rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import mmx_fast
from mmx_fast import ExplainConfig, explain_fast
from mmx_fast.loading import (
    ModelLoadError,
    choose_attn_implementation,
    load,
    processor_without_video,
    resolve_dtype,
    resolve_model,
)
from mmx_fast.testing import FAMILIES, tiny_model

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "mmx_fast" / "assets" / "grace_hopper.jpg"
PROMPT = "Who is in the picture?"
ANSWER = "A woman in a navy uniform."
PROCESSOR = {
    "qwen2_vl": "Qwen2VLProcessor",
    "qwen2_5_vl": "Qwen2_5_VLProcessor",
    "llava": "LlavaProcessor",
    "internvl": "InternVLProcessor",
    "qwen3_vl": "Qwen3VLProcessor",
    "qwen3_vl_moe": "Qwen3VLProcessor",
    "gemma3": "Gemma3Processor",
    "paligemma": "PaliGemmaProcessor",
    "internvl_tiled": "InternVLProcessor",
    "llava_next": "LlavaNextProcessor",
    "llava_onevision": "LlavaOnevisionProcessor",
    "smolvlm": "SmolVLMProcessor",
    # issue 25 (tests/test_families_25.py)
    "qwen3_5": "Qwen3VLProcessor",
    "qwen3_5_moe": "Qwen3VLProcessor",
    "idefics3": "Idefics3Processor",
    "llava_next_video": "LlavaNextVideoProcessor",
    "glm4v": "Glm4vProcessor",
    "glm4v_moe": "Glm4vProcessor",
    "glm46v": "Glm46VProcessor",
    "aya_vision": "AyaVisionProcessor",
    "llava_onevision1_5": "Exaone4_5_Processor",
    "exaone4_5": "Exaone4_5_Processor",
    "vipllava": "LlavaProcessor",
    "paddleocr_vl": "PaddleOCRVLProcessor",
}


def save_tiny(family: str, folder: Path, dtype: torch.dtype = torch.float32):
    """A tiny model folder as a user writes it: ``model.save_pretrained(d); processor.save_pretrained(d)``
    (processors built without a video processor, i.e. without torchvision, save as a whole too)."""
    model, processor = tiny_model(family, dtype=dtype)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor


@pytest.fixture(scope="module")
def image():
    return Image.open(PHOTO).convert("RGB").resize((100, 116))


@pytest.mark.parametrize("family", FAMILIES)
def test_load_a_saved_folder_gives_the_in_memory_maps(family, tmp_path, image):
    model, processor = save_tiny(family, tmp_path)
    loaded, loaded_processor = load(str(tmp_path), device="cpu")
    assert type(loaded).__name__ == type(model).__name__
    assert type(loaded_processor).__name__ == PROCESSOR[family]
    assert next(loaded.parameters()).dtype == torch.float32 and not loaded.training
    cfg = ExplainConfig(method="msea-arc")
    want = explain_fast(model, processor, image, PROMPT, answer=ANSWER, config=cfg)
    got = explain_fast(loaded, loaded_processor, image, PROMPT, answer=ANSWER, config=cfg)
    assert got.answer_ids == want.answer_ids and len(got) > 1
    assert want.maps.max() > 0  # a real map, not an empty one
    torch.testing.assert_close(got.maps, want.maps, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["internvl", "smolvlm", "qwen2_vl"])
def test_a_loaded_processor_saves_and_loads_again_bit_identically(family, tmp_path, image, caplog):
    """The loaded processor (built without torchvision) saves as a whole, and the second folder explains like
    the first: the processor's own settings survive (InternVL once came back with 256 image tokens, not 16),
    and loading prints no deprecation warning."""
    first, second = tmp_path / "first", tmp_path / "second"
    model, _ = save_tiny(family, first)
    with caplog.at_level("WARNING"):
        loaded, processor = load(str(first), device="cpu")
    assert not [r for r in caplog.records if "deprecated" in r.getMessage()]
    loaded.save_pretrained(second)
    processor.save_pretrained(second)
    assert (second / "processor_config.json").is_file()
    again, again_processor = load(str(second), device="cpu")
    cfg = ExplainConfig(method="msea-arc")
    want = explain_fast(loaded, processor, image, PROMPT, answer=ANSWER, config=cfg)
    got = explain_fast(again, again_processor, image, PROMPT, answer=ANSWER, config=cfg)
    assert want.maps.max() > 0 and got.grid == want.grid
    torch.testing.assert_close(got.maps, want.maps, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["qwen2_vl", "internvl"])
def test_processor_without_video_needs_no_torchvision(family, tmp_path, image):
    _, processor = save_tiny(family, tmp_path)
    built = processor_without_video(str(tmp_path), family)
    assert type(built).__name__ == PROCESSOR[family] and built.video_processor is None
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    text = processor.apply_chat_template(msgs, add_generation_prompt=True)
    assert built.apply_chat_template(msgs, add_generation_prompt=True) == text
    a, b = (
        processor(images=image, text=text, return_tensors="pt"),
        built(images=image, text=text, return_tensors="pt"),
    )
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_bf16_checkpoint_loads_as_bf16_also_on_cpu(tmp_path):
    save_tiny("llava", tmp_path, dtype=torch.bfloat16)
    assert resolve_model(str(tmp_path)).checkpoint_dtype == "bfloat16"
    model, _ = load(str(tmp_path), device="cpu")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model, _ = load(str(tmp_path), device="cpu", dtype="float32")
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_device_map_passes_through(tmp_path, monkeypatch):
    import transformers

    save_tiny("llava", tmp_path)
    seen = {}
    real = transformers.AutoModelForImageTextToText.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        kwargs.pop("device_map")
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageTextToText, "from_pretrained", spy)
    load(str(tmp_path), device_map={"": "cpu"})
    assert seen["device_map"] == {"": "cpu"} and seen["local_files_only"] is True
    with pytest.raises(ValueError, match="not both"):
        load(str(tmp_path), device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="only for checkpoints"):
        load("tiny:llava", device_map="auto")


def test_tiny_spec_and_errors(tmp_path):
    model, processor = load("tiny:internvl", device="cpu")
    assert type(processor).__name__ == "InternVLProcessor" and next(model.parameters()).dtype == torch.float32
    assert mmx_fast.load is load
    with pytest.raises(ModelLoadError, match=r"unsupported tiny model family 'gpt2'.*tiny:qwen2_vl"):
        load("tiny:gpt2")
    with pytest.raises(ModelLoadError, match="no such folder"):
        load(str(tmp_path / "nope" / "x"))
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load(str(tmp_path))
    with pytest.raises(ValueError, match=r"dtype='float64' is not allowed"):
        load("tiny:llava", dtype="float64")
    with pytest.raises(ValueError, match=r"attn_implementation='flash' is not allowed"):
        load("tiny:llava", attn_implementation="flash")


def test_dtype_auto_follows_the_checkpoint():
    assert resolve_dtype("auto", "cpu", "bfloat16") is torch.bfloat16
    assert resolve_dtype("auto", "cpu", "float16") is torch.float16
    assert resolve_dtype("auto", "cuda", "float32") is torch.float32
    assert resolve_dtype("auto", "cpu", None) is torch.float32
    assert resolve_dtype("bfloat16", "cpu", "float32") is torch.bfloat16
    assert resolve_dtype(torch.float16, "cpu", None) is torch.float16


@pytest.mark.parametrize(
    "flash, device, dtype, want",
    [
        (True, "cuda", torch.bfloat16, "flash_attention_2"),
        (True, "cuda", torch.float16, "flash_attention_2"),
        (True, "cuda", torch.float32, "sdpa"),  # flash-attn has no float32 kernels
        (True, "cpu", torch.bfloat16, "sdpa"),
        (False, "cuda", torch.bfloat16, "sdpa"),
        (False, "cpu", torch.float32, "sdpa"),
    ],
)
def test_attn_auto_choice(flash, device, dtype, want):
    assert choose_attn_implementation("auto", device_type=device, dtype=dtype, flash_attn=flash) == want


def test_attn_explicit_choice_is_kept():
    for name in ("sdpa", "eager", "flash_attention_2"):
        assert (
            choose_attn_implementation(name, device_type="cpu", dtype=torch.float32, flash_attn=False) == name
        )
