"""TAM's official ``TAM()`` (per token, as its demo calls it) vs our ``tam`` preset and our default.

Optional: runs only when ``TAM_SRC`` points at a checkout of xmed-lab/TAM (never in CI, never vendored;
see ``benches/tam_official.py``). All three providers start from the same scale-1.0 (and, for the default,
multi-scale) hidden states; the official one also computes its full-vocabulary logits, as it must. The
group's ``extra_info`` records whether our ``tam`` maps equal TAM's uint8 maps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benches.cases import SCALES, quick_mode
from benches.conftest import bench_timer, run_bench
from benches.e2e import build_model, default_spec, e2e_cases
from benches.models import PROMPT, bench_image
from benches.tam_official import load_tam, official_tam_maps

TAM_MOD, WHY = load_tam()
pytestmark = [pytest.mark.skipif(TAM_MOD is None, reason=WHY), pytest.mark.benchmark(timer=bench_timer())]
CASES = e2e_cases(quick_mode())
PROVIDERS = ("tam-official", "ours-tam", "ours-default")


def attribute(explainer, base, prompts_s, hidden_s, answer):
    """``mmx_fast.fast.attribute`` (the attribution step on given hidden states), with ``explainer``'s config."""
    from mmx_fast.fast import attribute as fast_attribute
    from mmx_fast.pipeline import Answer, Item, ScaleStates

    item = Item(image=base.image, prompt=PROMPT, answer=answer, base=base)
    per_scale = [ScaleStates(p, h) for p, h in zip(prompts_s, hidden_s)]
    return fast_attribute(explainer.adapter, explainer.config, item, Answer(answer, []), per_scale)


@pytest.fixture(scope="module")
def _tam_inputs(quick, device):
    from mmx_fast import ExplainConfig
    from mmx_fast.adapters import get_adapter
    from mmx_fast.fast import Explainer

    spec = default_spec(quick, device)
    model, processor = build_model(spec, str(device))
    ad = get_adapter(model, processor)
    cache: dict = {}

    def get(case):
        if case in cache:
            return cache[case]
        img = bench_image(*case.size)
        rows = [ad.prepare(img, PROMPT, s) for s in SCALES]
        base = rows[SCALES.index(1.0)]
        answer = ad.generate(base, case.answer_tokens)
        hidden = ad.forward_hidden_batch(rows, [answer] * len(rows))
        h1 = hidden[SCALES.index(1.0)]
        w_u = ad.lm_head_weight()
        tam_ex = Explainer(model, processor, ExplainConfig(method="tam"))
        default_ex = Explainer(model, processor, ExplainConfig())

        @torch.no_grad()
        def official():
            return official_tam_maps(TAM_MOD, ad, processor, base, img, answer, h1, w_u)

        @torch.no_grad()
        def ours_tam():
            return attribute(tam_ex, base, [base], [h1], answer).maps

        @torch.no_grad()
        def ours_default():
            return attribute(default_ex, base, rows, hidden, answer).maps

        fns = {"tam-official": official, "ours-tam": ours_tam, "ours-default": ours_default}
        cache[case] = (spec, fns, base)
        return cache[case]

    return get


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_tam_official(benchmark, case, provider, _tam_inputs, device):
    spec, fns, base = _tam_inputs(case)
    group = f"TAM official vs ours | {spec.label} | image {case.image}px, T={case.answer_tokens}"
    info = {
        "kind": "tam",
        "model": spec.label,
        "image": case.image,
        "answer_tokens": case.answer_tokens,
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
