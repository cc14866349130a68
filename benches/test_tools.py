"""Smoke tests of the bench tools (quick mode only): memory.py, report.py and gpu_check.py --quick.

They keep the scripts from rotting; they are skipped in full mode (``benches/report.py`` runs the suite in
full mode and needs only the benchmarks).
"""

from __future__ import annotations

import json

import pytest

from benches import gpu_check, memory, report
from benches.cases import quick_mode

pytestmark = pytest.mark.skipif(not quick_mode(), reason="tool smoke tests run in quick mode only")


def test_memory_probe_one_case():
    case = {"type": "stage", "stage": "refine", "model": None, "n": 100, "t": 10, "provider": "fast"}
    rows = memory.measure([case], timeout_s=300, log=lambda *_: None)
    assert "error" not in rows[0], rows[0]
    assert rows[0]["peak_extra_mb"] >= 0 and rows[0]["ru_maxrss_mb"] > 0
    assert "fast" in memory.markdown(rows)


def _bench(group, provider, median, **info):
    return {
        "group": group,
        "name": f"t[{provider}]",
        "stats": {"median": median, "min": median, "rounds": 3},
        "extra_info": {"provider": provider, **info},
    }


def test_report_renders_from_json(tmp_path):
    rows = []
    for n, (ref, fast) in {100: (0.01, 0.002), 400: (0.03, 0.004)}.items():
        info = dict(
            kind="stage", stage="refine", model=None, vocab=None, hidden=None, n=n, t=50, device="cpu"
        )
        rows += [
            _bench(f"refine n={n}", "reference", ref, **info),
            _bench(f"refine n={n}", "fast", fast, **info),
        ]
    e2e = dict(kind="e2e", model="m", image=224, answer_tokens=20, n=64, device="cpu")
    e2e["visual_tokens"] = {"0.5": 16, "0.75": 36, "1.0": 64}
    rows += [
        _bench("e2e", "reference", 5.0, **e2e, timings_generate_s=2.0),
        _bench("e2e", "fast", 4.0, **e2e),
        _bench("e2e", "floor", 3.5, **e2e, floor_generate_s=3.0, floor_extra_forward_s=0.5),
        _bench("e2e", "floor-full", 4.0, **e2e, floor_generate_s=3.0, floor_extra_forward_s=1.0),
    ]
    vid = dict(kind="e2e", geometry="video", model="v", image=112, frames=4, answer_tokens=4, device="cpu")
    vid |= dict(grid=[4, 4], temporal=2)  # no "n": the dynamic-geometry table and plot must skip it
    rows += [_bench("e2e video", p, t, **vid) for p, t in (("reference", 0.3), ("fast", 0.2), ("floor", 0.1))]
    for n, (b, o) in {1: (1.0, 1.0), 8: (4.0, 8.0)}.items():
        batch = dict(kind="batch", model="m", image=224, n=n, device="cpu")
        rows += [
            _bench(f"batch n={n}", "batch", b, **batch),
            _bench(f"batch n={n}", "one-by-one", o, **batch),
        ]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"benchmarks": rows}))
    mem = [
        {
            "type": "stage",
            "stage": "refine",
            "model": None,
            "n": 400,
            "t": 50,
            "provider": p,
            "peak_extra_mb": v,
            "ru_maxrss_mb": 300.0,
            "peak_method": "x",
        }
        for p, v in (("reference", 12.0), ("fast", 4.0))
    ]
    mpath = tmp_path / "memory.json"
    mpath.write_text(json.dumps(mem))
    assert report.main(["--json", str(path), "--memory-json", str(mpath), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| 400 | 50 | 30.0 ms | 4.00 ms | 7.50x |" in text
    assert "reference / fast = **1.25x**, fast / floor = **1.14x**" in text
    assert "| 1.14x | 4.00 s | 0.88x |" in text  # fast / floor, floor-full, floor / floor-full
    assert "| 8 | 4.00 s | 8.00 s | 2.00 | 1.00 | 2.00x |" in text  # explanations/s and the throughput ratio
    assert (
        "| video | v | 4 frames 112px | 2 x 4x4 | 4 | 300 ms | 200 ms | 100 ms | — | 1.50x | 2.00x |" in text
    )
    assert "| 12 MB | 4 MB | — | — | — | 3.00x | — |" in text
    assert (tmp_path / "plots" / "stage_refine.png").stat().st_size > 1000
    assert (tmp_path / "plots" / "e2e.png").stat().st_size > 1000


def test_gpu_check_quick(capsys):
    assert gpu_check.main(["--quick", "--stages", "refine,msea"]) == 0
    out = capsys.readouterr().out
    assert "| section | case | provider |" in out
    assert "end to end" in out and "floor-full" in out and "prefix-only extra scales, bucketed" in out
