"""Run the benchmark suite and the memory probe, then write ``benches/RESULTS.md`` and log-log plots.

    python benches/report.py                    # full suite + memory (what `make bench` runs)
    python benches/report.py --quick            # smallest sizes only (a smoke run)
    python benches/report.py --json B.json [--memory-json M.json]   # re-render from earlier results
    python benches/report.py --out DIR          # write DIR/RESULTS.md, DIR/plots/, DIR/results/

Raw results are kept next to the report: ``results/bench.json`` (pytest-benchmark's JSON) and
``results/memory.json`` (``benches/memory.py``). Plots (``plots/*.png``) are drawn with Pillow.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches.cases import (  # noqa: E402
    FULL_N,
    FULL_T,
    N_FIXED,
    STAGE_TITLES,
    STAGES,
    T_FIXED,
)
from benches.plots import EXTRA_COLORS, PALETTE, SECOND_MODEL, Panel, Series, loglog  # noqa: E402

# --------------------------------------------------------------------------------------------- running


def run_suite(json_path: Path, quick: bool, extra_args: list[str]) -> float:
    """pytest-benchmark over benches/ into ``json_path``; returns the wall time in seconds."""
    env = dict(os.environ, MMX_BENCH_QUICK="1" if quick else "0")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={json_path}",
        "--benchmark-columns=median,min,rounds",
        "--benchmark-sort=name",
        *extra_args,
    ]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env)
    if proc.returncode not in (0,):
        raise SystemExit(f"the benchmark suite failed (pytest exit {proc.returncode})")
    return time.perf_counter() - t0


def run_memory(json_path: Path, quick: bool) -> float:
    env = dict(os.environ, MMX_BENCH_QUICK="1" if quick else "0")
    cmd = [sys.executable, str(HERE / "memory.py"), "--json", str(json_path)]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=str(ROOT), env=env)
    if proc.returncode != 0:
        print(f"warning: memory.py exited {proc.returncode}; failed cases are marked in the table")
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- helpers


def _num(x: float) -> str:
    """Three significant digits, trailing zeros kept (4.00, 30.0, 882)."""
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_t(s: float | None) -> str:
    if s is None:
        return "—"
    if s >= 1:
        return f"{_num(s)} s"
    if s >= 1e-3:
        return f"{_num(s * 1e3)} ms"
    return f"{_num(s * 1e6)} µs"


def fmt_r(r: float | None) -> str:
    return "—" if r is None else f"{_num(r)}x"


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "triton", "numpy", "pillow", "pytest-benchmark", "mmx-fast"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def machine() -> dict[str, str]:
    info = {"platform": platform.platform(), "cores": str(os.cpu_count())}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["memory"] = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                break
    except OSError:
        pass
    try:
        import torch

        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception:  # torch missing or broken: the report still renders
        info["gpu"] = "unknown"
    return info


def load_bench(path: Path) -> tuple[list[dict], dict]:
    data = json.loads(path.read_text())
    rows = []
    for b in data.get("benchmarks", []):
        info = dict(b.get("extra_info", {}))
        info["group"] = b.get("group")
        info["name"] = b.get("name")
        info["median"] = b["stats"]["median"]
        info["min"] = b["stats"]["min"]
        info["rounds"] = b["stats"]["rounds"]
        rows.append(info)
    return rows, data


def by_group(rows: list[dict]) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        out[r["group"]][r["provider"]] = r
    return out


def _med(rows: dict, provider: str) -> float | None:
    r = rows.get(provider)
    return r["median"] if r else None


# ---------------------------------------------------------------------------------------------- tables


def _fast_label(provs_rows) -> str:
    backends = sorted({r.get("fast_backend") for r in provs_rows if r.get("fast_backend")})
    return f"fast ({', '.join(backends)})" if backends else "fast"


def stage_table(rows: list[dict], stage: str) -> list[str]:
    srows = [r for r in rows if r.get("kind") == "stage" and r.get("stage") == stage]
    groups = by_group(srows)
    if not groups:
        return []
    has_model = stage in ("logit_lens", "rankings")
    has_n = stage != "rankings"
    has_torch = any("torch" in p for p in groups.values())
    head = (["model (V x d)"] if has_model else []) + (["n"] if has_n else []) + ["T"]
    head += ["reference", _fast_label([r for r in srows if r["provider"] == "fast"])]
    head += ["torch (vectorised)"] if has_torch else []
    head += ["reference / fast"] + (["reference / torch"] if has_torch else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def key(item):
        g = next(iter(item[1].values()))
        return (g.get("model") or "", g.get("n") or 0, g.get("t") or 0)

    for _, provs in sorted(groups.items(), key=key):
        g = next(iter(provs.values()))
        cells = []
        if has_model:
            cells.append(f"{g['model']} ({g['vocab']:,} x {g['hidden']})")
        if has_n:
            cells.append(str(g["n"]))
        cells.append(str(g["t"]))
        ref, fast, tor = _med(provs, "reference"), _med(provs, "fast"), _med(provs, "torch")
        cells += [fmt_t(ref) if ref else "skipped (CPU)", fmt_t(fast)]
        cells += [fmt_t(tor)] if has_torch else []
        cells += [fmt_r(ratio(ref, fast))] + ([fmt_r(ratio(ref, tor))] if has_torch else [])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


STAGE_NOTES = {
    "logit_lens": [
        "`fast` times what the product runs per device (`mmx_fast.fast.logit_lens_grids`): on the CPU one GEMM "
        "per scale on that scale's states, on Triton one launch over the states of every scale concatenated "
        "(before 2026-12 this row timed a `torch.cat` over the scales on the CPU too, which the product does "
        "not do).",
        "",
    ],
    "rankings": [
        "Both providers also compute the base id k0 (argmin of `W_U @ sum z` over 400 visual states). `fast` "
        'runs what the product runs, `ops.rankings_topk_base(..., precision="auto")` then `ops.rankings_rbo`: '
        "on a CPU with bfloat16 matmul hardware the certified bfloat16 pass (torch ops, the native exact top-k "
        "as its fallback) where the vocabulary pays off (qwen2vl), the exact float32 native pass otherwise "
        "(llava). The rows merged on 2026-12-03 were measured before the column header named the precision: "
        "their `native` header covers both.",
        "",
    ],
}


def certified_table(rows: list[dict]) -> list[str]:
    """Stage B's pass over W_U: bare float32 matmul + topk vs the exact fast path vs the certified pass."""
    groups = by_group([r for r in rows if r.get("kind") == "certified"])
    if not groups:
        return []
    lines = [
        "| model (V x d) | rows R | float32 `H @ W_U.T` + `topk` | float32 fast path | certified bf16 "
        "| certified / matmul | certified / float32 path | fallback rows |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, provs in sorted(
        groups.items(),
        key=lambda kv: (next(iter(kv[1].values()))["model"], next(iter(kv[1].values()))["rows"]),
    ):
        g = next(iter(provs.values()))
        mm, f32, cert = _med(provs, "matmul"), _med(provs, "float32"), _med(provs, "certified")
        fb = provs.get("certified", g)
        lines.append(
            f"| {g['model']} ({g['vocab']:,} x {g['hidden']}) | {g['rows']} | {fmt_t(mm)} | {fmt_t(f32)} | "
            f"{fmt_t(cert)} | **{fmt_r(ratio(cert, mm))}** | {fmt_r(ratio(cert, f32))} | "
            f"{fb.get('fallback_rows', '?')} / {fb.get('certified_rows', '?')} |"
        )
    return lines


