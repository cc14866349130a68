"""Builds a tiny model from its declaration (``mmx_fast/tiny/families.py``): the tokenizer, the processor and the
model with seeded random weights. Nothing downloads.

Every family shares one byte-level BPE (1200 tokens) trained deterministically on an in-memory English corpus;
the family's special tokens and chat template go on top. The output embedding rows of the special tokens other
than the end-of-turn token are zeroed, so greedy generation never emits image / template tokens (a real model
never does either) and answers can be replayed teacher-forced.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..pipeline import RANDOM_WEIGHTS_ATTR
from ..processors import accept_missing_video_processor
from .declare import TEXT, TEXT_SHAPE, Call, Merge, Size, TinyModel, Token
from .families import DECLARATIONS

TINY_MODELS: dict[str, TinyModel] = {d.name: d for d in DECLARATIONS}
if len(TINY_MODELS) != len(DECLARATIONS):
    raise RuntimeError("mmx_fast/tiny/families.py declares a tiny model name twice")

_BPE_VOCAB = 1200  # byte alphabet (256) + merges; special tokens come on top

_CORPUS = """
What is in the image? Describe the picture in detail. What color is the car on the left side of the street?
How many people are standing near the red door? Is there a dog in this photo? The cat is sleeping on a blue
sofa next to a window. A man rides a bicycle down a busy road while the sun sets behind tall buildings.
Two children play with a yellow ball in the green park. The kitchen has a white table, four chairs and a
bowl of fresh fruit: apples, oranges and bananas. Please answer the question briefly. Where is the boat?
The boat is floating on the calm lake under a cloudy grey sky. Which animal is larger, the horse or the
sheep? There is a small bird sitting on the branch of an old tree. What is the woman holding in her hands?
She is holding an umbrella because it is raining. The train arrives at the station at seven in the morning.
Read the text on the sign. The sign says stop. What time is shown on the clock? It is half past three.
Explain what is happening in this scene. A group of friends are having dinner at a restaurant. The pizza
has cheese, tomatoes and mushrooms. Is the light on or off? The light is on. Count the number of cars.
There are three cars and one truck parked along the road. The mountain is covered with snow and ice.
The ocean waves crash against the rocks near the beach. A girl with long brown hair is reading a book.
An airplane flies high above the clouds. The image shows a square, a circle and a triangle in different
colors: red, green, blue, orange, purple, black and white. Left, right, top, bottom, center, corner.
Yes. No. Maybe. I think the answer is yes. I do not know. It looks like a photograph of a city at night.
The quick brown fox jumps over the lazy dog. Large, small, bright, dark, round, sharp, soft, heavy.
One, two, three, four, five, six, seven, eight, nine, ten, eleven, twelve, hundred, thousand.
The user asks a question and the assistant answers it. USER: what is this? ASSISTANT: a system message.
A wooden bridge crosses the river between the village and the forest, where deer and foxes live quietly.
Scientists measure the temperature of the water every morning and write the numbers in a notebook.
The museum displays paintings, sculptures, ancient coins and a famous golden mask from Egypt.
Please describe the objects on the desk: a laptop, a phone, a cup of coffee, a pencil and some paper.
Is the person wearing glasses? He wears a striped shirt, dark jeans and comfortable running shoes.
The weather today is sunny and warm, but tomorrow it will be windy with heavy rain in the evening.
Which direction is the arrow pointing? The arrow points upward toward the highest shelf in the library.
Students gather in the classroom to learn mathematics, history, geography, music and chemistry.
The farmer drives a tractor across the field while cows graze peacefully beside the wooden fence.
Fresh vegetables such as carrots, potatoes, onions, lettuce and peppers are sold at the market.
Look carefully at the picture and tell me whether the door is open, closed or partially hidden.
Zebras, giraffes, elephants and lions gather around the water hole during the hot dry season.
"""


def declaration(name: str) -> TinyModel:
    """The declaration of tiny model ``name``; a ValueError naming the choices when there is none."""
    found = TINY_MODELS.get(name)
    if found is None:
        raise ValueError(f"unknown tiny-model family {name!r}; supported: {', '.join(TINY_MODELS)}")
    return found


@functools.lru_cache(maxsize=1)
def _base_bpe_json() -> str:
    """A byte-level BPE trained deterministically on the in-memory corpus (serialised, cached)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_BPE_VOCAB,
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    lines = [line.strip() for line in _CORPUS.strip().splitlines() if line.strip()]
    tok.train_from_iterator(lines * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(family: str):
    """The family's tokenizer: a ``PreTrainedTokenizerFast`` over the tiny byte-level BPE plus the family's
    special tokens and chat template."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    decl = declaration(family)
    spec = decl.tokens
    tok = Tokenizer.from_str(_base_bpe_json())
    tok.add_special_tokens(list(spec.special))
    if spec.bos is not None:
        bos = spec.bos
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        extra_special_tokens=dict(spec.extra),
        chat_template=decl.chat_template,
        padding_side=spec.padding_side,
        clean_up_tokenization_spaces=False,
        model_max_length=4096,
        **dict(spec.named),
    )
    if spec.bos is None:
        fast.add_bos_token = False
    return fast


def resolve(value: Any, tok, image_size: int) -> Any:
    """``value`` with its placeholders (``mmx_fast/tiny/declare.py``) replaced, containers copied."""
    import transformers

    if isinstance(value, Call):
        return getattr(transformers, value.name)(**_kwargs(value.bases, value.kwargs, tok, image_size))
    if isinstance(value, Merge):
        return _kwargs(value.bases, value.kwargs, tok, image_size)
    if value is TEXT:
        return dict(
            vocab_size=len(tok),
            **TEXT_SHAPE,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        )
    if isinstance(value, Token):
        return tok.convert_tokens_to_ids(value.token)
    if isinstance(value, Size):
        return value.fn(image_size)
    if isinstance(value, dict):
        return {k: resolve(v, tok, image_size) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(resolve(v, tok, image_size) for v in value)
    return value


def _kwargs(bases, kwargs, tok, image_size: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for base in bases:
        out.update(resolve(base, tok, image_size))
    out.update(resolve(dict(kwargs), tok, image_size))
    return out


def _processor(decl: TinyModel, tok, image_size: int):
    """The declared processor around ``tok`` (may add tokens to it: PaliGemma's <loc> / <seg>)."""
    import transformers

    cls = getattr(transformers, decl.processor.name)
    extra: dict[str, Any] = {"tokenizer": tok}
    if decl.chat_template is not None:
        extra["chat_template"] = decl.chat_template
    if "video_processor" in cls.get_attributes():
        cls, extra["video_processor"] = accept_missing_video_processor(cls), None
    return cls(**_kwargs(decl.processor.bases, decl.processor.kwargs, tok, image_size), **extra)


def _image_size(decl: TinyModel, image_size: int | None) -> int:
    if image_size is not None and (image_size < 28 or image_size % 28):
        raise ValueError(f"image_size={image_size} must be a positive multiple of 28")
    return decl.image_size if image_size is None else image_size


def tiny_processor(family: str, image_size: int | None = None):
    """The processor of tiny model ``family`` (its tokenizer inside), as :func:`tiny_model` builds it."""
    decl = declaration(family)
    return _processor(decl, tiny_tokenizer(family), decl.image_size if image_size is None else image_size)


def tiny_model(
    family: str,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    *,
    image_size: int | None = None,
    attn_implementation: str = "sdpa",
):
    """(model, processor) of a tiny random-weight model of ``family`` (a name in ``TINY_MODELS``).

    Deterministic for a given ``seed``. ``image_size``: the declaration's (``TinyModel.image_size``): for
    LLaVA / InternVL / Gemma 3 / PaliGemma the vision input size (default 112), for the tiled families the tile
    size (default 56), for Qwen-VL the processor's max side (default 224, i.e. at most 8x8 visual tokens); a
    multiple of 28. Nothing is downloaded.
    """
    import transformers

    decl = declaration(family)
    tok = tiny_tokenizer(family)
    size = _image_size(decl, image_size)
    processor = _processor(decl, tok, size)  # first: the processor may add tokens the vocabulary must hold
    config = getattr(transformers, decl.config.name)(
        **_kwargs(decl.config.bases, decl.config.kwargs, tok, size), tie_word_embeddings=False
    )
    config._attn_implementation = attn_implementation

    with torch.random.fork_rng(devices=[]):  # CPU generator only; the model is built on the CPU
        torch.manual_seed(seed)
        model = getattr(transformers, decl.model)(config)
    model = model.to(dtype).eval()
    _silence_special_rows(model, tok)
    setattr(model, RANDOM_WEIGHTS_ATTR, True)  # explanations of it say "random weights" (notebook, report)
    set_greedy_generation(model, tok, tok.convert_tokens_to_ids(decl.tokens.end_of_turn))
    return model, processor


def set_greedy_generation(model, tok, eos_token_id: int) -> None:
    """Greedy decoding with the family's stop and pad tokens (no sampling knobs left set)."""
    gen = model.generation_config
    gen.eos_token_id = eos_token_id
    gen.pad_token_id = tok.pad_token_id
    gen.bos_token_id = tok.bos_token_id
    gen.do_sample = False
    gen.temperature = None
    gen.top_p = None
    gen.top_k = None


@torch.no_grad()
def _silence_special_rows(model, tok) -> None:
    """Zero the unembedding rows of every added / special token except EOS (greedy decoding never emits
    image or template tokens, as with a real model)."""
    eos = tok.eos_token_id
    ids = set(tok.added_tokens_decoder) | set(tok.all_special_ids)
    ids.discard(eos)
    model.get_output_embeddings().weight[sorted(ids)] = 0
