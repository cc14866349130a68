"""Does a map point at the object its token names? Accuracy and localisation of the grounded model
(docs/design.md §9).

    python -m mmx_fast.grounded.evaluate                   # the table for the shipped model, printed
    python -m mmx_fast.grounded.evaluate --write-results   # ... and written to benches/RESULTS.md's section

Gates, in order: exact-match accuracy on held-out scenes (the maps of a model that answers wrongly mean
nothing), then localisation on held-out named tokens with the ground-truth answer forced:

- **pointing**: the map's peak cell belongs to the named object (a cell belongs to the object covering most
  of it; cells no object covers belong to none). Cells tied at the peak count by their share, so a uniform
  map scores the fraction of cells the named object owns (chance).
- **share** (named-object share): map mass on the named object / map mass on all objects, each cell weighted
  by the fraction of it an object covers. A map with no mass on any object scores 0.
- **Obj-IoU**: ``mmx_fast.eval.metrics.evaluate_sample`` on the uint8 map (TAM's rule: bilinear resize to the
  image, Otsu threshold, IoU with the named object's mask).

Rows: every method on the trained model, a uniform map, and every method on the untrained model (the same
architecture with the seed's random weights: shapes stand out from the background even there).
Confidence intervals: 95% percentile bootstrap over scenes (tokens of one scene are resampled together).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .scenes import Scene, held_out_scenes

EVAL_SEED = 10_000  # held-out scenes (training draws from its own seed's stream)
RESULTS_BEGIN = (
    "<!-- grounded-results:begin (written by python -m mmx_fast.grounded.evaluate --write-results) -->"
)
RESULTS_END = "<!-- grounded-results:end -->"
RESULTS_HEADING = "## Does it mean anything? The grounded model"
DEFAULT_METHODS = ("msea-arc", "tam", "logit-lens")


@dataclass(frozen=True)
class TokenScore:
    scene: int
    pointing: float
    share: float
    obj_iou: float


def cell_coverage(masks: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """[n, Hc, Wc]: the fraction of each grid cell each object's mask covers (the image is split evenly)."""
    n, h, w = masks.shape
    gh, gw = grid
    if h % gh or w % gw:
        raise ValueError(f"a {h}x{w} mask does not split into a {gh}x{gw} grid")
    return masks.reshape(n, gh, h // gh, gw, w // gw).mean(axis=(2, 4))


def score_map(m: np.ndarray, masks: np.ndarray, named: int) -> tuple[float, float, float]:
    """(pointing, share, Obj-IoU) of one [Hc, Wc] map in [0, 1] for the object ``named`` (see the module doc)."""
    from ..eval.metrics import evaluate_sample

    m = np.asarray(m, dtype=np.float64)
    cov = cell_coverage(masks, m.shape)
    owner = np.where(cov.max(0) > 0, cov.argmax(0), -1)
    peak = m >= m.max()
    pointing = float((owner[peak] == named).mean())
    on_all = float((m * cov.sum(0)).sum())
    share = float((m * cov[named]).sum()) / on_all if on_all > 0 else 0.0
    class_ids = np.zeros(masks.shape[1:], dtype=np.uint8)
    for i in range(masks.shape[0]):
        class_ids[masks[i]] = i + 1
    u8 = (np.clip(m, 0, 1) * 255).astype(np.uint8)
    iou = evaluate_sample([u8], [[0]], [named + 1], class_ids).obj_iou
    return pointing, share, float(iou[0]) if iou else 0.0


def named_tokens(scenes: list[Scene]):
    """(scene index, image, prompt, answer, named object) for every question of every scene."""
    return [(k, s.image, q.prompt, q.answer, q.named) for k, s in enumerate(scenes) for q in s.questions]


@torch.no_grad()
def accuracy(model, processor, scenes: list[Scene], batch: int = 64) -> tuple[float, int]:
    """Exact-match accuracy of greedy answers (``model.generate``, 3 new tokens; the answer is right when the
    decoded text, stripped, equals the one-word answer) and the number of questions."""
    rows = named_tokens(scenes)
    tok = processor.tokenizer
    side = tok.padding_side
    tok.padding_side = "left"  # batched generation
    hits = 0
    try:
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            texts = [_prompt_text(processor, r[2]) for r in chunk]
            enc = processor(images=[r[1] for r in chunk], text=texts, return_tensors="pt", padding=True)
            enc = enc.to(model.device)
            out = model.generate(**enc, max_new_tokens=3, do_sample=False)
            new = out[:, enc["input_ids"].shape[1] :]
            for r, ids in zip(chunk, new):
                text = tok.decode(ids, skip_special_tokens=True).strip()
                hits += int(text == r[3])
    finally:
        tok.padding_side = side
    return hits / len(rows), len(rows)


def _prompt_text(processor, prompt: str) -> str:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def localisation(model, processor, scenes: list[Scene], methods=DEFAULT_METHODS, batch_size: int = 32):
    """{method: [TokenScore]} over every named token, the ground-truth answer forced; ``"uniform"`` is a
    constant map (no model). The engine's methods run through the fast path (``Explainer``), the baselines
    (``mmx_fast.reference.baselines.BASELINES``) through ``baseline_maps``."""
    from ..config import ExplainConfig
    from ..fast import Explainer
    from ..reference.baselines import BASELINES, baseline_maps

    rows = named_tokens(scenes)
    out: dict[str, list[TokenScore]] = {}
    for m in methods:
        if m in BASELINES:  # reference path only, one token at a time
            out[m] = []
            for r in rows:
                maps = baseline_maps(model, processor, r[1], r[2], r[3], m)
                if maps.shape[0] != 1:
                    raise RuntimeError(f"answer {r[3]!r} was forced as {maps.shape[0]} tokens; expected one")
                out[m].append(TokenScore(r[0], *score_map(maps[0].numpy(), scenes[r[0]].masks, r[4])))
    model_methods = [m for m in methods if m != "uniform" and m not in BASELINES]
    if model_methods:
        ex = Explainer(model, processor, ExplainConfig(method=model_methods[0]))
        configs = [ExplainConfig(method=m) for m in model_methods]
        for m in model_methods:
            out[m] = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            res = ex.explain_batch_methods(
                [r[1] for r in chunk], [r[2] for r in chunk], configs, [r[3] for r in chunk]
            )
            for r, per_method in zip(chunk, res):
                for m, exp in zip(model_methods, per_method):
                    if len(exp.answer_ids) != 1:
                        raise RuntimeError(
                            f"answer {r[3]!r} was forced as {exp.answer_tokens}; expected one token"
                        )
                    s = score_map(exp.maps[0].float().numpy(), scenes[r[0]].masks, r[4])
                    out[m].append(TokenScore(r[0], *s))
    if "uniform" in methods:
        grid = _grid(scenes[0])
        out["uniform"] = [TokenScore(r[0], *score_map(np.ones(grid), scenes[r[0]].masks, r[4])) for r in rows]
    return out


def _grid(scene: Scene) -> tuple[int, int]:
    from .model import MERGE, PATCH

    h, w = scene.masks.shape[1:]
    return h // (PATCH * MERGE), w // (PATCH * MERGE)


def bootstrap_ci(values, clusters, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its 95% percentile bootstrap interval, resampling
    whole clusters (scenes)."""
    values = np.asarray(values, dtype=np.float64)
    clusters = np.asarray(clusters)
    ids = np.unique(clusters)
    sums = np.array([values[clusters == c].sum() for c in ids])
    counts = np.array([(clusters == c).sum() for c in ids])
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(ids), size=(n, len(ids)))
    means = sums[pick].sum(1) / counts[pick].sum(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), float(lo), float(hi)


def summarise(scores: list[TokenScore]) -> dict[str, tuple[float, float, float]]:
    clusters = [s.scene for s in scores]
    return {
        k: bootstrap_ci([getattr(s, k) for s in scores], clusters) for k in ("pointing", "share", "obj_iou")
    }


def evaluate(
    n_scenes: int = 60,
    n_accuracy_scenes: int = 200,
    methods=DEFAULT_METHODS,
    model_spec: str = "grounded",
    untrained: bool = True,
    seed: int = EVAL_SEED,
    baselines=(),
) -> dict:
    """Everything the table shows, as a dict (see :func:`table`)."""
    from ..loading import load
    from .model import untrained_model

    t0 = time.perf_counter()
    model, processor = load(model_spec, device="cpu")
    acc_scenes = held_out_scenes(n_accuracy_scenes, seed=seed)
    acc, n_q = accuracy(model, processor, acc_scenes)
    scenes = acc_scenes[:n_scenes]
    rows: dict[str, dict] = {}
    loc = localisation(model, processor, scenes, tuple(methods) + tuple(baselines) + ("uniform",))
    for m, sc in loc.items():
        rows[m if m == "uniform" else f"{m} (trained)"] = summarise(sc)
    rows["uniform"] = rows.pop("uniform")  # after the trained model's rows
    if untrained:
        um, up = untrained_model()
        u_acc, _ = accuracy(um, up, scenes)
        for m, sc in localisation(um, up, scenes, methods).items():
            rows[f"{m} (untrained)"] = summarise(sc)
    else:
        u_acc = math.nan
    n_tokens = len(named_tokens(scenes))
    meta = _train_meta(model_spec)
    return {
        "accuracy": acc,
        "accuracy_questions": n_q,
        "accuracy_scenes": n_accuracy_scenes,
        "untrained_accuracy": u_acc,
        "scenes": n_scenes,
        "tokens": n_tokens,
        "rows": rows,
        "seed": seed,
        "train_meta": meta,
        "wall_s": time.perf_counter() - t0,
    }


def _train_meta(spec: str) -> dict:
    import json

    from ..loading import resolve_model

    loc = resolve_model(spec).location
    p = Path(loc) / "train_meta.json" if loc else None
    return json.loads(p.read_text()) if p is not None and p.is_file() else {}


def table(result: dict) -> str:
    """The result as Markdown (the RESULTS.md section's body)."""
    r = result
    meta = r["train_meta"]
    lines = [
        f"Held-out scenes (seed {r['seed']}, 2-3 objects each). Exact-match accuracy of greedy answers: "
        f"**{r['accuracy']:.1%}** on {r['accuracy_questions']} questions ({r['accuracy_scenes']} scenes); "
        f"the untrained model: {r['untrained_accuracy']:.1%}.",
        "",
        f"Localisation on {r['tokens']} named answer tokens ({r['scenes']} scenes), ground-truth answer forced; "
        "mean and 95% bootstrap interval over scenes:",
        "",
        "Rows: msea-arc / tam / logit-lens run on the engine's fast path; attention, attention-rollout, "
        "grad-rollout, grad-cam, layer-cam, gradient-x-input are the paper's baselines on the reference path "
        "(`mmx_fast/reference/baselines.py`); uniform is a constant map (chance); (untrained) is the same "
        "architecture with the training seed's random weights.",
        "",
        "| map | pointing | named-object share | Obj-IoU |",
        "|---|---|---|---|",
    ]
    for name, s in r["rows"].items():
        cells = [f"{s[k][0]:.3f} [{s[k][1]:.3f}, {s[k][2]:.3f}]" for k in ("pointing", "share", "obj_iou")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if meta:
        lines += [
            "",
            f'Model: `mmx_fast.load("grounded")`, {meta.get("params", "?")} parameters, trained with '
            f"`make train-grounded` (seed {meta.get('seed')}, {meta.get('stopped_after', meta.get('steps'))} steps "
            f"of a {meta.get('steps')}-step schedule, {meta.get('batch')} scenes per step, {meta.get('threads')} CPU "
            f"thread, {meta.get('wall_s', 0) / 60:.0f} min wall on the shared "
            "2-core CI machine). Evaluation took "
            f"{r['wall_s']:.0f} s.",
        ]
    return "\n".join(lines)


def write_results(body: str, path: Path) -> None:
    """Replace (or append) the delimited grounded section of ``path``, atomically. The markers sit under the
    section's own heading, so ``benches/report.py`` keeps the section whole when it regenerates the file."""
    from ..io import atomic_write_bytes

    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{RESULTS_BEGIN}\n{body}\n{RESULTS_END}"
    if RESULTS_BEGIN in text and RESULTS_END in text:
        head, rest = text.split(RESULTS_BEGIN, 1)
        text = head + block + rest.split(RESULTS_END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{RESULTS_HEADING}\n\n{block}\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mmx_fast.grounded.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--model", default="grounded", help="model to evaluate (default: the shipped grounded model)"
    )
    p.add_argument(
        "--scenes", type=int, default=60, help="scenes for localisation (5 named tokens each on average)"
    )
    p.add_argument("--accuracy-scenes", type=int, default=200)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--no-untrained", action="store_true")
    p.add_argument(
        "--baselines",
        nargs="*",
        default=None,
        help="reference-path baselines to add (default: all of mmx_fast.reference.baselines.BASELINES)",
    )
    p.add_argument("--write-results", action="store_true", help="write the table into benches/RESULTS.md")
    p.add_argument("--results", default=str(Path(__file__).resolve().parents[2] / "benches" / "RESULTS.md"))
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    from ..reference.baselines import BASELINES

    baselines = BASELINES if a.baselines is None else tuple(a.baselines)
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        p.error(f"--baselines {bad} not allowed; expected some of {', '.join(BASELINES)}")
    result = evaluate(
        a.scenes, a.accuracy_scenes, a.methods, a.model, not a.no_untrained, baselines=baselines
    )
    body = table(result)
    print(body)
    if a.write_results:
        write_results(body, Path(a.results))
        print(f"written: {a.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