def certified_fallback_lines(path: Path) -> list[str]:
    """The fallback rates measured on the bench model (``benches/certified_fallbacks.py``), if recorded."""
    if not path.exists():
        return []
    lines = [
        "Fallback rate on realistic hidden states (`python -m benches.certified_fallbacks`: the bench model of "
        "`benches/models.py`, 4 images from 224 to 640 px, 30-token answers, `msea-arc`; certified and float32 "
        "maps identical):",
        "",
        "| model dtype | ranking rows | rows fallen back | base-id searches | base ids fallen back |",
        "|---|---|---|---|---|",
    ]
    for r in json.loads(path.read_text()):
        lines.append(
            f"| {r['dtype']} | {r['rows']} | {r['fallback_rows']} ({100 * r['fallback_rows'] / max(1, r['rows']):.1f}%) "
            f"| {r['base_calls']} | {r['base_fallbacks']} |"
        )
    return lines


def headline_stage(rows: list[dict], stage: str, model: str | None) -> tuple[dict | None, float | None]:
    """The case at the realistic size (n = N_FIXED, T = T_FIXED), else the one nearest to it."""
    groups = by_group(
        [r for r in rows if r.get("kind") == "stage" and r.get("stage") == stage and r.get("model") == model]
    )
    if not groups:
        return None, None

    def dist(provs):
        g = next(iter(provs.values()))
        dn = abs((g.get("n") or N_FIXED) - N_FIXED) / N_FIXED
        return dn + abs(g["t"] - T_FIXED) / T_FIXED + (0 if "reference" in provs else 10)

    provs = min(groups.values(), key=dist)
    g = next(iter(provs.values()))
    return g, ratio(_med(provs, "reference"), _med(provs, "fast"))


def e2e_rows(rows: list[dict]) -> list[tuple[dict, dict[str, dict]]]:
    """The dynamic-geometry (Qwen2-VL) end-to-end groups; the other geometry kinds: ``geometry_table``."""
    groups = by_group([r for r in rows if r.get("kind") == "e2e" and "geometry" not in r])
    out = [(next(iter(p.values())), p) for p in groups.values()]
    return sorted(out, key=lambda x: x[0].get("n", 0))


