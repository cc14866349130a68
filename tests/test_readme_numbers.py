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
