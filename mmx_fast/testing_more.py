"""Tiny models of the model types added by issue 25, in ``mmx_fast.testing``'s builder style (one
``_build_<type>(family, tok, image_size) -> (config, model class, processor)`` each, plus the family's special
tokens and chat template). ``mmx_fast.testing`` registers them (``register``); they are meant to become
declarations of ``mmx_fast.tiny`` (issue 24) one for one.

- Idefics3 (``Idefics3ForConditionalGeneration``): SmolVLM's geometry (SmolVLM is Idefics3 with its own
  processor): tiles of 56 px + the global image, pixel shuffle 2; template ``<|im_start|>User:<image>TEXT
  <end_of_utterance>\\nAssistant:``.
- LLaVA-NeXT-Video (``LlavaNextVideoForConditionalGeneration``): images as LLaVA-NeXT (any-res tiles of 56 px);
  LLaVA-NeXT's template.
- GLM-4.1V / GLM-4.5V / GLM-4.6V (``Glm4vFor...``, ``Glm4vMoeFor...``, ``Glm46VFor...``): dynamic resolution as
  Qwen2-VL (patch 14, merge 2; 56x56 .. 224x224 pixels); template ``[gMASK]<sop><|user|>\\n<|begin_of_image|>
  <|image|><|end_of_image|>TEXT<|assistant|>\\n``; the MoE decoder has 4 experts, 2 per token.
- Qwen3.5 / Qwen3.5-MoE (``Qwen3_5For...``, ``Qwen3_5MoeFor...``): Qwen3-VL's vision and processor, a hybrid
  decoder (one gated-delta-net linear-attention layer, one full-attention layer); Qwen2-VL's template.
"""

from __future__ import annotations

from typing import Any

_HIDDEN, _HEADS, _KV_HEADS, _INTERMEDIATE, _LAYERS = 64, 4, 2, 128, 2
_VISION_WIDTH, _VISION_LAYERS, _VISION_HEADS, _PATCH = 32, 2, 2, 14

SPECIALS: dict[str, dict[str, Any]] = {}
TEMPLATES: dict[str, str | None] = {}
VARIANT_OF: dict[str, str] = {}  # a new model type whose tokens and template are an existing family's

VARIANT_OF.update(
    idefics3="smolvlm", llava_next_video="llava_next", qwen3_5="qwen2_vl", qwen3_5_moe="qwen2_vl"
)

SPECIALS["glm4v"] = {
    "tokens": [
        "<|endoftext|>",
        "[gMASK]",
        "<sop>",
        "<|user|>",
        "<|assistant|>",
        "<|begin_of_image|>",
        "<|end_of_image|>",
        "<|image|>",
        "<|begin_of_video|>",
        "<|end_of_video|>",
        "<|video|>",
    ],
    "named": {"eos_token": "<|user|>", "pad_token": "<|endoftext|>"},
    "extra": {"image_token": "<|image|>", "video_token": "<|video|>"},
    "eos": "<|user|>",
    "bos": None,
}
TEMPLATES["glm4v"] = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif part['type'] == 'video' %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
VARIANT_OF.update(glm4v_moe="glm4v", glm46v="glm4v")


def _text_kwargs(vocab_size: int, tok) -> dict[str, Any]:
    return dict(
        vocab_size=vocab_size,
        hidden_size=_HIDDEN,
        intermediate_size=_INTERMEDIATE,
        num_hidden_layers=_LAYERS,
        num_attention_heads=_HEADS,
        num_key_value_heads=_KV_HEADS,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
    )


def _qwen_image_processor(
    image_size: int | None, cls_name: str = "Qwen2VLImageProcessorPil", temporal_patch_size: int = 2
):
    import transformers

    max_side = image_size or 224
    cls = getattr(transformers, cls_name)
    return cls(
        min_pixels=56 * 56,
        max_pixels=max_side * max_side,
        patch_size=_PATCH,
        merge_size=2,
        temporal_patch_size=temporal_patch_size,
    )