def geometry_table(rows: list[dict]) -> list[str]:
    """One row per end-to-end group of another geometry kind (``extra_info['geometry']``: tiled, fixed,
    video)."""
    groups = by_group([r for r in rows if r.get("kind") == "e2e" and "geometry" in r])
    if not groups:
        return []
    lines = [
        "| geometry | model | input | grid | T | reference | fast | floor | floor-full "
        "| reference / fast | fast / floor |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, p in sorted(groups.items()):
        g = next(iter(p.values()))
        ref, fast, floor = _med(p, "reference"), _med(p, "fast"), _med(p, "floor")
        frames = f"{g['frames']} frames " if g.get("frames") else ""
        grid = "x".join(str(x) for x in g.get("grid", []))
        if g.get("temporal"):
            grid = f"{g['temporal']} x {grid}"
        lines.append(
            f"| {g['geometry']} | {g['model']} | {frames}{g['image']}px | {grid} | {g['answer_tokens']} "
            f"| {fmt_t(ref)} | {fmt_t(fast)} | {fmt_t(floor)} | {fmt_t(_med(p, 'floor-full'))} "
            f"| {fmt_r(ratio(ref, fast))} | {fmt_r(ratio(fast, floor))} |"
        )
    return lines


def e2e_table(rows: list[dict]) -> list[str]:
    items = e2e_rows(rows)
    if not items:
        return []
    lines = [
        "| image (visual tokens 0.5 / 0.75 / 1.0) | T | reference | fast | floor | generate alone "
        "| extra-scale forwards | reference / fast | fast / floor | floor-full (before #16) | floor / floor-full |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g, p in items:
        ref, fast, floor = _med(p, "reference"), _med(p, "fast"), _med(p, "floor")
        full = _med(p, "floor-full")
        fl = p.get("floor", {})
        vt = g.get("visual_tokens", {})
        toks = " / ".join(str(vt.get(k, "?")) for k in ("0.5", "0.75", "1.0"))
        lines.append(
            f"| {g['image']}px ({toks}) | {g['answer_tokens']} | {fmt_t(ref)} | {fmt_t(fast)} | {fmt_t(floor)} "
            f"| {fmt_t(fl.get('floor_generate_s'))} | {fmt_t(fl.get('floor_extra_forward_s'))} "
            f"| {fmt_r(ratio(ref, fast))} | {fmt_r(ratio(fast, floor))} | {fmt_t(full)} "
            f"| {fmt_r(ratio(floor, full))} |"
        )
    return lines


def e2e_breakdown(rows: list[dict]) -> list[str]:
    items = e2e_rows(rows)
    if not items:
        return []
    lines = [
        "| image | provider | generate | forward(s) | attribution (stages) | total (median) |",
        "|---|---|---|---|---|---|",
    ]
    for g, p in items:
        for prov in ("reference", "fast"):
            r = p.get(prov)
            if not r:
                continue
            lines.append(
                f"| {g['image']}px | {prov} | {fmt_t(r.get('timings_generate_s'))} "
                f"| {fmt_t(r.get('timings_forward_s'))} | {fmt_t(r.get('timings_attribution_s'))} "
                f"| {fmt_t(r['median'])} |"
            )
    return lines


def forward_table(rows: list[dict]) -> list[str]:
    groups = by_group([r for r in rows if r.get("kind") == "forward"])
    if not groups:
        return []
    lines = [
        "| image | T | one full forward per scale (reference) | one padded full-length batch (before #16) "
        "| prefix-only extra scales, length-bucketed (fast) | reference / fast | padded / fast |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, p in sorted(groups.items(), key=lambda x: next(iter(x[1].values()))["image"]):
        g = next(iter(p.values()))
        ref, padded, fast = _med(p, "reference"), _med(p, "padded"), _med(p, "fast")
        lines.append(
            f"| {g['image']}px | {g['answer_tokens']} | {fmt_t(ref)} | {fmt_t(padded)} | {fmt_t(fast)} "
            f"| {fmt_r(ratio(ref, fast))} | {fmt_r(ratio(padded, fast))} |"
        )
    return lines


def batch_table(rows: list[dict]) -> list[str]:
    """Forced-answer throughput: explanations/s of one ``explain_batch`` vs one ``explain`` per request."""
    groups = by_group([r for r in rows if r.get("kind") == "batch"])
    if not groups:
        return []
    lines = [
        "| requests | batch (explain_batch) | one-by-one (explain) | batch: explanations/s "
        "| one-by-one: explanations/s | batch / one-by-one (throughput) |",
        "|---|---|---|---|---|---|",
    ]
    for _, p in sorted(groups.items(), key=lambda x: next(iter(x[1].values()))["n"]):
        n = next(iter(p.values()))["n"]
        b, o = _med(p, "batch"), _med(p, "one-by-one")
        lines.append(
            f"| {n} | {fmt_t(b)} | {fmt_t(o)} | {_num(n / b) if b else '—'} | {_num(n / o) if o else '—'} "
            f"| {fmt_r(ratio(o, b))} |"
        )
    return lines


TAM_NOTES = [
    "`benches/test_bench_tam.py`, run only when `TAM_SRC` points at a checkout of xmed-lab/TAM (its `tam.py` "
    "needs opencv-python-headless, pymupdf<1.27 and scipy; never vendored, never in CI). All providers start "
    "from the same hidden states: `generated` = generation's own states (TAM's logits one `lm_head` call per "
    "round, as its demo), `forced` = a teacher-forced forward's states (one `lm_head` call over all positions). "
    "TAM = its full-vocabulary logits + `TAM()` per token (evaluation mode); ours = the attribution step as the "
    "product runs it (`mmx_fast.fast.attribute`; generated answers with the logits generation kept, "
    "docs/design.md §1.3). The last column compares every uint8 cell of our `tam` maps with TAM's.",
    "",
]


def tam_table(rows: list[dict]) -> list[str]:
    groups = by_group([r for r in rows if r.get("kind") == "tam"])
    if not groups:
        return []
    lines = [
        "| image | T | answer | TAM official (per token) | ours, `tam` preset | ours, default (msea-arc) "
        "| official / ours-tam | official / ours-default | our tam maps == TAM's (uint8) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, p in groups.items():
        g = next(iter(p.values()))
        off, ot, od = _med(p, "tam-official"), _med(p, "ours-tam"), _med(p, "ours-default")
        eq = p.get("ours-tam", {}).get("uint8_equal_fraction")
        eq_s = "—" if eq is None else f"{eq * 100:.2f}% of cells"
        image = g["image"] if isinstance(g["image"], str) else f"{g['image']}px"
        lines.append(
            f"| {image} | {g['answer_tokens']} | {g.get('answer', 'generated, states re-run')} | {fmt_t(off)} "
            f"| {fmt_t(ot)} | {fmt_t(od)} | {fmt_r(ratio(off, ot))} | {fmt_r(ratio(off, od))} | {eq_s} |"
        )
    return lines


def memory_table(mem: list[dict]) -> list[str]:
    if not mem:
        return []
    from benches.memory import case_label

    cuda = any("cuda_peak_mb" in r for r in mem)
    groups: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in mem:
        groups[case_label(r)][r["provider"]] = r
    col = "CUDA peak extra" if cuda else "peak RSS extra"
    lines = [
        f"| case | reference: {col} | fast: {col} | torch (vectorised): {col} | floor: {col} "
        f"| floor-full (before #16): {col} | reference / fast | fast / floor |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def val(r):
        if not r or "error" in r:
            return None
        return r.get("cuda_peak_extra_mb") if cuda else r.get("peak_extra_mb")

    def cell(r):
        if r and "error" in r:
            return f"error: {r['error'][:60]}"
        v = val(r)
        return "—" if v is None else f"{v:,.0f} MB"

    for label, p in groups.items():
        ref, fast = val(p.get("reference")), val(p.get("fast"))
        floor = val(p.get("floor"))
        rr = ratio(ref, fast) if ref and fast and fast > 0.5 else None
        rf = ratio(fast, floor) if fast and floor and floor > 0.5 else None
        lines.append(
            f"| {label} | {cell(p.get('reference'))} | {cell(p.get('fast'))} | {cell(p.get('torch'))} "
            f"| {cell(p.get('floor'))} | {cell(p.get('floor-full'))} "
            f"| {fmt_r(rr)} | {fmt_r(rf)} |"
        )
    return lines


# ----------------------------------------------------------------------------------------------- plots


def stage_plot(rows: list[dict], stage: str, path: Path) -> bool:
    rs = [r for r in rows if r.get("kind") == "stage" and r.get("stage") == stage]
    if not rs:
        return False
    models = sorted({r.get("model") for r in rs}, key=lambda m: m or "")
    panels = []
    t_fix = T_FIXED if any(r["t"] == T_FIXED for r in rs) else min(r["t"] for r in rs)
    n_vals = {r.get("n") for r in rs if r.get("n") is not None}
    n_fix = N_FIXED if N_FIXED in n_vals else (min(n_vals) if n_vals else None)

    def series(sub, xkey):
        out = []
        for mi, model in enumerate(models):
            for prov in ("reference", "fast", "torch"):
                pts = sorted(
                    (r[xkey], r["median"]) for r in sub if r.get("model") == model and r["provider"] == prov
                )
                if not pts:
                    continue
                name = prov
                if prov == "fast":
                    name = _fast_label([r for r in sub if r["provider"] == "fast"])
                elif prov == "torch":
                    name = "torch (vectorised)"
                label = name if model is None else f"{name}, {model}"
                color = PALETTE[prov] if mi == 0 else SECOND_MODEL[prov]
                out.append(Series(label, [p[0] for p in pts], [p[1] for p in pts], color, dashed=mi > 0))
        return out

    if stage != "rankings":
        sub = [r for r in rs if r["t"] == t_fix]
        panels.append(
            Panel(f"vs visual tokens (T={t_fix})", "visual tokens at scale 1.0 (n)", series=series(sub, "n"))
        )
    sub = [r for r in rs if r.get("n") in (None, n_fix)]
    if len({r["t"] for r in sub}) > 1:
        label = "vs answer tokens" + (f" (n={n_fix})" if stage != "rankings" else "")
        panels.append(Panel(label, "answer tokens (T)", series=series(sub, "t")))
    if not panels:
        return False
    loglog(path, f"Stage {STAGE_TITLES[stage]}: reference vs fast (log-log)", panels)
    return True


def e2e_plot(rows: list[dict], path: Path) -> bool:
    items = e2e_rows(rows)
    if not items:
        return False
    series = []
    for prov in ("reference", "fast", "floor"):
        pts = [(g["n"], p[prov]["median"]) for g, p in items if prov in p]
        if pts:
            series.append(Series(prov, [x for x, _ in pts], [y for _, y in pts], PALETTE[prov]))
    gen = [
        (g["n"], p["floor"]["floor_generate_s"]) for g, p in items if "floor_generate_s" in p.get("floor", {})
    ]
    if gen:
        series.append(
            Series("generate alone", [x for x, _ in gen], [y for _, y in gen], PALETTE["generate"], True)
        )
    panels = [Panel("end to end", "visual tokens at scale 1.0", series=series)]
    fwd = by_group([r for r in rows if r.get("kind") == "forward"])
    n_of_image = {g["image"]: g["n"] for g, _ in items}
    fs = []
    for i, prov in enumerate(("reference", "fast")):
        pts = sorted(
            (n_of_image.get(p[prov]["image"], p[prov]["image"]), p[prov]["median"])
            for p in fwd.values()
            if prov in p
        )
        if pts:
            label = "one forward per scale" if prov == "reference" else "one batched forward"
            fs.append(
                Series(
                    label,
                    [x for x, _ in pts],
                    [y for _, y in pts],
                    PALETTE[prov] if i == 0 else EXTRA_COLORS[0],
                )
            )
    if fs:
        panels.append(
            Panel("MSEA teacher-forced forward (3 scales)", "visual tokens at scale 1.0", series=fs)
        )
    model = items[0][0].get("model", "")
    loglog(path, f"End to end: {model}", panels)
    return True


# ---------------------------------------------------------------------------------------------- report


def headline(rows: list[dict], mem: list[dict]) -> list[str]:
    """The headline bullets: the ratios README quotes (``write_readme_block`` copies them verbatim, so every
    number README quotes is one of this file's)."""
    head = []
    for stage, model in (
        ("logit_lens", "qwen2vl"),
        ("logit_lens", "llava"),
        ("rankings", "qwen2vl"),
        ("rankings", "llava"),
        ("refine", None),
    ):
        g, r = headline_stage(rows, stage, model)
        if g is None:
            continue
        size = ", ".join(
            x
            for x in (
                g.get("model") and f"{g['model']}",
                g.get("n") is not None and f"n={g['n']}",
                f"T={g['t']}",
            )
            if x
        )
        fb = f" (fast = {g['fast_backend']})" if g.get("fast_backend") else ""
        head.append(f"- stage {STAGE_TITLES[stage]} ({size}): reference / fast = **{fmt_r(r)}**{fb}")
    for _, provs in by_group([r for r in rows if r.get("kind") == "certified"]).items():
        g = next(iter(provs.values()))
        if g.get("model") == "qwen2vl" and g.get("t") == T_FIXED:
            head.append(
                f"- stage B's pass over W_U, certified bfloat16 (qwen2vl, R={g['rows']}): certified / float32 "
                f"`H @ W_U.T` + `topk` = **{fmt_r(ratio(_med(provs, 'certified'), _med(provs, 'matmul')))}**, "
                "rankings identical"
            )
    for g, p in e2e_rows(rows):
        ref, fast, floor = _med(p, "reference"), _med(p, "fast"), _med(p, "floor")
        full = _med(p, "floor-full")
        old_floor = f", floor / floor before prefix-only passes = {fmt_r(ratio(floor, full))}" if full else ""
        head.append(
            f"- end to end, {g['image']}px image ({g['n']} visual tokens at scale 1.0), {g['answer_tokens']} answer "
            f"tokens: reference / fast = **{fmt_r(ratio(ref, fast))}**, fast / floor = **{fmt_r(ratio(fast, floor))}**"
            + old_floor
        )
    for _, p in by_group([r for r in rows if r.get("kind") == "forward"]).items():
        g = next(iter(p.values()))
        slow = "padded" if _med(p, "padded") else "reference"
        what = "one padded batch" if slow == "padded" else "one full forward per scale"
        head.append(
            f"- MSEA forwards for a forced answer ({g['image']}px, 3 scales): {what} / prefix-only + "
            f"length buckets = **{fmt_r(ratio(_med(p, slow), _med(p, 'fast')))}**"
        )
    batches = by_group([r for r in rows if r.get("kind") == "batch"])
    for _, p in sorted(batches.items(), key=lambda x: next(iter(x[1].values()))["n"]):
        g = next(iter(p.values()))
        if g["n"] > 1:
            head.append(
                f"- forced answers, {g['n']} requests ({g.get('model', '')}): one `explain_batch` / one `explain` "
                f"each, explanations/s = **{fmt_r(ratio(_med(p, 'one-by-one'), _med(p, 'batch')))}**"
            )
    for _, p in by_group([r for r in rows if r.get("kind") == "tam"]).items():
        g = next(iter(p.values()))
        off, ot, od = _med(p, "tam-official"), _med(p, "ours-tam"), _med(p, "ours-default")
        image = g["image"] if isinstance(g["image"], str) else f"{g['image']}px"
        eq = p.get("ours-tam", {}).get("uint8_equal_fraction")
        eq_s = "" if eq is None else f", {eq * 100:.2f}% of `tam`'s uint8 cells equal to TAM's"
        head.append(
            f"- attribution step vs TAM's own code, {image}, T={g['answer_tokens']}, {g.get('answer', '')} answer: "
            f"TAM / ours `tam` = **{fmt_r(ratio(off, ot))}**, TAM / ours `msea-arc` = **{fmt_r(ratio(off, od))}**"
            + eq_s
        )
    e2e_mem = {r["provider"]: r for r in mem if r.get("type") == "e2e" and "error" not in r}
    if "fast" in e2e_mem and "floor" in e2e_mem:
        fast, floor = e2e_mem["fast"].get("peak_extra_mb"), e2e_mem["floor"].get("peak_extra_mb")
        if fast and floor:
            head.append(
                f"- peak extra memory end to end ({e2e_mem['fast'].get('image', '?')}px): fast / floor = "
                f"**{fmt_r(ratio(fast, floor))}** ({fast:,.0f} vs {floor:,.0f} MB)"
            )
    return head


README_BEGIN = "<!-- benches/report.py: begin (generated from benches/RESULTS.md's Headline; do not edit) -->"
README_END = "<!-- benches/report.py: end -->"


def write_readme_block(readme: Path, lines: list[str]) -> bool:
    """Replace README's generated numbers block (between ``README_BEGIN`` and ``README_END``) with ``lines``
    (RESULTS.md's Headline bullets); False (nothing written) when README has no such block."""
    if not readme.is_file():
        return False
    text = readme.read_text()
    a, b = text.find(README_BEGIN), text.find(README_END)
    if a < 0 or b < a:
        return False
    new = text[: a + len(README_BEGIN)] + "\n" + "\n".join(lines) + "\n" + text[b:]
    if new != text:
        tmp = readme.with_suffix(".md.tmp")
        tmp.write_text(new)
        tmp.replace(readme)
    return True


def tam_kept(results: Path, rows: list[dict]) -> tuple[list[dict], str | None]:
    """TAM's comparison rows: this run's (then saved as ``results/tam.json``, the last run that had
    ``TAM_SRC``), else the last saved run's, with its date (None when this run has them)."""
    path = results / "tam.json"
    if any(r.get("kind") == "tam" for r in rows):
        return rows, None
    if not path.is_file():
        return rows, None
    kept, data = load_bench(path)
    return rows + kept, str(data.get("datetime", "?"))[:16].replace("T", " ") + " UTC"


def save_tam_rows(bench_json: Path, results: Path) -> None:
    """The TAM groups of this run's pytest-benchmark JSON, saved as ``results/tam.json`` (kept for the runs
    without ``TAM_SRC``)."""
    data = json.loads(bench_json.read_text())
    tam = [b for b in data.get("benchmarks", []) if b.get("extra_info", {}).get("kind") == "tam"]
    if not tam:
        return
    out = results / "tam.json"
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**data, "benchmarks": tam}, indent=4) + "\n")
    tmp.replace(out)


def write_report(
    rows,
    mem,
    out: Path,
    suite_s,
    mem_s,
    quick: bool,
    argv: list[str],
    measured: tuple[str, list[str]] | None = None,
    tam_date: str | None = None,
) -> Path:
    """Write ``out/RESULTS.md`` and ``out/plots/*.png``. ``measured``: (date, argv) of the run that produced
    ``rows`` when this call only re-renders them."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    made = {}
    for stage in STAGES:
        p = plots / f"stage_{stage}.png"
        if stage_plot(rows, stage, p):
            made[stage] = p
    if e2e_plot(rows, plots / "e2e.png"):
        made["e2e"] = plots / "e2e.png"

    vers = versions()
    mach = machine()
    threads = {r.get("threads") for r in rows if r.get("threads")}
    timers = sorted({r.get("timer") for r in rows if r.get("timer")})
    dev = sorted({r.get("device", "?") for r in rows})
    skipped = []
    for stage in STAGES:
        for _, provs in by_group(
            [r for r in rows if r.get("kind") == "stage" and r.get("stage") == stage]
        ).items():
            if "reference" not in provs and "fast" in provs:
                skipped.append(provs["fast"]["group"])
    md: list[str] = []
    md += [
        "# mmx_fast benchmarks",
        "",
        (
            f"Measured by `python benches/{Path(__file__).name}{' ' + ' '.join(measured[1]) if measured[1] else ''}` "
            f"on {measured[0]}; rendered by `python benches/{Path(__file__).name} {' '.join(argv)}`"
            if measured
            else f"Generated by `python benches/{Path(__file__).name}{' ' + ' '.join(argv) if argv else ''}` on "
            f"{dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"
        )
        + f"{' — QUICK mode (smallest sizes only)' if quick else ''}.",
        "",
    ]
    meta_path = out / "results" / "meta.json"
    for m in json.loads(meta_path.read_text()).get("merged", []) if meta_path.exists() else []:
        stages = sorted({g.split(" | ")[0] for g in m["groups"]})
        md += [
            f"Re-measured on {m['date']} and merged into these results (`report.py --merge`; the other rows "
            f"are from the run above): {len(m['groups'])} groups of "
            + ", ".join(f"`{x}`" for x in stages)
            + ".",
            "",
        ]
    md += [
        "## Machine and versions",
        "",
        f"- machine: {mach.get('cpu', '?')}, {mach.get('cores', '?')} cores, {mach.get('memory', '?')}, "
        f"GPU: {mach.get('gpu', '?')}; {mach.get('platform', '')}",
        f"- device used: {', '.join(dev)}; torch CPU threads: "
        f"{', '.join(str(t) for t in threads) if threads else os.environ.get('MMX_BENCH_THREADS', '1')} "
        "(`MMX_BENCH_THREADS`, default 1: on this shared 2-core machine two intra-op threads made timings "
        "swing by up to 600x whenever another process held a core)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"- run time: suite {suite_s / 60:.1f} min"
        + (f", memory probe {mem_s / 60:.1f} min" if mem_s else "")
        if suite_s
        else "- run time: re-rendered from earlier JSON",
        "",
        "Timings are **medians** of several rounds (one warm-up call first; rounds chosen so each case takes "
        "~1.5 s, at least 3), read from "
        + (", ".join(f"`time.{t}`" for t in timers) if timers else "the default clock")
        + (
            " (the process's CPU time: on this shared machine it leaves out the time other processes hold "
            "our core; `MMX_BENCH_TIMER=wall` switches to wall time)"
            if "process_time" in timers
            else ""
        )
        + ". Read ratios measured in the same run, not absolute times. `reference` is what "
        '`mmx_fast.reference.explain` does for the stage; `fast` is `mmx_fast.ops` with `backend="auto"` '
        "(its column header names what that ran: Triton on CUDA; on the CPU the native C++ kernels where they "
        "are built and implement the stage, vectorised torch otherwise); `torch` forces the vectorised torch "
        "path.",
        "",
    ]
    # headline (README's numbers block is this same list, written by ``write_readme_block``)
    md += ["## Headline", ""] + headline(rows, mem) + [""]
    md += [
        "Sizes: n = visual tokens at scale 1.0 (the three default scales hold ~1.81 n in all), T = answer "
        f"tokens, P = 20 prompt tokens, top-k 50; n in {list(FULL_N)} at T={T_FIXED} and T in {list(FULL_T)} "
        f"at n={N_FIXED}. Model shapes: LLaVA-1.5-7B (V 32,064, d 4,096) and Qwen2-VL-2B (V 151,936, d 1,536); "
        "float32 on the CPU, bfloat16 on CUDA.",
        "",
    ]
    if skipped:
        md += [
            "Skipped for the slow reference on the CPU (to keep `make bench` under 15 minutes; the fast "
            "provider still runs): " + "; ".join(f"`{s}`" for s in skipped) + ".",
            "",
        ]
    for stage in STAGES:
        t = stage_table(rows, stage)
        if not t:
            continue
        md += [f"## Stage {STAGE_TITLES[stage]}", ""] + t + [""] + STAGE_NOTES.get(stage, [])
        if stage in made:
            md += [f"![{stage}](plots/{made[stage].name})", ""]
    t = certified_table(rows)
    if t:
        md += [
            "## Stage rankings: certified bfloat16 pass vs float32",
            "",
            "Stage B's pass over W_U alone (top-50 of R = P + T rows; `benches/test_bench_certified.py`): the bare "
            'float32 `torch.topk(H @ W_U.T)`, the exact streamed fast path (`rankings_precision="float32"`) '
            'and the certified bfloat16 pass (`"certified-bf16"`, docs/design.md §5; W_U\'s bfloat16 copy '
            "cached, as in a long-lived Explainer). Every case checks the certified rankings equal the float32 "
            "ones; `fallback rows` counts rows re-run exactly.",
            "",
        ]
        md += t + [""]
        md += certified_fallback_lines(out / "results" / "certified.json") + [""]
    t = e2e_table(rows)
    if t:
        model = e2e_rows(rows)[0][0].get("model", "")
        md += [
            "## End to end",
            "",
            f"Model: {model}, random weights, built from a config (`benches/models.py`); greedy answers of exactly "
            "T tokens (the special tokens' unembedding rows are zeroed so generation never stops early). "
            "`floor` = scale-1.0 prompt + `generate` + the two extra scales' prompts and their prefix-only "
            "forwards (stopping at the last visual token, length-bucketed): what any implementation must run. "
            "`floor-full` = the floor before issue 16 (one padded forward over the extra scales' whole "
            "sequences, instruction and answer included).",
            "",
        ]
        md += t + [""]
        md += (
            ["Where the time goes (medians of each result's own `timings`):", ""] + e2e_breakdown(rows) + [""]
        )
        ft = forward_table(rows)
        if ft:
            md += (
                ["### MSEA forward: full forwards vs prefix-only extra scales (forced answer)", ""]
                + ft
                + [""]
            )
        bt = batch_table(rows)
        if bt:
            md += ["### Forced-answer throughput: one `explain_batch` vs one `explain` per request", ""]
            md += bt + [""]
        if "e2e" in made:
            md += ["![end to end](plots/e2e.png)", ""]
    t = geometry_table(rows)
    if t:
        md += [
            "## End to end per geometry kind (tiny models)",
            "",
            "Tiny random-weight models (`mmx_fast.testing.tiny_model`), greedy answers of exactly T tokens; "
            "grid = the scale-1.0 map grid (video: t x h x w after the temporal merge).",
            "",
        ]
        md += t + [""]
    t = tam_table(rows)
    if t:
        md += ["## TAM's official code vs ours", ""] + TAM_NOTES
        if tam_date:
            md += [
                f"**Kept from its last run ({tam_date}, `benches/results/tam.json`)**: `TAM_SRC` was not set for "
                "this run, so these rows were not re-measured.",
                "",
            ]
        md += t + [""]
    else:
        md += [
            "## TAM's official code vs ours",
            "",
            "Not run: set `TAM_SRC` to a checkout of xmed-lab/TAM (with cv2, PyMuPDF, scipy installed) and "
            "rerun; `benches/test_bench_tam.py` then times its `TAM()` per token against our `tam` preset and "
            "our default, and checks our `tam` maps equal TAM's uint8 maps.",
            "",
        ]
    mt = memory_table(mem)
    if mt:
        method = {r.get("peak_method") for r in mem if "peak_method" in r}
        md += (
            [
                "## Peak memory",
                "",
                "One child process per case and provider (`benches/memory.py`); the memory one call needs on top "
                "of its inputs (and model): "
                + (
                    "CUDA `max_memory_allocated` minus the allocation before the call."
                    if any("cuda_peak_mb" in r for r in mem)
                    else f"peak RSS after the call minus RSS before it ({', '.join(sorted(method))})."
                ),
                "",
            ]
            + mt
            + [""]
        )
    path = out / "RESULTS.md"
    md += _kept_sections(path)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(md))
    tmp.replace(path)
    return path


# The sections this script writes (their headings' starts); any other "## " section of the previous RESULTS.md
# was written by another script (``benches/bench_serve.py``'s "## Serving", a grounded-model run, ...) and is
# kept as it is, except the ones marked "hand-added" (issue 26: RESULTS.md holds no hand-added section).
OWN_SECTIONS = (
    "## Machine and versions",
    "## Headline",
    "## Stage ",
    "## End to end",
    "## TAM's official code vs ours",
    "## Peak memory",
)


def _kept_sections(path: Path) -> list[str]:
    """Sections this script does not produce (``## Serving``, written from ``benches/bench_serve.py`` runs, and
    any other script's section), kept from the previous RESULTS.md; "hand-added" sections are dropped."""
    if not path.is_file():
        return []
    kept, keep = [], False
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            keep = not line.startswith(OWN_SECTIONS) and "hand-added" not in line
            if keep:
                print(
                    f"keeping the section {line[3:]!r} of the previous RESULTS.md (written by another script)"
                )
        if keep:
            kept.append(line)
    return kept + [""] if kept else []


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smallest sizes only")
    ap.add_argument("--json", type=Path, help="read this pytest-benchmark JSON instead of running the suite")
    ap.add_argument("--memory-json", type=Path, help="read this memory.py JSON instead of probing")
    ap.add_argument("--skip-memory", action="store_true", help="no memory probe")
    ap.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md, plots/ and results/ go")
    ap.add_argument("--pytest-args", default="", help="extra arguments for pytest (one string)")
    ap.add_argument(
        "--merge",
        type=Path,
        help="with --json: replace every benchmark group of --json that this pytest-benchmark JSON also holds "
        "(and add its new groups), write the merged results to OUT/results/bench.json, and note it",
    )
    args = ap.parse_args(argv)
    out = args.out
    results = out / "results"
    results.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    suite_s = mem_s = 0.0
    if args.json:
        bench_json = args.json
    else:
        bench_json = results / "bench.json"
        suite_s = run_suite(bench_json, args.quick, args.pytest_args.split())
    mem: list[dict] = []
    if args.memory_json:
        mem = json.loads(args.memory_json.read_text())
    elif not args.skip_memory:
        mem_json = results / "memory.json"
        mem_s = run_memory(mem_json, args.quick)
        if mem_json.exists():
            mem = json.loads(mem_json.read_text())
    meta = results / "meta.json"
    measured = None
    if args.json is None:
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        meta.write_text(
            json.dumps(
                {"suite_s": suite_s, "memory_s": mem_s, "quick": args.quick, "date": now, "argv": argv}
            )
        )
    elif meta.exists() and args.json.resolve() == (results / "bench.json").resolve():
        old = json.loads(meta.read_text())  # re-rendering this directory's own results: keep its run times
        suite_s, mem_s = old.get("suite_s", 0.0), mem_s or old.get("memory_s", 0.0)
        measured = (old.get("date", "?"), old.get("argv", []))
    if args.merge:
        if not args.json:
            raise SystemExit("--merge needs --json (the results to merge into)")
        base, new = json.loads(args.json.read_text()), json.loads(args.merge.read_text())
        fresh = {b.get("group") for b in new.get("benchmarks", [])}
        base["benchmarks"] = [b for b in base.get("benchmarks", []) if b.get("group") not in fresh]
        base["benchmarks"] += new.get("benchmarks", [])
        bench_json = results / "bench.json"
        tmp = bench_json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(base, indent=4) + "\n")
        tmp.replace(bench_json)
        # the date the merged results were measured (pytest-benchmark's own stamp), not today's
        stamp = str(new.get("datetime", ""))[:16].replace("T", " ")
        now = f"{stamp} UTC" if stamp else dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        old_meta = json.loads(meta.read_text()) if meta.exists() else {}
        merged = old_meta.get("merged", []) + [{"date": now, "groups": sorted(g for g in fresh if g)}]
        meta.write_text(json.dumps({**old_meta, "merged": merged}))
        measured = (old_meta.get("date", "?"), old_meta.get("argv", []))
    rows, _ = load_bench(bench_json)
    if not rows:
        raise SystemExit(f"no benchmarks in {bench_json} (was the suite run with --benchmark-disable?)")
    if not args.quick:
        save_tam_rows(bench_json, results)
    rows, tam_date = tam_kept(results, rows) if not args.quick else (rows, None)
    path = write_report(rows, mem, out, suite_s, mem_s, args.quick, argv, measured, tam_date)
    print(f"wrote {path} and {out / 'plots'} in {time.perf_counter() - t_all:.0f} s")
    if out.resolve() == HERE.resolve() and not args.quick:
        if write_readme_block(ROOT / "README.md", headline(rows, mem)):
            print("updated README.md's numbers block (RESULTS.md's Headline)")
    # a short summary on stdout
    for g, p in e2e_rows(rows):
        ref, fast, floor = _med(p, "reference"), _med(p, "fast"), _med(p, "floor")
        print(
            f"e2e {g['image']}px: reference {fmt_t(ref)}, fast {fmt_t(fast)}, floor {fmt_t(floor)}; "
            f"reference/fast {fmt_r(ratio(ref, fast))}, fast/floor {fmt_r(ratio(fast, floor))}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
