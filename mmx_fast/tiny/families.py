"""The tiny models, one declaration per family: the ONE place to add a tiny model.

Adding a family ``foo`` (its adapter in ``mmx_fast/adapters/foo.py`` and its line in
``mmx_fast/adapters/registry.ADAPTERS`` come first):

1. its tokenizer: a ``Tokens`` with the real model's special tokens (copy them from the checkpoint's
   ``tokenizer_config.json``; the one the generation stops at is ``end_of_turn``);
2. its chat template: a Jinja string mimicking the real one (or ``None`` where the family has none);
3. a ``TinyModel`` entry in ``DECLARATIONS``: the transformers model class, ``Call``s of its config and
   processor classes with the real checkpoint's settings shrunk to the tiny shapes (``TEXT``, ``VISION``,
   ``PATCH``), token ids as ``Token(...)`` and everything that depends on the image size as ``Size(...)``
   (placeholders: ``mmx_fast/tiny/declare.py``).

Then ``tests/test_loading.py`` runs every declared model (``tiny:foo``; a saved folder loads and explains
exactly like the in-memory model) and ``tests/test_adapters.py`` checks every registry model type has a
declaration; add ``foo`` to the family list of ``tests/test_families.py`` (``NEW``: single view) or
``tests/test_tiled.py`` (``TILED``) for reference == fast on every preset. Keep the shapes tiny: a test builds
each model in well under a second.
"""

from __future__ import annotations

from .declare import (
    HEADS,
    HIDDEN,
    PATCH,
    SIZE,
    SQUARE,
    TEXT,
    VISION_HEADS,
    VISION_LAYERS,
    VISION_WIDTH,
    Call,
    Merge,
    Size,
    TinyModel,
    Token,
    Tokens,
)

# The vision tower's shape in the config classes that share these names (CLIP, SigLIP, InternViT, Idefics3).
VISION = dict(
    hidden_size=VISION_WIDTH,
    intermediate_size=2 * VISION_WIDTH,
    num_hidden_layers=VISION_LAYERS,
    num_attention_heads=VISION_HEADS,
    image_size=SIZE,
    patch_size=PATCH,
)
IMAGENET_MEAN = [0.485, 0.456, 0.406]  # as the real InternVL processors use
IMAGENET_STD = [0.229, 0.224, 0.225]
INTERNVL_MAX_TILES = 4  # internvl_tiled: at most 4 tiles (+ thumbnail)
ANYRES_PINPOINTS = Size(  # LLaVA-NeXT / OneVision: at most 2x2 tiles of the base size (56 px by default)
    lambda s: [[s * a, s * b] for a, b in ((1, 1), (1, 2), (2, 1), (2, 2))]
)

