"""InternVL (HF ``InternVLForConditionalGeneration``), with or without dynamic tiling, as the image processor's
own ``crop_to_patches`` says (docs/design.md §1.2).

- Tiling on (the real checkpoints' default): the processor cuts the image into rows x cols tiles of the tile
  size (``min_patches`` .. ``max_patches`` tiles; set ``processor.image_processor.max_patches`` to bound them)
  plus a thumbnail; ``geometry.InternVLTiles`` puts every tile on its box of the stitched tile grid, the
  canonical grid. MSEA scales resize the image by alpha and let the processor tile it again.
- Tiling off: the image is resized to one tile (``geometry.FixedCanvas``: MSEA canvases apply).

Chat prompt: ``<|im_start|>user\\n<img><IMG_CONTEXT>*N</img>\\nTEXT<|im_end|>\\n<|im_start|>assistant\\n``; the N
``<IMG_CONTEXT>`` tokens are the pixel-shuffled (downsample 0.5) patch features, tile after tile (thumbnail
last), each row-major over an s x s grid. The forward takes ``pixel_values`` [tiles, 3, H, W] and
``input_ids``; nothing else.
"""

from __future__ import annotations

from typing import Any

from . import geometry as geo
from .base import Adapter
from .geometry import FixedCanvas, InternVLTiles


class InternVLAdapter(Adapter):
    family = "internvl"
    model_types = {"internvl": "InternVLProcessor"}
    geometry = FixedCanvas()
    processor_kwargs = {"crop_to_patches": False}

    def __init__(self, model: Any, processor: Any) -> None:
        super().__init__(model, processor)
        ip = getattr(processor, "image_processor", None)
        if bool(getattr(ip, "crop_to_patches", False)):  # the processor's own default decides
            self.geometry = InternVLTiles()
            self.processor_kwargs = {"crop_to_patches": True}

    @property
    def tiled(self) -> bool:
        return isinstance(self.geometry, InternVLTiles)

    def expected_visual_tokens(self, inputs):
        """Tiling off: the tile's patches after the pixel shuffle (``downsample_ratio``), one tile (tiling on is
        predicted by ``InternVLTiles.layout``)."""
        cfg = self.model.config
        side = geo.side(cfg.vision_config.image_size) // geo.side(cfg.vision_config.patch_size)
        side = int(side * float(cfg.downsample_ratio))
        return side * side * int(inputs["pixel_values"].shape[0])
