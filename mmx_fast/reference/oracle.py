"""The oracle ``explain``: the paper's equations, one token and one scale at a time, in plain torch.

This is what the fast path is tested against. It favours being obviously right over being quick: one
forward per scale, the [L, V] logits where TAM needs them, a Python loop over targets. It runs the steps of
``mmx_fast.pipeline`` (load inputs -> answers -> plan forwards -> hidden states -> attribute -> result), as
``mmx_fast.fast.Explainer`` does; only ``hidden_states`` and ``attribute`` are its own.
"""

from __future__ import annotations

import torch

from ..adapters.base import Adapter
from ..api_types import AnswerLike, ConfigLike, ImageLike, Model, Processor, TargetsLike
from ..config import ExplainConfig
from ..explanation import Explanation
from ..pipeline import (
    Answer,
    Attribution,
    Forward,
    Item,
    ScaleStates,
    Stopwatch,
    TextSide,
    build_result,
    check_config,
    check_targets_spec,
    collect_states,
    cut_answer,
    load_inputs,
    map_ids,
    msea_inputs,
    per_frame,
    plan_forwards,
    resolve_answers,
    resolve_targets,
    scale_answer_maps,
    stacked,
    states_at,
    text_side,
    unstacked,
)
from .logit_lens import logit_lens_maps
from .msea import msea_aggregate
from .rankings import base_vocab_id, rbo, topk_ranking
from .refine import arc_weights, normalize_max, rank_gaussian_filter, refine_one
from .tam import tam_extra_classes, tam_logit_groups, tam_logits, tam_mitigation


@torch.no_grad()
def explain(
    model: Model,
    processor: Processor,
    image: ImageLike,
    prompt: str,
    answer: AnswerLike = None,
    config: ConfigLike = None,
    *,
    targets: TargetsLike = None,
) -> Explanation:
    """Explain every answer token of ``model`` for (``image``, ``prompt``) (or only ``targets``).

    image: PIL image, numpy H x W x 3 uint8 array, or path (any mode is converted to RGB).
    answer: None (generate greedily at scale 1.0), a str (forced answer text) or a list of token ids.
    targets: None, or the answer tokens to explain (indices and / or words; see ``mmx_fast.explain_fast``).
    Returns an ``Explanation`` with maps [T, Hc, Wc] in [0, 1].
    """
    from ..adapters import get_adapter

    config = check_config(config)
    spec = check_targets_spec(targets)
    adapter = get_adapter(model, processor)
    clock = Stopwatch()
    (item,) = load_inputs(adapter, [image], [prompt], [answer], [config])
    (ans,) = resolve_answers(adapter, [item], config.max_new_tokens, keep_states=False)
    chosen = resolve_targets(adapter, ans, spec)
    ans = cut_answer(ans, chosen)
    clock.lap("generate")
    if not ans.ids:
        return build_result(adapter, item, ans, config, None, {}, chosen)
    plan = plan_forwards(adapter, [item], [ans], config.scales)
    states = hidden_states(adapter, [item], [ans], plan)
    clock.lap("forward")
    attribution = attribute(adapter, config, item, ans, states_at(states, 0, config.scales), chosen)
    clock.lap("attribution")
    return build_result(adapter, item, ans, config, attribution, clock.laps, chosen)


def hidden_states(
    adapter: Adapter, items: list[Item], answers: list[Answer], plan: list[Forward]
) -> dict[tuple[int, float], ScaleStates]:
    """One teacher-forced forward per planned row, one row at a time."""
    hidden = [adapter.forward_hidden(f.inputs, f.answer_ids) for f in plan]
    return collect_states(items, answers, plan, hidden)


