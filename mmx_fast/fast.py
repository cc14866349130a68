"""The fast path: ``explain_fast`` and ``Explainer``.

Same inputs and result as ``mmx_fast.reference.explain`` and the same steps of ``mmx_fast.pipeline``
(load inputs -> answers -> plan forwards -> hidden states -> attribute -> result); different execution:

- answers: generation once at scale 1.0 (KV cache; batched and left-padded for several images), keeping
  the last-layer normed states it computes on the way (a hook on the decoder), so scale 1.0 is not re-run;
- hidden states: the other scales of every image run prefix-only (stopping at the last visual token: no
  instruction, no answer, no lm_head), and scale 1.0 runs in full only when the answer was forced; the rows
  are grouped by length into right-padded batches (little padding, a bounded batch), keeping only the
  last-layer normed hidden states (never all layers, never full-vocab logits over visual tokens);
- attribute: stage ``logit_lens``, one gather-GEMM for every scale and every needed vocab id
  (``ops.logit_lens``); ``msea`` onto the canonical grid; ``rankings``, top-k rankings and the base id k0 in one
  pass over W_U (``ops.rankings_topk_base``: certified bfloat16 or float32, ``rankings_precision``) + RBO
  for every (target, context) pair (``ops.rankings_rbo``); ``refine``, interference map,
  beta, ReLU, rank Gaussian filter and normalisation for all targets at once (``ops.refine``).

Each stage dispatches to Triton on CUDA and to vectorised torch (or native C++) on CPU; see ``mmx_fast.ops``.
The ``tam`` mitigation is TAM's sequential algorithm, which must equal TAM to the uint8 (docs/design.md
§1.5): the fast path runs ``reference.tam.tam_maps`` on only what TAM reads (``mmx_fast.ops.tam``): the
class columns at every position (a gather-GEMM shaped as TAM's ``lm_head`` calls), a certified streamed
argmax at the first prompt position, and the vectorised filter; no logit_lens, MSEA or k0 for TAM itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from . import ops
from .adapters.base import Adapter
from .api_types import (
    AnswerLike,
    AttnImplementation,
    ConfigLike,
    ImageLike,
    ImagesLike,
    Model,
    Processor,
    TargetsLike,
)
from .config import ExplainConfig
from .explanation import Explanation
from .pipeline import (
    Answer,
    Attribution,
    Forward,
    Item,
    ScaleStates,
    Stopwatch,
    TextSide,
    build_result,
    check_config,
    check_configs,
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
    union_scales,
    unstacked,
)
from .reference.tam import tam_extra_classes, tam_logit_groups

log = logging.getLogger(__name__)


def _maybe_flash_attention(model, attn_implementation: str | None) -> str | None:
    """Apply the caller's opt-in ``attn_implementation`` to ``model`` (in place); None leaves the model as it
    is (the default: the caller's model is never changed silently). ``"auto"`` picks flash-attention 2 only
    when flash-attn is installed, the model is on CUDA and in float16 / bfloat16, else sdpa; an explicit
    ``"flash_attention_2"`` that cannot run here is a ValueError saying why (``loading.flash_attn_problem``).
    Returns the implementation set, or None."""
    if attn_implementation is None:
        return None
    from .loading import flash_attn_installed, resolve_attn_implementation

    try:
        param = next(model.parameters())
        device_type, dtype = param.device.type, param.dtype
    except (StopIteration, AttributeError, TypeError):
        device_type, dtype = "cpu", torch.float32
    chosen = resolve_attn_implementation(
        attn_implementation, device_type=device_type, dtype=dtype, flash_attn=flash_attn_installed()
    )
    if not hasattr(model, "set_attn_implementation"):
        raise ValueError(
            f"attn_implementation={attn_implementation!r}: {type(model).__name__} has no "
            "set_attn_implementation (transformers >= 5); pass attn_implementation=None to keep its attention"
        )
    try:
        model.set_attn_implementation(chosen)
    except Exception as e:  # e.g. flash-attn present but refusing this GPU
        raise ValueError(f"attn_implementation={chosen!r} could not be set on the model ({e})") from e
    log.info("attention implementation set to %s", chosen)
    return chosen


def _prepare_backends(configs, adapter) -> None:
    """Resolve each config's backend for the model's device before any timer starts: on CPU this builds /
    loads the native C++ kernels (a first build compiles for several seconds), which must never be
    counted in ``timings``. Cheap once loaded; a backend that cannot run here is reported later, as before."""
    device = adapter.lm_head_weight().device
    for backend in {c.resolved_backend() for c in configs}:
        if backend in ("auto", "native"):
            ops.resolve_backend(backend, device)


class Explainer:
    """A reusable explainer for one model: ``Explainer(model, processor, config).explain(image, prompt)``.

    model, processor: a supported transformers model and its processor (``mmx_fast.load`` gives both).
    config:           an ``ExplainConfig``, a preset name (``"msea-arc"``, ``"tam"``, ``"logit-lens"``) or None.
    attn_implementation: None (default) leaves the model's attention as it is: the caller's model is never
        changed unless asked. Opt in with ``"auto"`` (flash-attention 2 when flash-attn is installed, the
        model is on CUDA and in float16 / bfloat16, else sdpa), ``"flash_attention_2"``, ``"sdpa"`` or
        ``"eager"``: the model is switched in place (``model.set_attn_implementation``). An explicit
        ``"flash_attention_2"`` that cannot run (not installed, not on CUDA, float32) raises ValueError.
        ``mmx_fast.load(..., attn_implementation="auto")`` already applies this to the models it loads.
    """

    def __init__(
        self,
        model: Model,
        processor: Processor,
        config: ConfigLike = None,
        attn_implementation: AttnImplementation | None = None,
    ) -> None:
        """Check ``config``, pick the model's adapter (a ValueError for an unsupported model or a processor
        of another family) and prepare the backends once."""
        from .adapters import get_adapter

        self.config = check_config(config)
        self.adapter = get_adapter(model, processor)
        self.model = model
        self.attn_implementation = _maybe_flash_attention(model, attn_implementation)
        _prepare_backends([self.config], self.adapter)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        config: ConfigLike = None,
        **load_kwargs: Any,
    ) -> Explainer:
        """The one-call entry: load the model and processor at ``path`` (a local folder, a Hugging Face id
        already in the local cache, or ``tiny:<family>``; nothing is downloaded) with ``mmx_fast.load(path,
        **load_kwargs)`` (``device``, ``dtype``, ``device_map``, ``attn_implementation``) and return an
        ``Explainer`` for them with ``config``.

        >>> explainer = Explainer.from_pretrained("Qwen/Qwen2-VL-2B-Instruct", dtype="bfloat16")
        >>> exp = explainer.explain("photo.jpg", "What is in the picture?")"""
        from .loading import load

        model, processor = load(os.fspath(path) if isinstance(path, os.PathLike) else path, **load_kwargs)
        return cls(model, processor, config)

    # ------------------------------------------------------------------------------------------------
    def explain(
        self, image: ImageLike, prompt: str, answer: AnswerLike = None, *, targets: TargetsLike = None
    ) -> Explanation:
        """Explain one (image, prompt) pair: the model's greedy answer (``answer`` None) or a forced one (text
        or token ids). ``targets``: explain only these answer tokens (indices, negative from the end, and / or
        words as ``Explanation.word_maps`` groups them); the result then holds only their maps, with
        ``token_positions`` saying where they sit, and the work no target needs (later tokens, the per-token
        refinement of the others) is skipped. See ``explain_fast`` for the inputs and the result."""
        return self.explain_batch(
            [image],
            [prompt],
            None if answer is None else [answer],
            targets=None if targets is None else [targets],
        )[0]

    def explain_batch(
        self,
        images: ImagesLike,
        prompts: Sequence[str],
        answers: Sequence[AnswerLike] | None = None,
        *,
        targets: Sequence[TargetsLike] | None = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> list[Explanation]:
        """Explain several (image, prompt) pairs with one batched generation (for the answers not given) and
        length-bucketed batched forwards (prefix-only except scale 1.0 of forced answers).

        images:        a list of images (anything ``explain`` takes) or one tensor [N, C, H, W] (uint8, or
                       float in [0, 1]), one image per row.
        targets:       None, or one ``targets`` (see ``explain``) per pair (None for every token of that pair).

        batch_size:    None (default) runs every pair in one batch; an integer >= 1 runs them in consecutive
                       sub-batches of at most that many pairs, so memory stays bounded for many images.
                       The results are those of one batch (same answers; maps equal up to float rounding of
                       the padded batch, as ``explain`` vs ``explain_batch``).
        show_progress: a tqdm progress bar over the pairs, advanced after each sub-batch (tqdm needed).
        Returns one ``Explanation`` per pair, in order."""
        if batch_size is not None and (
            not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
        ):
            raise ValueError(f"batch_size={batch_size!r} is not allowed; expected None or an integer >= 1")
        images = _image_rows(images)
        if isinstance(images, (str, bytes)) or not hasattr(images, "__len__"):
            raise TypeError("images must be a list of images (PIL, numpy arrays or paths)")
        n = len(images)
        if targets is not None:
            if isinstance(targets, (str, int)) or not hasattr(targets, "__len__") or len(targets) != n:
                raise ValueError(
                    f"targets={targets!r} is not allowed for {n} images; expected None or one entry (None, or a "
                    "list of token indices / words) per image"
                )
            targets = [check_targets_spec(t) for t in targets]
        if batch_size is None or n <= batch_size:
            chunks = [(0, n)]
        else:
            # every length check before the first sub-batch runs (load_inputs repeats them per sub-batch)
            if isinstance(prompts, str):
                raise TypeError("prompts must be a list of str, one per image")
            if len(prompts) != n:
                raise ValueError(f"got {n} images but {len(prompts)} prompts; expected one prompt per image")
            if answers is not None and len(answers) != n:
                raise ValueError(
                    f"got {len(answers)} answers for {n} images; expected one (or None) per image"
                )
            chunks = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
        bar = _progress(n, show_progress)
        out: list[Explanation] = []
        try:
            for k, (a, b) in enumerate(chunks):
                if len(chunks) > 1:
                    log.debug("explain_batch: sub-batch %d/%d (pairs %d..%d)", k + 1, len(chunks), a, b - 1)
                sub_answers = None if answers is None else list(answers[a:b])
                sub_targets = None if targets is None else targets[a:b]
                sub = [
                    c[0]
                    for c in self._run(images[a:b], prompts[a:b], sub_answers, [self.config], sub_targets)
                ]
                out.extend(sub)
                if bar is not None:
                    bar.update(b - a)
        finally:
            if bar is not None:
                bar.close()
        return out

    def explain_methods(
        self, image: ImageLike, prompt: str, configs: Sequence[ConfigLike], answer: AnswerLike = None
    ) -> list[Explanation]:
        """Explain one answer with several configs (e.g. every method of a comparison) from the SAME
        generation and the SAME batched forward (over the union of their scales). The answer is generated
        once with this Explainer's ``max_new_tokens``."""
        return self.explain_batch_methods([image], [prompt], configs, None if answer is None else [answer])[0]

    def explain_batch_methods(
        self,
        images: ImagesLike,
        prompts: Sequence[str],
        configs: Sequence[ConfigLike],
        answers: Sequence[AnswerLike] | None = None,
    ) -> list[list[Explanation]]:
        """``explain_methods`` for several images: result[i][j] is image i under configs[j]."""
        return self._run(_image_rows(images), prompts, answers, check_configs(configs))

    @torch.no_grad()
    def _run(
        self, images, prompts, answers, configs: list[ExplainConfig], targets=None
    ) -> list[list[Explanation]]:
        """The steps of ``mmx_fast.pipeline`` over a batch of items and several configs; generation and the
        forwards are shared by every config, and timed per item as their share of the batch."""
        ad = self.adapter
        _prepare_backends(configs, ad)
        clock = Stopwatch()
        items = load_inputs(ad, images, prompts, answers, configs)  # every input checked before any work
        if len(items) > 1 and any(c.mitigation == "tam" for c in configs):
            # TAM's maps (its fit and thresholds) turn one float rounding step into a different uint8 level,
            # and a batched kernel may round a row differently with other rows beside it (a GEMM's blocking
            # and a padded attention's reduction length depend on the batch's shape). So each TAM item runs
            # alone, exactly as ``explain`` runs it: the same request, the same map (docs/design.md §1.5).
            return [
                self._run_items(
                    [item],
                    configs,
                    clock if k == 0 else Stopwatch(),
                    None if targets is None else [targets[k]],
                )[0]
                for k, item in enumerate(items)
            ]
        return self._run_items(items, configs, clock, targets)

    def _run_items(
        self, items: list[Item], configs: list[ExplainConfig], clock: Stopwatch, targets=None
    ) -> list[list[Explanation]]:
        """Generation, forwards and attribution of checked ``items`` (one batch); ``targets``: one per item, or
        None."""
        ad = self.adapter
        answers = resolve_answers(ad, items, self.config.max_new_tokens, True, _keep_scores(configs, ad))
        chosen = [None] * len(items)
        if targets is not None:  # only what the targets need: the answer up to the last one
            chosen = [resolve_targets(ad, a, t) for a, t in zip(answers, targets)]
            answers = [cut_answer(a, c) for a, c in zip(answers, chosen)]
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
                    per_cfg.append(build_result(ad, item, ans, c, None, {}, chosen[i]))
                    continue
                clock.restart()
                attribution = attribute(ad, c, item, ans, states_at(states, i, c.scales), chosen[i])
                timings = {**shared, "attribution": clock.lap("attribution")}
                per_cfg.append(build_result(ad, item, ans, c, attribution, timings, chosen[i]))
            results.append(per_cfg)
        return results


