"""TAM's official ``TAM()`` (per token, as its demo calls it) vs our ``tam`` preset and our default.

Optional: runs only when ``TAM_SRC`` points at a checkout of xmed-lab/TAM (never in CI, never vendored;
see ``benches/tam_official.py``). All three providers start from the same scale-1.0 (and, for the default,
multi-scale) hidden states; the official one also computes its full-vocabulary logits, as it must. Two
answer modes: ``generated`` (generation's own states; TAM's logits one ``lm_head`` call per round, as its
demo) and ``forced`` (a teacher-forced forward's states; one ``lm_head`` call over all positions). The
group's ``extra_info`` records the fraction of our ``tam`` uint8 cells equal to TAM's.

    TAM_SRC=/path/to/TAM python -m pytest benches/test_bench_tam.py --benchmark-json=tam.json
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benches.cases import SCALES, quick_mode
from benches.conftest import bench_timer, run_bench
from benches.e2e import E2ECase, build_model, default_spec, e2e_cases
from benches.models import PROMPT, bench_image
from benches.tam_official import load_tam, official_tam_maps

TAM_MOD, WHY = load_tam()
pytestmark = [pytest.mark.skipif(TAM_MOD is None, reason=WHY), pytest.mark.benchmark(timer=bench_timer())]
# the end-to-end sizes, plus the issue-16 case: 640x480 (391 visual tokens), a 30-token answer
CASES = e2e_cases(quick_mode()) + ([] if quick_mode() else [E2ECase(640, 30, 480)])
PROVIDERS = ("tam-official", "ours-tam", "ours-default")
MODES = ("generated", "forced")


def attribute(explainer, base, prompts_s, hidden_s, answer, states=None, scores=None):
    """``mmx_fast.fast.attribute`` (the attribution step on given hidden states), with ``explainer``'s
    config, as ``explain`` runs it: ``states`` / ``scores``: generation's scale-1.0 states and the logits it
    kept at the answer positions (``Adapter.generate_scored``) when the answer was generated."""
    from mmx_fast.fast import attribute as fast_attribute
    from mmx_fast.pipeline import Answer, Item, ScaleStates

    item = Item(image=base.image, prompt=PROMPT, answer=answer, base=base)
    per_scale = [ScaleStates(p, h) for p, h in zip(prompts_s, hidden_s)]
    ans = Answer(answer, [], states, "", scores)
    return fast_attribute(explainer.adapter, explainer.config, item, ans, per_scale)


@pytest.fixture(scope="module")
def _tam_inputs(quick, device):
    from mmx_fast import ExplainConfig
    from mmx_fast.adapters import get_adapter
    from mmx_fast.fast import Explainer, _keep_scores

    spec = default_spec(quick, device)
    model, processor = build_model(spec, str(device))
    ad = get_adapter(model, processor)
    cache: dict = {}

    def get(case, mode):
        if (case, mode) in cache:
            return cache[(case, mode)]
        img = bench_image(*case.size)
        rows = [ad.prepare(img, PROMPT, s) for s in SCALES]
        base = rows[SCALES.index(1.0)]
        keep = _keep_scores([ExplainConfig()], ad)  # as the default Explainer keeps them
        with torch.no_grad():
            (answer,), (gen_states,), (scores,) = ad.generate_scored([base], case.answer_tokens, keep)
            hidden = ad.forward_hidden_batch(rows, [answer] * len(rows))
        per_round = mode == "generated"
        h1 = gen_states if per_round else hidden[SCALES.index(1.0)]
        states = h1 if per_round else None
        scores = scores if per_round else None
        w_u = ad.lm_head_weight()
        tam_ex = Explainer(model, processor, ExplainConfig(method="tam"))
        default_ex = Explainer(model, processor, ExplainConfig())

        @torch.no_grad()
        def official():
            return official_tam_maps(TAM_MOD, ad, processor, base, img, answer, h1, w_u, per_round)

        @torch.no_grad()
        def ours_tam():
            return attribute(tam_ex, base, [base], [h1], answer, states).maps

        @torch.no_grad()
        def ours_default():  # generated: scale 1.0 from generation (its states and kept logits), as explain
            if per_round:
                gen_rows = [h if r is not base else gen_states for r, h in zip(rows, hidden)]
                return attribute(default_ex, base, rows, gen_rows, answer, states, scores).maps
            return attribute(default_ex, base, rows, hidden, answer).maps

        fns = {"tam-official": official, "ours-tam": ours_tam, "ours-default": ours_default}
        cache[(case, mode)] = (spec, fns, base)
        return cache[(case, mode)]

    return get


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_tam_official(benchmark, case, mode, provider, _tam_inputs, device):
    spec, fns, base = _tam_inputs(case, mode)
    w, h = case.size
    size = f"{w}px" if w == h else f"{w}x{h}px"
    group = f"TAM official vs ours | {spec.label} | image {size}, T={case.answer_tokens}, {mode} answer"
    info = {
        "kind": "tam",
        "model": spec.label,
        "image": size,
        "answer_tokens": case.answer_tokens,
        "answer": mode,
        "n": int(base.grid[0] * base.grid[1]),
        "device": str(device),
    }
    out = run_bench(benchmark, fns[provider], group, provider, info)
    if provider == "ours-tam":
        theirs = fns["tam-official"]()
        ours = np.rint(torch.as_tensor(out).float().cpu().numpy() * 255).astype(np.uint8)
        equal = float((ours == theirs).mean())
        benchmark.extra_info["uint8_equal_fraction"] = equal
        benchmark.extra_info["max_abs_diff"] = int(np.abs(ours.astype(int) - theirs.astype(int)).max())
