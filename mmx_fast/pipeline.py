"""The steps every explain path runs, in this order (docs/design.md §2):

    load_inputs -> resolve_answers -> plan_forwards -> hidden_states -> attribute -> build_result

The oracle (``mmx_fast.reference.oracle.explain``) and the fast path (``mmx_fast.fast.Explainer``) both read
as this list. They differ only in ``hidden_states`` (the oracle runs one full forward per planned row; the fast
path runs the extra scales prefix-only, in length-bucketed batches, and reuses the scale-1.0 states generation
computed) and in ``attribute`` (the
paper's equations one token at a time vs the fused stages of ``mmx_fast.ops``). Everything else is here, once:
the input checks, image loading, answer resolution, the forward plan, the text positions ARC and TAM read,
the (scale, view) maps MSEA combines, a video's frame stacking, and the one place an ``Explanation`` is
built. This module imports neither path; as both paths call its pieces, ``tests/test_glue.py`` checks them
against brute-force restatements.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import MAX_NEW_TOKENS, ExplainConfig
from .explanation import Explanation
from .images import check_scaled_size, load_image
from .video import Video, is_video, load_video
from .words import raw_tokens

if TYPE_CHECKING:
    from PIL import Image

    from .adapters.base import Adapter, PromptInputs
    from .adapters.generation import StepScores


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def check_config(config) -> ExplainConfig:
    """None -> the default config; a method name -> its preset; an ExplainConfig as it is."""
    if config is None:
        config = ExplainConfig()
    elif isinstance(config, str):
        config = ExplainConfig(method=config)
    elif not isinstance(config, ExplainConfig):
        raise TypeError(
            f"config of type {type(config).__name__} is not supported; expected ExplainConfig or a method name"
        )
    config.check_runtime()
    return config


def check_configs(configs) -> list[ExplainConfig]:
    """A non-empty list of configs (or method names), each checked by ``check_config``."""
    if isinstance(configs, (ExplainConfig, str)) or not configs:
        raise TypeError("configs must be a non-empty list of ExplainConfig (or method names)")
    return [check_config(c) for c in configs]


# The attribute ``mmx_fast.testing.tiny_model`` sets on the random-weight models it builds (results say so).
RANDOM_WEIGHTS_ATTR = "mmx_fast_random_weights"

# Bounds on a request's text, checked before any model work (README "Limits and guarantees").
MAX_PROMPT_CHARS = 16384
MAX_ANSWER_TOKENS = MAX_NEW_TOKENS


def check_text(name: str, text: str, limit: int = MAX_PROMPT_CHARS) -> str:
    """``text`` must encode as UTF-8 (no lone surrogates, as Python keeps bytes of a file name or argument that
    are not UTF-8) and have at most ``limit`` characters."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"{name} is not valid text: it holds the lone surrogate {text[e.start]!r} at position {e.start} "
            "(a byte that was not UTF-8?); expected a str that encodes as UTF-8"
        ) from None
    if len(text) > limit:
        raise ValueError(
            f"{name} of {len(text)} characters is too long; at most {limit} characters are allowed"
        )
    return text


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt of type {type(prompt).__name__} is not supported; expected a non-empty str")
    check_text("prompt", prompt)
    if not prompt.strip():
        raise ValueError(f"prompt={prompt!r} is empty; expected a non-empty instruction text")
    return prompt


def check_top_k(configs: list[ExplainConfig], vocab: int) -> None:
    for c in configs:
        if c.top_k > vocab:
            raise ValueError(
                f"top_k={c.top_k} is larger than the vocabulary ({vocab}); expected 1 <= top_k <= {vocab}"
            )


def check_finite_hidden(h: torch.Tensor, where: str) -> None:
    """NaN / Inf in the model's states would silently become zero (or NaN) maps: refuse them."""
    if not bool(torch.isfinite(h).all()):
        bad = int((~torch.isfinite(h)).any(-1).sum())
        raise ValueError(
            f"the model returned non-finite hidden states (NaN or Inf) at {bad} positions ({where}); "
            "expected finite values (check the model's dtype and weights)"
        )


