"""``mmx-fast eval``'s report: the pooled metrics per method with every count (``summary.json``) and the
paper-shaped markdown table (``table.md``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .datasets import EvalDataset, Sample
from .metrics import pool
from .store import is_complete

METHOD_NAMES = {
    "msea-arc": "MSEA + ARC (msea-arc)",
    "tam": "TAM (tam)",
    "logit-lens": "Logit lens / CAM (logit-lens)",
}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def summarize(
    dataset: EvalDataset,
    samples: Sequence[Sample],
    methods: Sequence[str],
    chosen: dict[str, dict],
    settings: dict[str, Any],
    ignored_lines: int = 0,
) -> dict[str, Any]:
    """Pooled metrics per method over the complete records, and every count a reader needs."""
    complete = [chosen[s.id] for s in samples if s.id in chosen and is_complete(chosen[s.id], methods)]
    counts = {
        "selected": len(samples),
        "evaluated": len(complete),
        "missing_image": sum(1 for s in samples if chosen.get(s.id, {}).get("status") == "missing_image"),
        "error": sum(1 for s in samples if chosen.get(s.id, {}).get("status") == "error"),
        "unfinished": sum(1 for s in samples if s.id not in chosen),
        "missing_mask": sum(1 for r in complete if r.get("mask_missing")),
        "empty_answer": sum(1 for r in complete if not r.get("answer_ids")),
        "retokenization_mismatch": sum(1 for r in complete if r.get("retokenization_mismatch")),
        "ignored_lines": ignored_lines,
    }
    counts["incomplete"] = (
        len(samples) - counts["evaluated"] - counts["missing_image"] - counts["error"] - counts["unfinished"]
    )
    errors = {
        s.id: chosen[s.id].get("error") for s in samples if chosen.get(s.id, {}).get("status") == "error"
    }
    return {
        "dataset": dataset.summary(),
        "settings": settings,
        "methods": {m: pool(r["methods"][m] for r in complete).to_dict() for m in methods},
        "counts": counts,
        "errors": dict(list(errors.items())[:20]),
    }


def _printable(value: Any) -> str:
    """``value`` as text that encodes to UTF-8 (a folder name with undecodable bytes shows them as ``\\udcXX``)."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def format_table(summary: dict[str, Any]) -> str:
    """The paper-shaped markdown table (method x Obj-IoU / Func-IoU / F1-IoU, plus precision / recall, in %)."""
    ds = {k: _printable(v) if isinstance(v, str) else v for k, v in summary["dataset"].items()}
    st = {k: _printable(v) if isinstance(v, str) else v for k, v in summary["settings"].items()}
    c = summary["counts"]
    lines = [
        f"### {ds['name']} ({ds['layout']}), model `{st['model']}`",
        "",
        "| Method | Obj-IoU | Func-IoU | F1-IoU | Precision | Recall |",
        "|:--|--:|--:|--:|--:|--:|",
    ]
    n_obj = n_func = 0
    for m, r in summary["methods"].items():
        name = METHOD_NAMES.get(m, m)
        lines.append(
            f"| {name} | {_fmt(r['obj_iou'])} | {_fmt(r['func_iou'])} | {_fmt(r['f1_iou'])} "
            f"| {_fmt(r['precision'])} | {_fmt(r['recall'])} |"
        )
        n_obj, n_func = r["n_obj"], r["n_func"]
    lines += [
        "",
        f"Values in %, pooled over the data set (TAM's eval.py): Obj-IoU over {n_obj} noun objects, Func-IoU over "
        f"{n_func} function words. Samples: {c['selected']} selected, {c['evaluated']} evaluated, "
        f"{c['missing_image']} missing image, {c['error']} errors, {c['unfinished'] + c['incomplete']} unfinished; "
        f"{c['missing_mask']} evaluated with a missing mask (empty mask, as TAM); {c['empty_answer']} empty answers; "
        f"{c['retokenization_mismatch']} answers TAM would have dropped (re-tokenization mismatch).",
        f"Word typer: {st['word_typer']}{'' if st['word_typer_exact'] else ' (approximate, not TAM NLTK typing)'}; "
        f"placement: {st['placement']}; merge: {st['merge']}; stop token explained: {st['include_stop_token']}; "
        f'max new tokens: {st["max_new_tokens"]}; prompt: "{ds["prompt"]}".',
    ]
    if ds["problems"]:
        lines.append("Data set notes: " + "; ".join(map(_printable, ds["problems"])) + ".")
    return "\n".join(lines) + "\n"
