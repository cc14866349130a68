"""SmolVLM (Idefics3 architecture): image splitting (docs/design.md §1.2, tiled models; ``geometry.SplitImage``).

The processor resizes the image (longest edge ``size["longest_edge"]``, then up to whole tiles), cuts it into
rows x cols tiles of ``max_image_size`` and appends a global image; each becomes ``image_seq_len`` ``<image>``
tokens (pixel shuffle by ``scale_factor``), framed by ``<fake_token_around_image><row_r_col_c>`` /
``<global-img>`` text. ``pixel_values`` is [1, tiles + 1, 3, S, S] with ``pixel_attention_mask``; batched rows
are padded with all-zero tiles, which the model drops. The canonical grid is the stitched tile grid at scale 1.0.

Chat prompt (SmolVLM): ``<|im_start|>User:<image>TEXT<end_of_utterance>\\nAssistant:``. The SmolVLM processor
class needs the ``num2words`` package (transformers checks it when the processor is built).
"""

from __future__ import annotations

from .base import Adapter
from .geometry import SplitImage


class SmolVLMAdapter(Adapter):
    family = "smolvlm"
    model_types = {"smolvlm": "SmolVLMProcessor"}
    geometry = SplitImage()

    def chat_text(self, prompt: str) -> str:
        """The processor's chat template rendered by the tokenizer: ``SmolVLMProcessor.apply_chat_template``
        reads video settings from its video processor, which is absent without torchvision."""
        template = getattr(self.processor, "chat_template", None)
        if not template:
            return super().chat_text(prompt)
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=template, add_generation_prompt=True, tokenize=False
        )