def _image_rows(images: Any) -> Any:
    """A batch tensor [N, C, H, W] as a list of N images [C, H, W] (``mmx_fast.images.load_image`` reads
    each); anything else as it is. Another tensor shape is an error naming it."""
    if torch.is_tensor(images):
        if images.dim() != 4:
            raise ValueError(
                f"images tensor of shape {tuple(images.shape)} is not supported; expected [N, C, H, W] (one "
                "image per row) or a list of images"
            )
        return list(images.unbind(0))
    return images


def _keep_scores(configs: list[ExplainConfig], adapter: Adapter) -> int:
    """How many logits generation keeps per answer position: enough for the largest top-k of the ARC
    configs' rankings (``ops.rankings.score_keep``); 0 (none kept) when no config ranks."""
    from .ops.rankings import score_keep

    v = adapter.lm_head_weight().shape[0]
    return max((score_keep(c.top_k, v) for c in configs if c.mitigation == "arc"), default=0)


def _progress(total: int, show: bool):
    """A tqdm bar over ``total`` pairs when ``show``; None otherwise."""
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError as e:
        raise ImportError("show_progress=True needs tqdm (pip install tqdm)") from e
    return tqdm(total=total, desc="explaining", unit="image")


def hidden_states(
    adapter: Adapter, items: list[Item], answers: list[Answer], plan: list[Forward]
) -> dict[tuple[int, float], ScaleStates]:
    """Every planned row, grouped by length into right-padded batches (``Adapter.forward_hidden_rows``);
    rows other than scale 1.0 are prefix-only (they stop at the last visual token), so with a forced answer
    the scale-1.0 row is the only full-length one, and with a generated answer it is not run at all (its
    states come from generation)."""
    hidden = (
        adapter.forward_hidden_rows(
            [f.inputs for f in plan], [f.answer_ids for f in plan], [f.prefix_only for f in plan]
        )
        if plan
        else []
    )
    return collect_states(items, answers, plan, hidden)


