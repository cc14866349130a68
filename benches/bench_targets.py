"""What ``targets=`` saves: 3 of a 30-token answer explained vs all 30, on the same Explainer.

    python benches/bench_targets.py [--family qwen2_vl] [--image-size 448] [--reps N] [--method msea-arc]

A tiny real-architecture model (``mmx_fast.testing``; random weights, nothing downloads) with a forced answer
of exactly 30 tokens, on the model's device (CUDA when available). Rows: every token; 3 tokens spread over the
answer (5, 15, 25: the forward stops after token 25); the last 3 (27, 28, 29: the whole answer is still
forwarded and ranked, only the per-target work is saved). The runs alternate repetition by repetition (a
noisy, shared machine slows them alike); the table gives median wall times of ``Explainer.explain`` end to end
and of its ``attribution`` step, and the ratio to the full run. The targets' maps are checked equal to the full
run's before timing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

from mmx_fast import ExplainConfig, Explainer
from mmx_fast.testing import tiny_model

ROWS = {"all 30": None, "3 spread (5, 15, 25)": [5, 15, 25], "last 3 (27, 28, 29)": [27, 28, 29]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="qwen2_vl")
    ap.add_argument("--image-size", type=int, default=448)
    ap.add_argument("--method", default="msea-arc")
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, processor = tiny_model(args.family, seed=0, image_size=args.image_size)
    model = model.to(device)
    ex = Explainer(model, processor, ExplainConfig(method=args.method))
    image = Image.new("RGB", (args.image_size, args.image_size * 3 // 4), (120, 80, 40))
    tok = processor.tokenizer
    words = "The cat is sleeping on a blue sofa near the window while two children play with a yellow ball".split()
    answer = tok(" ".join(words * 3), add_special_tokens=False)["input_ids"][:30]
    prompt = "Describe the picture in detail."

    full = ex.explain(image, prompt, answer)
    for t in ROWS.values():
        if t is not None:
            got = ex.explain(image, prompt, answer, targets=t)
            torch.testing.assert_close(got.maps, full.maps[t], atol=1e-4, rtol=0)
    times = {name: ([], []) for name in ROWS}
    for _ in range(args.reps):
        for name, t in ROWS.items():
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            exp = ex.explain(image, prompt, answer, targets=t)
            if device == "cuda":
                torch.cuda.synchronize()
            times[name][0].append(time.perf_counter() - t0)
            times[name][1].append(exp.timings["attribution"])
    dev = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.family}, {args.method}, grid {full.grid[0]}x{full.grid[1]}, 30 answer tokens, {dev}, "
          f"median of {args.reps}")  # fmt: skip
    print(f"{'targets':<24}{'end to end ms':>15}{'x full':>8}{'attribution ms':>16}{'x full':>8}")
    base_e2e = statistics.median(times["all 30"][0])
    base_att = statistics.median(times["all 30"][1])
    for name, (e2e, att) in times.items():
        m_e2e, m_att = statistics.median(e2e), statistics.median(att)
        print(
            f"{name:<24}{1000 * m_e2e:>15.1f}{m_e2e / base_e2e:>8.2f}{1000 * m_att:>16.1f}{m_att / base_att:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
