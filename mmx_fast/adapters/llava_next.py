"""LLaVA-NeXT and LLaVA-OneVision: any-res tiling (docs/design.md §1.2, tiled models).

The processor picks the best pinpoint resolution for the image (rows x cols tiles of the vision input size),
resizes the image into it keeping the aspect ratio and pads the rest; ``pixel_values`` is [1, 1 + tiles, 3, S, S]
(the base first: the whole image squashed to one tile) with ``image_sizes`` [1, 2]. The model stitches the tiles,
removes the padded rows / columns, appends ``image_newline`` after every row (OneVision first shrinks a grid
larger than ``anyres_max_N`` tiles) and puts the base's g x g tokens first (``geometry.AnyResUnpad``). The
newline tokens are not grid cells and never enter a map. The canonical grid is the unpadded stitched grid at
scale 1.0.

Chat prompt (LLaVA-NeXT, Vicuna / Mistral style): ``[INST] <image>\\nTEXT [/INST]``; OneVision (Qwen2 ChatML):
``<|im_start|>user <image>\\nTEXT<|im_end|><|im_start|>assistant\\n``.
"""

from __future__ import annotations

from .base import Adapter
from .geometry import AnyResUnpad


class LlavaNextAdapter(Adapter):
    family = "llava_next"
    model_types = {"llava_next": "LlavaNextProcessor"}
    geometry = AnyResUnpad()


class LlavaOnevisionAdapter(Adapter):
    family = "llava_onevision"
    model_types = {"llava_onevision": "LlavaOnevisionProcessor"}
    geometry = AnyResUnpad()


class LlavaNextVideoAdapter(LlavaNextAdapter):
    """LLaVA-NeXT-Video: its images go through LLaVA-NeXT's any-res tiling, unchanged (its video path, pooled
    frames, is not explained)."""

    family = "llava_next_video"
    model_types = {"llava_next_video": "LlavaNextVideoProcessor"}
