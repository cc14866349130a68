"""The paper's baselines (its Table 1) that fit an autoregressive MLLM, on the reference path only
(docs/design.md §9): no fast path, no ``ExplainConfig`` preset; used by the grounded localisation table.

    maps = baseline_maps(model, processor, image, prompt, answer, method="grad-cam")   # [T, Hc, Wc] in [0, 1]

How each is adapted (one teacher-forced forward of prompt + forced answer; for answer token t the target is its
logit ``y_t = logits[p_t - 1, id_t]`` at the position that predicts it, p_t the token's position; maps are over
the LLM's visual tokens, row-major on the visual grid, divided by their maximum):

- ``attention``: last decoder layer's attention of position ``p_t - 1`` to the visual tokens, mean over heads.
- ``attention-rollout`` (Abnar & Zuidema 2020): ``R = prod_l (0.5 mean_h A_l + 0.5 I)`` (rows renormalised),
  row ``p_t - 1``, visual columns.
- ``grad-rollout`` (Chefer et al. 2021, the generic rule): ``R <- R + mean_h((dy_t/dA_l * A_l)^+) R`` over the
  layers from ``R = I``, row ``p_t - 1``, visual columns.
- ``grad-cam``: the visual tokens' embeddings at the LLM's input (the vision tower's output, the analogue of
  a CNN's last convolutional layer) as the activations ``A [N, d]``; channel weights = the mean over tokens of
  ``dy_t/dA``; map = ReLU(A @ weights).
- ``layer-cam``: ReLU(sum_c ReLU(dy_t/dA) * A) on the same activations (per-token positive gradients).
- ``gradient-x-input``: |sum_c dy_t/dA * A| on the same activations.

Written here in a few lines each rather than through ``grad-cam`` / ``captum``: those libraries call
``model(input_tensor)`` on one tensor, while an MLLM's forward takes token ids, pixel values and grid sizes;
the formulas are the libraries' own. Not built: CAM (needs a global-average-pooled classifier head), CP-LRP and
AttnLRP (need ``lxt``'s rewritten layers for this architecture). Single-view images only (no tiles, no video).
"""

from __future__ import annotations

import contextlib

import torch

BASELINES = ("attention", "attention-rollout", "grad-rollout", "grad-cam", "layer-cam", "gradient-x-input")
_ATTENTION = ("attention", "attention-rollout", "grad-rollout")


@contextlib.contextmanager
def _eager_attention(model, needed: bool):
    """Attention weights exist only with eager attention: switch to it inside the block, then back."""
    old = getattr(model.config, "_attn_implementation", None)
    if not needed or old == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(old)


def _normalise(m: torch.Tensor) -> torch.Tensor:
    m = m.float().clamp(min=0)
    top = m.max()
    return m / top if top > 0 else torch.zeros_like(m)


def baseline_maps(model, processor, image, prompt: str, answer, method: str) -> torch.Tensor:
    """float32 [T, Hc, Wc] maps in [0, 1], one per token of the forced ``answer`` (str or token ids)."""
    from ..adapters import get_adapter
    from ..pipeline import check_forced_answer, check_prompt, load_media

    if method not in BASELINES:
        raise ValueError(f"method={method!r} is not allowed; expected one of {', '.join(BASELINES)}")
    if answer is None:
        raise ValueError("answer=None is not supported by the baselines; pass the answer to explain (forced)")
    adapter = get_adapter(model, processor)
    ids = check_forced_answer(adapter, answer)
    base = adapter.prepare(load_media(image), check_prompt(prompt))
    if base.views is not None or base.temporal is not None:
        raise ValueError(f"method={method!r} supports single-view images only (no tiles, no video)")
    inputs, _, _ = adapter.collate([base], [ids], side="right")
    start = int(base.inputs["input_ids"].shape[1])
    vis = base.visual_positions.to(model.device)
    hc, wc = base.grid
    need_attn = method in _ATTENTION
    with _eager_attention(model, need_attn), torch.enable_grad():
        out = model(**inputs, output_hidden_states=True, output_attentions=need_attn, use_cache=False)
        logits = out.logits[0]
        maps = []
        rollout = None
        if method == "attention-rollout":
            rollout = _rollout([a[0].float() for a in out.attentions])
        for t, tid in enumerate(ids):
            row = start + t - 1
            y = logits[row, tid]
            if method == "attention":
                m = out.attentions[-1][0, :, row].float().mean(0)[vis]
            elif method == "attention-rollout":
                m = rollout[row, vis]
            elif method == "grad-rollout":
                grads = torch.autograd.grad(y, out.attentions, retain_graph=True)
                m = _grad_rollout([a[0].float() for a in out.attentions], [g[0].float() for g in grads])[
                    row, vis
                ]
            else:
                act = out.hidden_states[0]
                (g,) = torch.autograd.grad(y, act, retain_graph=True)
                a, g = act[0, vis].float(), g[0, vis].float()
                if method == "grad-cam":
                    m = torch.relu(a @ g.mean(0))
                elif method == "layer-cam":
                    m = torch.relu((torch.relu(g) * a).sum(-1))
                else:  # gradient-x-input
                    m = (g * a).sum(-1).abs()
            maps.append(_normalise(m.detach()).reshape(hc, wc))
    return torch.stack(maps).cpu()


def _rollout(attentions: list[torch.Tensor]) -> torch.Tensor:
    n = attentions[0].shape[-1]
    eye = torch.eye(n, device=attentions[0].device)
    r = eye
    for a in attentions:
        a = 0.5 * a.mean(0) + 0.5 * eye
        r = (a / a.sum(-1, keepdim=True)) @ r
    return r


def _grad_rollout(attentions: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    n = attentions[0].shape[-1]
    r = torch.eye(n, device=attentions[0].device)
    for a, g in zip(attentions, grads):
        cam = (g * a).clamp(min=0).mean(0)
        r = r + cam @ r
    return r
