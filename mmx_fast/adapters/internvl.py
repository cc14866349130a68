"""InternVL (HF ``InternVLForConditionalGeneration``), single tile: the image is resized to the tile size
(``crop_to_patches=False``: no dynamic tiling, so the visual grid is fixed and MSEA canvases apply,
``geometry.FixedCanvas``).

Chat prompt: ``<|im_start|>user\\n<img><IMG_CONTEXT>*N</img>\\nTEXT<|im_end|>\\n<|im_start|>assistant\\n``; the N
``<IMG_CONTEXT>`` tokens are the pixel-shuffled (downsample 0.5) patch features, row-major over a
``sqrt(N) x sqrt(N)`` grid. The forward takes ``pixel_values`` [tiles, 3, H, W] and ``input_ids``; nothing else.
"""

from __future__ import annotations

from . import geometry as geo
from .base import Adapter
from .geometry import FixedCanvas


class InternVLAdapter(Adapter):
    family = "internvl"
    model_types = {"internvl": "InternVLProcessor"}
    geometry = FixedCanvas()
    processor_kwargs = {"crop_to_patches": False}
    tiny_builder = "internvl"

    def expected_visual_tokens(self, inputs):
        """The tile's patches after the pixel shuffle (``downsample_ratio``), one tile."""
        cfg = self.model.config
        side = geo.side(cfg.vision_config.image_size) // geo.side(cfg.vision_config.patch_size)
        side = int(side * float(cfg.downsample_ratio))
        return side * side * int(inputs["pixel_values"].shape[0])