def check_forced_answer(adapter: Adapter, answer) -> list[int]:
    """A forced answer (text or token ids) as token ids, every id inside the vocabulary, at most
    ``MAX_ANSWER_TOKENS`` of them."""
    if isinstance(answer, str):
        return _check_answer_length(adapter.encode_answer(check_text("answer", answer)))
    vocab = adapter.lm_head_weight().shape[0]
    if torch.is_tensor(answer) or isinstance(answer, np.ndarray):
        answer = answer.tolist()
    if not isinstance(answer, (list, tuple)) or not all(
        isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in answer
    ):
        raise TypeError(f"answer={answer!r} is not supported; expected None, a str or a list of token ids")
    bad = [int(a) for a in answer if not 0 <= int(a) < vocab]
    if bad:
        raise ValueError(f"answer token ids {bad[:5]} are out of range; expected ids in [0, {vocab})")
    return _check_answer_length([int(a) for a in answer])


def _check_answer_length(ids: list[int]) -> list[int]:
    if len(ids) > MAX_ANSWER_TOKENS:
        raise ValueError(
            f"answer of {len(ids)} tokens is too long; at most {MAX_ANSWER_TOKENS} tokens are allowed "
            "(mmx_fast.pipeline.MAX_ANSWER_TOKENS)"
        )
    return ids


