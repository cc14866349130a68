"""The fast path: ``explain_fast`` and ``Explainer``.

Same inputs and result as ``mmx_fast.reference.explain`` and the same steps of ``mmx_fast.pipeline``
(load inputs -> answers -> plan forwards -> hidden states -> attribute -> result); different execution:

- answers: generation once at scale 1.0 (KV cache; batched and left-padded for several images), keeping
  the last-layer normed states it computes on the way (a hook on the decoder), so scale 1.0 is not re-run;
- hidden states: ONE padded, batched, teacher-forced forward over every other scale of every image (and
  over scale 1.0 too when the answer was forced), keeping only the last-layer normed hidden states (never
  all layers, never full-vocab logits over visual tokens);
- attribute: stage A, one gather-GEMM for every scale and every needed vocab id
  (``ops.logit_lens``); MSEA onto the canonical grid; stage B, top-k rankings and the base id k0 in one
  pass over W_U (``ops.rankings_topk_base``: certified bfloat16 or float32, ``rankings_precision``) + RBO
  for every (target, context) pair (``ops.rankings_rbo``); stage C, interference map,
  beta, ReLU, rank Gaussian filter and normalisation for all targets at once (``ops.refine``).

Each stage dispatches to Triton on CUDA and to vectorised torch (or native C++) on CPU; see ``mmx_fast.ops``.
The ``tam`` mitigation is TAM's sequential algorithm, which must equal TAM to the uint8: both paths run
``reference.tam.tam_mitigation`` (docs/design.md §1.5), here on the hidden states of the batched forward.
"""

from __future__ import annotations

import importlib.util
import warnings

import torch

from . import ops
from .adapters.base import Adapter
from .config import ExplainConfig
from .explanation import Explanation
from .pipeline import (
    Answer,
    Attribution,
    Forward,
    Item,
    ScaleStates,
    Stopwatch,
    build_result,
    check_config,
    check_configs,
    collect_states,
    load_inputs,
    map_ids,
    plan_forwards,
    resolve_answers,
    states_at,
    text_side,
    union_scales,
)
from .reference.tam import tam_extra_classes, tam_mitigation


def _maybe_flash_attention(model) -> None:
    """Switch to flash-attention 2 when it is installed and the model is on CUDA; sdpa otherwise."""
    if not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None:
        return
    try:
        if next(model.parameters()).is_cuda and hasattr(model, "set_attn_implementation"):
            model.set_attn_implementation("flash_attention_2")
    except Exception as e:  # an old GPU or a dtype flash-attn refuses: keep sdpa, say so once
        warnings.warn(
            f"flash-attention 2 is installed but could not be enabled ({e}); using sdpa", stacklevel=3
        )


