"""Stress sizes on CPU with tiny models: long answers, many visual tokens, big batches.

Each case runs in a child process so its peak RSS (ru_maxrss) can be read and reported; the numbers are
printed (``pytest -s``) and the growth with answer length is checked to be sub-quadratic.
"""

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np, torch
    from PIL import Image
    from mmx_fast import ExplainConfig
    from mmx_fast.fast import Explainer
    from mmx_fast.testing import tiny_model

    case, n = sys.argv[1], int(sys.argv[2])
    torch.manual_seed(0)
    rng = np.random.default_rng(0)

    def photo(w, h, seed=0):
        r = np.random.default_rng(seed)
        return Image.fromarray(r.integers(0, 255, (h, w, 3), dtype=np.uint8))

    def ordinary_ids(tok, count):
        special = set(tok.all_special_ids) | set(getattr(tok, "added_tokens_decoder", {}).keys())
        pool = [i for i in range(300, 1100) if i not in special]
        return [int(x) for x in rng.choice(pool, size=count)]

    t0 = time.perf_counter()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if case == "answer":  # a forced answer of n tokens
        model, proc = tiny_model("qwen2_vl", seed=0)
        ex = Explainer(model, proc, ExplainConfig(method="msea-arc"))
        exp = ex.explain(photo(160, 120), "Describe the picture in detail.", answer=ordinary_ids(proc.tokenizer, n))
        out = [exp]
    elif case == "visual":  # n visual tokens per image at scale 1.0 (LLaVA: (image_size / 14) ** 2)
        side = int(round(n ** 0.5)) * 14
        model, proc = tiny_model("llava", seed=0, image_size=side)
        ex = Explainer(model, proc, ExplainConfig(method="msea-arc"))
        exp = ex.explain(photo(side, side), "What is in the image?", answer=ordinary_ids(proc.tokenizer, 20))
        out = [exp]
    else:  # a batch of n images
        model, proc = tiny_model("internvl", seed=0)
        ex = Explainer(model, proc, ExplainConfig(method="msea-arc", max_new_tokens=4))
        ims = [photo(60 + 3 * i, 50 + 2 * i, i) for i in range(n)]
        out = ex.explain_batch(ims, ["What is in the image?"] * n)
    elapsed = time.perf_counter() - t0
    ok = all(not torch.isnan(e.maps).any() and e.maps.shape[0] == len(e.answer_ids) for e in out)
    print(json.dumps({
        "case": case, "n": n, "ok": bool(ok), "seconds": round(elapsed, 2),
        "T": [len(e.answer_ids) for e in out][:3], "grid": list(out[0].grid),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_mb": round(base_rss / 1024, 1),
    }))
    """
)


def run_case(case: str, n: int) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, case, str(n)], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(result)
    assert result["ok"]
    return result


def test_long_answers_memory_grows_subquadratically():
    small = run_case("answer", 250)
    big = run_case("answer", 1000)
    assert big["T"] == [1000]
    # 4x the answer: the extra memory must stay well under 16x (quadratic) the extra of the small case;
    # the T x (P + T) RBO pair matrix is the only quadratic term (4 bytes a pair: 4 MB at T = 1000)
    extra_small = max(small["peak_rss_mb"] - small["rss_before_mb"], 1.0)
    extra_big = big["peak_rss_mb"] - big["rss_before_mb"]
    assert extra_big < 8 * extra_small, (small, big)


def test_four_thousand_visual_tokens():
    r = run_case("visual", 4096)
    assert r["grid"] == [64, 64]


@pytest.mark.parametrize("n", [32])
def test_batch_of_32_images(n):
    r = run_case("batch", n)
    assert len(r["T"]) == 3
