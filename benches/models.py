"""Models and inputs for the benchmarks: real-architecture Qwen2-VL with Qwen2-VL-2B's real dimensions.

``qwen2vl_2b_like`` builds ``Qwen2VLForConditionalGeneration`` from a config with Qwen2-VL-2B-Instruct's
dimensions (text hidden 1536, MLP 8960, 12 heads / 2 KV heads, head_dim 128, M-RoPE sections
[16, 24, 24], vocabulary 151,936, tied embeddings; vision width 1280, 16 heads, patch 14, merge 2) and
random weights, but with few layers (``text_layers`` / ``vision_depth``), so that a CPU can run it. The
unembedding, the stages A-C work on, has the real size (151,936 x 1536), whatever the layer count.

The tokenizer and processor are the project's offline tiny ones (``mmx_fast.testing``): the tokenizer knows
~1,200 ids, the model's vocabulary is padded to 151,936 (ids the tokenizer does not know decode to "").

Generation is made deterministic in length: the unembedding rows of every special token (EOS included) are
zeroed, so greedy decoding never stops early and never emits template or image tokens; ``generate`` with
``max_new_tokens=T`` always returns T tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

# Qwen2-VL-2B-Instruct (config.json of the hub model), text and vision.
QWEN2VL_2B = dict(
    hidden_size=1536,
    intermediate_size=8960,
    num_hidden_layers=28,
    num_attention_heads=12,
    num_key_value_heads=2,
    vocab_size=151936,
    rope_theta=1_000_000.0,
    mrope_section=[16, 24, 24],
    rms_norm_eps=1e-6,
    vision_depth=32,
    vision_embed_dim=1280,
    vision_heads=16,
)

# Model shapes the stage benchmarks use: (vocabulary, hidden size).
MODEL_SHAPES = {
    "llava": (32064, 4096),  # LLaVA-1.5-7B (Vicuna-7B)
    "qwen2vl": (151936, 1536),  # Qwen2-VL-2B
}

PROMPT = "Describe the picture in detail. What color is the car on the left side of the street?"


def qwen2vl_2b_like(
    text_layers: int = 2,
    vision_depth: int = 2,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    max_image_side: int = 1288,
    seed: int = 0,
    attn_implementation: str = "sdpa",
):
    """(model, processor): Qwen2-VL with Qwen2-VL-2B's dimensions, ``text_layers`` decoder layers and
    ``vision_depth`` vision blocks, random weights (seeded). ``max_image_side`` bounds the processor's
    ``max_pixels`` (side**2); a 224x224 image gives 8x8 = 64 visual tokens, 640x480 gives 17x23 = 391."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from mmx_fast.testing import set_greedy_generation, tiny_processor

    processor = tiny_processor("qwen2_vl", image_size=max_image_side)
    tok = processor.tokenizer
    q = QWEN2VL_2B
    text = dict(
        vocab_size=q["vocab_size"],
        hidden_size=q["hidden_size"],
        intermediate_size=q["intermediate_size"],
        num_hidden_layers=text_layers,
        num_attention_heads=q["num_attention_heads"],
        num_key_value_heads=q["num_key_value_heads"],
        max_position_embeddings=32768,
        rms_norm_eps=q["rms_norm_eps"],
        tie_word_embeddings=True,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": q["rope_theta"],
            "mrope_section": list(q["mrope_section"]),
        },
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
    )
    vision = dict(
        depth=vision_depth,
        embed_dim=q["vision_embed_dim"],
        hidden_size=q["hidden_size"],
        num_heads=q["vision_heads"],
        mlp_ratio=4,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
    )
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        tie_word_embeddings=True,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):
            model = Qwen2VLForConditionalGeneration(config)
    model = model.to(dtype).eval()
    with torch.no_grad():
        special = sorted(set(tok.added_tokens_decoder) | set(tok.all_special_ids))
        model.get_output_embeddings().weight[special] = 0
    set_greedy_generation(model, tok, tok.eos_token_id)
    return model, processor


def bench_image(width: int = 224, height: int = 224, seed: int = 0) -> Image.Image:
    """A deterministic RGB test image (smooth gradients plus a few blocks, so the vision tower sees
    structure); any size."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [
            127 + 100 * np.sin(x / max(width, 1) * 2 * math.pi),
            127 + 100 * np.cos(y / max(height, 1) * 3 * math.pi),
            127 + 60 * np.sin((x + y) / max(width + height, 1) * 5 * math.pi),
        ],
        -1,
    )
    for _ in range(4):
        x0, y0 = int(rng.integers(0, max(1, width // 2))), int(rng.integers(0, max(1, height // 2)))
        img[y0 : y0 + height // 4, x0 : x0 + width // 4] = rng.integers(0, 255, 3)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")


def scale_token_counts(n1: int, scales=(0.5, 0.75, 1.0)) -> list[int]:
    """Visual tokens per scale for ``n1`` tokens at scale 1.0 (~ alpha^2 n1 each; about 1.81 n1 in all
    for the default scales)."""
    return [max(1, round(s * s * n1)) for s in scales]


def grid_for(n: int) -> tuple[int, int]:
    """A near-square (h, w) grid with h * w close to n (h <= w, aspect <= 4:3 where possible)."""
    h = max(1, int(round(math.sqrt(n * 3 / 4))))
    w = max(1, int(round(n / h)))
    return h, w
