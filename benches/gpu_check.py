"""One-shot check for a CUDA machine: the CUDA tests, then stage and end-to-end timings, as one table.

    python benches/gpu_check.py                 # CUDA: tests + stages + end to end (28-layer bf16 model)
    python benches/gpu_check.py --layers 4      # fewer decoder layers (vision depth: --vision-depth)
    python benches/gpu_check.py --quick         # smallest sizes; on a CPU-only machine this checks the
                                                # script itself (CUDA parts are skipped with a message)

Installs nothing and needs no network: PyTorch, Triton and transformers must already be there. Steps:

1. ``pytest tests -k cuda`` (the CUDA tests of tests/test_kernels.py, tests/test_native.py, the
   triton-cuda cases of tests/test_stage_*.py and the attention choice on CUDA,
   tests/test_api_outputs.py::test_attention_choice_on_cuda; skipped without CUDA or with ``--no-tests``),
   then one line saying which attention implementation ``attn_implementation="auto"`` picks here for
   float32 and bfloat16 models (:func:`attention_choice`).
2. Every stage (logit_lens, rankings = top-k + RBO, refine, refine_filter, msea) at realistic sizes for
   the providers ``reference``, ``torch`` and ``triton`` (CUDA; on the CPU ``reference``, ``fast`` =
   ``backend="auto"`` and ``torch`` if auto picks the native kernels):
   medians from ``triton.testing.do_bench`` on CUDA, of repeated wall-clock runs on the CPU; peak extra
   CUDA memory per call; whether the output agrees with the reference's.
3. End to end on Qwen2-VL with Qwen2-VL-2B's real dimensions (hidden 1536, vocabulary 151,936, tied
   embeddings; ``--layers`` text layers, default all 28, bfloat16, random weights), a 640x480 image (391
   visual tokens at scale 1.0) and a greedy answer of exactly ``--answer-tokens`` tokens:
   ``reference.explain``, ``explain_fast``, the floor (``generate`` + the extra scales' prefix-only
   forwards), the floor before issue 16 (``floor-full``: one padded full-length forward over the extra
   scales), ``generate`` alone, and the MSEA forward (one per scale, padded full-length, prefix-only).

Prints one markdown table (and ``--json PATH`` writes the rows).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CUDA = torch.cuda.is_available()
if CUDA and os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    print("note: TRITON_INTERPRET is set on a CUDA machine; unsetting it so the kernels compile for the GPU")
    os.environ.pop("TRITON_INTERPRET")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------- timing


def time_median(fn, quick: bool) -> float:
    """Median seconds of ``fn``: triton.testing.do_bench on CUDA, wall-clock repeats on the CPU."""
    if CUDA:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=100 if quick else 200, return_mode="median")) / 1e3
    fn()  # warm-up
    ts = []
    budget = 0.3 if quick else 2.0
    t_all = time.perf_counter()
    while len(ts) < 3 or (time.perf_counter() - t_all < budget and len(ts) < 30):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def time_slow(fn, reps: int) -> float:
    """Median of ``reps`` wall-clock calls after one warm-up (for calls of a second or more)."""
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def peak_extra_mb(fn) -> float | None:
    """Extra CUDA memory one call of ``fn`` allocates at its peak (None on the CPU)."""
    if not CUDA:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


# ------------------------------------------------------------------------------------------------ steps


def run_cuda_tests(skip: bool) -> str:
    if skip:
        return "skipped (--no-tests)"
    if not CUDA:
        log("CUDA tests: skipped (no CUDA device; they need a GPU)")
        return "skipped (no CUDA)"
    cmd = [sys.executable, "-m", "pytest", "tests", "-k", "cuda", "-q", "-p", "no:cacheprovider"]
    log("running: " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True)
    tail = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    for ln in tail[-15:]:
        log("  " + ln)
    summary = tail[-1] if tail else "no output"
    return f"{'PASS' if proc.returncode == 0 else 'FAIL'}: {summary}"


def attention_choice() -> str:
    """What ``attn_implementation="auto"`` picks on this machine for float32 / bfloat16 models (flash-attention
    2 only when flash-attn is installed, on CUDA, in fp16 / bf16; otherwise sdpa)."""
    from mmx_fast.loading import flash_attn_installed, resolve_attn_implementation

    flash = flash_attn_installed()
    device = "cuda" if CUDA else "cpu"
    picks = {
        str(dt).removeprefix("torch."): resolve_attn_implementation(
            "auto", device_type=device, dtype=dt, flash_attn=flash
        )
        for dt in (torch.float32, torch.bfloat16)
    }
    line = f"flash-attn {'installed' if flash else 'not installed'}; auto on {device}: " + ", ".join(
        f"{k} -> {v}" for k, v in picks.items()
    )
    log("attention: " + line)
    return line


def stage_rows(quick: bool, stages: tuple[str, ...] | None = None) -> list[dict]:
    from benches.cases import STAGES, check_agreement, stage_callables, stage_cases, stage_providers

    providers = ("reference", "torch", "triton") if CUDA else stage_providers("cpu")
    if CUDA:
        try:
            from mmx_fast import ops

            ops.resolve_backend("triton", "cuda")
            from mmx_fast.kernels_loader import triton_kernels

            if not triton_kernels().available:
                raise RuntimeError(f"mmx_fast.kernels does not import: {triton_kernels().import_error}")
        except Exception as err:
            log(f"triton provider unavailable ({err!r}); timing reference and torch only")
            providers = ("reference", "torch")
    rows = []
    cases = [c for st in STAGES if not stages or st in stages for c in stage_cases(st, quick)]
    for case in cases:
        fns = stage_callables(case, providers=providers)
        ref_out = fns["reference"]()
        for prov in providers:
            row = {"section": "stage", "case": case.group.replace(" | ", ", "), "provider": prov}
            try:
                out = fns[prov]()
                if prov != "reference":
                    try:
                        check_agreement(case, ref_out, out)
                        row["agrees"] = "yes"
                    except AssertionError as err:
                        row["agrees"] = "NO: " + str(err).splitlines()[0][:80]
                row["median_s"] = time_median(fns[prov], quick)
                row["peak_mb"] = peak_extra_mb(fns[prov])
            except Exception as err:  # report, keep going
                row["error"] = f"{type(err).__name__}: {str(err)[:120]}"
            rows.append(row)
        log(
            f"  {row['case']}: "
            + ", ".join(f"{r['provider']} {fmt_s(r.get('median_s'))}" for r in rows[-len(providers) :])
        )
        del fns, ref_out
        if CUDA:
            torch.cuda.empty_cache()
    return rows


def e2e_rows(args) -> list[dict]:
    from benches.e2e import E2E_PROVIDERS, E2ECase, ModelSpec, build_model, e2e_callables, forward_callables

    device = "cuda" if CUDA else "cpu"
    if args.quick and not CUDA:
        spec = ModelSpec(kind="tiny")
        case = E2ECase(112, 4)
        width = height = 112
    else:
        layers = args.layers if args.layers else (28 if CUDA else 2)
        depth = args.vision_depth if args.vision_depth else (32 if CUDA else 2)
        spec = ModelSpec(
            kind="2b", layers=layers, vision_depth=depth, dtype="bfloat16" if CUDA else "float32"
        )
        width, height = args.image
        case = E2ECase(width, args.answer_tokens, height)
    log(f"building {spec.label} on {device} ...")
    t0 = time.perf_counter()
    model, processor = build_model(spec, device)
    log(f"  built in {time.perf_counter() - t0:.0f} s")
    fns, facts = e2e_callables(model, processor, case, providers=E2E_PROVIDERS)
    fwd = forward_callables(model, processor, case)
    vt = facts["visual_tokens"]
    label = (
        f"{spec.label}; image {width}x{height} (visual tokens {vt['0.5']}/{vt['0.75']}/{vt['1.0']}), "
        f"T={case.answer_tokens}"
    )
    reps = 2 if args.quick else args.reps
    rows = []
    for prov in E2E_PROVIDERS:
        row = {"section": "end to end", "case": label, "provider": prov}
        try:
            row["median_s"] = time_slow(fns[prov], reps)
            row["peak_mb"] = peak_extra_mb(fns[prov])
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {str(err)[:120]}"
        rows.append(row)
        log(f"  e2e {prov}: {fmt_s(row.get('median_s'))}")
    for prov, name in (
        ("reference", "one forward per scale"),
        ("padded", "one padded full-length batch"),
        ("fast", "prefix-only extra scales, bucketed"),
    ):
        row = {"section": "MSEA forward", "case": label, "provider": name}
        try:
            row["median_s"] = time_slow(fwd[prov], reps)
            row["peak_mb"] = peak_extra_mb(fwd[prov])
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {str(err)[:120]}"
        rows.append(row)
        log(f"  forward {name}: {fmt_s(row.get('median_s'))}")
    return rows


# ------------------------------------------------------------------------------------------------ table


def fmt_s(s) -> str:
    if s is None:
        return "—"
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.3f} s"


def table(rows: list[dict]) -> str:
    ref_of: dict[tuple[str, str], float] = {}
    floor_of: dict[str, float] = {}
    for r in rows:
        if r["provider"] in ("reference", "one forward per scale") and "median_s" in r:
            ref_of[(r["section"], r["case"])] = r["median_s"]
        if r["provider"] == "floor" and "median_s" in r:
            floor_of[r["case"]] = r["median_s"]
    out = [
        "| section | case | provider | median | reference / this | this / floor | peak extra CUDA mem | agrees with reference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        med = r.get("median_s")
        ref = ref_of.get((r["section"], r["case"]))
        vs_ref = f"{ref / med:.2f}x" if med and ref else "—"
        floor = floor_of.get(r["case"]) if r["section"] == "end to end" else None
        vs_floor = f"{med / floor:.2f}x" if med and floor else "—"
        mem = "—" if r.get("peak_mb") is None else f"{r['peak_mb']:,.0f} MB"
        med_s = fmt_s(med) if "error" not in r else f"ERROR {r['error']}"
        out.append(
            f"| {r['section']} | {r['case']} | {r['provider']} | {med_s} | {vs_ref} | {vs_floor} | {mem} "
            f"| {r.get('agrees', '—')} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smallest sizes; runs on a CPU too")
    ap.add_argument("--layers", type=int, default=0, help="decoder layers (default 28 on CUDA, 2 on CPU)")
    ap.add_argument(
        "--vision-depth", type=int, default=0, help="vision blocks (default 32 on CUDA, 2 on CPU)"
    )
    ap.add_argument("--image", type=int, nargs=2, default=(640, 480), metavar=("W", "H"))
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5, help="timed repeats of each end-to-end call")
    ap.add_argument("--no-tests", action="store_true", help="skip pytest tests -k cuda")
    ap.add_argument("--no-stages", action="store_true")
    ap.add_argument(
        "--stages",
        default="",
        help="comma-separated stages to time (logit_lens,rankings,refine,refine_filter,msea); default all",
    )
    ap.add_argument("--no-e2e", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = ap.parse_args(argv)

    if not CUDA:
        torch.set_num_threads(max(1, int(os.environ.get("MMX_BENCH_THREADS", "1"))))
    from benches.report import versions

    dev = torch.cuda.get_device_name(0) if CUDA else "CPU (no CUDA: GPU parts skipped)"
    log(f"gpu_check on {dev}; " + ", ".join(f"{k} {v}" for k, v in versions().items()))
    if not CUDA and not args.quick:
        log("note: no CUDA device; pass --quick on a CPU (full sizes and the 2B-like model are slow here)")
    t0 = time.perf_counter()
    tests = run_cuda_tests(args.no_tests)
    attention = attention_choice()
    rows: list[dict] = []
    if not args.no_stages:
        log("stages:")
        only = tuple(x.strip() for x in args.stages.split(",") if x.strip())
        from benches.cases import STAGES

        unknown = [x for x in only if x not in STAGES]
        if unknown:
            raise SystemExit(
                f"--stages {','.join(unknown)} is not allowed; expected some of {','.join(STAGES)}"
            )
        rows += stage_rows(args.quick, only or None)
    if not args.no_e2e:
        log("end to end:")
        rows += e2e_rows(args)
    print()
    print(f"## gpu_check: {dev}")
    print()
    print(f"CUDA tests: {tests}. Attention: {attention}. Total time {time.perf_counter() - t0:.0f} s.")
    print()
    print(table(rows))
    if args.json:
        args.json.write_text(
            json.dumps({"device": dev, "tests": tests, "attention": attention, "rows": rows}, indent=1)
        )
    failed = tests.startswith("FAIL") or any("error" in r for r in rows)
    failed = failed or any(str(r.get("agrees", "")).startswith("NO") for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
