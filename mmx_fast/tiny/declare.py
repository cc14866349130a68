"""The declaration format of a tiny model (``TinyModel``) and the placeholders its config and processor use.

A declaration is data: transformers class NAMES with keyword arguments (``Call``), in which a few values are
only known when the model is built and are written as placeholders:

- ``TEXT``:            the shared tiny decoder (``TEXT_SHAPE``) plus the tokenizer's vocabulary size and
                       pad / eos / bos ids, as a dict; ``Call("LlamaConfig", TEXT)`` or
                       ``Merge(TEXT, head_dim=16)`` to extend it;
- ``Token("<image>")``: the id of a token of the family's tokenizer;
- ``Size(fn)``:        ``fn(image_size)``, the build's image size (``SIZE`` itself, ``SQUARE`` its
                       ``{"height": s, "width": s}``).

``mmx_fast.tiny.build`` resolves them (``resolve``) and builds the model and the processor; nothing here
imports transformers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The tiny decoder and vision tower every family shares (text hidden 64, 2 layers, 4 heads / 2 KV heads;
# vision 2 layers, width 32, patch 14).
HIDDEN = 64
HEADS = 4
PATCH = 14
VISION_WIDTH = 32
VISION_LAYERS = 2
VISION_HEADS = 2
TEXT_SHAPE: dict[str, Any] = dict(
    hidden_size=HIDDEN,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=HEADS,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)


@dataclass(frozen=True)
class Call:
    """``transformers.<name>(**kwargs)``, the kwargs resolved first; ``bases`` are dict placeholders (``TEXT``,
    ``Merge``) merged under ``kwargs``."""

    name: str
    bases: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, name: str, *bases: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "bases", bases)
        object.__setattr__(self, "kwargs", kwargs)


@dataclass(frozen=True)
class Merge:
    """A dict: the ``bases`` (dicts or dict placeholders) merged, then ``kwargs`` on top."""

    bases: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __init__(self, *bases: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "bases", bases)
        object.__setattr__(self, "kwargs", kwargs)


@dataclass(frozen=True)
class Token:
    """The id of ``token`` in the family's tokenizer."""

    token: str


@dataclass(frozen=True)
class Size:
    """``fn(image_size)``: a value that depends on the image size the model is built for."""

    fn: Callable[[int], Any]


class _Text:
    def __repr__(self) -> str:
        return "TEXT"


TEXT: Any = _Text()  # the shared decoder kwargs + the tokenizer's ids (see the module docstring)
SIZE = Size(lambda s: s)
SQUARE = Size(lambda s: {"height": s, "width": s})


@dataclass(frozen=True)
class Tokens:
    """A family's tokenizer: the tiny byte-level BPE plus these special tokens.

    special:      added as special tokens, in this order (ids follow the BPE's 1200);
    named:        tokenizer attributes (``bos_token``, ``eos_token``, ``pad_token``, ``unk_token``) -> token;
    extra:        ``extra_special_tokens`` (the names processors read, e.g. ``image_token``) -> token;
    end_of_turn:  where greedy generation stops (the only special token whose unembedding row stays live);
    bos:          a token the tokenizer itself prepends (None: the chat template or the processor writes it);
    padding_side: the tokenizer's padding side.
    """

    special: tuple[str, ...]
    named: Mapping[str, str]
    extra: Mapping[str, str]
    end_of_turn: str
    bos: str | None = None
    padding_side: str = "right"


@dataclass(frozen=True)
class TinyModel:
    """One tiny model: a REAL transformers model class from a small config, and the family's REAL processor.

    name:          the ``tiny_model`` name (``"llava"``; a variant such as ``"internvl_tiled"``).
    model_type:    the registry's model type (adapter, ``config.model_type``); defaults to ``name``.
    model:         the transformers model class name.
    config:        ``Call`` of its config class (``tie_word_embeddings=False`` is added).
    processor:     ``Call`` of its processor class; the tokenizer, the chat template (when not None) and, for
                   a processor with a video processor, ``video_processor=None`` are added.
    tokens:        the tokenizer (``Tokens``).
    chat_template: Jinja, mimicking the real model's (None: the family has none).
    image_size:    the default ``image_size`` (what it means is the family's: input side, tile side or, for
                   Qwen-VL, the processor's largest side).
    doc:           one line for humans: the prompt layout and the visual-token grid.
    """

    name: str
    model: str
    config: Call
    processor: Call
    tokens: Tokens
    chat_template: str | None
    image_size: int
    doc: str = ""
    model_type: str = ""

    def __post_init__(self) -> None:
        if not self.model_type:
            object.__setattr__(self, "model_type", self.name)