def attribute(
    adapter: Adapter,
    config: ExplainConfig,
    item: Item,
    answer: Answer,
    per_scale: list[ScaleStates],
    targets: list[int] | None = None,
) -> Attribution:
    """Stage logit_lens (every scale, every needed id), msea, then the mitigation, through ``ops``.

    ``targets`` (answer token indices, sorted; None: all): only their maps are refined and returned. Every
    answer token before a target is still mapped and ranked (ARC's context); the per-target work (RBO rows,
    interference, filter, normalisation) runs for the targets only, and without mitigation (``logit-lens``)
    stage logit_lens maps only the targets' ids. TAM's sequential mitigation runs whole and is then selected
    (docs/design.md §3)."""
    backend = config.resolved_backend()
    w_u = adapter.lm_head_weight()
    dev = w_u.device
    base = item.base
    text = text_side(base, answer.ids)
    h1 = per_scale[config.scales.index(1.0)].hidden.to(dev)
    if config.mitigation == "tam":
        out = tam_attribute(adapter, config, item, answer, per_scale, text, h1, w_u, backend)
        return select_targets(out, targets)
    z1 = h1[base.visual_positions.to(dev)]
    ranks = None
    only_targets = targets is not None and config.mitigation == "none"  # no context maps needed
    if config.mitigation == "arc":  # the rankings and the base id k0 in one pass over W_U
        pred_prompt, pred_answer = text.predicting_positions()
        sc = answer.scores  # the answer rows' logits from generation: those rows are not scored again
        scored = None if sc is None else (len(pred_prompt), sc.values.to(dev), sc.ids.to(dev), sc.dtype)
        ranks, k0 = ops.rankings_topk_base(
            h1[pred_prompt + pred_answer], w_u, config.top_k, z1, backend, config.rankings_precision, scored
        )
        id_list = map_ids(text, k0, [])
    elif only_targets:  # the targets' ids alone: no context, no base map
        id_list = [text.answer_ids[t] for t in targets]
    else:  # base id k0 alone: argmin of W_U @ sum_i z_i (never a V x N product)
        k0 = ops.rankings_topk_base(h1[:0], w_u, 1, z1, backend, config.rankings_precision)[1]
        id_list = map_ids(text, k0, [])
    ids = torch.tensor(id_list, dtype=torch.long, device=dev)
    maps, placed = msea_maps(per_scale, w_u, ids, base, config.aggregate, backend)
    T = len(targets) if only_targets else len(answer.ids)
    P = len(text.prompt_ids)
    a_t, prompt_maps, base_map = maps[:T], maps[T : T + P], maps[T + P : T + P + 1]
    video = base.temporal is not None
    filt = config.filter and not video  # a video is filtered per frame below (as the reference does)
    # the rows of the T mapped answer tokens that are returned
    pick = (lambda x: x) if (targets is None or only_targets) else (lambda x: x[targets])

    if config.mitigation == "none":
        a_out = pick(a_t)
        refined = ops.refine_filter(a_out, backend=backend) if filt else a_out
        refined = ops.refine_normalize(refined)
    else:
        refined = arc_refine(
            ranks, a_t, prompt_maps, base_map, config, backend, apply_filter=filt, targets=targets
        )
    if video and config.filter:
        refined = ops.refine_normalize(
            per_frame(refined, base, lambda x: ops.refine_filter(x, backend=backend))
        )
    keep = config.keep_scale_maps
    scale_maps = None
    if keep:
        scale_maps = {s: pick(m) for s, m in kept_scale_maps(placed, base, T, config.scales, backend).items()}
    return Attribution(
        maps=unstacked(refined, base),
        raw_maps=unstacked(pick(a_t), base) if keep else None,
        scale_maps=scale_maps,
    )


