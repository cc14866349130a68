"""Qwen3-VL and Qwen3-VL-MoE: the Qwen2-VL path (dynamic resolution, ``geometry.DynamicResolution``), with
Qwen3-VL's own processor and model classes.

What is the same: the chat prompt (``<|vision_start|><|image_pad|>*N<|vision_end|>``), the visual grid (merged
2x2 patch groups of ``image_grid_thw``, row-major) and the forward inputs (``image_grid_thw``,
``mm_token_type_ids``). What differs and does not touch the adapter: Qwen3-VL's vision tower (patch 16 in the
released checkpoints; read from the processor here), its DeepStack features added to early decoder layers (the
last layer's normed states are still what ``lm_head`` reads) and interleaved M-RoPE. The MoE variant differs
only in its decoder's MLPs. Video differs: Qwen3-VL puts a ``<t seconds>`` text stamp before each temporal
patch's tokens: ``<|video_pad|>`` becomes, per temporal patch k, ``<T seconds><|vision_start|><|video_pad|>*n
<|vision_end|>`` (T = the mean time of the pair's frames at ``Video.fps``; what transformers'
``Qwen3VLProcessor.replace_video_token`` writes, checked in tests/test_video.py); the model splits the temporal
grid per frame for its M-RoPE itself. The visual positions are then not contiguous, still row-major over
(t, h, w).
"""

from __future__ import annotations

from .base import Adapter
from .qwen2_vl import Qwen2VLAdapter


class Qwen3VLAdapter(Qwen2VLAdapter):
    family = "qwen3_vl"
    model_types = {"qwen3_vl": "Qwen3VLProcessor", "qwen3_vl_moe": "Qwen3VLProcessor"}

    def video_placeholder(self, t: int, per_frame: int, fps: float, n_frames: int) -> str:
        tok = self.tokenizer
        token = tok.convert_ids_to_tokens(self.video_token_id)
        start = getattr(self.processor, "vision_start_token", "<|vision_start|>")
        end = getattr(self.processor, "vision_end_token", "<|vision_end|>")
        tp = max(1, n_frames // t)
        times = [(k * tp + (k * tp + tp - 1)) / 2 / fps for k in range(t)]  # mean time of each frame group
        return "".join(f"<{ts:.1f} seconds>{start}{token * per_frame}{end}" for ts in times)


class Qwen35Adapter(Qwen3VLAdapter):
    """Qwen3.5 and Qwen3.5-MoE: Qwen3-VL's processor, vision tower and image layout with a hybrid decoder (gated
    delta-net linear-attention layers between full-attention ones; the last layer's normed states are still what
    ``lm_head`` reads). Images only: their video path is not tested here."""

    family = "qwen3_5"
    model_types = {"qwen3_5": "Qwen3VLProcessor", "qwen3_5_moe": "Qwen3VLProcessor"}
    prepare_video = Adapter.prepare_video
