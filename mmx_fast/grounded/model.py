"""The grounded model's tokenizer, processor and config: a real ``Qwen2VLForConditionalGeneration`` built from
a small config, trained in the repo on :mod:`mmx_fast.grounded.scenes` (docs/design.md §9).

- Tokenizer: byte-level BPE (as Qwen's) trained offline on every question and answer the scene generator can
  write, so each answer word ("red", "circle") is one token; Qwen2-VL's special tokens and chat template.
- Processor: the real ``Qwen2VLProcessor`` with ``Qwen2VLImageProcessorPil`` fixed to IMAGE_SIZE px (4x4 grid).
- Model: text hidden 128, 4 layers, 4 heads / 2 KV heads; vision width 64, 4 layers; untied embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..processors import accept_missing_video_processor
from ..tiny import set_greedy_generation
from ..tiny.families import QWEN_TEMPLATE, QWEN_TOKENS
from .scenes import IMAGE_SIZE, vocabulary_lines

PATCH = 14
MERGE = 2
TEXT = dict(hidden=128, layers=4, heads=4, kv_heads=2, intermediate=384)
VISION = dict(depth=4, width=64, heads=4, mlp_ratio=2)
SHIPPED = Path(__file__).parent / "weights"  # the trained model, as written by train.py
SHIPPED_NAME = "grounded"  # mmx_fast.load("grounded")


def grounded_tokenizer():
    """A ``PreTrainedTokenizerFast``: byte-level BPE over the scene vocabulary + Qwen2-VL's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    lines = vocabulary_lines() + ["user\n", "assistant\n", "system\n"]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    spec = QWEN_TOKENS
    tok.add_special_tokens(list(spec.special))
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        extra_special_tokens=dict(spec.extra),
        chat_template=QWEN_TEMPLATE,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        **dict(spec.named),
    )
    fast.add_bos_token = False
    return fast


def grounded_processor(tok=None):
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor

    tok = tok if tok is not None else grounded_tokenizer()
    side = IMAGE_SIZE
    improc = Qwen2VLImageProcessorPil(
        min_pixels=56
        * 56,  # as small as the real Qwen2-VL allows: MSEA scales 0.5 / 0.75 give 2x2 / 3x3 grids
        max_pixels=side * side,
        patch_size=PATCH,
        merge_size=MERGE,
        temporal_patch_size=2,
    )
    return accept_missing_video_processor(Qwen2VLProcessor)(
        image_processor=improc, tokenizer=tok, video_processor=None, chat_template=QWEN_TEMPLATE
    )


def grounded_config(tok):
    from transformers import Qwen2VLConfig

    head_dim = TEXT["hidden"] // TEXT["heads"]
    q = head_dim // 2  # mrope_section sums to head_dim / 2: temporal a quarter, h and w the rest
    mrope = [q // 4, (q - q // 4) // 2, q - q // 4 - (q - q // 4) // 2]
    text = dict(
        vocab_size=len(tok),
        hidden_size=TEXT["hidden"],
        intermediate_size=TEXT["intermediate"],
        num_hidden_layers=TEXT["layers"],
        num_attention_heads=TEXT["heads"],
        num_key_value_heads=TEXT["kv_heads"],
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
    )
    vision = dict(
        depth=VISION["depth"],
        embed_dim=VISION["width"],
        hidden_size=TEXT["hidden"],
        num_heads=VISION["heads"],
        mlp_ratio=VISION["mlp_ratio"],
        in_channels=3,
        patch_size=PATCH,
        spatial_merge_size=MERGE,
        temporal_patch_size=2,
    )
    ids = dict(
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
    )
    return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)


def untrained_model(seed: int = 0, attn_implementation: str = "sdpa"):
    """(model, processor): the grounded architecture with seeded random weights (float32), i.e. the model
    before training; also the 'untrained' baseline of the localisation table."""
    from transformers import Qwen2VLForConditionalGeneration

    processor = grounded_processor()
    tok = processor.tokenizer
    config = grounded_config(tok)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config)
    set_greedy_generation(model, tok, tok.eos_token_id)
    return model.eval(), processor


def answer_token_id(tok, word: str) -> int:
    """The one token of an answer word as the model writes it after ``assistant\\n``."""
    ids = tok("assistant\n" + word, add_special_tokens=False)["input_ids"]
    base = tok("assistant\n", add_special_tokens=False)["input_ids"]
    rest = ids[len(base) :]
    if ids[: len(base)] != base or len(rest) != 1:
        raise ValueError(f"answer {word!r} is not one token of the grounded tokenizer: {rest}")
    return rest[0]


def save_model(
    model, processor, folder: str | Path, *, dtype=torch.bfloat16, meta: dict[str, Any] | None = None
):
    """Write a folder ``mmx_fast.load`` reads: config + safetensors (``dtype``), tokenizer, image processor,
    chat template (the processor's parts, saved one by one: a processor without a video processor cannot
    ``save_pretrained`` as a whole here), and ``train_meta.json``."""
    import copy

    from ..loading import quiet_transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        copy.deepcopy(model).to(device="cpu", dtype=dtype).save_pretrained(folder, safe_serialization=True)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    processor.to_json_file(str(folder / "processor_config.json"))
    (folder / "chat_template.jinja").write_text(processor.chat_template, encoding="utf-8")
    if meta is not None:
        (folder / "train_meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
