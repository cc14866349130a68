"""Processors without torchvision: transformers builds video processors only with torchvision, and the
multimodal processor classes of Qwen2-VL, InternVL, LLaVA-OneVision and SmolVLM refuse a missing one.

Used by the loader (``mmx_fast.loading``, checkpoints on disk) and by the tiny models (``mmx_fast.tiny``).
"""

from __future__ import annotations

import functools


@functools.cache
def accept_missing_video_processor(cls: type) -> type:
    """``cls`` (a transformers processor class) accepting ``video_processor=None``.

    The ONE place that relies on a transformers internal: ``ProcessorMixin.__init__`` checks every component
    with ``check_argument_for_proper_class`` and rejects a missing video processor, and transformers can only
    build video processors with torchvision. No public switch skips that check (transformers 5.x), so this
    subclass overrides it for ``video_processor`` only; images and text are processed by the real class.
    """

    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    return type(cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class})


def processor_without_video(location: str, family: str):
    """The family's processor built from its tokenizer and image processor (Auto classes) and the saved
    processor settings (``get_processor_dict``), with no video processor (so no torchvision)."""
    import transformers
    from transformers import AutoImageProcessor, AutoTokenizer

    from .adapters.registry import model_type_info

    cls = getattr(transformers, model_type_info(family).processor_class)
    names = cls.get_attributes()
    if "video_processor" in names:
        cls = accept_missing_video_processor(cls)
    processor_dict, kwargs = cls.get_processor_dict(location, local_files_only=True)
    args = []
    for name in names:
        if name == "tokenizer":
            args.append(AutoTokenizer.from_pretrained(location, local_files_only=True))
        elif name == "image_processor":
            args.append(AutoImageProcessor.from_pretrained(location, local_files_only=True))
        elif name == "video_processor":
            args.append(None)
        else:
            raise ValueError(f"{cls.__name__} needs a {name}, which mmx-fast cannot load")
    return cls.from_args_and_dict(args, processor_dict, **kwargs)