# --------------------------------------------------------------------------------------------------
# Step 1: load inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One (image, prompt) request, checked and loaded, with its scale-1.0 model inputs.

    answer: what the caller asked for (None: generate; a str or token ids: forced), not yet resolved."""

    image: Image.Image | Video
    prompt: str
    answer: object
    base: PromptInputs


def load_media(x) -> Image.Image | Video:
    """A video (``mmx_fast.video``: a ``Video`` or a list of frames) or an image (``mmx_fast.images``)."""
    return load_video(x) if is_video(x) else load_image(x)


def load_inputs(adapter: Adapter, images, prompts, answers, configs: list[ExplainConfig]) -> list[Item]:
    """Check the request (cheap checks first), load every image as RGB and prepare its scale-1.0 inputs."""
    if isinstance(images, (str, bytes)) or not hasattr(images, "__len__"):
        raise TypeError("images must be a list of images (PIL, numpy arrays or paths)")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of str, one per image")
    if len(images) != len(prompts):
        raise ValueError(
            f"got {len(images)} images but {len(prompts)} prompts; expected one prompt per image"
        )
    if answers is None:
        answers = [None] * len(images)
    if len(answers) != len(images):
        raise ValueError(
            f"got {len(answers)} answers for {len(images)} images; expected one (or None) per image"
        )
    prompts = [check_prompt(p) for p in prompts]
    loaded = [load_media(im) for im in images]
    for im in loaded:
        w, h = im.size if isinstance(im, Video) else (im.width, im.height)
        check_scaled_size(w, h, union_scales(configs), "video frame" if isinstance(im, Video) else "image")
    check_top_k(configs, adapter.lm_head_weight().shape[0])
    return [
        Item(image=im, prompt=p, answer=a, base=adapter.prepare(im, p, 1.0))
        for im, p, a in zip(loaded, prompts, answers)
    ]


# --------------------------------------------------------------------------------------------------
# Step 2: answers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """The answer explained for one item.

    ids:    token ids (stop token excluded); empty when the model answered nothing.
    tokens: one display string per id (``display_tokens``).
    text:   the answer text: the tokenizer's decode of the whole id sequence (``decode_text``).
    states: the scale-1.0 last-layer normed states generation computed ([L + T - 1, d]), when the answer was
            generated by a path that keeps them; None otherwise (then scale 1.0 is planned as a forward).
    scores: the best logits generation's lm_head computed at the T answer-predicting positions
            (``adapters.generation.StepScores``), when kept: stage B ranks those rows from them instead of
            scoring them again over W_U (docs/design.md §1.3); None otherwise."""

    ids: list[int]
    tokens: list[str]
    states: torch.Tensor | None = None
    text: str = ""
    scores: StepScores | None = None


def resolve_answers(
    adapter: Adapter, items: list[Item], max_new_tokens: int, keep_states: bool, keep_scores: int = 0
) -> list[Answer]:
    """Forced answers as given (checked); the others generated greedily at scale 1.0, one at a time
    (``keep_states=False``, the oracle) or in one left-padded batch that also keeps the decoder's states
    (``keep_states=True``, the fast path) and the ``keep_scores`` best logits of each answer position."""
    ids: list[list[int] | None] = [
        None if it.answer is None else check_forced_answer(adapter, it.answer) for it in items
    ]
    states: dict[int, torch.Tensor] = {}
    scores: dict[int, StepScores | None] = {}
    todo = [i for i, a in enumerate(ids) if a is None]
    if todo and keep_states:
        generated, kept, scored = adapter.generate_scored(
            [items[i].base for i in todo], max_new_tokens, keep_scores
        )
        states, scores = dict(zip(todo, kept)), dict(zip(todo, scored))
    else:
        generated = [adapter.generate(items[i].base, max_new_tokens) for i in todo]
    for i, g in zip(todo, generated):
        ids[i] = g
    return [
        Answer(a, display_tokens(adapter, a), states.get(i), decode_text(adapter, a), scores.get(i))
        for i, a in enumerate(ids)
    ]


def decode_text(adapter: Adapter, ids: list[int]) -> str:
    """The answer text: the whole id sequence decoded at once (characters split over several byte-level
    tokens come out whole, which joining per-token decodes cannot do)."""
    if not ids:
        return ""
    return adapter.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def display_tokens(adapter: Adapter, ids: list[int]) -> list[str]:
    """One display string per id: the token decoded on its own, except that a token holding only part of a
    character (which decodes to U+FFFD) shows its bytes, e.g. ``<0xE2><0x98>``."""
    shown = list(adapter.decode_tokens(ids))
    for k, (tid, text) in enumerate(zip(ids, shown)):
        if "\ufffd" in text:
            raw = _piece_bytes(adapter.tokenizer, tid)
            if raw is not None and b"\xef\xbf\xbd" not in raw:
                shown[k] = show_bytes(raw)
    return shown


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")  # SentencePiece's byte-fallback pieces


@functools.cache
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's spelling of bytes (GPT-2, Qwen2, ...): the printable Latin-1 bytes stand for themselves,
    the others (in order) for U+0100 onwards. Maps each such character to its byte."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(0x100 + extra)] = b
            extra += 1
    return table


def _piece_bytes(tokenizer, tid: int) -> bytes | None:
    """The bytes a byte-level or byte-fallback token stands for; None when it is neither."""
    try:
        piece = tokenizer.convert_ids_to_tokens(int(tid))
    except Exception:
        return None
    if not isinstance(piece, str) or not piece:
        return None
    m = _BYTE_PIECE.match(piece)
    if m:
        return bytes([int(m[1], 16)])
    table = _byte_level_alphabet()
    if all(c in table for c in piece):
        return bytes(table[c] for c in piece)
    return None


def show_bytes(raw: bytes) -> str:
    """UTF-8 bytes as text, each byte that is not part of a whole character shown as ``<0xNN>``."""
    out, i = [], 0
    while i < len(raw):
        for n in (1, 2, 3, 4):
            try:
                out.append(raw[i : i + n].decode("utf-8"))
            except UnicodeDecodeError:
                continue
            i += n
            break
        else:
            out.append(f"<0x{raw[i]:02X}>")
            i += 1
    return "".join(out)


# --------------------------------------------------------------------------------------------------
# Step 2b: targets (explain only some answer tokens)
# --------------------------------------------------------------------------------------------------

MAX_TARGETS = MAX_ANSWER_TOKENS


def check_targets_spec(targets) -> list[int | str] | None:
    """``targets`` as given by a caller, checked before any model work: None (every token), or a non-empty
    list of token indices (int, negative from the end) and / or words (str); a single int or str is a list of
    one."""
    if targets is None:
        return None
    if isinstance(targets, (str, int, np.integer)) and not isinstance(targets, bool):
        targets = [targets]
    if torch.is_tensor(targets) or isinstance(targets, np.ndarray):
        targets = targets.tolist()
    if not isinstance(targets, (list, tuple)) or not all(
        (isinstance(t, (int, np.integer)) and not isinstance(t, bool)) or isinstance(t, str) for t in targets
    ):
        raise TypeError(
            f"targets={targets!r} is not supported; expected None, or a list of answer token indices (int) "
            "and / or words (str)"
        )
    if not targets:
        raise ValueError("targets=[] selects no token; pass None to explain every answer token")
    if len(targets) > MAX_TARGETS:
        raise ValueError(f"targets has {len(targets)} entries; at most {MAX_TARGETS} are allowed")
    for t in targets:
        if isinstance(t, str):
            check_text("a target word", t, 256)
            if not t.strip():
                raise ValueError(f"target word {t!r} is empty; expected a word of the answer")
    return [t if isinstance(t, str) else int(t) for t in targets]


def resolve_targets(adapter: Adapter, answer: Answer, targets: list[int | str] | None) -> list[int] | None:
    """The answer token indices ``targets`` selects, sorted and unique: an int is a token index (negative
    from the end); a str selects every token of each answer word equal to it, words grouped as
    ``Explanation.word_maps`` groups them (``mmx_fast.words.group_words``; compared with spaces removed).
    None: every token. Errors name the target and what the answer offers."""
    if targets is None:
        return None
    T = len(answer.ids)
    words = groups = None
    chosen: set[int] = set()
    for t in targets:
        if isinstance(t, int):
            if not -T <= t < T:
                raise IndexError(
                    f"target token index {t} is out of range; the answer has {T} tokens (valid: "
                    f"{'none' if T == 0 else f'-{T}..{T - 1}'})"
                )
            chosen.add(t % T)
            continue
        if words is None:
            from .words import group_words

            words, groups = group_words(raw_tokens(adapter.tokenizer, answer.ids), answer.tokens)
        want = "".join(t.split())
        hits = [g for w, g in zip(words, groups) if w == want]
        if not hits:
            shown = ", ".join(repr(w) for w in words[:20]) + (", ..." if len(words) > 20 else "")
            raise ValueError(
                f"target word {t!r} is not a word of the answer; its words are: {shown or 'none'}"
            )
        for g in hits:
            chosen.update(g)
    return sorted(chosen)


def cut_answer(answer: Answer, targets: list[int] | None) -> Answer:
    """The answer up to its last target: no map needs a later token (a target's context is the prompt and
    the answer tokens before it), so neither the forwards nor the attribution see them. The kept states
    (L + T - 1 rows) and generation's scores (T rows) are cut to match."""
    if targets is None or not answer.ids:
        return answer
    keep = targets[-1] + 1
    if keep == len(answer.ids):
        return answer
    states = (
        None if answer.states is None else answer.states[: answer.states.shape[0] - len(answer.ids) + keep]
    )
    sc = answer.scores  # one row per answer-predicting position
    scores = None if sc is None else dataclasses.replace(sc, values=sc.values[:keep], ids=sc.ids[:keep])
    return Answer(answer.ids[:keep], answer.tokens[:keep], states, answer.text, scores)


