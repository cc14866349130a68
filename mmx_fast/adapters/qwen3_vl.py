"""Qwen3-VL and Qwen3-VL-MoE: the Qwen2-VL path (dynamic resolution, ``geometry.DynamicResolution``), with
Qwen3-VL's own processor and model classes.

What is the same: the chat prompt (``<|vision_start|><|image_pad|>*N<|vision_end|>``), the visual grid (merged
2x2 patch groups of ``image_grid_thw``, row-major) and the forward inputs (``image_grid_thw``,
``mm_token_type_ids``). What differs and does not touch the adapter: Qwen3-VL's vision tower (patch 16 in the
released checkpoints; read from the processor here), its DeepStack features added to early decoder layers (the
last layer's normed states are still what ``lm_head`` reads) and interleaved M-RoPE. The MoE variant differs
only in its decoder's MLPs. Video differs: Qwen3-VL puts a ``<t seconds>`` text stamp before each temporal
patch's tokens and splits the temporal grid per frame for its M-RoPE; that layout is not built here yet, so
Qwen3-VL refuses video with a clear error instead of feeding the Qwen2-VL layout it does not expect.
"""

from __future__ import annotations

from .base import Adapter
from .qwen2_vl import Qwen2VLAdapter


class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3_vl"
    model_types = {"qwen3_vl": "Qwen3VLProcessor", "qwen3_vl_moe": "Qwen3VLProcessor"}
    tiny_builder = "qwen3_vl"
    # the Qwen2-VL video layout is wrong for Qwen3-VL (timestamps, per-frame grid): refuse video (base hook)
    prepare_video = Adapter.prepare_video