def build_idefics3(family: str, tok, image_size: int | None):
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    from .loading import accept_missing_video_processor

    size = image_size or 56
    vision = Idefics3VisionConfig(
        hidden_size=_VISION_WIDTH,
        intermediate_size=2 * _VISION_WIDTH,
        num_hidden_layers=_VISION_LAYERS,
        num_attention_heads=_VISION_HEADS,
        image_size=size,
        patch_size=_PATCH,
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=LlamaConfig(**_text_kwargs(len(tok), tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        tie_word_embeddings=False,
    )
    image_processor = Idefics3ImageProcessorPil(
        size={"longest_edge": 2 * size},
        max_image_size={"longest_edge": size},
        do_image_splitting=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = accept_missing_video_processor(Idefics3Processor)(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_len=(size // _PATCH) ** 2 // 4,
        chat_template=TEMPLATES_OF(family),
    )
    return config, Idefics3ForConditionalGeneration, processor


def build_llava_next_video(family: str, tok, image_size: int | None):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextImageProcessorPil,
        LlavaNextVideoConfig,
        LlavaNextVideoForConditionalGeneration,
        LlavaNextVideoProcessor,
    )

    from .loading import accept_missing_video_processor

    size = image_size or 56
    pinpoints = [[size * a // 56, size * b // 56] for a, b in [[56, 56], [56, 112], [112, 56], [112, 112]]]
    vision = CLIPVisionConfig(
        hidden_size=_VISION_WIDTH,
        intermediate_size=2 * _VISION_WIDTH,
        projection_dim=_VISION_WIDTH,
        num_hidden_layers=_VISION_LAYERS,
        num_attention_heads=_VISION_HEADS,
        image_size=size,
        patch_size=_PATCH,
    )
    config = LlavaNextVideoConfig(
        vision_config=vision,
        text_config=LlamaConfig(**_text_kwargs(len(tok), tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        spatial_pool_stride=2,
        tie_word_embeddings=False,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=pinpoints,
    )
    processor = accept_missing_video_processor(LlavaNextVideoProcessor)(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=None,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TEMPLATES_OF(family),
    )
    return config, LlavaNextVideoForConditionalGeneration, processor


def build_glm4v(family: str, tok, image_size: int | None):
    import transformers

    from .loading import accept_missing_video_processor

    vision = dict(
        depth=_VISION_LAYERS,
        hidden_size=_VISION_WIDTH,
        out_hidden_size=_HIDDEN,
        intermediate_size=2 * _VISION_WIDTH,
        num_heads=_VISION_HEADS,
        patch_size=_PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
        image_size=112,
    )
    text = _text_kwargs(len(tok), tok)
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
        "partial_rotary_factor": 1.0,
    }
    if family == "glm4v_moe":
        text.update(
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=_INTERMEDIATE // 2,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            head_dim=_HIDDEN // _HEADS,
        )
    ids = dict(
        image_token_id=tok.convert_tokens_to_ids("<|image|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video|>"),
        image_start_token_id=tok.convert_tokens_to_ids("<|begin_of_image|>"),
        image_end_token_id=tok.convert_tokens_to_ids("<|end_of_image|>"),
        video_start_token_id=tok.convert_tokens_to_ids("<|begin_of_video|>"),
        video_end_token_id=tok.convert_tokens_to_ids("<|end_of_video|>"),
    )
    names = {
        "glm4v": ("Glm4vConfig", "Glm4vForConditionalGeneration", "Glm4vProcessor"),
        "glm4v_moe": ("Glm4vMoeConfig", "Glm4vMoeForConditionalGeneration", "Glm4vProcessor"),
        "glm46v": ("Glm46VConfig", "Glm46VForConditionalGeneration", "Glm46VProcessor"),
    }[family]
    config_cls, model_cls, proc_cls = (getattr(transformers, n) for n in names)
    config = config_cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    processor = accept_missing_video_processor(proc_cls)(
        image_processor=_qwen_image_processor(image_size, "Glm4vImageProcessorPil"),
        tokenizer=tok,
        video_processor=None,
        chat_template=TEMPLATES_OF(family),
    )
    return config, model_cls, processor


def build_qwen3_5(family: str, tok, image_size: int | None):
    import transformers
    from transformers import Qwen3VLProcessor

    from .loading import accept_missing_video_processor

    vision = dict(
        depth=_VISION_LAYERS,
        hidden_size=_VISION_WIDTH,
        out_hidden_size=_HIDDEN,
        intermediate_size=2 * _VISION_WIDTH,
        num_heads=_VISION_HEADS,
        patch_size=_PATCH,
        spatial_merge_size=2,
        temporal_patch_size=2,
        num_position_embeddings=256,
    )
    text = _text_kwargs(len(tok), tok)
    text.update(
        head_dim=_HIDDEN // _HEADS,
        layer_types=["linear_attention", "full_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=2,
        linear_key_head_dim=16,
        linear_value_head_dim=16,
        linear_conv_kernel_dim=4,
    )
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
        "partial_rotary_factor": 1.0,
    }
    if family == "qwen3_5_moe":
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=_INTERMEDIATE // 2)
        text["shared_expert_intermediate_size"] = _INTERMEDIATE // 2
        config_cls, model_cls = transformers.Qwen3_5MoeConfig, transformers.Qwen3_5MoeForConditionalGeneration
    else:
        config_cls, model_cls = transformers.Qwen3_5Config, transformers.Qwen3_5ForConditionalGeneration
    ids = dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    config = config_cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    processor = accept_missing_video_processor(Qwen3VLProcessor)(
        image_processor=_qwen_image_processor(image_size),
        tokenizer=tok,
        video_processor=None,
        chat_template=TEMPLATES_OF(family),
    )
    return config, model_cls, processor


SPECIALS["aya_vision"] = {
    "tokens": [
        "<PAD>",
        "<BOS_TOKEN>",
        "<|END_OF_TURN_TOKEN|>",
        "<|START_OF_TURN_TOKEN|>",
        "<|USER_TOKEN|>",
        "<|CHATBOT_TOKEN|>",
        "<image>",
        "<|START_OF_IMG|>",
        "<|END_OF_IMG|>",
        "<|IMG_PATCH|>",
        "<|IMG_LINE_BREAK|>",
        "TILE",
        "TILE_GLOBAL",
    ]
    + [f"TILE_{k}" for k in range(1, 5)],
    "named": {"bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>", "pad_token": "<PAD>"},
    "extra": {"image_token": "<image>"},
    "eos": "<|END_OF_TURN_TOKEN|>",
    "bos": None,  # the chat template writes <BOS_TOKEN>
}
TEMPLATES["aya_vision"] = (
    "<BOS_TOKEN>{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{{ '<|USER_TOKEN|>' if message['role'] == 'user' else '<|CHATBOT_TOKEN|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)


def build_aya_vision(family: str, tok, image_size: int | None):
    """SigLIP tiles of ``image_size`` (default 56) px, patch 14, pixel shuffle 2 (4 tokens per tile); at most 4
    tiles + the global tile (GotOcr2's tiling, as InternVL's tiny ``internvl_tiled``)."""
    from transformers import (
        AyaVisionConfig,
        AyaVisionForConditionalGeneration,
        AyaVisionProcessor,
        Cohere2Config,
        GotOcr2ImageProcessorPil,
        SiglipVisionConfig,
    )

    size = image_size or 56
    vision = SiglipVisionConfig(
        hidden_size=_VISION_WIDTH,
        intermediate_size=2 * _VISION_WIDTH,
        num_hidden_layers=_VISION_LAYERS,
        num_attention_heads=_VISION_HEADS,
        image_size=size,
        patch_size=_PATCH,
    )
    text = Cohere2Config(**_text_kwargs(len(tok), tok), head_dim=_HIDDEN // _HEADS, sliding_window=512)
    config = AyaVisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<|IMG_PATCH|>"),
        downsample_factor=2,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": size, "width": size},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = AyaVisionProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=_PATCH,
        img_size=size,
        downsample_factor=2,
        chat_template=TEMPLATES_OF(family),
    )
    return config, AyaVisionForConditionalGeneration, processor


def build_qwen_style(family: str, tok, image_size: int | None):
    """LLaVA-OneVision-1.5 (RiceViT + a Qwen3 decoder) and EXAONE 4.5 (a Qwen2.5-VL-style vision tower + an EXAONE 4
    decoder): Qwen2-VL's image processor (patch 14, merge 2) and ``Exaone4_5_Processor`` (``<|image_pad|>`` once
    per merged token), Qwen2-VL's template."""
    import transformers

    from .loading import accept_missing_video_processor

    vision: dict[str, Any] = dict(
        depth=_VISION_LAYERS,
        hidden_size=_VISION_WIDTH,
        out_hidden_size=_HIDDEN,
        intermediate_size=2 * _VISION_WIDTH,
        num_heads=_VISION_HEADS,
        patch_size=_PATCH,
        spatial_merge_size=2,
    )
    text = _text_kwargs(len(tok), tok)
    text["head_dim"] = _HIDDEN // _HEADS
    if family == "exaone4_5":
        vision.update(
            temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1], num_key_value_heads=2
        )
        text["model_type"] = "exaone4"
        text["sliding_window"] = 512
        config_cls, model_cls = transformers.Exaone4_5_Config, transformers.Exaone4_5_ForConditionalGeneration
    else:
        text["model_type"] = "qwen3"
        config_cls = transformers.LlavaOnevision15Config
        model_cls = transformers.LlavaOnevision15ForConditionalGeneration
    ids = dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
    )
    if family != "exaone4_5":
        ids.update(
            vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
            vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        )
    config = config_cls(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    # RiceViT embeds one frame per patch (a 2-D convolution): its processor's temporal patch is 1
    processor = accept_missing_video_processor(transformers.Exaone4_5_Processor)(
        image_processor=_qwen_image_processor(
            image_size, temporal_patch_size=2 if family == "exaone4_5" else 1
        ),
        tokenizer=tok,
        video_processor=None,
        chat_template=TEMPLATES_OF(family),
    )
    return config, model_cls, processor


VARIANT_OF.update(llava_onevision1_5="qwen2_vl", exaone4_5="qwen2_vl")


def build_vipllava(family: str, tok, image_size: int | None):
    """ViP-LLaVA: LLaVA-1.5's CLIP input (``image_size``, default 112, centre crop; CLS dropped) with the
    projector reading two vision layers; LLaVA's processor and template."""
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaProcessor,
        VipLlavaConfig,
        VipLlavaForConditionalGeneration,
    )

    size = image_size or 112
    vision = CLIPVisionConfig(
        hidden_size=_VISION_WIDTH,
        intermediate_size=2 * _VISION_WIDTH,
        projection_dim=_VISION_WIDTH,
        num_hidden_layers=_VISION_LAYERS,
        num_attention_heads=_VISION_HEADS,
        image_size=size,
        patch_size=_PATCH,
    )
    config = VipLlavaConfig(
        vision_config=vision,
        text_config=LlamaConfig(**_text_kwargs(len(tok), tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(size // _PATCH) ** 2,
        vision_feature_layers=[-2, -1],
        tie_word_embeddings=False,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ),
        tokenizer=tok,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=TEMPLATES_OF(family),
    )
    return config, VipLlavaForConditionalGeneration, processor


VARIANT_OF.update(vipllava="llava")


def build_paddleocr_vl(family: str, tok, image_size: int | None):
    """PaddleOCR-VL: a NaViT SigLIP (patch 14, 2x2 merge in its projector) and an ERNIE 4.5 decoder;
    its own smart-resize image processor (56x56 .. ``image_size``^2 pixels, default 224); Qwen2-VL's tokens and
    template."""
    from transformers import (
        PaddleOCRVLConfig,
        PaddleOCRVLForConditionalGeneration,
        PaddleOCRVLImageProcessorPil,
        PaddleOCRVLProcessor,
    )

    max_side = image_size or 224
    vision = dict(
        hidden_size=_VISION_WIDTH,
        intermediate_size=2 * _VISION_WIDTH,
        num_hidden_layers=_VISION_LAYERS,
        num_attention_heads=_VISION_HEADS,
        patch_size=_PATCH,
        image_size=112,
        spatial_merge_size=2,
    )
    text = _text_kwargs(len(tok), tok)
    text["head_dim"] = _HIDDEN // _HEADS
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    config = PaddleOCRVLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    image_processor = PaddleOCRVLImageProcessorPil(
        min_pixels=56 * 56,
        max_pixels=max_side * max_side,
        patch_size=_PATCH,
        merge_size=2,
        temporal_patch_size=1,
    )
    processor = PaddleOCRVLProcessor(
        image_processor=image_processor, tokenizer=tok, chat_template=TEMPLATES_OF(family)
    )
    return config, PaddleOCRVLForConditionalGeneration, processor


VARIANT_OF.update(paddleocr_vl="qwen2_vl")


def TEMPLATES_OF(family: str) -> str | None:  # noqa: N802 - filled in by ``register``
    raise RuntimeError("mmx_fast.testing_more.register() was not called")


BUILDERS = {
    "idefics3": build_idefics3,
    "llava_next_video": build_llava_next_video,
    "glm4v": build_glm4v,
    "aya_vision": build_aya_vision,
    "qwen_style": build_qwen_style,
    "vipllava": build_vipllava,
    "paddleocr_vl": build_paddleocr_vl,
}


def register(specials: dict, templates: dict, builders: dict) -> None:
    """Add these families to ``mmx_fast.testing``'s tables (called once, at its import)."""
    global TEMPLATES_OF
    for name, base in VARIANT_OF.items():
        specials.setdefault(name, specials.get(base) or SPECIALS[base])
        templates.setdefault(name, templates.get(base, TEMPLATES.get(base)))
    for name, spec in SPECIALS.items():
        specials.setdefault(name, spec)
    for name, tpl in TEMPLATES.items():
        templates.setdefault(name, tpl)
    qwen3 = builders["qwen3_vl"]  # Qwen3.5 shares Qwen3-VL's adapter (and so its builder name)
    builders.update(BUILDERS)
    builders["qwen3_vl"] = lambda family, tok, size: (
        build_qwen3_5 if family.startswith("qwen3_5") else qwen3
    )(family, tok, size)
    TEMPLATES_OF = templates.__getitem__
