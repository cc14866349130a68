"""Native C++ kernels (mmx_fast.native) vs the vectorised torch path (the ``torch`` entries of mmx_fast.ops.OPS), side by side.

    python benches/bench_native.py [--reps N] [--threads N] [--quick]

Both implementations run in the same process, interleaved repetition by repetition (so a noisy, shared
machine slows both alike); the table shows the median wall time of each and the ratio torch / native
(> 1: native is faster). Sizes are the realistic ones of Qwen2-VL-2B on one image: top-k R=70, d=1536,
V=151,936, k=50; RBO T=50, C=70, k=50; refine T=50, C=71 on 24x24 and 17x23 grids.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mmx_fast import (
    native,  # noqa: E402
    ops,  # noqa: E402
)
from mmx_fast.ops.rankings import rankings_topk_torch  # noqa: E402
from mmx_fast.ops.refine import refine_torch  # noqa: E402


def _interleaved(fns: dict, reps: int) -> dict:
    """{name: (median, min)} seconds, the implementations alternating repetition by repetition."""
    times = {name: [] for name in fns}
    for fn in fns.values():  # warm-up (first-call allocations, lazy init)
        fn()
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def _rankings(n: int, k: int, vocab: int, gen: torch.Generator) -> torch.Tensor:
    """n rankings of k distinct ids drawn from a small vocabulary (so that lists overlap, as real ones do)."""
    return torch.stack([torch.randperm(vocab, generator=gen)[:k] for _ in range(n)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7, help="timed repetitions per case (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: unchanged)")
    ap.add_argument("--quick", action="store_true", help="smaller vocabulary (V=16384) for a fast check")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if not native.available():
        print(f"native kernels unavailable: {native.build_error()}")
        return 1
    load_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(0)
    rows = []

    r, d, v, k = 70, 1536, (16384 if args.quick else 151936), 50
    h = torch.randn(r, d, generator=gen)
    w = torch.randn(v, d, generator=gen) * 0.02
    for dtype in (torch.float32, torch.bfloat16):
        hh, ww = h.to(dtype), w.to(dtype)
        assert torch.equal(native.rankings_topk(hh, ww, k), rankings_topk_torch(hh, ww, k))
        med = _interleaved(
            {
                "torch": partial(rankings_topk_torch, hh, ww, k),
                "native": partial(native.rankings_topk, hh, ww, k),
            },
            args.reps,
        )
        rows.append((f"rankings_topk R={r} d={d} V={v} k={k} {str(dtype)[6:]}", med))

    t, c, k = 50, 70, 50
    a = _rankings(t, k, 400, gen)
    b = _rankings(c, k, 400, gen)
    assert torch.allclose(
        native.rankings_rbo(a, b, 0.9, "ext"), ops.rankings_rbo(a, b, 0.9, "ext", backend="torch"), atol=1e-6
    )
    med = _interleaved(
        {
            "torch": lambda: ops.rankings_rbo(a, b, 0.9, "ext", backend="torch"),
            "native": lambda: native.rankings_rbo(a, b, 0.9, "ext"),
        },
        args.reps * 5,
    )
    rows.append((f"rankings_rbo T={t} C={c} k={k}", med))

    t, c = 50, 71
    for hgt, wid in ((24, 24), (17, 23)):
        a_t = torch.rand(t, hgt, wid, generator=gen)
        ctx = torch.rand(c, hgt, wid, generator=gen)
        wts = torch.rand(t, c, generator=gen)
        for flt in (True, False):
            err = (native.refine(a_t, ctx, wts, flt) - refine_torch(a_t, ctx, wts, flt)).abs().max()
            assert float(err) < 1e-4, float(err)
            med = _interleaved(
                {
                    "torch": partial(refine_torch, a_t, ctx, wts, flt),
                    "native": partial(native.refine, a_t, ctx, wts, flt),
                },
                args.reps * 5,
            )
            rows.append((f"refine T={t} C={c} {hgt}x{wid} filter={flt}", med))

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, native load {load_s:.2f} s")
    print("median (min) of the interleaved repetitions; ratio = torch / native (> 1: native faster)")
    print(f"{'case':<50} {'torch ms':>18} {'native ms':>18} {'ratio med (min)':>16}")
    for name, res in rows:
        (tm, tn), (nm, nn) = res["torch"], res["native"]
        print(
            f"{name:<50} {tm * 1e3:>9.2f} ({tn * 1e3:>6.2f}) {nm * 1e3:>9.2f} ({nn * 1e3:>6.2f})"
            f" {tm / nm:>7.2f}x ({tn / nn:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