def select_targets(att: Attribution, targets: list[int] | None) -> Attribution:
    """An attribution of every answer token cut down to ``targets`` (None: as it is)."""
    if targets is None:
        return att
    return Attribution(
        maps=att.maps[targets],
        raw_maps=None if att.raw_maps is None else att.raw_maps[targets],
        scale_maps=None if att.scale_maps is None else {s: m[targets] for s, m in att.scale_maps.items()},
    )


def msea_maps(
    per_scale: list[ScaleStates], w_u: torch.Tensor, ids: torch.Tensor, base, aggregate: str, backend: str
):
    """Stages logit_lens and msea: the maps of ``ids`` on the canonical grid, [M, Hc, Wc] (a video: [M, t * Hc,
    Wc], its frames stacked, ``pipeline.stacked``), and the placed (scale, view) maps they combine
    (``pipeline.msea_inputs``: maps, placements, the slice each scale owns)."""
    placed = msea_inputs(per_scale, logit_lens_flats(per_scale, w_u, ids, backend), tuple(base.grid))
    views, places, _ = placed
    return stacked(ops.msea(views, places, tuple(base.grid), aggregate, backend=backend), base), placed


def kept_scale_maps(placed, base, T: int, scales, backend: str) -> dict[float, torch.Tensor]:
    """Every scale's kept answer maps [T, h, w]: its own grid (single view; video: [T, t, h, w]), or its views
    combined on the canonical grid (tiled)."""
    views, places, owned = placed
    out = {}
    for s, o in zip(scales, owned):
        if base.views is None:
            out[s] = scale_answer_maps(views[o.start], base, T)
        else:
            out[s] = ops.msea([v[:T] for v in views[o]], places[o], tuple(base.grid), "mean", backend=backend)
    return out


