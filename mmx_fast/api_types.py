"""The types of the public API's arguments, in one place (``explain_fast``, ``Explainer``, ``reference.explain``).

Only aliases: nothing here runs. ``Model`` / ``Processor`` name transformers' base classes for type checkers
without importing transformers at run time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image

from .config import ExplainConfig
from .video import Video

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

    Model = PreTrainedModel
    Processor = ProcessorMixin
else:
    Model = Any
    Processor = Any

# a preset name (``mmx_fast.METHODS``)
MethodName = Literal["msea-arc", "tam", "logit-lens"]
# what ``config=`` takes: a config, a preset name, or None for the default preset
ConfigLike = ExplainConfig | MethodName | None
# one image: a path or URL, PIL, numpy [H, W, 3] uint8, a tensor [3, H, W] / [H, W, 3]; or a video: a
# ``Video``, a list of frames, a video file's path
ImageLike = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor | Video | Sequence[Any]
# several images: a list of ``ImageLike`` or one tensor [N, C, H, W]
ImagesLike = Sequence[ImageLike] | torch.Tensor
# a forced answer: its text or its token ids; None: the model's own greedy answer
AnswerLike = str | Sequence[int] | torch.Tensor | np.ndarray | None
# the answer tokens to explain (``targets=``): token indices (negative count from the end) or words
TargetsLike = Sequence[int | str] | int | str | None
AttnImplementation = Literal["auto", "flash_attention_2", "sdpa", "eager"]
