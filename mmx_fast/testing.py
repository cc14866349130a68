"""Tiny real-architecture multimodal models for tests, examples and benchmarks (nothing downloads).

``tiny_model(family)`` builds a REAL transformers model class (``Qwen2VLForConditionalGeneration``,
``LlavaForConditionalGeneration``, ``InternVLForConditionalGeneration``, optionally
``Qwen2_5_VLForConditionalGeneration``) from a small config with seeded random weights, together with the
family's REAL processor class (Qwen2VLProcessor, LlavaProcessor, InternVLProcessor) around a small byte-level
BPE tokenizer trained offline from an in-memory English corpus, carrying the family's special tokens and a
chat template that mimics the real model's:

- Qwen2-VL:  ``<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>TEXT<|im_end|>\\n<|im_start|>assistant\\n``
- LLaVA-1.5: ``<s>USER: <image>\\nTEXT ASSISTANT:`` (the BOS comes from the tokenizer, as for the real model)
- InternVL:  ``<|im_start|>user\\n<IMG_CONTEXT>\\nTEXT<|im_end|>\\n<|im_start|>assistant\\n`` (the processor
  expands ``<IMG_CONTEXT>`` to ``<img><IMG_CONTEXT>*N</img>``)
- Qwen3-VL / Qwen3-VL-MoE: Qwen2-VL's template (``Qwen3VLForConditionalGeneration`` / ``...MoeFor...``: DeepStack
  on decoder layer 0, interleaved M-RoPE; the MoE decoder has 4 experts, 2 per token)
- Gemma 3:   ``<bos><start_of_turn>user\\n<start_of_image>TEXT<end_of_turn>\\n<start_of_turn>model\\n`` (SigLIP
  112 px, patch 14: 8x8 patches average-pooled 2x2 to 4x4 = 16 soft tokens; pan-and-scan off)
- PaliGemma: no chat template; the processor lays out ``<image>*N<bos>TEXT\\n`` (SigLIP 112 px: 8x8 = 64 tokens;
  its 1152 ``<loc>`` / ``<seg>`` tokens are added to the vocabulary, as for the real model)

Shapes (text hidden 64, 2 layers, 4 heads / 2 KV heads; vision 2 layers, width 32, patch 14):

- Qwen2-VL: spatial merge 2, so one LLM visual token per 28x28 pixels after smart-resize; the processor clamps
  to ``[56*56, 224*224]`` pixels: 56x56 -> grid 2x2 (4 tokens), 112x112 -> 4x4 (16).
- LLaVA: CLIP input ``image_size`` (default 112, CLS dropped): 56 -> grid 4x4 (16), 112 -> 8x8 (64).
- InternVL: single tile of ``image_size`` (default 112), pixel-shuffle 0.5: 56 -> 2x2 (4), 112 -> 4x4 (16).

The output embedding rows of the special tokens other than the end-of-turn token are zeroed, so greedy
generation never emits image / template tokens (a real model never does either) and answers can be replayed
teacher-forced. Whether generation stops early at the end-of-turn token depends on the seed; tests that need
several answer tokens should force the answer.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from .adapters.registry import model_type_info, tiny_model_types
from .loading import accept_missing_video_processor
from .pipeline import RANDOM_WEIGHTS_ATTR

# the model types of the registry that have a tiny builder below, then the variants (``_VARIANTS``)
FAMILIES = tiny_model_types() + ("internvl_tiled",)

_HIDDEN = 64
_LAYERS = 2
_HEADS = 4
_KV_HEADS = 2
_INTERMEDIATE = 128
_VISION_WIDTH = 32
_VISION_LAYERS = 2
_VISION_HEADS = 2
_PATCH = 14
_BPE_VOCAB = 1200  # byte alphabet (256) + merges; special tokens come on top
_INTERNVL_MAX_TILES = (
    4  # internvl_tiled: at most 4 tiles (+ thumbnail); set image_processor.max_patches to change
)

# ImageNet statistics, as the real InternVL processors use.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

_CORPUS = """
What is in the image? Describe the picture in detail. What color is the car on the left side of the street?
How many people are standing near the red door? Is there a dog in this photo? The cat is sleeping on a blue
sofa next to a window. A man rides a bicycle down a busy road while the sun sets behind tall buildings.
Two children play with a yellow ball in the green park. The kitchen has a white table, four chairs and a
bowl of fresh fruit: apples, oranges and bananas. Please answer the question briefly. Where is the boat?
The boat is floating on the calm lake under a cloudy grey sky. Which animal is larger, the horse or the
sheep? There is a small bird sitting on the branch of an old tree. What is the woman holding in her hands?
She is holding an umbrella because it is raining. The train arrives at the station at seven in the morning.
Read the text on the sign. The sign says stop. What time is shown on the clock? It is half past three.
Explain what is happening in this scene. A group of friends are having dinner at a restaurant. The pizza
has cheese, tomatoes and mushrooms. Is the light on or off? The light is on. Count the number of cars.
There are three cars and one truck parked along the road. The mountain is covered with snow and ice.
The ocean waves crash against the rocks near the beach. A girl with long brown hair is reading a book.
An airplane flies high above the clouds. The image shows a square, a circle and a triangle in different
colors: red, green, blue, orange, purple, black and white. Left, right, top, bottom, center, corner.
Yes. No. Maybe. I think the answer is yes. I do not know. It looks like a photograph of a city at night.
The quick brown fox jumps over the lazy dog. Large, small, bright, dark, round, sharp, soft, heavy.
One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, hundred, thousand.
The user asks a question and the assistant answers it. USER: what is this? ASSISTANT: a system message.
A wooden bridge crosses the river between the village and the forest, where deer and foxes live quietly.
Scientists measure the temperature of the water every morning and write the numbers in a notebook.
The museum displays paintings, sculptures, ancient coins and a famous golden mask from Egypt.
Please describe the objects on the desk: a laptop, a phone, a cup of coffee, a pencil and some paper.
Is the person wearing glasses? He wears a striped shirt, dark jeans and comfortable running shoes.
The weather today is sunny and warm, but tomorrow it will be windy with heavy rain in the evening.
Which direction is the arrow pointing? The arrow points upward toward the highest shelf in the library.
Students gather in the classroom to learn mathematics, history, geography, music and chemistry.
The farmer drives a tractor across the field while cows graze peacefully beside the wooden fence.
Fresh vegetables such as carrots, potatoes, onions, lettuce and peppers are sold at the market.
Look carefully at the picture and tell me whether the door is open, closed or partially hidden.
Zebras, giraffes, elephants and lions gather around the water hole during the hot dry season.
"""

_SPECIALS: dict[str, dict[str, Any]] = {
    # named: attribute name -> token; extra: model-specific named tokens; eos: end-of-turn token
    "qwen2_vl": {
        "tokens": [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<|vision_start|>",
            "<|vision_end|>",
            "<|vision_pad|>",
            "<|image_pad|>",
            "<|video_pad|>",
        ],
        "named": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "extra": {
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_bos_token": "<|vision_start|>",
            "vision_eos_token": "<|vision_end|>",
        },
        "eos": "<|im_end|>",
        "bos": None,
    },
    "llava": {
        "tokens": ["<unk>", "<s>", "</s>", "<image>", "<pad>"],
        "named": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"},
        "extra": {"image_token": "<image>"},
        "eos": "</s>",
        "bos": "<s>",
    },
    "internvl": {
        "tokens": [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<img>",
            "</img>",
            "<IMG_CONTEXT>",
            "<video>",
        ],
        "named": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        "extra": {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        "eos": "<|im_end|>",
        "bos": None,
    },
}
_SPECIALS["gemma3"] = {
    "tokens": [
        "<pad>",
        "<eos>",
        "<bos>",
        "<start_of_turn>",
        "<end_of_turn>",
        "<start_of_image>",
        "<end_of_image>",
        "<image_soft_token>",
    ],
    "named": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    "extra": {
        "boi_token": "<start_of_image>",
        "eoi_token": "<end_of_image>",
        "image_token": "<image_soft_token>",
    },
    "eos": "<end_of_turn>",
    "bos": None,  # the chat template writes <bos>
}
_SPECIALS["paligemma"] = {
    "tokens": ["<pad>", "<eos>", "<bos>", "<image>"],
    "named": {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"},
    "extra": {"image_token": "<image>"},
    "eos": "<eos>",
    "bos": None,  # the processor writes <bos> after the image tokens
}
_SPECIALS["qwen2_5_vl"] = _SPECIALS["qwen3_vl"] = _SPECIALS["qwen3_vl_moe"] = _SPECIALS["qwen2_vl"]
_SPECIALS["llava_next"] = _SPECIALS["llava"]
_SPECIALS["llava_onevision"] = {
    "tokens": ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"],
    "named": {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
    "extra": {"image_token": "<image>", "video_token": "<video>"},
    "eos": "<|im_end|>",
    "bos": None,
}
_SPECIALS["smolvlm"] = {
    "tokens": [
        "<|endoftext|>",
        "<|im_start|>",
        "<end_of_utterance>",
        "<image>",
        "<fake_token_around_image>",
        "<global-img>",
        "<video>",
    ]
    + [f"<row_{r}_col_{c}>" for r in range(1, 5) for c in range(1, 5)],
    "named": {"eos_token": "<end_of_utterance>", "pad_token": "<|endoftext|>"},
    "extra": {
        "image_token": "<image>",
        "fake_image_token": "<fake_token_around_image>",
        "global_image_token": "<global-img>",
        "end_of_utterance_token": "<end_of_utterance>",
        "video_token": "<video>",
    },
    "eos": "<end_of_utterance>",
    "bos": None,
}
# Tiny-model names that are a variant of a model type: name -> the model type (tokenizer, template, adapter).
_VARIANTS = {"internvl_tiled": "internvl"}

# Chat templates (Jinja) mimicking the real ones. ``content`` may be a string or a list of typed parts.
_CHATML_TEMPLATE = (
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
_TEMPLATES = {
    "qwen2_vl": _CHATML_TEMPLATE.replace(
        "IMAGE_PLACEHOLDER", "<|vision_start|><|image_pad|><|vision_end|>"
    ).replace("VIDEO_PLACEHOLDER", "<|vision_start|><|video_pad|><|vision_end|>"),
    "internvl": _CHATML_TEMPLATE.replace("IMAGE_PLACEHOLDER", "<IMG_CONTEXT>\n").replace(
        "VIDEO_PLACEHOLDER", "<video>\n"
    ),
    "llava": (
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
    ),
}
_TEMPLATES["gemma3"] = (
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
_TEMPLATES["paligemma"] = None  # PaliGemma has no chat template (a prefix-LM prompt)
_TEMPLATES["qwen2_5_vl"] = _TEMPLATES["qwen3_vl"] = _TEMPLATES["qwen3_vl_moe"] = _TEMPLATES["qwen2_vl"]
_TEMPLATES["llava_onevision"] = _CHATML_TEMPLATE.replace("IMAGE_PLACEHOLDER", "<image>\n")
_TEMPLATES["smolvlm"] = (  # SmolVLM's own shape
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}"
    "{% else %}{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
_TEMPLATES["llava_next"] = (  # Mistral-style, as llava-v1.6-mistral
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


@functools.lru_cache(maxsize=1)
def _base_bpe_json() -> str:
    """A byte-level BPE trained deterministically on the in-memory corpus (serialised, cached)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    lines = [line.strip() for line in _CORPUS.strip().splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(family: str):
    """The family's tokenizer: a ``PreTrainedTokenizerFast`` over the tiny byte-level BPE plus the family's
    special tokens and chat template."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    _check_family(family)
    family = _VARIANTS.get(family, family)
    spec = _SPECIALS[family]
    tok = Tokenizer.from_str(_base_bpe_json())
    tok.add_special_tokens(list(spec["tokens"]))
    if spec["bos"] is not None:
        bos = spec["bos"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kwargs: dict[str, Any] = dict(spec["named"])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        extra_special_tokens=dict(spec["extra"]),
        chat_template=_TEMPLATES[family],
        padding_side="left" if family in ("internvl", "llava_onevision") else "right",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        **kwargs,
    )
    if spec["bos"] is None:
        fast.add_bos_token = False
    return fast


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown tiny-model family {family!r}; supported: {', '.join(FAMILIES)}")


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


def _build_qwen(family: str, tok, image_size: int | None):
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessorPil,
        Qwen2VLProcessor,
    )

    merge = 2
    vision = dict(
        depth=_VISION_LAYERS,
        embed_dim=_VISION_WIDTH,
        hidden_size=_HIDDEN,
        num_heads=_VISION_HEADS,
        mlp_ratio=2,
        in_channels=3,
        patch_size=_PATCH,
        spatial_merge_size=merge,
        temporal_patch_size=2,
    )
    text = _text_kwargs(len(tok), tok)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    ids = dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    max_side = image_size or 224
    improc_kwargs = dict(
        min_pixels=56 * 56,
        max_pixels=max_side * max_side,
        patch_size=_PATCH,
        merge_size=merge,
        temporal_patch_size=2,
    )
    if family == "qwen2_5_vl":
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2_5_VLProcessor,
        )

        vision_25 = dict(
            depth=_VISION_LAYERS,
            hidden_size=_VISION_WIDTH,
            out_hidden_size=_HIDDEN,
            intermediate_size=2 * _VISION_WIDTH,
            num_heads=_VISION_HEADS,
            in_channels=3,
            patch_size=_PATCH,
            spatial_merge_size=merge,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision_25, tie_word_embeddings=False, **ids)
        model_cls, proc_cls = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    else:
        config = Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        model_cls, proc_cls = Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    processor = accept_missing_video_processor(proc_cls)(
        image_processor=Qwen2VLImageProcessorPil(**improc_kwargs),
        tokenizer=tok,
        video_processor=None,
        chat_template=_TEMPLATES[family],
    )
    return config, model_cls, processor


def _build_llava(family: str, tok, image_size: int | None):
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
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
    text = LlamaConfig(**_text_kwargs(len(tok), tok))
    n_tokens = (size // _PATCH) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=n_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_TEMPLATES["llava"],
    )
    return config, LlavaForConditionalGeneration, processor


def _build_internvl(family: str, tok, image_size: int | None):
    from transformers import (
        GotOcr2ImageProcessorPil,
        InternVLConfig,
        InternVLForConditionalGeneration,
        InternVLProcessor,
        InternVLVisionConfig,
        Qwen2Config,
    )

    size = image_size or (56 if family == "internvl_tiled" else 112)
    vision = InternVLVisionConfig(
        hidden_size=_VISION_WIDTH,
        intermediate_size=2 * _VISION_WIDTH,
        num_hidden_layers=_VISION_LAYERS,
        num_attention_heads=_VISION_HEADS,
        image_size=size,
        patch_size=_PATCH,
    )
    text = Qwen2Config(**_text_kwargs(len(tok), tok))
    seq = (size // _PATCH) ** 2 // 4
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=seq,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
    )
    tiled = family == "internvl_tiled"
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": size, "width": size},
        crop_to_patches=tiled,
        min_patches=1,
        max_patches=_INTERNVL_MAX_TILES,
        image_mean=list(_IMAGENET_MEAN),
        image_std=list(_IMAGENET_STD),
    )
    processor = accept_missing_video_processor(InternVLProcessor)(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=None,
        image_seq_length=seq,
        chat_template=_TEMPLATES["internvl"],
    )
    return config, InternVLForConditionalGeneration, processor


def _build_qwen3(family: str, tok, image_size: int | None):
    from transformers import Qwen2VLImageProcessorPil, Qwen3VLConfig, Qwen3VLProcessor

    merge = 2
    vision = dict(
        depth=_VISION_LAYERS,
        hidden_size=_VISION_WIDTH,
        out_hidden_size=_HIDDEN,
        intermediate_size=2 * _VISION_WIDTH,
        num_heads=_VISION_HEADS,
        patch_size=_PATCH,
        spatial_merge_size=merge,
        temporal_patch_size=2,
        num_position_embeddings=256,
        deepstack_visual_indexes=[0],
    )
    text = _text_kwargs(len(tok), tok)
    text["head_dim"] = _HIDDEN // _HEADS
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [2, 3, 3],
        "mrope_interleaved": True,
    }
    ids = dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    if family == "qwen3_vl_moe":
        from transformers import Qwen3VLMoeConfig, Qwen3VLMoeForConditionalGeneration

        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=_INTERMEDIATE // 2)
        config = Qwen3VLMoeConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        model_cls = Qwen3VLMoeForConditionalGeneration
    else:
        from transformers import Qwen3VLForConditionalGeneration

        config = Qwen3VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
        model_cls = Qwen3VLForConditionalGeneration
    max_side = image_size or 224
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56,
        max_pixels=max_side * max_side,
        patch_size=_PATCH,
        merge_size=merge,
        temporal_patch_size=2,
    )
    processor = accept_missing_video_processor(Qwen3VLProcessor)(
        image_processor=image_processor, tokenizer=tok, video_processor=None, chat_template=_TEMPLATES[family]
    )
    return config, model_cls, processor


def _siglip(size: int, projection_dim: int | None = None):
    from transformers import SiglipVisionConfig

    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    return SiglipVisionConfig(
        hidden_size=_VISION_WIDTH,
        intermediate_size=2 * _VISION_WIDTH,
        num_hidden_layers=_VISION_LAYERS,
        num_attention_heads=_VISION_HEADS,
        image_size=size,
        patch_size=_PATCH,
        **extra,
    )


def _gemma_text_kwargs(tok, eos_token: str) -> dict[str, Any]:
    kw = _text_kwargs(len(tok), tok)
    kw.update(head_dim=_HIDDEN // _HEADS, eos_token_id=tok.convert_tokens_to_ids(eos_token))
    return kw


def _build_gemma3(family: str, tok, image_size: int | None):
    from transformers import Gemma3Config, Gemma3ImageProcessorPil, Gemma3Processor, Gemma3TextConfig

    size = image_size or 112
    side = size // _PATCH
    tokens_side = max(1, side // 2)  # 2x2 average pooling of the patch grid (4x4 in the released models)
    text = Gemma3TextConfig(
        **_gemma_text_kwargs(tok, "<end_of_turn>"),
        query_pre_attn_scalar=_HIDDEN // _HEADS,
        sliding_window=512,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=_siglip(size),
        mm_tokens_per_image=tokens_side * tokens_side,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
        tie_word_embeddings=False,
    )
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": size, "width": size}),
        tokenizer=tok,
        chat_template=_TEMPLATES[family],
        image_seq_length=tokens_side * tokens_side,
    )
    from transformers import Gemma3ForConditionalGeneration

    return config, Gemma3ForConditionalGeneration, processor


def _build_paligemma(family: str, tok, image_size: int | None):
    from transformers import (
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
    )

    size = image_size or 112
    image_processor = SiglipImageProcessorPil(size={"height": size, "width": size})
    image_processor.image_seq_length = (size // _PATCH) ** 2
    # the processor adds PaliGemma's 1024 <locXXXX> and 128 <segXXX> tokens: build it before the model's vocab
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    text = GemmaConfig(**_gemma_text_kwargs(tok, "<eos>"))
    config = PaliGemmaConfig(
        text_config=text,
        vision_config=_siglip(size, projection_dim=_HIDDEN),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projection_dim=_HIDDEN,
        hidden_size=_HIDDEN,
        tie_word_embeddings=False,
    )
    return config, PaliGemmaForConditionalGeneration, processor


_ANYRES_PINPOINTS = [[56, 56], [56, 112], [112, 56], [112, 112]]  # at most 2x2 tiles of 56 px


def _build_llava_next(family: str, tok, image_size: int | None):
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextImageProcessorPil,
        LlavaNextProcessor,
    )

    size = image_size or 56
    pinpoints = [[size * a // 56, size * b // 56] for a, b in _ANYRES_PINPOINTS]
    vision = CLIPVisionConfig(
        hidden_size=_VISION_WIDTH,
        intermediate_size=2 * _VISION_WIDTH,
        projection_dim=_VISION_WIDTH,
        num_hidden_layers=_VISION_LAYERS,
        num_attention_heads=_VISION_HEADS,
        image_size=size,
        patch_size=_PATCH,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=LlamaConfig(**_text_kwargs(len(tok), tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=False,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=_TEMPLATES["llava_next"],
    )
    return config, LlavaNextForConditionalGeneration, processor


def _build_llava_onevision(family: str, tok, image_size: int | None):
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessorPil,
        LlavaOnevisionProcessor,
        Qwen2Config,
        SiglipVisionConfig,
    )

    size = image_size or 56
    pinpoints = [[size * a // 56, size * b // 56] for a, b in _ANYRES_PINPOINTS]
    vision = SiglipVisionConfig(
        hidden_size=_VISION_WIDTH,
        intermediate_size=2 * _VISION_WIDTH,
        num_hidden_layers=_VISION_LAYERS,
        num_attention_heads=_VISION_HEADS,
        image_size=size,
        patch_size=_PATCH,
    )
    # anyres_max_2: a 2x2-tile grid (more than 2 tiles' worth of cells) is shrunk by the model, as the real
    # anyres_max_9 does for large images
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=Qwen2Config(**_text_kwargs(len(tok), tok)),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_2",
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    image_processor = LlavaOnevisionImageProcessorPil(
        size={"height": size, "width": size}, image_grid_pinpoints=pinpoints
    )
    processor = accept_missing_video_processor(LlavaOnevisionProcessor)(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=None,
        num_image_tokens=(size // _PATCH) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_2",
        chat_template=_TEMPLATES["llava_onevision"],
    )
    return config, LlavaOnevisionForConditionalGeneration, processor


def _build_smolvlm(family: str, tok, image_size: int | None):
    """SmolVLM with image splitting: tiles of ``image_size`` (default 56) px, the image's longest edge resized to
    two tiles (at most 2x2 tiles + the global image); pixel shuffle 2, so 4 tokens per tile. Needs ``num2words``
    (the SmolVLM processor class checks for it)."""
    from transformers import (
        LlamaConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMImageProcessorPil,
        SmolVLMProcessor,
        SmolVLMVisionConfig,
    )

    size = image_size or 56
    vision = SmolVLMVisionConfig(
        hidden_size=_VISION_WIDTH,
        intermediate_size=2 * _VISION_WIDTH,
        num_hidden_layers=_VISION_LAYERS,
        num_attention_heads=_VISION_HEADS,
        image_size=size,
        patch_size=_PATCH,
    )
    seq = (size // _PATCH) ** 2 // 4
    config = SmolVLMConfig(
        vision_config=vision,
        text_config=LlamaConfig(**_text_kwargs(len(tok), tok)),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=2,
        tie_word_embeddings=False,
    )
    image_processor = SmolVLMImageProcessorPil(
        size={"longest_edge": 2 * size},
        max_image_size={"longest_edge": size},
        do_image_splitting=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = accept_missing_video_processor(SmolVLMProcessor)(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=None,
        image_seq_len=seq,
        chat_template=_TEMPLATES["smolvlm"],
    )
    return config, SmolVLMForConditionalGeneration, processor


# registry ``tiny_builder`` name -> builder(model_type, tokenizer, image_size) -> (config, model class, processor)
_BUILDERS = {
    "qwen2_vl": _build_qwen,
    "llava": _build_llava,
    "internvl": _build_internvl,
    "qwen3_vl": _build_qwen3,
    "gemma3": _build_gemma3,
    "paligemma": _build_paligemma,
    "llava_next": _build_llava_next,
    "llava_onevision": _build_llava_onevision,
    "smolvlm": _build_smolvlm,
}

# issue 25's families, in this file's builder style (meant to become mmx_fast.tiny declarations, issue 24)
from . import testing_more as _more  # noqa: E402

_more.register(_SPECIALS, _TEMPLATES, _BUILDERS)


def tiny_model(
    family: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    image_size: int | None = None,
    attn_implementation: str = "sdpa",
):
    """(model, processor) of a tiny random-weight model of ``family`` (one of ``FAMILIES``).

    Deterministic for a given ``seed``. ``image_size``: for LLaVA / InternVL the vision input size (default
    112; a multiple of 28), for Qwen2-VL the processor's max side (default 224, i.e. at most 8x8 visual
    tokens). Nothing is downloaded.
    """
    _check_family(family)
    tok = tiny_tokenizer(family)
    if image_size is not None and (image_size < 28 or image_size % 28):
        raise ValueError(f"image_size={image_size} must be a positive multiple of 28")
    build = _BUILDERS[model_type_info(_VARIANTS.get(family, family)).tiny_builder]
    config, model_cls, processor = build(family, tok, image_size)
    config._attn_implementation = attn_implementation

    with torch.random.fork_rng(devices=[]):  # CPU generator only; the model is built on the CPU
        torch.manual_seed(seed)
        model = model_cls(config)
    model = model.to(dtype).eval()
    _silence_special_rows(model, tok)
    setattr(model, RANDOM_WEIGHTS_ATTR, True)  # explanations of it say "random weights" (notebook, report)

    eos = _SPECIALS[_VARIANTS.get(family, family)]["eos"]
    set_greedy_generation(model, tok, tok.convert_tokens_to_ids(eos))
    return model, processor


def set_greedy_generation(model, tok, eos_token_id: int) -> None:
    """Greedy decoding with the family's stop and pad tokens (no sampling knobs left set)."""
    gen = model.generation_config
    gen.eos_token_id = eos_token_id
    gen.pad_token_id = tok.pad_token_id
    gen.bos_token_id = tok.bos_token_id
    gen.do_sample = False
    gen.temperature = None
    gen.top_p = None
    gen.top_k = None


@torch.no_grad()
def _silence_special_rows(model, tok) -> None:
    """Zero the unembedding rows of every added / special token except EOS (greedy decoding never emits
    image or template tokens, as with a real model)."""
    eos = tok.eos_token_id
    ids = set(tok.added_tokens_decoder) | set(tok.all_special_ids)
    ids.discard(eos)
    model.get_output_embeddings().weight[sorted(ids)] = 0
