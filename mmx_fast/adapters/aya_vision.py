"""Aya Vision (``AyaVisionForConditionalGeneration``): InternVL's tiling (GotOcr2's processor: rows x cols tiles
with the aspect closest to the image's, then the whole image as a global tile; ``geometry.InternVLTiles``), SigLIP
patches pixel-shuffled by ``downsample_factor``.

Chat prompt (Cohere 2): ``<BOS_TOKEN><|START_OF_TURN_TOKEN|><|USER_TOKEN|><image>TEXT<|END_OF_TURN_TOKEN|>
<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>``; the processor writes ``<|START_OF_IMG|>``, per tile ``TILE_k`` then
``<|IMG_PATCH|>`` once per token, the global tile's ``TILE_GLOBAL<|IMG_PATCH|>*n``, ``<|END_OF_IMG|>``. The
``<|IMG_PATCH|>`` tokens are the visual tokens, tile after tile, each row-major over an s x s grid
(s^2 = ``(img_size / patch_size)^2``, the processor's patch size already times the downsample factor).
"""

from __future__ import annotations

from .base import Adapter
from .geometry import InternVLTiles


class AyaTiles(InternVLTiles):
    def tile_tokens(self, adapter) -> int:
        p = adapter.processor
        return (int(p.img_size) // int(p.patch_size)) ** 2


class AyaVisionAdapter(Adapter):
    family = "aya_vision"
    model_types = {"aya_vision": "AyaVisionProcessor"}
    geometry = AyaTiles()
    processor_kwargs = {"crop_to_patches": True}
