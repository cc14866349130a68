"""Qwen2-VL / Qwen2.5-VL: dynamic resolution (the processor's smart-resize decides the visual-token grid).

Chat prompt: ``<|im_start|>user\\n<|vision_start|><|image_pad|>*N<|vision_end|>TEXT<|im_end|>\\n<|im_start|>assistant\\n``.
The N ``<|image_pad|>`` tokens are the merged 2x2 patch groups, row-major over the grid
``(grid_h / merge, grid_w / merge)`` of ``image_grid_thw``. The forward needs ``image_grid_thw`` and
``mm_token_type_ids`` (0 text, 1 image; answer tokens and padding are text); M-RoPE positions are computed by the
model from the attention mask, so right-padded (teacher-forced) and left-padded (generation) batches match the
unbatched rows.

Video (``mmx_fast.video``): ``<|vision_start|><|video_pad|>*N<|vision_end|>`` with N = t*h*w of the (t, h, w)
grid of ``video_grid_thw`` (merged), ``mm_token_type_ids`` 2 on the video tokens, and for Qwen2.5-VL
``second_per_grid_ts`` = temporal_patch_size / fps (its temporal M-RoPE positions). Each frame is resized by
alpha, then by the processor's smart resize (the scale-s map covers the whole frame, coverage (1, 1)).
"""

from __future__ import annotations

import torch

from .. import video as video_mod
from . import geometry as geo
from . import prompt as prompt_mod
from .base import Adapter, PromptInputs
from .geometry import DynamicResolution


class Qwen2VLAdapter(Adapter):
    family = "qwen2_vl"
    model_types = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}
    geometry = DynamicResolution()

    def video_chat_text(self, prompt: str) -> str:
        return prompt_mod.chat_text(self.processor, self.tokenizer, prompt, media="video")

    @property
    def video_token_id(self) -> int:
        tid = getattr(self.processor, "video_token_id", None)
        if tid is None:
            tid = self.model.config.video_token_id
        return int(tid)

    def video_placeholder(self, t: int, per_frame: int, fps: float, n_frames: int) -> str:
        """Hook: what the processor puts in place of the one video token (``replace_video_token``): Qwen2-VL /
        Qwen2.5-VL repeat it once per visual token."""
        token = self.tokenizer.convert_ids_to_tokens(self.video_token_id)
        return token * (t * per_frame)

    def prepare_video(self, video: video_mod.Video, prompt: str, scale: float) -> PromptInputs:
        ip = self.image_processor
        tp = int(getattr(ip, "temporal_patch_size", 2))
        frames = [geo.resize_by(f, scale) for f in video.padded(tp)]
        pixel_values, thw = video_mod.qwen_video_inputs(ip, frames)
        merge = int(getattr(ip, "merge_size", 1))
        t, gh, gw = (int(v) for v in thw[0])
        n = t * gh * gw // (merge * merge)
        text = self.video_chat_text(prompt)
        token = self.tokenizer.convert_ids_to_tokens(self.video_token_id)
        if text.count(token) != 1:
            raise ValueError(
                f"the chat template of {type(self.processor).__name__} did not render one video token {token!r} "
                "for a video; set the model's own chat template"
            )
        placeholder = self.video_placeholder(t, n // t, video.fps, len(frames))
        enc = self.tokenizer([text.replace(token, placeholder)], return_tensors="pt")
        ids = enc["input_ids"]
        vis = (ids[0] == self.video_token_id).nonzero().flatten().long()
        self.check_token_count(vis.numel(), n, f"the {t}x{gh // merge}x{gw // merge} (t, h, w) video grid")
        inputs = {
            "input_ids": ids,
            "attention_mask": enc["attention_mask"],
            "mm_token_type_ids": (ids == self.video_token_id).long() * 2,
            "pixel_values_videos": pixel_values,
            "video_grid_thw": thw,
        }
        if self.model_type == "qwen2_5_vl":
            inputs["second_per_grid_ts"] = torch.tensor([tp / video.fps], dtype=torch.float32)
        span = prompt_mod.find_prompt_span(
            self.tokenizer, text, prompt, ids, self.video_token_id, render=self.video_chat_text
        )
        patch = int(getattr(ip, "patch_size", 1))
        return PromptInputs(
            inputs=inputs,
            visual_positions=vis,
            grid=(gh // merge, gw // merge),
            prompt_span=span,
            scale=scale,
            coverage=(1.0, 1.0),
            image=frames[0],
            text=text,
            model_image_hw=(gh * patch, gw * patch),
            temporal=t,
        )


class QwenStyleAdapter(Qwen2VLAdapter):
    """Model types that pair another vision tower and decoder with Qwen2-VL's processor layout (dynamic resolution,
    ``<|vision_start|><|image_pad|>*N<|vision_end|>``, N merged 2x2 patch groups row-major over
    ``image_grid_thw``): LLaVA-OneVision-1.5 (RiceViT + Qwen3) and EXAONE 4.5 (a Qwen2.5-VL-style tower + EXAONE
    4); both ship ``Exaone4_5_Processor``. Their video layouts are not explained."""

    family = "qwen_style"
    model_types = {"llava_onevision1_5": "Exaone4_5_Processor", "exaone4_5": "Exaone4_5_Processor"}
    prepare_video = Adapter.prepare_video


class PaddleOCRVLAdapter(Qwen2VLAdapter):
    """PaddleOCR-VL: Qwen2-VL's layout (its own smart-resize image processor, 14 px patches, 2x2 merges into one
    ``<|image_pad|>`` token, row-major over ``image_grid_thw``'s (h / 2, w / 2)); a NaViT SigLIP and an ERNIE 4.5
    decoder with 3-D rotary positions. Images only."""

    family = "paddleocr_vl"
    model_types = {"paddleocr_vl": "PaddleOCRVLProcessor"}
    prepare_video = Adapter.prepare_video
