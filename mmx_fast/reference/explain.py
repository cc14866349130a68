"""The reference pipeline: the paper's equations, one token and one scale at a time, in plain torch.

This is the oracle the fast path is tested against. It favours being obviously right over being quick:
one forward per scale, the [L, V] logits where TAM needs them, a Python loop over targets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..adapters.base import Adapter, PromptInputs
from ..config import ExplainConfig
from ..explanation import Explanation
from ..images import load_image
from .logit_lens import base_vocab_id, logit_lens_maps
from .msea import msea_aggregate
from .rankings import rbo, topk_ranking
from .refine import arc_weights, normalize_max, rank_gaussian_filter, refine_one
from .tam import tam_maps, tam_token_strings


def check_prompt(prompt) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt of type {type(prompt).__name__} is not supported; expected a non-empty str")
    if not prompt.strip():
        raise ValueError(f"prompt={prompt!r} is empty; expected a non-empty instruction text")
    return prompt


def check_finite_hidden(h: torch.Tensor, where: str) -> None:
    """NaN / Inf in the model's states would silently become zero (or NaN) maps: refuse them."""
    if not bool(torch.isfinite(h).all()):
        bad = int((~torch.isfinite(h)).any(-1).sum())
        raise ValueError(
            f"the model returned non-finite hidden states (NaN or Inf) at {bad} positions ({where}); "
            "expected finite values (check the model's dtype and weights)"
        )


def check_config(config) -> ExplainConfig:
    if config is None:
        return ExplainConfig()
    if isinstance(config, str):
        return ExplainConfig(method=config)
    if not isinstance(config, ExplainConfig):
        raise TypeError(
            f"config of type {type(config).__name__} is not supported; expected ExplainConfig or a method name"
        )
    return config


def resolve_answer(adapter: Adapter, prompt: PromptInputs, answer, config: ExplainConfig) -> list[int]:
    """Forced answer (text or ids) or the greedy answer at scale 1.0 (stop token excluded)."""
    vocab = adapter.lm_head_weight().shape[0]
    if answer is None:
        return adapter.generate(prompt, config.max_new_tokens)
    if isinstance(answer, str):
        return adapter.encode_answer(answer)
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


@dataclass
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


def empty_explanation(grid, answer_ids, tokens, prompt, config, image) -> Explanation:
    return Explanation(
        maps=torch.zeros((len(answer_ids),) + tuple(grid), dtype=torch.float32),
        answer_ids=list(answer_ids),
        answer_tokens=list(tokens),
        grid=tuple(grid),
        prompt=prompt,
        config=config,
        image=image,
    )


def arc_reference(
    a_t: torch.Tensor,
    prompt_maps: torch.Tensor,
    base_map: torch.Tensor | None,
    rank_prompt: torch.Tensor,
    rank_answer: torch.Tensor,
    config: ExplainConfig,
) -> torch.Tensor:
    """ARC for every target t, one at a time (Eq. 6-9), then G and normalisation. a_t: [T, H, W]."""
    out = []
    for t in range(a_t.shape[0]):
        ctx_maps = [prompt_maps, a_t[:t]]
        ctx_ranks = torch.cat([rank_prompt, rank_answer[:t]], 0)
        r = rbo(ctx_ranks, rank_answer[t].expand_as(ctx_ranks), p=config.rbo_p, variant=config.rbo_variant)
        w = arc_weights(r).to(torch.float32)
        if base_map is not None:  # A_0 with r_0 = 0, so w_0 = 1
            ctx_maps.append(base_map[None])
            w = torch.cat([w, torch.ones(1)])
        out.append(refine_one(a_t[t], torch.cat(ctx_maps, 0), w, apply_filter=config.filter))
    return torch.stack(out, 0) if out else a_t.new_zeros(a_t.shape)


