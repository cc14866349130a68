"""Processors without torchvision: transformers builds video processors only with torchvision, and the
multimodal processor classes of Qwen2-VL, InternVL, LLaVA-OneVision and SmolVLM refuse a missing one.

Used by the loader (``mmx_fast.loading``, checkpoints on disk) and by the tiny models (``mmx_fast.tiny``).
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

# Set while a processor without a video processor saves itself (see accept_missing_video_processor).
_SAVING_WITHOUT_VIDEO: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "saving_without_video", default=False
)


@functools.cache
def accept_missing_video_processor(cls: type) -> type:
    """``cls`` (a transformers processor class) accepting ``video_processor=None``, and saving without it.

    The ONE place that relies on transformers internals: ``ProcessorMixin.__init__`` checks every component
    with ``check_argument_for_proper_class`` and rejects a missing video processor, and transformers can only
    build video processors with torchvision. No public switch skips that check (transformers 5.x), so this
    subclass overrides it for ``video_processor`` only; images and text are processed by the real class.
    ``save_pretrained`` walks ``get_attributes()`` and reads each component's ``_auto_class``, which ``None``
    lacks: while saving, the missing video processor is left out of that list, so the whole processor
    (tokenizer, image processor, processor_config.json with its settings, chat template) is written as
    transformers writes it and :func:`load` reads it back.
    """

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    def get_attributes(klass):
        names = cls.get_attributes()
        if _SAVING_WITHOUT_VIDEO.get():
            names = [n for n in names if n != "video_processor"]
        return names

    def save_pretrained(self, save_directory, *args, **kwargs):
        token = _SAVING_WITHOUT_VIDEO.set(getattr(self, "video_processor", None) is None)
        try:
            return cls.save_pretrained(self, save_directory, *args, **kwargs)
        finally:
            _SAVING_WITHOUT_VIDEO.reset(token)

    return type(
        cls.__name__,
        (cls,),
        {
            "check_argument_for_proper_class": check_argument_for_proper_class,
            "get_attributes": classmethod(get_attributes),
            "save_pretrained": save_pretrained,
        },
    )


def processor_without_video(location: str, family: str, trust_remote_code: bool = False):
    """The family's processor built from its tokenizer and image processor (Auto classes) and the saved
    processor settings (``get_processor_dict``: processor_config.json, e.g. InternVL's image_seq_length),
    with no video processor (so no torchvision). ``trust_remote_code`` is passed to transformers explicitly
    (False unless the caller opted in: ``mmx_fast.load``), so it never asks on stdin."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    from .adapters.registry import model_type_info

    cls = getattr(transformers, model_type_info(family).processor_class)
    names = cls.get_attributes()
    if "video_processor" in names:
        cls = accept_missing_video_processor(cls)
    processor_dict, kwargs = cls.get_processor_dict(location, local_files_only=True)
    components: dict[str, Any] = {}
    for name in names:
        if name == "tokenizer":
            components[name] = AutoTokenizer.from_pretrained(
                location, local_files_only=True, trust_remote_code=trust_remote_code
            )
        elif name == "image_processor":
            components[name] = AutoImageProcessor.from_pretrained(
                location, local_files_only=True, trust_remote_code=trust_remote_code
            )
        elif name == "video_processor":
            components[name] = None
        else:
            raise ValueError(f"{cls.__name__} needs a {name}, which mmx-fast cannot load")
    return cls.from_dict({**processor_dict, **components}, **kwargs)
