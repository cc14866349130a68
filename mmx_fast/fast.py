"""The fast path: ``explain_fast`` and ``Explainer``.

Same inputs and result as ``mmx_fast.reference.explain``; different execution:

1. generation once at scale 1.0 (KV cache; batched and left-padded for several images), keeping the
   last-layer normed states it computes on the way (a hook on the decoder), so scale 1.0 is not re-run;
2. ONE padded, batched, teacher-forced forward over every other scale of every image (and over scale 1.0
   too when the answer was forced), keeping only the last-layer normed hidden states (never all layers,
   never full-vocab logits over visual tokens);
3. stage A: one gather-GEMM for every scale and every needed vocab id (``ops.gather_logit_lens``);
4. MSEA onto the canonical grid;
5. stage B: streamed top-k rankings + RBO for every (target, context) pair (``ops.topk_rankings``,
   ``ops.rbo_pairs``);
6. stage C: interference map, beta, ReLU, rank Gaussian filter and normalisation for all targets at
   once (``ops.refine``).

Each stage dispatches to Triton on CUDA and to vectorised torch (or native C++) on CPU; see ``mmx_fast.ops``.
The ``tam`` mitigation is TAM's sequential algorithm and reuses the reference implementation (it must
equal TAM to the uint8), on the hidden states of the batched forward.
"""

from __future__ import annotations

import importlib.util
import time
import warnings

import torch

from . import ops
from .config import ExplainConfig
from .explanation import Explanation
from .images import load_image
from .reference.explain import (
    TextSide,
    check_config,
    check_finite_hidden,
    check_prompt,
    empty_explanation,
    resolve_answer,
    tam_extra_classes,
    tam_reference,
)
from .reference.filters import normalize_max


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


def _prepare_backends(configs, adapter) -> None:
    """Resolve each config's backend for the model's device before any timer starts: on CPU this builds /
    loads the native C++ kernels (a first build compiles for several seconds), which must never be
    counted in ``timings``. Cheap once loaded; a backend that cannot run here is reported later, as before."""
    device = adapter.lm_head_weight().device
    for backend in {c.resolved_backend() for c in configs}:
        if backend in ("auto", "native"):
            ops.resolve_backend(backend, device)