# --------------------------------------------------------------------------------------------------
# Step 3: plan forwards
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    """One teacher-forced forward to run: item ``item``'s inputs at ``scale`` followed by its answer.

    prefix_only: only the visual tokens' states are read (every scale but 1.0, whose text positions feed the
                 rankings): the fast path may stop the forward at the last visual token (docs/design.md §2);
                 the oracle runs every row in full. Never for a family whose visual states read later text
                 (``Adapter.causal_visual_states`` False: PaliGemma's bidirectional prefix)."""

    item: int
    scale: float
    inputs: PromptInputs
    answer_ids: list[int]
    prefix_only: bool = False


def union_scales(configs: list[ExplainConfig]) -> list[float]:
    return sorted({s for c in configs for s in c.scales})


def plan_forwards(adapter: Adapter, items: list[Item], answers: list[Answer], scales) -> list[Forward]:
    """Every (item, scale) whose states are needed: items with a non-empty answer, every scale, except
    scale 1.0 where generation already kept the states."""
    plan = []
    for i, (it, ans) in enumerate(zip(items, answers)):
        if not ans.ids:
            continue
        for s in scales:
            if s == 1.0 and ans.states is not None:
                continue
            inputs = it.base if s == 1.0 else adapter.prepare(it.image, it.prompt, s)
            # a prefix-only pass needs visual states that do not read the text after them (not PaliGemma's)
            prefix = s != 1.0 and adapter.causal_visual_states
            plan.append(Forward(i, s, inputs, ans.ids, prefix_only=prefix))
    return plan


# --------------------------------------------------------------------------------------------------
# Step 4: hidden states (each path runs the plan its own way, then collects with this)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleStates:
    """An item's model inputs at one scale and the last-layer normed hidden states of its sequence (for a
    prefix-only forward, of the sequence up to its last visual token: ``hidden`` may be shorter than
    ``inputs``; only scale 1.0's text positions are ever read)."""

    inputs: PromptInputs
    hidden: torch.Tensor


