"""GLM-4.1V / GLM-4.5V (``glm4v``, ``glm4v_moe``) and GLM-4.6V (``glm46v``): the Qwen2-VL geometry (dynamic
resolution, ``geometry.DynamicResolution``): the processor's smart resize, 14 px patches, 2x2 patch groups merged
into one visual token, row-major over ``image_grid_thw``'s (h / 2, w / 2).

Chat prompt: ``[gMASK]<sop><|user|>\\n<|begin_of_image|><|image|>*N<|end_of_image|>TEXT<|assistant|>\\n``; the
processor repeats ``<|image|>`` once per merged token. The forward needs ``image_grid_thw`` and
``mm_token_type_ids`` (the model's 3-D rotary positions), as Qwen2-VL's; the MoE variant differs only in its
decoder's MLPs. Video (GLM's per-frame timestamps) is not explained for these types.
"""

from __future__ import annotations

from .base import Adapter
from .qwen2_vl import Qwen2VLAdapter


class Glm4vAdapter(Qwen2VLAdapter):
    family = "glm4v"
    model_types = {"glm4v": "Glm4vProcessor", "glm4v_moe": "Glm4vProcessor", "glm46v": "Glm46VProcessor"}
    prepare_video = Adapter.prepare_video  # GLM's video layout (a timestamp per frame) is not explained