def tam_attribute(
    adapter: Adapter,
    config: ExplainConfig,
    item: Item,
    answer: Answer,
    per_scale: list[ScaleStates],
    text: TextSide,
    h1: torch.Tensor,
    w_u: torch.Tensor,
    backend: str,
) -> Attribution:
    """The ``tam`` mitigation (``mmx_fast.ops.tam``). TAM itself (single scale) reads only class columns
    of the logits; logit_lens and msea run only for MSEA + TAM combinations or ``keep_scale_maps``."""
    base = item.base
    T = len(answer.ids)
    # TAM's lm_head calls: per round on generation's states, one call on a teacher-forced forward's
    groups = tam_logit_groups(h1.shape[0], text.prompt_len, T, answer.states is not None)
    argmax_s = ops.tam_argmax(h1, w_u, text.span[0], groups)
    keep = config.keep_scale_maps
    maps = by_id = placed = None
    tiled = base.views is not None  # TAM's image scores: the scale-1.0 views combined (docs/design.md §1.2)
    if config.scales != (1.0,) or keep or tiled:
        extra = tam_extra_classes(adapter.tokenizer, text, argmax_s)
        ids = torch.tensor(text.answer_ids + extra, dtype=torch.long, device=w_u.device)
        maps, placed = msea_maps(per_scale, w_u, ids, base, config.aggregate, backend)
        if config.scales != (1.0,) or tiled:
            by_id = {int(c): maps[k].reshape(-1).float().cpu() for k, c in enumerate(ids.tolist())}
    refined = ops.tam_mitigation(
        adapter.tokenizer,
        text,
        h1,
        w_u,
        groups,
        argmax_s,
        base.visual_positions,
        (base.frames * base.grid[0], base.grid[1]),  # a video's frames stacked (pipeline.stacked)
        config.filter,
        config.tam_fit,
        image_maps=by_id,
        frames=base.frames,
    )
    return Attribution(
        maps=unstacked(refined, base),
        raw_maps=unstacked(maps[:T], base) if keep else None,
        scale_maps=kept_scale_maps(placed, base, T, config.scales, backend) if keep else None,
    )