class Explainer:
    """A reusable explainer for one model: ``Explainer(model, processor, config).explain(image, prompt)``."""

    def __init__(self, model, processor, config: ExplainConfig | str | None = None) -> None:
        from .adapters import get_adapter

        self.config = check_config(config)
        self.adapter = get_adapter(model, processor)
        self.model = model
        _maybe_flash_attention(model)

    # ------------------------------------------------------------------------------------------------
    def explain(self, image, prompt: str, answer=None) -> Explanation:
        return self.explain_batch([image], [prompt], None if answer is None else [answer])[0]

    def explain_batch(self, images, prompts, answers=None) -> list[Explanation]:
        """Explain several (image, prompt) pairs with one batched generation and one batched forward."""
        return [per_cfg[0] for per_cfg in self._run(images, prompts, answers, [self.config])]

    def explain_methods(self, image, prompt: str, configs, answer=None) -> list[Explanation]:
        """Explain one answer with several configs (e.g. every method of a comparison) from the SAME
        generation and the SAME batched forward (over the union of their scales). The answer is generated
        once with this Explainer's ``max_new_tokens``."""
        return self.explain_batch_methods([image], [prompt], configs, None if answer is None else [answer])[0]

    def explain_batch_methods(self, images, prompts, configs, answers=None) -> list[list[Explanation]]:
        """``explain_methods`` for several images: result[i][j] is image i under configs[j]."""
        return self._run(images, prompts, answers, check_configs(configs))

    @torch.no_grad()
    def _run(self, images, prompts, answers, configs: list[ExplainConfig]) -> list[list[Explanation]]:
        """The steps of ``mmx_fast.pipeline`` over a batch of items and several configs; generation and the
        forwards are shared by every config, and timed per item as their share of the batch."""
        ad = self.adapter
        clock = Stopwatch()
        items = load_inputs(ad, images, prompts, answers, configs)
        answers = resolve_answers(ad, items, self.config.max_new_tokens, keep_states=True)
        clock.lap("generate")
        plan = plan_forwards(ad, items, answers, union_scales(configs))
        states = hidden_states(ad, items, answers, plan)
        clock.lap("forward")
        shared = {name: t / len(items) for name, t in clock.laps.items()}
        results = []
        for i, (item, ans) in enumerate(zip(items, answers)):
            per_cfg = []
            for c in configs:
                if not ans.ids:
                    per_cfg.append(build_result(ad, item, ans, c, None, {}))
                    continue
                clock.restart()
                attribution = attribute(ad, c, item, ans, states_at(states, i, c.scales))
                timings = {**shared, "attribution": clock.lap("attribution")}
                per_cfg.append(build_result(ad, item, ans, c, attribution, timings))
            results.append(per_cfg)
        return results


def hidden_states(
    adapter: Adapter, items: list[Item], answers: list[Answer], plan: list[Forward]
) -> dict[tuple[int, float], ScaleStates]:
    """ONE right-padded batched forward over every planned row (the scale-1.0 states of generated answers
    come from generation and are not planned)."""
    hidden = (
        adapter.forward_hidden_batch([f.inputs for f in plan], [f.answer_ids for f in plan]) if plan else []
    )
    return collect_states(items, answers, plan, hidden)


def attribute(
    adapter: Adapter, config: ExplainConfig, item: Item, answer: Answer, per_scale: list[ScaleStates]
) -> Attribution:
    """Stage A (every scale, every needed id), MSEA, then the mitigation, on the fused stages of ``ops``."""
    backend = config.resolved_backend()
    w_u = adapter.lm_head_weight()
    dev = w_u.device
    base = item.base
    text = text_side(base, answer.ids)
    h1 = per_scale[config.scales.index(1.0)].hidden.to(dev)
    z1 = h1[base.visual_positions.to(dev)]
    ranks = None
    if config.mitigation == "arc":  # stage B's rankings and the base id k0 in one pass over W_U
        pred_prompt, pred_answer = text.predicting_positions()
        ranks, k0 = ops.rankings_topk_base(
            h1[pred_prompt + pred_answer], w_u, config.top_k, z1, backend, config.rankings_precision
        )
    else:  # base id k0 alone: argmin of W_U @ sum_i z_i (never a V x N product)
        k0 = ops.rankings_topk_base(h1[:0], w_u, 1, z1, backend, config.rankings_precision)[1]
    tam = config.mitigation == "tam"
    extra = tam_extra_classes(adapter.tokenizer, text, h1, w_u) if tam else []
    ids = torch.tensor(map_ids(text, k0, extra), dtype=torch.long, device=dev)

    scale_maps = logit_lens_grids(per_scale, w_u, ids, backend)
    coverages = [st.inputs.coverage for st in per_scale]
    maps = ops.msea(scale_maps, coverages, tuple(base.grid), config.aggregate, backend=backend)
    T, P = len(answer.ids), len(text.prompt_ids)
    a_t, prompt_maps, base_map = maps[:T], maps[T : T + P], maps[T + P : T + P + 1]

    if config.mitigation == "none":
        refined = ops.refine_filter(a_t, backend=backend) if config.filter else a_t
        refined = ops.refine_normalize(refined)
    elif config.mitigation == "arc":
        refined = arc_fused(ranks, a_t, prompt_maps, base_map, config, backend)
    else:
        by_id = {int(c): maps[k].reshape(-1).float().cpu() for k, c in enumerate(ids.tolist())}
        refined = tam_mitigation(
            adapter.tokenizer,
            text,
            h1,
            w_u,
            base.visual_positions,
            base.grid,
            by_id,
            config.scales,
            config.filter,
        )
    keep = config.keep_scale_maps
    return Attribution(
        maps=refined,
        raw_maps=a_t if keep else None,
        scale_maps={s: m[:T] for s, m in zip(config.scales, scale_maps)} if keep else None,
    )