def attribute(
    adapter: Adapter,
    config: ExplainConfig,
    item: Item,
    answer: Answer,
    per_scale: list[ScaleStates],
    targets: list[int] | None = None,
) -> Attribution:
    """Eq. 2/4 per scale, Eq. 3/5 onto the canonical grid (MSEA), then the mitigation; ``targets`` (answer
    token indices, None: all): the maps of those tokens only, each from the same context as in a full run."""
    w_u = adapter.lm_head_weight()
    base = item.base
    text = text_side(base, answer.ids)
    h1 = per_scale[config.scales.index(1.0)].hidden.to(w_u.device)
    k0 = base_vocab_id(h1[base.visual_positions], w_u)
    tam = config.mitigation == "tam"
    if tam:  # TAM's full-vocabulary logits, one lm_head call per group of rows as its pipeline makes them
        groups = tam_logit_groups(h1.shape[0], text.prompt_len, len(answer.ids), answer.states is not None)
        logits = tam_logits(h1, w_u, groups)
        argmax_s = int(torch.argmax(logits[text.span[0]]))
    extra = tam_extra_classes(adapter.tokenizer, text, argmax_s) if tam else []
    ids = torch.tensor(map_ids(text, k0, extra), dtype=torch.long)

    maps, placed = msea_maps(per_scale, w_u, ids, base, config.aggregate)
    T, P = len(answer.ids), len(text.prompt_ids)
    a_t, prompt_maps, base_map = maps[:T], maps[T : T + P], maps[T + P]
    video = base.temporal is not None
    # a video's filter runs per frame after the mitigation (G is positively homogeneous, so normalise(G(x)) =
    # normalise(G(normalise(x)))); TAM filters per frame inside its own steps
    filt = config.filter and not video

    sel = list(range(T)) if targets is None else list(targets)
    if config.mitigation == "none":
        refined = normalize_max(rank_gaussian_filter(a_t[sel]) if filt else a_t[sel])
    elif config.mitigation == "arc":
        rank_prompt, rank_answer = text_rankings(text, h1, w_u, config.top_k)
        base_map = base_map if config.base == "argmin" else None
        refined = arc_reference(
            a_t, prompt_maps, base_map, rank_prompt, rank_answer, config, apply_filter=filt, targets=sel
        )
    else:
        by_id = {int(i): maps[k].reshape(-1) for k, i in enumerate(ids.tolist())}
        refined = tam_mitigation(
            adapter.tokenizer,
            text,
            logits,
            base.visual_positions if base.views is None else None,
            tuple(a_t.shape[1:]),
            by_id,
            config.scales,
            config.filter,
            config.tam_fit,
            frames=base.frames,
        )[sel]
    if video and config.filter and config.mitigation != "tam":
        refined = normalize_max(per_frame(refined, base, rank_gaussian_filter))
    keep = config.keep_scale_maps
    return Attribution(
        maps=unstacked(refined, base),
        raw_maps=unstacked(a_t[sel], base) if keep else None,
        scale_maps={s: m[sel] for s, m in kept_scale_maps(placed, base, T, config.scales).items()}
        if keep
        else None,
    )


def msea_maps(per_scale: list[ScaleStates], w_u: torch.Tensor, ids: torch.Tensor, base, aggregate: str):
    """Eq. 2/4 per scale, Eq. 3/5 onto the canonical grid: the maps of ``ids``, [M, Hc, Wc] (a video: MSEA ran
    per frame, [M * t, Hc, Wc]; each id's frames are then stacked into one [t * Hc, Wc] map), and the placed
    (scale, view) maps they combine (maps, placements, the slice each scale owns)."""
    placed = msea_inputs(per_scale, [logit_lens_flat(st, w_u, ids) for st in per_scale], base.grid)
    views, places, _ = placed
    return stacked(msea_aggregate(views, places, base.grid, aggregate), base), placed


def kept_scale_maps(placed, base, T: int, scales) -> dict[float, torch.Tensor]:
    """Every scale's kept answer maps [T, h, w]: its own grid (single view; video: [T, t, h, w]), or its views
    combined on the canonical grid (tiled)."""
    views, places, owned = placed
    out = {}
    for s, o in zip(scales, owned):
        if base.views is None:
            out[s] = scale_answer_maps(views[o.start], base, T)
        else:
            out[s] = msea_aggregate(views[o], places[o], base.grid, "mean")[:T]
    return out


def logit_lens_flat(st: ScaleStates, w_u: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Eq. 2/4 at one scale: the clipped logit-lens value of every id at every visual token, [M, N] (a video:
    N = t * h * w, row-major over (t, h, w))."""
    z = st.hidden.to(w_u.device)[st.inputs.visual_positions]
    return logit_lens_maps(z, w_u, ids).cpu()


def text_rankings(
    text: TextSide, h1: torch.Tensor, w_u: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k rankings of the positions predicting each prompt token and each answer token."""
    pred_prompt, pred_answer = text.predicting_positions()
    return topk_ranking(h1[pred_prompt], w_u, k).cpu(), topk_ranking(h1[pred_answer], w_u, k).cpu()


def arc_reference(
    a_t: torch.Tensor,
    prompt_maps: torch.Tensor,
    base_map: torch.Tensor | None,
    rank_prompt: torch.Tensor,
    rank_answer: torch.Tensor,
    config: ExplainConfig,
    apply_filter: bool | None = None,
    targets: list[int] | None = None,
) -> torch.Tensor:
    """ARC for every target t (or each of ``targets``), one at a time (Eq. 6-9), then G (``apply_filter``,
    default ``config.filter``) and normalisation. a_t: [T, H, W]."""
    if apply_filter is None:
        apply_filter = config.filter
    out = []
    for t in range(a_t.shape[0]) if targets is None else targets:
        ctx_maps = [prompt_maps, a_t[:t]]
        ctx_ranks = torch.cat([rank_prompt, rank_answer[:t]], 0)
        r = rbo(ctx_ranks, rank_answer[t].expand_as(ctx_ranks), p=config.rbo_p, variant=config.rbo_variant)
        w = arc_weights(r).to(torch.float32)
        if base_map is not None:  # A_0 with r_0 = 0, so w_0 = 1
            ctx_maps.append(base_map[None])
            w = torch.cat([w, torch.ones(1)])
        out.append(refine_one(a_t[t], torch.cat(ctx_maps, 0), w, apply_filter=apply_filter))
    return torch.stack(out, 0) if out else a_t.new_zeros(a_t.shape)
