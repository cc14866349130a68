"""The steps every explain path runs, in this order (docs/design.md §2):

    load_inputs -> resolve_answers -> plan_forwards -> hidden_states -> attribute -> build_result

The oracle (``mmx_fast.reference.oracle.explain``) and the fast path (``mmx_fast.fast.Explainer``) both read
as this list. They differ only in ``hidden_states`` (the oracle runs one full forward per planned row; the fast
path runs the extra scales prefix-only, in length-bucketed batches, and reuses the scale-1.0 states generation
computed) and in ``attribute`` (the
paper's equations one token at a time vs the fused stages of ``mmx_fast.ops``). Everything else is here, once:
the input checks, image loading, answer resolution, the forward plan, the text positions ARC and TAM read,
and the one place an ``Explanation`` is built. This module imports neither path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import ExplainConfig
from .explanation import Explanation
from .images import load_image

if TYPE_CHECKING:
    from PIL import Image

    from .adapters.base import Adapter, PromptInputs


# --------------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------------


def check_config(config) -> ExplainConfig:
    """None -> the default config; a method name -> its preset; an ExplainConfig as it is."""
    if config is None:
        return ExplainConfig()
    if isinstance(config, str):
        return ExplainConfig(method=config)
    if not isinstance(config, ExplainConfig):
        raise TypeError(
            f"config of type {type(config).__name__} is not supported; expected ExplainConfig or a method name"
        )
    return config


def check_configs(configs) -> list[ExplainConfig]:
    """A non-empty list of configs (or method names), each checked by ``check_config``."""
    if isinstance(configs, (ExplainConfig, str)) or not configs:
        raise TypeError("configs must be a non-empty list of ExplainConfig (or method names)")
    return [check_config(c) for c in configs]


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt of type {type(prompt).__name__} is not supported; expected a non-empty str")
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
    """A forced answer (text or token ids) as token ids, every id inside the vocabulary."""
    if isinstance(answer, str):
        return adapter.encode_answer(answer)
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
    return [int(a) for a in answer]


# --------------------------------------------------------------------------------------------------
# Step 1: load inputs
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """One (image, prompt) request, checked and loaded, with its scale-1.0 model inputs.

    answer: what the caller asked for (None: generate; a str or token ids: forced), not yet resolved."""

    image: Image.Image
    prompt: str
    answer: object
    base: PromptInputs


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
    loaded = [load_image(im) for im in images]
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
    tokens: one display string per id.
    states: the scale-1.0 last-layer normed states generation computed ([L + T - 1, d]), when the answer was
            generated by a path that keeps them; None otherwise (then scale 1.0 is planned as a forward)."""

    ids: list[int]
    tokens: list[str]
    states: torch.Tensor | None = None


def resolve_answers(
    adapter: Adapter, items: list[Item], max_new_tokens: int, keep_states: bool
) -> list[Answer]:
    """Forced answers as given (checked); the others generated greedily at scale 1.0, one at a time
    (``keep_states=False``, the oracle) or in one left-padded batch that also keeps the decoder's states
    (``keep_states=True``, the fast path)."""
    ids: list[list[int] | None] = [
        None if it.answer is None else check_forced_answer(adapter, it.answer) for it in items
    ]
    states: dict[int, torch.Tensor] = {}
    todo = [i for i, a in enumerate(ids) if a is None]
    if todo and keep_states:
        generated, kept = adapter.generate_with_states([items[i].base for i in todo], max_new_tokens)
        states = dict(zip(todo, kept))
    else:
        generated = [adapter.generate(items[i].base, max_new_tokens) for i in todo]
    for i, g in zip(todo, generated):
        ids[i] = g
    return [Answer(a, adapter.decode_tokens(a), states.get(i)) for i, a in enumerate(ids)]


# --------------------------------------------------------------------------------------------------
# Step 3: plan forwards
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    """One teacher-forced forward to run: item ``item``'s inputs at ``scale`` followed by its answer.

    prefix_only: only the visual tokens' states are read (every scale but 1.0, whose text positions feed the
                 rankings): the fast path may stop the forward at the last visual token (docs/design.md §2);
                 the oracle runs every row in full."""

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
            plan.append(Forward(i, s, inputs, ans.ids, prefix_only=s != 1.0))
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
    """The vocab ids stage A maps, in this order: the T answer ids (targets), the P prompt ids (ARC's
    context), k0 (the base map), then TAM's extra classes (``reference.tam.tam_extra_classes``)."""
    return text.answer_ids + text.prompt_ids + [k0] + extra


@dataclass(frozen=True)
class Attribution:
    """What ``attribute`` returns for one (item, config).

    maps:       [T, Hc, Wc] in [0, 1], after mitigation, filter and normalisation.
    raw_maps:   [T, Hc, Wc], the MSEA maps before mitigation (``keep_scale_maps`` only).
    scale_maps: {scale: [T, h_s, w_s]} raw clipped logit-lens maps (``keep_scale_maps`` only)."""

    maps: torch.Tensor
    raw_maps: torch.Tensor | None = None
    scale_maps: dict[float, torch.Tensor] | None = None


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
) -> Explanation:
    """The one place an ``Explanation`` is built. ``attribution`` None (an empty answer): no maps."""
    grid = tuple(item.base.grid)
    if attribution is None:
        attribution = Attribution(torch.zeros((len(answer.ids),) + grid, dtype=torch.float32))
    raw, per_scale = attribution.raw_maps, attribution.scale_maps
    return Explanation(
        maps=attribution.maps.float().cpu().contiguous(),
        answer_ids=list(answer.ids),
        answer_tokens=list(answer.tokens),
        grid=grid,
        prompt=item.prompt,
        config=config,
        image=item.image,
        scale_maps={s: m.float().cpu().clone() for s, m in per_scale.items()} if per_scale else None,
        raw_maps=None if raw is None else raw.float().cpu().clone(),
        timings=dict(timings),
        view_box=adapter.view_box(item.image),
    )
