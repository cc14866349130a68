"""README quotes only benches/RESULTS.md (issue 26): every ratio README quotes is in RESULTS.md, and README's
generated numbers block is RESULTS.md's Headline, as ``make bench`` (``benches/report.py``) writes both."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- benches/report.py: begin"
END = "<!-- benches/report.py: end -->"


def _ratios(text: str) -> set[str]:
    """Every ratio quoted as a number followed by x (1.62x, 0.96x, 12x), not part of a longer token."""
    return set(re.findall(r"(?<![\w.])(\d+(?:\.\d+)?x)(?![\w])", text))


def test_every_ratio_readme_quotes_is_in_results():
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "benches" / "RESULTS.md").read_text()
    quoted = _ratios(readme)
    assert len(quoted) >= 5, quoted  # the Benchmarks block quotes the headline ratios
    missing = sorted(q for q in quoted if not re.search(r"(?<![\d.])" + re.escape(q), results))
    assert not missing, f"README quotes ratios that benches/RESULTS.md does not hold: {missing}"


def test_readme_numbers_block_is_the_results_headline():
    readme = (ROOT / "README.md").read_text()
    results = (ROOT / "benches" / "RESULTS.md").read_text()
    a, b = readme.index(BEGIN), readme.index(END)
    block = [line for line in readme[a:b].splitlines()[1:] if line.strip()]
    head = results.split("## Headline", 1)[1].split("\n## ", 1)[0]
    bullets = [line for line in head.splitlines() if line.startswith("- ")]
    assert block and block == bullets


def test_results_has_no_hand_added_section():
    results = (ROOT / "benches" / "RESULTS.md").read_text()
    headings = [line for line in results.splitlines() if line.startswith("## ")]
    assert not [h for h in headings if "hand-added" in h], headings


def _report():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "benches" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _bench(group, provider, median, **info):
    return {
        "group": group,
        "name": f"t[{provider}]",
        "stats": {"median": median, "min": median, "rounds": 3},
        "extra_info": {"provider": provider, **info},
    }


def test_report_regenerates_every_section_keeps_other_scripts_and_dated_tam(tmp_path):
    """``report.py`` rewrites the whole file: its own sections from the results, the TAM comparison from the
    last run that had ``TAM_SRC`` (dated) when this run has none, other scripts' sections (Serving, a
    grounded-model section) kept verbatim, hand-added sections dropped; README's block is the Headline."""
    import json

    report = _report()
    info = dict(kind="stage", stage="refine", model=None, n=400, t=50, device="cpu")
    rows = [_bench("refine n=400", "reference", 0.03, **info), _bench("refine n=400", "fast", 0.004, **info)]
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"benchmarks": rows}))
    (tmp_path / "results").mkdir()
    tam = dict(kind="tam", model="m", image=224, answer_tokens=20, answer="forced", n=64, device="cpu")
    tam_rows = [_bench("tam 224", p, t, **tam) for p, t in (("tam-official", 1.0), ("ours-tam", 0.1))]
    tam_rows.append(_bench("tam 224", "ours-default", 0.05, **tam))
    (tmp_path / "results" / "tam.json").write_text(
        json.dumps({"datetime": "2026-12-03T05:54:27+00:00", "benchmarks": tam_rows})
    )
    (tmp_path / "RESULTS.md").write_text(
        "# old\n\n## Headline\n\n- stale 9.99x\n\n## Serving\n\nserved 2.54x\n\n"
        "## Grounded checkpoints\n\nreal 1.23x\n\n## Old numbers (hand-added, 2026-12-03)\n\nold 7.77x\n"
    )
    assert report.main(["--json", str(bench), "--skip-memory", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "reference / fast = **7.50x**" in text and "9.99x" not in text
    assert "## Serving\n\nserved 2.54x" in text and "## Grounded checkpoints\n\nreal 1.23x" in text
    assert "hand-added" not in text and "7.77x" not in text
    assert "Kept from its last run (2026-12-03 05:54 UTC" in text
    assert "TAM / ours `tam` = **10.0x**, TAM / ours `msea-arc` = **20.0x**" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro 1.5x\n{report.README_BEGIN}\nold\n{report.README_END}\nend\n")
    rows_all, _ = report.tam_kept(tmp_path / "results", report.load_bench(bench)[0])
    assert report.write_readme_block(readme, report.headline(rows_all, []))
    block = readme.read_text().split(report.README_BEGIN)[1].split(report.README_END)[0]
    head = text.split("## Headline", 1)[1].split("\n## ", 1)[0]
    assert [x for x in block.splitlines() if x] == [x for x in head.splitlines() if x.startswith("- ")]