def logit_lens_flats(
    per_scale: list[ScaleStates], w_u: torch.Tensor, ids: torch.Tensor, backend: str
) -> list[torch.Tensor]:
    """Stage logit_lens: every scale's visual tokens x every id, as [M, N_s] per scale."""
    dev = w_u.device
    zs = [st.hidden.to(dev)[st.inputs.visual_positions.to(dev)] for st in per_scale]
    if ops.resolve_backend(backend, dev) == "triton":  # one launch over all scales
        flat = ops.logit_lens(torch.cat(zs, 0), w_u, ids, backend=backend)  # [M, sum N_s]
        flats = flat.split([z.shape[0] for z in zs], dim=1)
    else:  # on the CPU a GEMM per scale avoids copying every scale's states into one buffer
        flats = [ops.logit_lens(z, w_u, ids, backend=backend) for z in zs]
    return list(flats)


def arc_refine(
    ranks: torch.Tensor,
    a_t: torch.Tensor,
    prompt_maps: torch.Tensor,
    base_map: torch.Tensor,
    config: ExplainConfig,
    backend: str,
    apply_filter: bool | None = None,
    targets: list[int] | None = None,
) -> torch.Tensor:
    """ARC for all targets at once: RBO (stage rankings) of each target vs its causal context (``ranks``: the
    top-k rankings of the P prompt then T answer predicting positions), then stage refine (interference, beta,
    ReLU, filter, normalisation). base_map: [1, Hc, Wc]. ``targets``: refine only these answer tokens (their
    context is still every token before them); returns [len(targets), Hc, Wc]."""
    T, P = a_t.shape[0], prompt_maps.shape[0]
    pos = torch.arange(T, device=a_t.device) if targets is None else torch.tensor(targets, device=a_t.device)
    rows = ranks[P:] if targets is None else ranks[P:][pos.to(ranks.device)]
    r = ops.rankings_rbo(rows, ranks, config.rbo_p, config.rbo_variant, backend=backend)  # [K, P + T]
    w = 1 - r
    K = w.shape[0]
    # causal context: target t sees the prompt and the answer tokens before it
    causal = torch.ones_like(w, dtype=torch.bool)
    causal[:, P:] = torch.arange(T, device=w.device)[None, :] < pos.to(w.device)[:, None]
    w = torch.where(causal, w, torch.zeros_like(w))
    ctx = torch.cat([prompt_maps, a_t], 0)
    if config.base == "argmin":
        w = torch.cat([w, torch.ones(K, 1, dtype=w.dtype, device=w.device)], 1)
        ctx = torch.cat([ctx, base_map], 0)
    filt = config.filter if apply_filter is None else apply_filter
    a_sel = a_t if targets is None else a_t[pos]
    return ops.refine(a_sel, ctx, w, apply_filter=filt, backend=backend)


