"""Peak memory per provider, one child process per (case, provider).

    python benches/memory.py [--quick] [--json OUT.json] [--only SUBSTRING]

Each child builds its inputs (or model), then measures ONE call of the provider:

- CPU: the peak resident set size. The child resets the kernel's peak-RSS counter after the set-up
  (``/proc/self/clear_refs`` = 5, Linux >= 4.0), so ``peak_extra_mb`` = VmHWM after the call - VmRSS
  before it: the memory the call itself needed on top of its inputs. ``ru_maxrss_mb`` is the child's
  whole-life peak (inputs, model and the call; what ``getrusage`` reports). Where clear_refs is not
  writable, ``peak_extra_mb`` falls back to ru_maxrss after - VmRSS before (a lower bound if the set-up
  peaked higher than the call).
- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the memory allocated
  before the call (``cuda_peak_extra_mb``), and the absolute peak (``cuda_peak_mb``).

Prints a markdown table; ``--json`` writes the rows for ``benches/report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def memory_cases(quick: bool) -> list[dict]:
    """(case, provider) pairs to measure, as JSON-able dicts."""
    if quick:
        stages = [
            ("logit_lens", "qwen2vl", 100, 10),
            ("rankings", "qwen2vl", None, 10),
            ("refine", None, 100, 10),
        ]
        e2e = [(112, 4)]
    else:
        stages = [
            ("logit_lens", "qwen2vl", 400, 50),
            ("logit_lens", "qwen2vl", 4000, 200),
            ("rankings", "qwen2vl", None, 50),
            ("rankings", "qwen2vl", None, 200),
            ("refine", None, 400, 50),
            ("refine", None, 4000, 200),
        ]
        e2e = [(224, 20)]
    from benches.cases import default_device, stage_providers

    providers = stage_providers(default_device())
    out = []
    for stage, model, n, t in stages:
        for prov in providers:
            out.append({"type": "stage", "stage": stage, "model": model, "n": n, "t": t, "provider": prov})
    for image, t in e2e:
        for prov in ("reference", "fast", "floor", "floor-full"):
            out.append({"type": "e2e", "image": image, "t": t, "provider": prov, "quick": quick})
    return out


def case_label(c: dict) -> str:
    if c["type"] == "stage":
        from benches.cases import STAGE_TITLES

        size = []
        if c["model"]:
            size.append(c["model"])
        if c["n"] is not None:
            size.append(f"n={c['n']}")
        size.append(f"T={c['t']}")
        return f"{STAGE_TITLES[c['stage']]} ({', '.join(size)})"
    return f"end to end (image {c['image']}px, T={c['t']})"


# ------------------------------------------------------------------------------------------------ child


def _status_mb() -> dict[str, float]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, val = line.split(":")
                    out[key] = int(val.split()[0]) / 1024
    except OSError:
        pass
    return out


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    """Give the heap pages freed during the set-up back to the OS (glibc), so that the call's own
    allocations show up as RSS growth instead of reusing them unseen."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def run_child(case: dict) -> dict:
    import gc

    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        torch.set_num_threads(max(1, int(os.environ.get("MMX_BENCH_THREADS", "1"))))
    device = torch.device("cuda" if cuda else "cpu")
    prov = case["provider"]
    from benches.cases import auto_backend

    auto_backend(device)  # build / load the native kernels now, not inside the measured call
    if case["type"] == "stage":
        from benches.cases import StageCase, stage_callables

        sc = StageCase(case["stage"], case["model"], case["n"], case["t"])
        fn = stage_callables(sc, device, providers=(prov,))[prov]
    else:
        from benches.e2e import E2ECase, build_model, default_spec, e2e_callables

        spec = default_spec(case["quick"], device)
        model, processor = build_model(spec, str(device))
        fns, _ = e2e_callables(model, processor, E2ECase(case["image"], case["t"]), providers=(prov,))
        fn = fns[prov]
    gc.collect()
    _malloc_trim()
    row = dict(case)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    rss_before = _status_mb().get("VmRSS", float("nan"))
    reset = _reset_peak()
    t0 = time.perf_counter()
    fn()
    row["wall_s"] = time.perf_counter() - t0
    st = _status_mb()
    peak = st.get("VmHWM", float("nan")) if reset else _ru_maxrss_mb()
    row.update(
        rss_before_mb=rss_before,
        peak_extra_mb=peak - rss_before,
        ru_maxrss_mb=_ru_maxrss_mb(),
        peak_method="clear_refs+VmHWM" if reset else "ru_maxrss",
    )
    if cuda:
        row["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["cuda_peak_extra_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
    return row


# ----------------------------------------------------------------------------------------------- parent


def measure(cases: list[dict], timeout_s: float = 600, log=print) -> list[dict]:
    rows = []
    for c in cases:
        t0 = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(c)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=str(ROOT))
        except subprocess.TimeoutExpired:
            rows.append({**c, "error": f"timed out after {timeout_s:.0f} s"})
            log(f"  {case_label(c)} [{c['provider']}]: timed out")
            continue
        line = next((ln for ln in reversed(proc.stdout.splitlines()) if ln.startswith("{")), None)
        if proc.returncode != 0 or line is None:
            err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            rows.append({**c, "error": f"exit {proc.returncode}: {err}"})
            log(f"  {case_label(c)} [{c['provider']}]: FAILED ({err})")
            continue
        row = json.loads(line)
        rows.append(row)
        extra = row.get("cuda_peak_extra_mb", row["peak_extra_mb"])
        log(f"  {case_label(c)} [{c['provider']}]: +{extra:.0f} MB ({time.perf_counter() - t0:.0f} s)")
    return rows


def markdown(rows: list[dict]) -> str:
    cuda = any("cuda_peak_mb" in r for r in rows)
    head = "| case | provider | peak extra (MB) | child peak RSS (MB) |"
    if cuda:
        head = "| case | provider | CUDA peak extra (MB) | CUDA peak (MB) | child peak RSS (MB) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {case_label(r)} | {r['provider']} | {r['error']} |" + " |" * (2 if cuda else 1))
            continue
        if cuda:
            lines.append(
                f"| {case_label(r)} | {r['provider']} | {r['cuda_peak_extra_mb']:.0f} | {r['cuda_peak_mb']:.0f} "
                f"| {r['ru_maxrss_mb']:.0f} |"
            )
        else:
            lines.append(
                f"| {case_label(r)} | {r['provider']} | {r['peak_extra_mb']:.0f} | {r['ru_maxrss_mb']:.0f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smallest sizes only (also MMX_BENCH_QUICK=1)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--only", default="", help="only cases whose label contains this substring")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        print(json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0
    from benches.cases import quick_mode

    quick = args.quick or quick_mode()
    cases = [c for c in memory_cases(quick) if args.only in case_label(c)]
    print(f"peak memory, {len(cases)} child processes ({'quick' if quick else 'full'} sizes)")
    rows = measure(cases)
    print(markdown(rows))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        tmp.replace(args.json)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