class Explainer:
    """A reusable explainer for one model: ``Explainer(model, processor, config).explain(image, prompt)``."""

    def __init__(self, model, processor, config: ExplainConfig | str | None = None) -> None:
        from .adapters import get_adapter

        self.config = check_config(config)
        self.adapter = get_adapter(model, processor)
        self.model = model
        _maybe_flash_attention(model)
        _prepare_backends([self.config], self.adapter)

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
        if isinstance(configs, (ExplainConfig, str)) or not configs:
            raise TypeError("configs must be a non-empty list of ExplainConfig (or method names)")
        return self._run(images, prompts, answers, [check_config(c) for c in configs])

    @torch.no_grad()
    def _run(self, images, prompts, answers, configs: list[ExplainConfig]) -> list[list[Explanation]]:
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
        cfg = self.config
        ad = self.adapter
        scales = sorted({s for c in configs for s in c.scales})
        _prepare_backends(configs, ad)
        t0 = time.perf_counter()
        imgs = [load_image(im) for im in images]
        prompts = [check_prompt(p) for p in prompts]
        bases = [ad.prepare(im, p, 1.0) for im, p in zip(imgs, prompts)]
        w_u = ad.lm_head_weight()
        for c in configs:
            if c.top_k > w_u.shape[0]:
                raise ValueError(
                    f"top_k={c.top_k} is larger than the vocabulary ({w_u.shape[0]}); expected 1 <= top_k <= {w_u.shape[0]}"
                )

        # 1. answers: forced ones as given, the rest from one batched greedy generation
        answer_ids: list[list[int] | None] = [
            None if a is None else resolve_answer(ad, b, a, cfg) for a, b in zip(answers, bases)
        ]
        todo = [i for i, a in enumerate(answer_ids) if a is None]
        states_1: dict[int, torch.Tensor] = {}  # scale-1.0 states captured while generating
        if todo:
            gen, gen_states = ad.generate_with_states([bases[i] for i in todo], cfg.max_new_tokens)
            for i, ids, st in zip(todo, gen, gen_states):
                answer_ids[i] = ids
                states_1[i] = st
        t_gen = time.perf_counter() - t0

        # 2. one batched teacher-forced forward over every scale of every image with a non-empty answer,
        #    except scale 1.0 where generation already produced the states
        t1 = time.perf_counter()
        rows, row_answers, row_of = [], [], {}
        for i, (im, p, b) in enumerate(zip(imgs, prompts, bases)):
            if not answer_ids[i]:
                continue
            for s in scales:
                if s == 1.0 and i in states_1:  # generation already computed these states
                    continue
                row_of[(i, s)] = len(rows)
                rows.append(b if s == 1.0 else ad.prepare(im, p, s))
                row_answers.append(answer_ids[i])
        hidden = ad.forward_hidden_batch(rows, row_answers) if rows else []
        for i, st in states_1.items():
            if answer_ids[i]:
                row_of[(i, 1.0)] = len(rows)
                rows.append(bases[i])
                hidden.append(st)
        for (i, s), r in row_of.items():
            check_finite_hidden(hidden[r], f"image {i} at scale {s}")
        t_fwd = time.perf_counter() - t1

        results = []
        n = len(imgs)
        for i, (im, p, b) in enumerate(zip(imgs, prompts, bases)):
            ids_i = answer_ids[i]
            tokens = ad.decode_tokens(ids_i)
            box = ad.view_box(im)
            per_cfg = []
            for c in configs:
                if not ids_i:
                    per_cfg.append(empty_explanation(b.grid, ids_i, tokens, p, c, im))
                    per_cfg[-1].view_box = box
                    continue
                t2 = time.perf_counter()
                per_scale_prompts = [rows[row_of[(i, s)]] for s in c.scales]
                per_scale_hidden = [hidden[row_of[(i, s)]] for s in c.scales]
                exp = self._attribute(c, b, per_scale_prompts, per_scale_hidden, ids_i, w_u)
                exp.answer_tokens = tokens
                exp.prompt = p
                exp.image = im
                exp.view_box = box
                exp.timings = {
                    "generate": t_gen / n,
                    "forward": t_fwd / n,
                    "attribution": time.perf_counter() - t2,
                }
                per_cfg.append(exp)
            results.append(per_cfg)
        return results

    # ------------------------------------------------------------------------------------------------
    def _attribute(
        self, cfg: ExplainConfig, base, prompts_s, hidden_s, answer_ids: list[int], w_u: torch.Tensor
    ) -> Explanation:
        backend = cfg.resolved_backend()
        dev = w_u.device
        h1 = hidden_s[cfg.scales.index(1.0)].to(dev)
        text = TextSide(base.input_ids + answer_ids, base.length, base.prompt_span, answer_ids)
        T, P = len(answer_ids), len(text.prompt_ids)

        # base id k0: one GEMV W_U @ sum_i z_i (never a V x N product)
        z1 = h1[base.visual_positions.to(dev)]
        k0 = base_vocab_id_chunked(z1, w_u)
        extra = tam_extra_classes(self.adapter, text, h1, w_u) if cfg.mitigation == "tam" else []
        ids = torch.tensor(answer_ids + text.prompt_ids + [k0] + extra, dtype=torch.long, device=dev)

        # stage A: every scale's visual tokens x every needed id, one launch
        zs = [h.to(dev)[p.visual_positions.to(dev)] for h, p in zip(hidden_s, prompts_s)]
        if ops.resolve_backend(backend, dev) == "triton":  # one launch over all scales
            flat = ops.gather_logit_lens(torch.cat(zs, 0), w_u, ids, backend=backend)  # [M, sum N_s]
            flats = flat.split([z.shape[0] for z in zs], dim=1)
        else:  # on the CPU a GEMM per scale avoids copying every scale's states into one buffer
            flats = [ops.gather_logit_lens(z, w_u, ids, backend=backend) for z in zs]
        per_scale = [f.reshape(len(ids), *p.grid) for f, p in zip(flats, prompts_s)]
        coverages = [p.coverage for p in prompts_s]
        maps = ops.msea_aggregate(per_scale, coverages, tuple(base.grid), cfg.aggregate, backend=backend)
        a_t, prompt_maps, base_map = maps[:T], maps[T : T + P], maps[T + P : T + P + 1]

        if cfg.mitigation == "none":
            refined = ops.rank_gaussian_filter(a_t, backend=backend) if cfg.filter else a_t
            refined = normalize_max(refined)
        elif cfg.mitigation == "arc":
            # stage B: rankings of every predicting position, then RBO of each target vs every context
            pred_prompt, pred_answer = text.predicting_positions()
            ranks = ops.topk_rankings(h1[pred_prompt + pred_answer], w_u, cfg.top_k, backend=backend)
            rank_ctx, rank_ans = ranks, ranks[P:]
            r = ops.rbo_pairs(rank_ans, rank_ctx, cfg.rbo_p, cfg.rbo_variant, backend=backend)  # [T, P + T]
            w = 1 - r
            # causal context: target t sees the prompt and the answer tokens before it
            causal = torch.ones_like(w, dtype=torch.bool)
            causal[:, P:] = torch.ones(T, T, dtype=torch.bool, device=w.device).tril(-1)
            w = torch.where(causal, w, torch.zeros_like(w))
            ctx = torch.cat([prompt_maps, a_t], 0)
            if cfg.base == "argmin":
                w = torch.cat([w, torch.ones(T, 1, dtype=w.dtype, device=w.device)], 1)
                ctx = torch.cat([ctx, base_map], 0)
            # stage C: interference, beta, ReLU, filter, normalisation for all targets at once
            refined = ops.refine(a_t, ctx, w, apply_filter=cfg.filter, backend=backend)
        else:
            by_id = {int(c): maps[k].reshape(-1).float().cpu() for k, c in enumerate(ids.tolist())}
            refined = tam_reference(self.adapter, text, h1, w_u, base, by_id, cfg)

        scale_maps = None
        if cfg.keep_scale_maps:
            scale_maps = {s: m[:T].float().cpu().clone() for s, m in zip(cfg.scales, per_scale)}
        return Explanation(
            maps=refined.float().cpu().contiguous(),
            answer_ids=list(answer_ids),
            answer_tokens=[],
            grid=tuple(base.grid),
            config=cfg,
            scale_maps=scale_maps,
            raw_maps=a_t.float().cpu().clone() if cfg.keep_scale_maps else None,
        )


def base_vocab_id_chunked(z: torch.Tensor, w_u: torch.Tensor, chunk: int = 16384) -> int:
    """k0 = argmin_k [W_U sum_i z_i]_k as one GEMV, upcasting W_U to float32 a chunk of rows at a time (a
    bf16 model's W_U is never copied whole). Ties go to the smaller id, as ``torch.argmin``."""
    s = z.float().sum(0)
    best_val, best_id = None, 0
    for start in range(0, w_u.shape[0], chunk):
        vals = w_u[start : start + chunk].float() @ s
        i = int(torch.argmin(vals))
        v = vals[i]
        if best_val is None or v < best_val:
            best_val, best_id = v, start + i
    return best_id


def explain_fast(
    model, processor, image, prompt: str, answer=None, config: ExplainConfig | None = None
) -> Explanation:
    """Drop-in for ``mmx_fast.reference.explain`` (same signature and result), on the fused stages."""
    return Explainer(model, processor, config).explain(image, prompt, answer)