def explain_fast(
    model: Model,
    processor: Processor,
    image: ImageLike,
    prompt: str,
    answer: AnswerLike = None,
    config: ConfigLike = None,
    *,
    targets: TargetsLike = None,
) -> Explanation:
    """Token-level visual attribution maps for a model's answer to ``prompt`` about ``image``.

    The fast path's drop-in for ``mmx_fast.reference.explain`` (same arguments and result, maps equal to
    within 1e-4), on the fused stages. For several calls on one model, build an ``Explainer`` once (it
    prepares the backends once, and ``explain_batch`` batches many images).

    Args:
        model: a transformers vision-language model of a supported type
            (``mmx_fast.adapters.supported_model_types()``, README "Models"), in eval mode, on CPU or CUDA; e.g. from ``mmx_fast.load``. Its attention implementation is left as
            it is (``Explainer(..., attn_implementation=...)`` opts in to changing it).
        processor: the model's processor.
        image: a PIL image, a path, an ``http(s)://`` or ``data:`` URL, a numpy array [H, W, 3] uint8, or a
            torch tensor [3, H, W] or [H, W, 3] (uint8, or float in [0, 1]).
        prompt: the question / instruction (non-empty str).
        answer: None to generate the answer greedily (at most ``config.max_new_tokens`` tokens), or the answer
            to explain as a str or a list of T token ids (teacher-forced).
        config: an ``ExplainConfig`` (method, MSEA scales, mitigation, filter, backend, ...), a preset name
            (``"msea-arc"``, ``"tam"``, ``"logit-lens"``), or None for the default ``"msea-arc"`` preset.
        targets: None (every answer token), or the answer tokens to explain, as captum's ``target=``: token
            indices (negative from the end) and / or words (every token of each answer word equal to it, words
            grouped as ``word_maps`` groups them). Only the work those maps need runs; the result holds only
            their maps (``token_positions``: where they sit in the answer).

    Returns:
        An ``Explanation``: ``maps`` float32 [T, Hc, Wc] in [0, 1], one map per answer token on the model's
        scale-1.0 visual-token grid ``grid == (Hc, Wc)``; ``answer_ids`` / ``answer_tokens`` (T each),
        ``answer_text``, ``timings``; ``overlay(i)``, ``heatmap(i)``, ``word_maps()``, ``save(folder)``,
        ``to_html(path)``, ``upsampled(i)`` (maps at the image's size), ``plot(i)``, and an HTML view in Jupyter.

    Raises:
        TypeError / ValueError: an unsupported model, an image that cannot be read or is too large, an empty
            prompt, a bad config, a backend that cannot run on this device (e.g. ``backend="triton"`` on
            CPU tensors); each message names the value and what is allowed.

    Example:
        >>> import mmx_fast
        >>> model, processor = mmx_fast.load("tiny:qwen2_vl")  # random weights, for trying the API
        >>> exp = mmx_fast.explain_fast(model, processor, "photo.jpg", "What is in the picture?")
        >>> exp.maps.shape  # (T, Hc, Wc)
        >>> exp.overlay(0).save("token0.png")
        >>> words, word_maps = exp.word_maps()  # [W, Hc, Wc], max over each word's tokens
    """
    return Explainer(model, processor, config).explain(image, prompt, answer, targets=targets)
