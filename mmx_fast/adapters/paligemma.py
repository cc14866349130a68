"""PaliGemma / PaliGemma 2 (``PaliGemmaForConditionalGeneration``): a prefix-LM without a chat template.

Prompt: the processor lays out ``<image>*N<bos>TEXT\\n`` (N = ``image_seq_length``, one token per SigLIP patch,
row-major over a square grid covering the whole image after the processor's resize; ``geometry.FixedCanvas``);
the answer follows the newline. The prefix (image and text) attends bidirectionally, the answer (the
"suffix") causally: ``token_type_ids`` is 0 on the prefix and must be 1 on every answer token in a
teacher-forced row (generation does the same), else the answer would join the bidirectional prefix. So the
visual tokens' states depend on the instruction text after them (``causal_visual_states = False``).

What differs from a chat family: no chat template (``chat_text`` is the processor's input ``<image>TEXT``),
the instruction span is found in the processor's own layout, the training ``labels`` it returns are dropped.
"""

from __future__ import annotations

from typing import Any

import torch

from . import prompt as prompt_mod
from .base import Adapter
from .geometry import FixedCanvas


class PaliGemmaAdapter(Adapter):
    family = "paligemma"
    model_types = {"paligemma": "PaliGemmaProcessor"}
    geometry = FixedCanvas()
    answer_token_types = {"token_type_ids": 1}
    drop_keys = ("labels",)
    causal_visual_states = False

    def chat_text(self, prompt: str) -> str:
        """The processor's input: one image placeholder, then the instruction (it adds ``<bos>`` and ``\\n``)."""
        return f"{self._image_placeholder()}{prompt}"

    def layout(self, prompt: str) -> str:
        """The text the processor tokenizes for ``chat_text(prompt)`` (before it expands the image token)."""
        return f"{self._image_placeholder()}{self.tokenizer.bos_token}{prompt}\n"

    def _image_placeholder(self) -> str:
        return str(getattr(self.processor, "image_token", "<image>"))

    def find_prompt_span(self, text: str, prompt: str, input_ids: torch.Tensor) -> tuple[int, int]:
        return prompt_mod.find_prompt_span(
            self.tokenizer, self.layout(prompt), prompt, input_ids, self.image_token_id, render=self.layout
        )

    def expected_visual_tokens(self, inputs: dict[str, Any]) -> int:
        """One token per SigLIP patch: ``(image_size / patch_size)**2`` per image."""
        from . import geometry as geo

        vc = self.model.config.vision_config
        side = geo.side(vc.image_size) // geo.side(vc.patch_size)
        return side * side * int(inputs["pixel_values"].shape[0])
