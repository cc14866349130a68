"""Fallback rate of the certified bfloat16 rankings (docs/design.md §5) on realistic hidden states: the
bench model (``benches/models.py``: Qwen2-VL with Qwen2-VL-2B's dimensions, random weights, few layers)
explains a few bench images with ``msea-arc`` and ``rankings_precision="certified-bf16"``; the counters of
``mmx_fast.ops.rankings.CERTIFY_STATS`` give how many ranking rows and base-id searches fell back to the
exact float32 pass. Each explanation is also run with ``rankings_precision="float32"`` and the maps must be
identical.

    python -m benches.certified_fallbacks [--json benches/results/certified.json] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benches.models import PROMPT, bench_image, qwen2vl_2b_like  # noqa: E402

SIZES = ((224, 224, 0), (448, 448, 1), (640, 480, 2), (336, 448, 3))
ANSWER_TOKENS = 30


def measure(dtype: torch.dtype) -> dict:
    from mmx_fast import ExplainConfig, Explainer
    from mmx_fast.ops import rankings as torch_rankings

    model, processor = qwen2vl_2b_like(text_layers=2, vision_depth=2, dtype=dtype)
    cert = ExplainConfig(max_new_tokens=ANSWER_TOKENS, rankings_precision="certified-bf16")
    exact = cert.with_(rankings_precision="float32")
    totals = dict.fromkeys(torch_rankings.CERTIFY_STATS, 0)
    t0 = time.perf_counter()
    for w, h, seed in SIZES:
        img = bench_image(w, h, seed)
        torch_rankings.reset_certify_stats()
        a, b = Explainer(model, processor, cert).explain_methods(img, PROMPT, [cert, exact])
        stats = torch_rankings.reset_certify_stats()
        assert torch.equal(a.maps, b.maps), "certified and float32 maps differ"
        for key, val in stats.items():
            totals[key] += val
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "images": len(SIZES),
        "answer_tokens": ANSWER_TOKENS,
        **totals,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=None, help="write the results here (atomically)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("MMX_BENCH_THREADS", "1")))
    out = []
    for name in args.dtypes.split(","):
        res = measure(getattr(torch, name.strip()))
        print(json.dumps(res), flush=True)
        out.append(res)
    if args.json:
        from mmx_fast.io import atomic_write_json

        atomic_write_json(args.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
