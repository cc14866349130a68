"""Gemma 3 (``Gemma3ForConditionalGeneration``): fixed-size input (SigLIP at the processor's size, resized without
cropping), pan-and-scan off (``do_pan_and_scan=False``: one view; tiled views are the tiled geometry's).

Chat prompt: ``<bos><start_of_turn>user\\n<start_of_image>TEXT<end_of_turn>\\n<start_of_turn>model\\n``; the
processor expands ``<start_of_image>`` to ``\\n\\n<start_of_image><image_soft_token>*N<end_of_image>\\n\\n``. The
N = ``mm_tokens_per_image`` soft tokens are the SigLIP patch grid average-pooled (``4x4`` in the released
models: 64x64 patches -> 16x16 tokens), row-major over a ``sqrt(N) x sqrt(N)`` grid covering the whole image
(``geometry.FixedCanvas``).

What differs from LLaVA: the processor's ``image_token_id`` is the BEGIN-of-image token (``<start_of_image>``,
what the chat text carries), not the soft token the N features replace. Locating that id finds one position,
which a square-grid geometry reads as a 1x1 map; this adapter locates the soft token (``config.image_token_id``)
and checks the count against ``mm_tokens_per_image``. ``token_type_ids`` (1 on image tokens: bidirectional
attention inside the image) come from the processor; answer tokens are text (0).
"""

from __future__ import annotations

from .base import Adapter
from .geometry import FixedCanvas


class Gemma3Adapter(Adapter):
    family = "gemma3"
    model_types = {"gemma3": "Gemma3Processor"}
    geometry = FixedCanvas()
    processor_kwargs = {"do_pan_and_scan": False}

    @property
    def image_token_id(self) -> int:
        """The soft token the image features replace (never the processor's ``<start_of_image>`` id)."""
        tid = getattr(self.tokenizer, "image_token_id", None)
        if tid is None:
            tid = getattr(self.model.config, "image_token_id", None)
        if tid is None:
            raise ValueError("cannot find Gemma 3's image soft token id (tokenizer.image_token_id)")
        return int(tid)

    def expected_visual_tokens(self, inputs):
        """``mm_tokens_per_image`` per image (the pooled patch grid)."""
        return int(self.model.config.mm_tokens_per_image) * int(inputs["pixel_values"].shape[0])