@torch.no_grad()
def explain(
    model, processor, image, prompt: str, answer=None, config: ExplainConfig | None = None
) -> Explanation:
    """Explain every answer token of ``model`` for (``image``, ``prompt``).

    image: PIL image, numpy H x W x 3 uint8 array, or path (any mode is converted to RGB).
    answer: None (generate greedily at scale 1.0), a str (forced answer text) or a list of token ids.
    Returns an ``Explanation`` with maps [T, Hc, Wc] in [0, 1].
    """
    config = check_config(config)
    prompt = check_prompt(prompt)
    img = load_image(image)
    from ..adapters import get_adapter

    adapter = get_adapter(model, processor)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    base = adapter.prepare(img, prompt, 1.0)
    answer_ids = resolve_answer(adapter, base, answer, config)
    tokens = adapter.decode_tokens(answer_ids)
    timings["generate"] = time.perf_counter() - t0
    w_u = adapter.lm_head_weight()
    if config.top_k > w_u.shape[0]:
        raise ValueError(
            f"top_k={config.top_k} is larger than the vocabulary ({w_u.shape[0]}); expected 1 <= top_k <= {w_u.shape[0]}"
        )
    if not answer_ids:
        empty = empty_explanation(base.grid, answer_ids, tokens, prompt, config, img)
        empty.view_box = adapter.view_box(img)
        return empty

    # one teacher-forced forward per scale
    t1 = time.perf_counter()
    prompts = {s: (base if s == 1.0 else adapter.prepare(img, prompt, s)) for s in config.scales}
    hidden = {s: adapter.forward_hidden(p, answer_ids) for s, p in prompts.items()}
    for s, h in hidden.items():
        check_finite_hidden(h, f"scale {s}")
    timings["forward"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    text = TextSide(base.input_ids + answer_ids, base.length, base.prompt_span, answer_ids)
    h1 = hidden[1.0].to(w_u.device)
    z1 = h1[base.visual_positions]
    k0 = base_vocab_id(z1, w_u)
    T, P = len(answer_ids), len(text.prompt_ids)
    extra = tam_extra_classes(adapter, text, h1, w_u) if config.mitigation == "tam" else []
    ids = torch.tensor(answer_ids + text.prompt_ids + [k0] + extra, dtype=torch.long)

    # Eq. 2/4 per scale, then Eq. 3/5 onto the canonical grid
    per_scale, coverages, scale_maps = [], [], {}
    for s, p in prompts.items():
        z = hidden[s].to(w_u.device)[p.visual_positions]
        m = logit_lens_maps(z, w_u, ids).reshape(len(ids), *p.grid).cpu()
        per_scale.append(m)
        coverages.append(p.coverage)
        if config.keep_scale_maps:
            scale_maps[s] = m[:T].clone()
    maps = msea_aggregate(per_scale, coverages, base.grid, config.aggregate)
    a_t, prompt_maps, base_map = maps[:T], maps[T : T + P], maps[T + P]

    if config.mitigation == "none":
        refined = rank_gaussian_filter(a_t) if config.filter else a_t
        refined = normalize_max(refined)
    elif config.mitigation == "arc":
        pred_prompt, pred_answer = text.predicting_positions()
        rank_prompt = topk_ranking(h1[pred_prompt], w_u, config.top_k).cpu()
        rank_answer = topk_ranking(h1[pred_answer], w_u, config.top_k).cpu()
        refined = arc_reference(
            a_t, prompt_maps, base_map if config.base == "argmin" else None, rank_prompt, rank_answer, config
        )
    else:
        by_id = {int(i): maps[k].reshape(-1) for k, i in enumerate(ids.tolist())}
        refined = tam_reference(adapter, text, h1, w_u, base, by_id, config)
    timings["attribution"] = time.perf_counter() - t2
    return Explanation(
        maps=refined.to(torch.float32).contiguous(),
        answer_ids=answer_ids,
        answer_tokens=tokens,
        grid=tuple(base.grid),
        prompt=prompt,
        config=config,
        image=img,
        scale_maps=scale_maps or None,
        raw_maps=a_t.to(torch.float32).clone() if config.keep_scale_maps else None,
        timings=timings,
        view_box=adapter.view_box(img),
    )


def tam_logits(h1: torch.Tensor, w_u: torch.Tensor) -> torch.Tensor:
    """What TAM consumes: ``lm_head`` logits of every position in the model's dtype, then ``.float()``."""
    return F.linear(h1.to(w_u.dtype), w_u).float().cpu()


def tam_extra_classes(adapter, text: TextSide, h1, w_u) -> list[int]:
    """Classes TAM asks for beyond the answer / prompt ids: the argmax at the first prompt position, the
    last prompt token, and the tokens at positions start + u for every prompt string u."""
    s, _ = text.span
    argmax_s = int(torch.argmax(F.linear(h1[s : s + 1].to(w_u.dtype), w_u).float()))
    _, p_strings = tam_token_strings(adapter.tokenizer, text.prompt_ids, text.answer_ids)
    extra = [argmax_s, text.seq_ids[text.prompt_len - 1]]
    extra += [text.seq_ids[s + u] for u in range(1, p_strings) if s + u < len(text.seq_ids)]
    return extra


def tam_reference(
    adapter, text: TextSide, h1, w_u, base: PromptInputs, by_id, config: ExplainConfig
) -> torch.Tensor:
    """TAM's mitigation (``mitigation="tam"``); exact TAM when scales == (1.0,) and filter is on.

    by_id: {vocab id: flat MSEA map} for MSEA + TAM combinations."""
    logits = tam_logits(h1, w_u)
    scores_pos = logits.clamp_min(0)
    vis = base.visual_positions.cpu()
    if config.scales == (1.0,):

        def image_scores(c: int) -> np.ndarray:
            return scores_pos[vis, c].numpy()
    else:

        def image_scores(c: int) -> np.ndarray:
            return by_id[c].numpy().astype(np.float32)

    txt_all, p_strings = tam_token_strings(adapter.tokenizer, text.prompt_ids, text.answer_ids)
    maps = tam_maps(
        seq_ids=text.seq_ids,
        prompt_len=text.prompt_len,
        prompt_span=text.span,
        num_answer=len(text.answer_ids),
        class_scores=lambda c: scores_pos[:, c].numpy(),
        image_scores=image_scores,
        argmax_at=lambda pos: int(torch.argmax(logits[pos])),
        txt_all=txt_all,
        num_prompt_strings=p_strings,
        grid=base.grid,
        apply_filter=config.filter,
    )
    return torch.from_numpy(maps.astype(np.float32) / 255.0)