def collect_states(
    items: list[Item], answers: list[Answer], plan: list[Forward], hidden: list[torch.Tensor]
) -> dict[tuple[int, float], ScaleStates]:
    """{(item, scale): states}: the planned forwards' outputs (``hidden[j]`` belongs to ``plan[j]``) plus the
    scale-1.0 states generation kept; every one checked finite."""
    out = {(f.item, f.scale): ScaleStates(f.inputs, h) for f, h in zip(plan, hidden)}
    for i, (it, ans) in enumerate(zip(items, answers)):
        if ans.ids and ans.states is not None:
            out[(i, 1.0)] = ScaleStates(it.base, ans.states)
    for (i, s), st in out.items():
        check_finite_hidden(st.hidden, f"scale {s}" if len(items) == 1 else f"image {i} at scale {s}")
    return out


def states_at(states: dict[tuple[int, float], ScaleStates], item: int, scales) -> list[ScaleStates]:
    """One item's states at ``scales``, in that order."""
    return [states[(item, s)] for s in scales]


# --------------------------------------------------------------------------------------------------
# Step 5: attribute (each path has its own; these are the text positions and ids both read)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextSide:
    """What ARC / TAM need about the text, from the scale-1.0 pass."""

    seq_ids: list[int]
    prompt_len: int
    span: tuple[int, int]
    answer_ids: list[int]

    @property
    def prompt_ids(self) -> list[int]:
        s, e = self.span
        return self.seq_ids[s:e]

    def predicting_positions(self) -> tuple[list[int], list[int]]:
        """Positions whose next-token distribution predicts each prompt / answer token (position - 1)."""
        s, e = self.span
        return [q - 1 for q in range(s, e)], [self.prompt_len + t - 1 for t in range(len(self.answer_ids))]


def text_side(base: PromptInputs, answer_ids: list[int]) -> TextSide:
    return TextSide(base.input_ids + answer_ids, base.length, base.prompt_span, answer_ids)


def map_ids(text: TextSide, k0: int, extra: list[int]) -> list[int]:
    """The vocab ids stage logit_lens maps, in this order: the T answer ids (targets), the P prompt ids (ARC's
    context), k0 (the base map), then TAM's extra classes (``reference.tam.tam_extra_classes``)."""
    return text.answer_ids + text.prompt_ids + [k0] + extra


def view_maps(
    inputs: PromptInputs, flat: torch.Tensor, grid: tuple[int, int]
) -> tuple[list[torch.Tensor], list[tuple]]:
    """One scale's logit-lens maps ``flat`` [M, N] (over ``inputs.visual_positions``) as the stage ``msea``
    inputs: (maps [M, h, w], placement) per view. Single-view families: the one grid with its coverage
    (cy, cx). Tiled families: every view (thumbnail, tiles) with the whole canonical cells of ``grid`` its box
    covers (y0, x0, y1, x1) (docs/design.md §1.2)."""
    from .adapters.geometry import canonical_box

    m = flat.shape[0]
    if (
        inputs.views is None
    ):  # a video: one map per id and frame, [m * t, h, w] (``PromptInputs.stack_shape``)
        return [flat.reshape(inputs.stack_shape(m))], [tuple(inputs.coverage)]
    maps = [flat[:, v.start : v.stop].reshape(m, *v.grid) for v in inputs.views]
    return maps, [canonical_box(v.box, grid) for v in inputs.views]


def msea_inputs(
    per_scale: list[ScaleStates], flats: list[torch.Tensor], grid: tuple[int, int]
) -> tuple[list[torch.Tensor], list[tuple], list[slice]]:
    """Every (scale, view) map and its placement, in scale order, plus the slice of them each scale owns."""
    maps: list[torch.Tensor] = []
    places: list[tuple] = []
    owned: list[slice] = []
    for st, flat in zip(per_scale, flats):
        m, p = view_maps(st.inputs, flat, grid)
        owned.append(slice(len(maps), len(maps) + len(m)))
        maps += m
        places += p
    return maps, places, owned