def logit_lens_grids(
    per_scale: list[ScaleStates], w_u: torch.Tensor, ids: torch.Tensor, backend: str
) -> list[torch.Tensor]:
    """Stage A: every scale's visual tokens x every id, as [M, h_s, w_s] per scale."""
    dev = w_u.device
    zs = [st.hidden.to(dev)[st.inputs.visual_positions.to(dev)] for st in per_scale]
    if ops.resolve_backend(backend, dev) == "triton":  # one launch over all scales
        flat = ops.logit_lens(torch.cat(zs, 0), w_u, ids, backend=backend)  # [M, sum N_s]
        flats = flat.split([z.shape[0] for z in zs], dim=1)
    else:  # on the CPU a GEMM per scale avoids copying every scale's states into one buffer
        flats = [ops.logit_lens(z, w_u, ids, backend=backend) for z in zs]
    return [f.reshape(len(ids), *st.inputs.grid) for f, st in zip(flats, per_scale)]


def arc_fused(
    ranks: torch.Tensor,
    a_t: torch.Tensor,
    prompt_maps: torch.Tensor,
    base_map: torch.Tensor,
    config: ExplainConfig,
    backend: str,
) -> torch.Tensor:
    """ARC for all targets at once: stage B's RBO of each target vs its causal context (``ranks``: the
    top-k rankings of the P prompt then T answer predicting positions), then stage C (interference, beta,
    ReLU, filter, normalisation). base_map: [1, Hc, Wc]."""
    T, P = a_t.shape[0], prompt_maps.shape[0]
    r = ops.rankings_rbo(ranks[P:], ranks, config.rbo_p, config.rbo_variant, backend=backend)  # [T, P + T]
    w = 1 - r
    # causal context: target t sees the prompt and the answer tokens before it
    causal = torch.ones_like(w, dtype=torch.bool)
    causal[:, P:] = torch.ones(T, T, dtype=torch.bool, device=w.device).tril(-1)
    w = torch.where(causal, w, torch.zeros_like(w))
    ctx = torch.cat([prompt_maps, a_t], 0)
    if config.base == "argmin":
        w = torch.cat([w, torch.ones(T, 1, dtype=w.dtype, device=w.device)], 1)
        ctx = torch.cat([ctx, base_map], 0)
    return ops.refine(a_t, ctx, w, apply_filter=config.filter, backend=backend)


def base_vocab_id_chunked(z: torch.Tensor, w_u: torch.Tensor, chunk: int = 16384) -> int:
    """k0 = argmin_k [W_U sum_i z_i]_k as one float32 GEMV, upcasting W_U a chunk of rows at a time (a
    bf16 model's W_U is never copied whole). Ties go to the smaller id, as ``torch.argmin``. (The product
    computes k0 with the rankings, ``ops.rankings_topk_base``.)"""
    from .ops.rankings import _base_exact

    return _base_exact(z.float().sum(0), w_u, chunk)


def explain_fast(
    model, processor, image, prompt: str, answer=None, config: ExplainConfig | None = None
) -> Explanation:
    """Drop-in for ``mmx_fast.reference.explain`` (same signature and result), on the fused stages."""
    return Explainer(model, processor, config).explain(image, prompt, answer)