# --------------------------------------------------------------------------------------------------------
# tokenizers
QWEN_TOKENS = Tokens(
    special=(
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|vision_pad|>",
        "<|image_pad|>",
        "<|video_pad|>",
    ),
    named={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    extra={
        "image_token": "<|image_pad|>",
        "video_token": "<|video_pad|>",
        "vision_bos_token": "<|vision_start|>",
        "vision_eos_token": "<|vision_end|>",
    },
    end_of_turn="<|im_end|>",
)
LLAVA_TOKENS = Tokens(
    special=("<unk>", "<s>", "</s>", "<image>", "<pad>"),
    named={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
    extra={"image_token": "<image>"},
    end_of_turn="</s>",
    bos="<s>",
)
INTERNVL_TOKENS = Tokens(
    special=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
    named={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    extra={
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    },
    end_of_turn="<|im_end|>",
    padding_side="left",
)
GEMMA3_TOKENS = Tokens(
    special=(
        "<pad>",
        "<eos>",
        "<bos>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ),
    named={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    extra={
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    },
    end_of_turn="<end_of_turn>",  # the chat template writes <bos>
)
PALIGEMMA_TOKENS = Tokens(
    special=("<pad>", "<eos>", "<bos>", "<image>"),
    named={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    extra={"image_token": "<image>"},
    end_of_turn="<eos>",  # the processor writes <bos> after the image tokens
)
ONEVISION_TOKENS = Tokens(
    special=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"),
    named={"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    extra={"image_token": "<image>", "video_token": "<video>"},
    end_of_turn="<|im_end|>",
    padding_side="left",
)
SMOLVLM_TOKENS = Tokens(
    special=(
        "<|endoftext|>",
        "<|im_start|>",
        "<end_of_utterance>",
        "<image>",
        "<fake_token_around_image>",
        "<global-img>",
        "<video>",
        *(f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)),
    ),
    named={"eos_token": "<end_of_utterance>", "pad_token": "<|endoftext|>"},
    extra={
        "image_token": "<image>",
        "fake_image_token": "<fake_token_around_image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
        "video_token": "<video>",
    },
    end_of_turn="<end_of_utterance>",
)

# --------------------------------------------------------------------------------------------------------
# chat templates (Jinja) mimicking the real ones; ``content`` may be a string or a list of typed parts
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}IMAGE_PLACEHOLDER"
    "{% elif part['type'] == 'video' %}VIDEO_PLACEHOLDER"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_TEMPLATE = CHATML_TEMPLATE.replace(
    "IMAGE_PLACEHOLDER", "<|vision_start|><|image_pad|><|vision_end|>"
).replace("VIDEO_PLACEHOLDER", "<|vision_start|><|video_pad|><|vision_end|>")
INTERNVL_TEMPLATE = CHATML_TEMPLATE.replace("IMAGE_PLACEHOLDER", "<IMG_CONTEXT>\n").replace(
    "VIDEO_PLACEHOLDER", "<video>\n"
)
ONEVISION_TEMPLATE = CHATML_TEMPLATE.replace("IMAGE_PLACEHOLDER", "<image>\n")
LLAVA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string "
    "else message['content'][0]['text'] }}\n"
    "{% else %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "{% if message['role'] == 'assistant' %}</s>{% else %} {% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
LLAVA_NEXT_TEMPLATE = (  # Mistral-style, as llava-v1.6-mistral
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n{% endif %}{% endfor %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}"
    "{% endif %} [/INST]"
    "{% else %}{{ message['content'] if message['content'] is string else message['content'][0]['text'] }}</s>"
    "{% endif %}"
    "{% endfor %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<start_of_image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
SMOLVLM_TEMPLATE = (  # SmolVLM's own shape
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

# --------------------------------------------------------------------------------------------------------
# shared pieces of the declarations
QWEN_IDS = dict(
    image_token_id=Token("<|image_pad|>"),
    video_token_id=Token("<|video_pad|>"),
    vision_start_token_id=Token("<|vision_start|>"),
    vision_end_token_id=Token("<|vision_end|>"),
)
QWEN_IMAGE_PROCESSOR = Call(  # clamps to [56*56, image_size**2] pixels; one token per 28x28 after merging
    "Qwen2VLImageProcessorPil",
    min_pixels=56 * 56,
    max_pixels=Size(lambda s: s * s),
    patch_size=PATCH,
    merge_size=2,
    temporal_patch_size=2,
)
QWEN2_VL_VISION = dict(
    depth=VISION_LAYERS,
    embed_dim=VISION_WIDTH,
    hidden_size=HIDDEN,
    num_heads=VISION_HEADS,
    mlp_ratio=2,
    in_channels=3,
    patch_size=PATCH,
    spatial_merge_size=2,
    temporal_patch_size=2,
)
QWEN3_VISION = dict(
    depth=VISION_LAYERS,
    hidden_size=VISION_WIDTH,
    out_hidden_size=HIDDEN,
    intermediate_size=2 * VISION_WIDTH,
    num_heads=VISION_HEADS,
    patch_size=PATCH,
    spatial_merge_size=2,
    temporal_patch_size=2,
    num_position_embeddings=256,
    deepstack_visual_indexes=[0],  # DeepStack on decoder layer 0
)
QWEN3_TEXT = Merge(
    TEXT,
    head_dim=HIDDEN // HEADS,
    rope_parameters={
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    },
)
CLIP_VISION = Call("CLIPVisionConfig", VISION, projection_dim=VISION_WIDTH)
INTERNVL_SEQ = Size(lambda s: (s // PATCH) ** 2 // 4)  # pixel shuffle 0.5


def _internvl(name: str, image_size: int, tiled: bool, doc: str) -> TinyModel:
    return TinyModel(
        name,
        model_type="internvl",
        model="InternVLForConditionalGeneration",
        config=Call(
            "InternVLConfig",
            vision_config=Call("InternVLVisionConfig", VISION),
            text_config=Call("Qwen2Config", TEXT),
            image_token_id=Token("<IMG_CONTEXT>"),
            image_seq_length=INTERNVL_SEQ,
            downsample_ratio=0.5,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
        ),
        processor=Call(
            "InternVLProcessor",
            image_processor=Call(
                "GotOcr2ImageProcessorPil",
                size=SQUARE,
                crop_to_patches=tiled,
                min_patches=1,
                max_patches=INTERNVL_MAX_TILES,
                image_mean=IMAGENET_MEAN,
                image_std=IMAGENET_STD,
            ),
            image_seq_length=INTERNVL_SEQ,
        ),
        tokens=INTERNVL_TOKENS,
        chat_template=INTERNVL_TEMPLATE,
        image_size=image_size,
        doc=doc,
    )


def _qwen3(name: str, config: str, model: str, text, doc: str) -> TinyModel:
    return TinyModel(
        name,
        model=model,
        config=Call(config, text_config=text, vision_config=QWEN3_VISION, **QWEN_IDS),
        processor=Call("Qwen3VLProcessor", image_processor=QWEN_IMAGE_PROCESSOR),
        tokens=QWEN_TOKENS,
        chat_template=QWEN_TEMPLATE,
        image_size=224,
        doc=doc,
    )


# --------------------------------------------------------------------------------------------------------
# issue 25's model types (tests/test_families_25.py)
GLM_TOKENS = Tokens(
    special=(
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
    ),
    named={"eos_token": "<|user|>", "pad_token": "<|endoftext|>"},
    extra={"image_token": "<|image|>", "video_token": "<|video|>"},
    end_of_turn="<|user|>",
)
GLM_TEMPLATE = (
    "[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif part['type'] == 'video' %}<|begin_of_video|><|video|><|end_of_video|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
AYA_TOKENS = Tokens(
    special=(
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
        *(f"TILE_{k}" for k in range(1, 5)),
    ),
    named={"bos_token": "<BOS_TOKEN>", "eos_token": "<|END_OF_TURN_TOKEN|>", "pad_token": "<PAD>"},
    extra={"image_token": "<image>"},
    end_of_turn="<|END_OF_TURN_TOKEN|>",
)
AYA_TEMPLATE = (  # Cohere 2's turns; the chat template writes <BOS_TOKEN>
    "<BOS_TOKEN>{% for message in messages %}<|START_OF_TURN_TOKEN|>"
    "{{ '<|USER_TOKEN|>' if message['role'] == 'user' else '<|CHATBOT_TOKEN|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|END_OF_TURN_TOKEN|>{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)
QWEN_ROPE = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
GLM_VISION = dict(
    depth=VISION_LAYERS,
    hidden_size=VISION_WIDTH,
    out_hidden_size=HIDDEN,
    intermediate_size=2 * VISION_WIDTH,
    num_heads=VISION_HEADS,
    patch_size=PATCH,
    spatial_merge_size=2,
    temporal_patch_size=2,
    image_size=112,
)
GLM_IDS = dict(
    image_token_id=Token("<|image|>"),
    video_token_id=Token("<|video|>"),
    image_start_token_id=Token("<|begin_of_image|>"),
    image_end_token_id=Token("<|end_of_image|>"),
    video_start_token_id=Token("<|begin_of_video|>"),
    video_end_token_id=Token("<|end_of_video|>"),
)
GLM_TEXT = Merge(TEXT, rope_parameters={**QWEN_ROPE, "partial_rotary_factor": 1.0})
QWEN35_VISION = {k: v for k, v in QWEN3_VISION.items() if k != "deepstack_visual_indexes"}
QWEN35_TEXT = Merge(  # one gated delta-net (linear attention) layer, then one full-attention layer
    TEXT,
    head_dim=HIDDEN // HEADS,
    layer_types=["linear_attention", "full_attention"],
    linear_num_key_heads=2,
    linear_num_value_heads=2,
    linear_key_head_dim=16,
    linear_value_head_dim=16,
    linear_conv_kernel_dim=4,
    rope_parameters={**QWEN_ROPE, "mrope_interleaved": True, "partial_rotary_factor": 1.0},
)
QWEN_STYLE_VISION = dict(
    depth=VISION_LAYERS,
    hidden_size=VISION_WIDTH,
    out_hidden_size=HIDDEN,
    intermediate_size=2 * VISION_WIDTH,
    num_heads=VISION_HEADS,
    patch_size=PATCH,
    spatial_merge_size=2,
)


def _qwen_image_processor(name: str = "Qwen2VLImageProcessorPil", temporal_patch_size: int = 2) -> Call:
    return Call(
        name,
        min_pixels=56 * 56,
        max_pixels=Size(lambda s: s * s),
        patch_size=PATCH,
        merge_size=2,
        temporal_patch_size=temporal_patch_size,
    )


def _glm(name: str, config: str, model: str, processor: str, text, doc: str) -> TinyModel:
    return TinyModel(
        name,
        model=model,
        config=Call(config, text_config=text, vision_config=GLM_VISION, **GLM_IDS),
        processor=Call(processor, image_processor=_qwen_image_processor("Glm4vImageProcessorPil")),
        tokens=GLM_TOKENS,
        chat_template=GLM_TEMPLATE,
        image_size=224,
        doc=doc,
    )


def _qwen35(name: str, config: str, model: str, text, doc: str) -> TinyModel:
    return TinyModel(
        name,
        model=model,
        config=Call(config, text_config=text, vision_config=QWEN35_VISION, **QWEN_IDS),
        processor=Call("Qwen3VLProcessor", image_processor=QWEN_IMAGE_PROCESSOR),
        tokens=QWEN_TOKENS,
        chat_template=QWEN_TEMPLATE,
        image_size=224,
        doc=doc,
    )


ISSUE_25: tuple[TinyModel, ...] = (
    TinyModel(
        "idefics3",
        model="Idefics3ForConditionalGeneration",
        config=Call(
            "Idefics3Config",
            vision_config=Call("Idefics3VisionConfig", VISION),
            text_config=Call("LlamaConfig", TEXT),
            image_token_id=Token("<image>"),
            scale_factor=2,
        ),
        processor=Call(
            "Idefics3Processor",
            image_processor=Call(
                "Idefics3ImageProcessorPil",
                size=Size(lambda s: {"longest_edge": 2 * s}),
                max_image_size=Size(lambda s: {"longest_edge": s}),
                do_image_splitting=True,
                image_mean=[0.5, 0.5, 0.5],
                image_std=[0.5, 0.5, 0.5],
            ),
            image_seq_len=Size(lambda s: (s // PATCH) ** 2 // 4),
        ),
        tokens=SMOLVLM_TOKENS,
        chat_template=SMOLVLM_TEMPLATE,
        image_size=56,
        doc="SmolVLM's layout (SmolVLM is Idefics3 with its own processor): tiles of 56 px + the global image, "
        "pixel shuffle 2",
    ),
    TinyModel(
        "llava_next_video",
        model="LlavaNextVideoForConditionalGeneration",
        config=Call(
            "LlavaNextVideoConfig",
            vision_config=CLIP_VISION,
            text_config=Call("LlamaConfig", TEXT),
            image_token_index=Token("<image>"),
            video_token_index=Token("<video>"),
            image_grid_pinpoints=ANYRES_PINPOINTS,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
            spatial_pool_stride=2,
        ),
        processor=Call(
            "LlavaNextVideoProcessor",
            image_processor=Call(
                "LlavaNextImageProcessorPil",
                size=Size(lambda s: {"shortest_edge": s}),
                crop_size=SQUARE,
                image_grid_pinpoints=ANYRES_PINPOINTS,
            ),
            patch_size=PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
        tokens=Tokens(
            special=("<unk>", "<s>", "</s>", "<image>", "<video>", "<pad>"),
            named={"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
            extra={"image_token": "<image>", "video_token": "<video>"},
            end_of_turn="</s>",
            bos="<s>",
        ),
        chat_template=LLAVA_NEXT_TEMPLATE,
        image_size=56,
        doc="LLaVA-NeXT's prompt and any-res tiles (56 px, at most 2x2) for its images",
    ),
    _glm(
        "glm4v",
        "Glm4vConfig",
        "Glm4vForConditionalGeneration",
        "Glm4vProcessor",
        GLM_TEXT,
        doc="[gMASK]<sop><|user|>\n<|begin_of_image|><|image|>*N<|end_of_image|>TEXT<|assistant|>\n; "
        "Qwen2-VL's grid (patch 14, merge 2)",
    ),
    _glm(
        "glm4v_moe",
        "Glm4vMoeConfig",
        "Glm4vMoeForConditionalGeneration",
        "Glm4vProcessor",
        Merge(
            GLM_TEXT,
            n_routed_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            head_dim=HIDDEN // HEADS,
        ),
        doc="GLM-4.1V's layout with a mixture-of-experts decoder (layer 0 dense, then 4 experts, 2 per token)",
    ),
    _glm(
        "glm46v",
        "Glm46VConfig",
        "Glm46VForConditionalGeneration",
        "Glm46VProcessor",
        GLM_TEXT,
        doc="GLM-4.6V: GLM-4.1V's layout",
    ),
    TinyModel(
        "aya_vision",
        model="AyaVisionForConditionalGeneration",
        config=Call(
            "AyaVisionConfig",
            vision_config=Call("SiglipVisionConfig", VISION),
            text_config=Call("Cohere2Config", TEXT, head_dim=HIDDEN // HEADS, sliding_window=512),
            image_token_index=Token("<|IMG_PATCH|>"),
            downsample_factor=2,
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        ),
        processor=Call(
            "AyaVisionProcessor",
            image_processor=Call(
                "GotOcr2ImageProcessorPil",
                size=SQUARE,
                crop_to_patches=True,
                min_patches=1,
                max_patches=4,
                image_mean=[0.5, 0.5, 0.5],
                image_std=[0.5, 0.5, 0.5],
            ),
            patch_size=PATCH,
            img_size=SIZE,
            downsample_factor=2,
        ),
        tokens=AYA_TOKENS,
        chat_template=AYA_TEMPLATE,
        image_size=56,
        doc="Cohere 2 turns; GotOcr2 tiles of 56 px (at most 4) + the global tile, pixel shuffle 2: 4 tokens per "
        "tile",
    ),
    TinyModel(
        "llava_onevision1_5",
        model="LlavaOnevision15ForConditionalGeneration",
        config=Call(
            "LlavaOnevision15Config",
            text_config=Merge(TEXT, head_dim=HIDDEN // HEADS, model_type="qwen3"),
            vision_config=QWEN_STYLE_VISION,
            **QWEN_IDS,
        ),
        # RiceViT embeds one frame per patch (a 2-D convolution): the processor's temporal patch is 1
        processor=Call("Exaone4_5_Processor", image_processor=_qwen_image_processor(temporal_patch_size=1)),
        tokens=QWEN_TOKENS,
        chat_template=QWEN_TEMPLATE,
        image_size=224,
        doc="RiceViT + a Qwen3 decoder behind Qwen2-VL's prompt and grid",
    ),
    TinyModel(
        "exaone4_5",
        model="Exaone4_5_ForConditionalGeneration",
        config=Call(
            "Exaone4_5_Config",
            text_config=Merge(TEXT, head_dim=HIDDEN // HEADS, model_type="exaone4", sliding_window=512),
            vision_config=dict(
                QWEN_STYLE_VISION,
                temporal_patch_size=2,
                window_size=112,
                fullatt_block_indexes=[1],
                num_key_value_heads=2,
            ),
            image_token_id=Token("<|image_pad|>"),
            video_token_id=Token("<|video_pad|>"),
        ),
        processor=Call("Exaone4_5_Processor", image_processor=QWEN_IMAGE_PROCESSOR),
        tokens=QWEN_TOKENS,
        chat_template=QWEN_TEMPLATE,
        image_size=224,
        doc="a Qwen2.5-VL-style vision tower + an EXAONE 4 decoder behind Qwen2-VL's prompt and grid",
    ),
    TinyModel(
        "vipllava",
        model="VipLlavaForConditionalGeneration",
        config=Call(
            "VipLlavaConfig",
            vision_config=CLIP_VISION,
            text_config=Call("LlamaConfig", TEXT),
            image_token_index=Token("<image>"),
            image_seq_length=Size(lambda s: (s // PATCH) ** 2),
            vision_feature_layers=[-2, -1],
        ),
        processor=Call(
            "LlavaProcessor",
            image_processor=Call(
                "CLIPImageProcessorPil", size=Size(lambda s: {"shortest_edge": s}), crop_size=SQUARE
            ),
            patch_size=PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
        tokens=LLAVA_TOKENS,
        chat_template=LLAVA_TEMPLATE,
        image_size=112,
        doc="LLaVA-1.5's prompt and input; the projector reads two vision layers",
    ),
    TinyModel(
        "paddleocr_vl",
        model="PaddleOCRVLForConditionalGeneration",
        config=Call(
            "PaddleOCRVLConfig",
            text_config=Merge(TEXT, head_dim=HIDDEN // HEADS, rope_parameters=QWEN_ROPE),
            vision_config=dict(
                hidden_size=VISION_WIDTH,
                intermediate_size=2 * VISION_WIDTH,
                num_hidden_layers=VISION_LAYERS,
                num_attention_heads=VISION_HEADS,
                patch_size=PATCH,
                image_size=112,
                spatial_merge_size=2,
            ),
            **QWEN_IDS,
        ),
        processor=Call(
            "PaddleOCRVLProcessor",
            image_processor=_qwen_image_processor("PaddleOCRVLImageProcessorPil", temporal_patch_size=1),
        ),
        tokens=QWEN_TOKENS,
        chat_template=QWEN_TEMPLATE,
        image_size=224,
        doc="a NaViT SigLIP (its projector merges 2x2 blocks of the row-major patch grid) + an ERNIE 4.5 "
        "decoder behind Qwen2-VL's prompt and grid",
    ),
    _qwen35(
        "qwen3_5",
        "Qwen3_5Config",
        "Qwen3_5ForConditionalGeneration",
        QWEN35_TEXT,
        doc="Qwen3-VL's prompt, vision and grid; a hybrid decoder (gated delta-net + full attention)",
    ),
    _qwen35(
        "qwen3_5_moe",
        "Qwen3_5MoeConfig",
        "Qwen3_5MoeForConditionalGeneration",
        Merge(
            QWEN35_TEXT,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=64,
            shared_expert_intermediate_size=64,
        ),
        doc="Qwen3.5 with a mixture-of-experts decoder: 4 experts, 2 per token, one shared expert",
    ),
)

# --------------------------------------------------------------------------------------------------------
# the declarations, in the registry's order (variants of a model type last)
DECLARATIONS: tuple[TinyModel, ...] = (
    TinyModel(
        "qwen2_vl",
        model="Qwen2VLForConditionalGeneration",
        config=Call(
            "Qwen2VLConfig",
            text_config=Merge(
                TEXT,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            ),
            vision_config=QWEN2_VL_VISION,
            **QWEN_IDS,
        ),
        processor=Call("Qwen2VLProcessor", image_processor=QWEN_IMAGE_PROCESSOR),
        tokens=QWEN_TOKENS,
        chat_template=QWEN_TEMPLATE,
        image_size=224,
        doc="<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>TEXT<|im_end|>\\n<|im_start|>assistant\\n; "
        "56x56 -> 2x2 tokens, 112x112 -> 4x4 (image_size: the processor's largest side)",
    ),
    TinyModel(
        "qwen2_5_vl",
        model="Qwen2_5_VLForConditionalGeneration",
        config=Call(
            "Qwen2_5_VLConfig",
            text_config=Merge(
                TEXT,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            ),
            vision_config=dict(
                depth=VISION_LAYERS,
                hidden_size=VISION_WIDTH,
                out_hidden_size=HIDDEN,
                intermediate_size=2 * VISION_WIDTH,
                num_heads=VISION_HEADS,
                in_channels=3,
                patch_size=PATCH,
                spatial_merge_size=2,
                temporal_patch_size=2,
                window_size=112,
                fullatt_block_indexes=[1],
            ),
            **QWEN_IDS,
        ),
        processor=Call("Qwen2_5_VLProcessor", image_processor=QWEN_IMAGE_PROCESSOR),
        tokens=QWEN_TOKENS,
        chat_template=QWEN_TEMPLATE,
        image_size=224,
        doc="Qwen2-VL's prompt and grid; windowed vision attention (window 112 px, block 1 full)",
    ),
    TinyModel(
        "llava",
        model="LlavaForConditionalGeneration",
        config=Call(
            "LlavaConfig",
            vision_config=CLIP_VISION,
            text_config=Call("LlamaConfig", TEXT),
            image_token_index=Token("<image>"),
            image_seq_length=Size(lambda s: (s // PATCH) ** 2),
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
        ),
        processor=Call(
            "LlavaProcessor",
            image_processor=Call(
                "CLIPImageProcessorPil", size=Size(lambda s: {"shortest_edge": s}), crop_size=SQUARE
            ),
            patch_size=PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
        tokens=LLAVA_TOKENS,
        chat_template=LLAVA_TEMPLATE,
        image_size=112,
        doc="<s>USER: <image>\\nTEXT ASSISTANT: (the BOS from the tokenizer); CLIP, CLS dropped: "
        "56 -> 4x4 tokens, 112 -> 8x8",
    ),
    _internvl(
        "internvl",
        112,
        tiled=False,
        doc="<|im_start|>user\\n<IMG_CONTEXT>\\nTEXT<|im_end|>\\n<|im_start|>assistant\\n (the processor expands "
        "<IMG_CONTEXT> to <img><IMG_CONTEXT>*N</img>); one tile, pixel shuffle 0.5: 56 -> 2x2, 112 -> 4x4",
    ),
    _qwen3(
        "qwen3_vl",
        "Qwen3VLConfig",
        "Qwen3VLForConditionalGeneration",
        QWEN3_TEXT,
        doc="Qwen2-VL's prompt; DeepStack on decoder layer 0, interleaved M-RoPE",
    ),
    _qwen3(
        "qwen3_vl_moe",
        "Qwen3VLMoeConfig",
        "Qwen3VLMoeForConditionalGeneration",
        Merge(QWEN3_TEXT, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=64),
        doc="Qwen3-VL with a mixture-of-experts decoder: 4 experts, 2 per token",
    ),
    TinyModel(
        "gemma3",
        model="Gemma3ForConditionalGeneration",
        config=Call(
            "Gemma3Config",
            text_config=Call(
                "Gemma3TextConfig",
                TEXT,
                head_dim=HIDDEN // HEADS,
                eos_token_id=Token("<end_of_turn>"),
                query_pre_attn_scalar=HIDDEN // HEADS,
                sliding_window=512,
            ),
            vision_config=Call("SiglipVisionConfig", VISION),
            # 2x2 average pooling of the patch grid (4x4 in the released models)
            mm_tokens_per_image=Size(lambda s: max(1, s // PATCH // 2) ** 2),
            boi_token_index=Token("<start_of_image>"),
            eoi_token_index=Token("<end_of_image>"),
            image_token_index=Token("<image_soft_token>"),
        ),
        processor=Call(
            "Gemma3Processor",
            image_processor=Call("Gemma3ImageProcessorPil", size=SQUARE),
            image_seq_length=Size(lambda s: max(1, s // PATCH // 2) ** 2),
        ),
        tokens=GEMMA3_TOKENS,
        chat_template=GEMMA3_TEMPLATE,
        image_size=112,
        doc="<bos><start_of_turn>user\\n<start_of_image>TEXT<end_of_turn>\\n<start_of_turn>model\\n; SigLIP "
        "112 px: 8x8 patches pooled 2x2 to 4x4 = 16 soft tokens; pan-and-scan off",
    ),
    TinyModel(
        "paligemma",
        model="PaliGemmaForConditionalGeneration",
        config=Call(
            "PaliGemmaConfig",
            text_config=Call("GemmaConfig", TEXT, head_dim=HIDDEN // HEADS, eos_token_id=Token("<eos>")),
            vision_config=Call("SiglipVisionConfig", VISION, projection_dim=HIDDEN),
            image_token_index=Token("<image>"),
            projection_dim=HIDDEN,
            hidden_size=HIDDEN,
        ),
        processor=Call(
            "PaliGemmaProcessor",
            image_processor=Call(
                "SiglipImageProcessorPil", size=SQUARE, image_seq_length=Size(lambda s: (s // PATCH) ** 2)
            ),
        ),
        tokens=PALIGEMMA_TOKENS,
        chat_template=None,  # a prefix-LM prompt
        image_size=112,
        doc="no chat template; the processor lays out <image>*N<bos>TEXT\\n and adds PaliGemma's 1152 <loc> / "
        "<seg> tokens to the vocabulary; SigLIP 112 px: 8x8 = 64 tokens",
    ),
    TinyModel(
        "llava_next",
        model="LlavaNextForConditionalGeneration",
        config=Call(
            "LlavaNextConfig",
            vision_config=CLIP_VISION,
            text_config=Call("LlamaConfig", TEXT),
            image_token_index=Token("<image>"),
            image_grid_pinpoints=ANYRES_PINPOINTS,
            vision_feature_select_strategy="default",
            vision_feature_layer=-2,
        ),
        processor=Call(
            "LlavaNextProcessor",
            image_processor=Call(
                "LlavaNextImageProcessorPil",
                size=Size(lambda s: {"shortest_edge": s}),
                crop_size=SQUARE,
                image_grid_pinpoints=ANYRES_PINPOINTS,
            ),
            patch_size=PATCH,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
        tokens=LLAVA_TOKENS,
        chat_template=LLAVA_NEXT_TEMPLATE,
        image_size=56,
        doc="[INST] <image>\\nTEXT [/INST] (Mistral style); anyres tiles of 56 px, at most 2x2",
    ),
    TinyModel(
        "llava_onevision",
        model="LlavaOnevisionForConditionalGeneration",
        config=Call(
            "LlavaOnevisionConfig",
            vision_config=Call("SiglipVisionConfig", VISION),
            text_config=Call("Qwen2Config", TEXT),
            image_token_index=Token("<image>"),
            video_token_index=Token("<video>"),
            image_grid_pinpoints=ANYRES_PINPOINTS,
            # anyres_max_2: a 2x2-tile grid is shrunk by the model, as the real anyres_max_9 does for large images
            vision_aspect_ratio="anyres_max_2",
            vision_feature_select_strategy="full",
            vision_feature_layer=-1,
        ),
        processor=Call(
            "LlavaOnevisionProcessor",
            image_processor=Call(
                "LlavaOnevisionImageProcessorPil", size=SQUARE, image_grid_pinpoints=ANYRES_PINPOINTS
            ),
            num_image_tokens=Size(lambda s: (s // PATCH) ** 2),
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_2",
        ),
        tokens=ONEVISION_TOKENS,
        chat_template=ONEVISION_TEMPLATE,
        image_size=56,
        doc="ChatML with <image>\\n; SigLIP anyres tiles of 56 px, at most 2x2",
    ),
    TinyModel(
        "smolvlm",
        model="SmolVLMForConditionalGeneration",
        config=Call(
            "SmolVLMConfig",
            vision_config=Call("SmolVLMVisionConfig", VISION),
            text_config=Call("LlamaConfig", TEXT),
            image_token_id=Token("<image>"),
            scale_factor=2,
        ),
        processor=Call(  # the SmolVLM processor class needs num2words
            "SmolVLMProcessor",
            image_processor=Call(
                "SmolVLMImageProcessorPil",
                size=Size(lambda s: {"longest_edge": 2 * s}),
                max_image_size=Size(lambda s: {"longest_edge": s}),
                do_image_splitting=True,
                image_mean=[0.5, 0.5, 0.5],
                image_std=[0.5, 0.5, 0.5],
            ),
            image_seq_len=Size(lambda s: (s // PATCH) ** 2 // 4),
        ),
        tokens=SMOLVLM_TOKENS,
        chat_template=SMOLVLM_TEMPLATE,
        image_size=56,
        doc="image splitting: tiles of 56 px, the longest edge resized to two tiles (at most 2x2 + the global "
        "image); pixel shuffle 2: 4 tokens per tile",
    ),
    *ISSUE_25,  # the model types issue 25 added (below), in the registry's order
    _internvl(
        "internvl_tiled",
        56,
        tiled=True,
        doc="InternVL with dynamic tiling on: tiles of 56 px, at most 4 (+ a thumbnail)",
    ),
)