@dataclass(frozen=True)
class Attribution:
    """What ``attribute`` returns for one (item, config).

    maps:       [T, Hc, Wc] in [0, 1], after mitigation, filter and normalisation ([T, t, Hc, Wc] for a video).
    raw_maps:   [T, Hc, Wc], the MSEA maps before mitigation (``keep_scale_maps`` only; video: [T, t, Hc, Wc]).
    scale_maps: {scale: [T, h_s, w_s]} raw clipped logit-lens maps (``keep_scale_maps`` only; video:
                [T, t, h_s, w_s])."""

    maps: torch.Tensor
    raw_maps: torch.Tensor | None = None
    scale_maps: dict[float, torch.Tensor] | None = None


def stacked(maps: torch.Tensor, base: PromptInputs) -> torch.Tensor:
    """MSEA output [M * t, Hc, Wc] (one map per id and frame) as [M, t * Hc, Wc]: each id's frames stacked
    vertically, so ARC's dot products, beta, the floor and the max normalisation run over the whole video
    (TAM's video path fits and normalises jointly too). Images (t = 1): unchanged."""
    t = base.frames
    if t == 1:
        return maps
    hc, wc = base.grid
    return maps.reshape(-1, t * hc, wc)


def unstacked(maps: torch.Tensor, base: PromptInputs) -> torch.Tensor:
    """[T, t * H, W] back to [T, t, H, W] for a video; images unchanged."""
    if base.temporal is None:
        return maps
    return maps.reshape(maps.shape[0], base.frames, -1, maps.shape[-1])


def scale_answer_maps(m: torch.Tensor, inputs: PromptInputs, T: int) -> torch.Tensor:
    """The answer ids' maps of one scale: [T, h, w] ([T, t, h, w] for a video)."""
    if inputs.temporal is None:
        return m[:T]
    return m[: T * inputs.frames].reshape(T, inputs.frames, *m.shape[-2:])


def per_frame(maps: torch.Tensor, base: PromptInputs, fn) -> torch.Tensor:
    """``fn`` ([..., H, W] -> same) applied to each frame of stacked maps [T, t * Hc, Wc] on its own (the filter
    must not mix frames)."""
    t = base.frames
    hc, wc = base.grid
    return fn(maps.reshape(-1, t, hc, wc)).reshape(maps.shape)


# --------------------------------------------------------------------------------------------------
# Step 6: result
# --------------------------------------------------------------------------------------------------


class Stopwatch:
    """Wall time per step: ``lap(name)`` records the time since the previous lap, ``restart`` or the start."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def restart(self) -> None:
        self._last = time.perf_counter()

    def lap(self, name: str) -> float:
        now = time.perf_counter()
        self.laps[name] = now - self._last
        self._last = now
        return self.laps[name]


def build_result(
    adapter: Adapter,
    item: Item,
    answer: Answer,
    config: ExplainConfig,
    attribution: Attribution | None,
    timings: dict[str, float],
    targets: list[int] | None = None,
) -> Explanation:
    """The one place an ``Explanation`` is built. ``attribution`` None (an empty answer): no maps.
    ``targets``: the answer token indices the attribution's maps belong to (in that order; None: every
    token); the result then holds only those tokens, with ``token_positions`` saying where they sit."""
    grid = tuple(item.base.grid)
    video = item.image if isinstance(item.image, Video) else None
    ids, tokens = list(answer.ids), list(answer.tokens)
    if targets is not None:
        ids, tokens = [ids[t] for t in targets], [tokens[t] for t in targets]
    if attribution is None:
        time_axis = () if video is None else (item.base.frames,)
        attribution = Attribution(torch.zeros((len(ids), *time_axis, *grid), dtype=torch.float32))
    raw, per_scale = attribution.raw_maps, attribution.scale_maps
    return Explanation(
        maps=attribution.maps.float().cpu().contiguous(),
        answer_ids=ids,
        answer_tokens=tokens,
        answer_text=answer.text,
        answer_pieces=raw_tokens(adapter.tokenizer, ids),
        token_positions=None if targets is None else tuple(targets),
        grid=grid,
        prompt=item.prompt,
        config=config,
        image=item.image if video is None else video.frames[0],
        frames=None if video is None else video.frames,
        scale_maps={s: m.float().cpu().clone() for s, m in per_scale.items()} if per_scale else None,
        raw_maps=None if raw is None else raw.float().cpu().clone(),
        timings=dict(timings),
        view_box=adapter.view_box(item.image if video is None else video.frames[0]),
        random_weights=bool(getattr(adapter.model, RANDOM_WEIGHTS_ATTR, False)),
    )
