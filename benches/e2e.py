"""End-to-end and model-forward cases shared by the suites, ``memory.py`` and ``gpu_check.py``.

Providers of an end-to-end case (one image, one prompt, a greedy answer of exactly ``answer_tokens``
tokens; see ``models.py`` for why the length is exact):

- ``reference``: ``mmx_fast.reference.explain`` (default config: msea-arc, scales 0.5 / 0.75 / 1.0);
- ``fast``: ``mmx_fast.explain_fast``, same arguments;
- ``floor``: what no implementation can avoid (docs/design.md §5): the scale-1.0 prompt, ``generate`` of
  the answer, the two extra scales' prompts and their prefix-only forwards (stopping at the last visual
  token, length-bucketed: ``Adapter.forward_hidden_rows``);
- ``floor-full``: the floor before prefix-only passes (issue 16): the same, but ONE padded teacher-forced
  forward over the extra scales' whole sequences (instruction and answer included);
- ``generate``: ``generate`` alone (with the scale-1.0 prompt).

The MSEA-forward cases run the three scales' forwards for a forced answer on prepared inputs: one full
forward per scale (``reference``), one padded full-length batch (``padded``, the fast path before issue 16)
and the fast path's prefix-only extra scales plus the full scale-1.0 row, length-bucketed (``fast``).

The forced-answer throughput cases (``batch_callables``) explain n (image, prompt, answer) requests with one
``Explainer.explain_batch`` call (``batch``) or one ``Explainer.explain`` per request (``one-by-one``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .cases import SCALES
from .models import PROMPT, bench_image, qwen2vl_2b_like

E2E_PROVIDERS = ("reference", "fast", "floor", "floor-full", "generate")
SUITE_PROVIDERS = ("reference", "fast", "floor", "floor-full")  # generate alone = the floor's first part
# Forced-answer throughput: requests per case. The tiny model (quick mode) runs all three in seconds; with
# Qwen2-VL-2B's dimensions on one CPU thread n=32 one-by-one takes minutes per round, so the full suite runs
# 1 and 8 unless MMX_BENCH_BATCH_SIZES (e.g. "1,8,32") says otherwise.
BATCH_SIZES = (1, 8)
QUICK_BATCH_SIZES = (1, 8, 32)
FULL_IMAGES = (224, 448)  # 8x8 = 64 and 16x16 = 256 visual tokens at scale 1.0
QUICK_IMAGES = (112,)
ANSWER_TOKENS = 20
QUICK_ANSWER_TOKENS = 4


@dataclass(frozen=True)
class ModelSpec:
    """Which model an end-to-end case runs: ``tiny`` (the project's tiny Qwen2-VL, quick mode) or ``2b``
    (Qwen2-VL-2B's dimensions with ``layers`` decoder layers and ``vision_depth`` vision blocks)."""

    kind: str = "2b"
    layers: int = 2
    vision_depth: int = 2
    dtype: str = "float32"

    @property
    def label(self) -> str:
        if self.kind == "tiny":
            return "tiny Qwen2-VL (d 64, 2 layers)"
        return (
            f"Qwen2-VL-2B dims (d 1536, V 151,936, tied), {self.layers} text / {self.vision_depth} vision "
            f"layers, {self.dtype}"
        )


def default_spec(quick: bool, device) -> ModelSpec:
    if quick:
        return ModelSpec(kind="tiny")
    if torch.device(device).type == "cuda":
        return ModelSpec(kind="2b", layers=28, vision_depth=32, dtype="bfloat16")
    return ModelSpec(kind="2b", layers=2, vision_depth=2, dtype="float32")


@functools.lru_cache(maxsize=1)
def build_model(spec: ModelSpec, device: str):
    """(model, processor) for ``spec`` on ``device`` (cached: one model per process)."""
    dtype = getattr(torch, spec.dtype)
    if spec.kind == "tiny":
        from mmx_fast.testing import tiny_model

        model, processor = tiny_model("qwen2_vl", seed=0, dtype=dtype, image_size=448)
        with torch.no_grad():  # never stop early: exact answer lengths (see models.py)
            model.get_output_embeddings().weight[model.generation_config.eos_token_id] = 0
        return model.to(device), processor
    return qwen2vl_2b_like(
        text_layers=spec.layers, vision_depth=spec.vision_depth, dtype=dtype, device=device
    )


@dataclass(frozen=True)
class E2ECase:
    image: int  # image width in pixels
    answer_tokens: int
    height: int | None = None  # None: square

    @property
    def size(self) -> tuple[int, int]:
        return self.image, self.height or self.image

    @property
    def id(self) -> str:
        w, h = self.size
        return f"img{w}" + (f"x{h}" if h != w else "") + f"-T{self.answer_tokens}"


def e2e_cases(quick: bool) -> list[E2ECase]:
    if quick:
        return [E2ECase(s, QUICK_ANSWER_TOKENS) for s in QUICK_IMAGES]
    return [E2ECase(s, ANSWER_TOKENS) for s in FULL_IMAGES]


def _sync(model) -> None:
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()


def e2e_callables(
    model, processor, case: E2ECase, providers=E2E_PROVIDERS, frames=None
) -> tuple[dict[str, Callable[[], object]], dict]:
    """One zero-argument callable per provider, and facts about the case (visual tokens per scale,
    prompt length). ``floor`` records its two parts in ``facts['floor_parts']`` (a list of
    (generate s, extra-forward s) per call); ``reference`` and ``fast`` append their result's
    ``timings`` (generate / forward / attribution seconds) to ``facts['timings'][provider]``.
    ``frames``: a video (a list of frames, ``mmx_fast.video``) in place of the case's image; the visual
    tokens per scale then count all of its ``facts['temporal']`` merged frame pairs."""
    import time

    from mmx_fast import ExplainConfig, explain_fast
    from mmx_fast.adapters import get_adapter
    from mmx_fast.reference import explain
    from mmx_fast.video import load_video

    img = bench_image(*case.size) if frames is None else list(frames)  # what explain / explain_fast get
    media = img if frames is None else load_video(img)  # what the adapter prepares
    cfg = ExplainConfig(max_new_tokens=case.answer_tokens)
    ad = get_adapter(model, processor)
    base = ad.prepare(media, PROMPT, 1.0)
    extra = [ad.prepare(media, PROMPT, s) for s in SCALES if s != 1.0]
    facts = {
        "visual_tokens": {
            str(s): int(p.frames * p.grid[0] * p.grid[1]) for s, p in zip(SCALES, extra + [base])
        },
        "grid": list(base.grid),
        "temporal": base.temporal,
        "prompt_len": base.length,
        "prompt_tokens": base.prompt_span[1] - base.prompt_span[0],
        "answer_tokens": case.answer_tokens,
        "floor_parts": [],
        "timings": {"reference": [], "fast": []},
    }

    def run_reference():
        e = explain(model, processor, img, PROMPT, config=cfg)
        _sync(model)
        facts["timings"]["reference"].append(dict(e.timings or {}))
        return e

    def run_fast():
        e = explain_fast(model, processor, img, PROMPT, config=cfg)
        _sync(model)
        facts["timings"]["fast"].append(dict(e.timings or {}))
        return e

    def run_generate():
        b = ad.prepare(media, PROMPT, 1.0)
        ids = ad.generate(b, case.answer_tokens)
        _sync(model)
        return ids

    def floor(prefix_only: bool):
        t0 = time.perf_counter()
        b = ad.prepare(media, PROMPT, 1.0)
        ids = ad.generate(b, case.answer_tokens)
        _sync(model)
        t1 = time.perf_counter()
        rows = [ad.prepare(media, PROMPT, s) for s in SCALES if s != 1.0]
        if not rows:
            hidden = []
        elif prefix_only:
            hidden = ad.forward_hidden_rows(rows, [ids] * len(rows), [True] * len(rows))
        else:
            hidden = ad.forward_hidden_batch(rows, [ids] * len(rows))
        _sync(model)
        facts["floor_parts"].append((t1 - t0, time.perf_counter() - t1))
        return ids, hidden

    table = {
        "reference": run_reference,
        "fast": run_fast,
        "floor": lambda: floor(True),
        "floor-full": lambda: floor(False),
        "generate": run_generate,
    }
    return {p: table[p] for p in providers}, facts


def forward_callables(model, processor, case: E2ECase) -> dict[str, Callable[[], object]]:
    """MSEA forward on prepared inputs for a forced answer of ``case.answer_tokens`` fixed ids:
    ``reference`` = one full ``forward_hidden`` per scale, ``padded`` = one padded full-length
    ``forward_hidden_batch`` over all scales, ``fast`` = ``forward_hidden_rows`` with the extra scales
    prefix-only (what ``explain_fast`` runs)."""
    from mmx_fast.adapters import get_adapter

    ad = get_adapter(model, processor)
    img = bench_image(*case.size)
    rows = [ad.prepare(img, PROMPT, s) for s in SCALES]
    g = torch.Generator().manual_seed(0)
    answer = torch.randint(300, 1000, (case.answer_tokens,), generator=g).tolist()

    def reference():
        out = [ad.forward_hidden(r, answer) for r in rows]
        _sync(model)
        return out

    def padded():
        out = ad.forward_hidden_batch(rows, [answer] * len(rows))
        _sync(model)
        return out

    def fast():
        out = ad.forward_hidden_rows(rows, [answer] * len(rows), [r.scale != 1.0 for r in rows])
        _sync(model)
        return out

    return {"reference": reference, "padded": padded, "fast": fast}


def batch_sizes(quick: bool) -> tuple[int, ...]:
    env = os.environ.get("MMX_BENCH_BATCH_SIZES", "").strip()
    if env:
        return tuple(int(x) for x in env.split(","))
    return QUICK_BATCH_SIZES if quick else BATCH_SIZES


def batch_callables(
    model, processor, n: int, image: int = 224, answer_tokens: int = ANSWER_TOKENS
) -> dict[str, Callable[[], object]]:
    """Forced-answer throughput (docs/design.md §6: the serving engine already generated the answer): n
    requests, each a different image (same size, seeded), the bench prompt and its own answer of
    ``answer_tokens`` ids. ``batch`` = one ``Explainer.explain_batch``; ``one-by-one`` = n ``explain`` calls
    of the same Explainer (default config, msea-arc)."""
    from mmx_fast.fast import Explainer

    ex = Explainer(model, processor)
    images = [bench_image(image, image, seed=i) for i in range(n)]
    g = torch.Generator().manual_seed(0)
    answers = [torch.randint(300, 1000, (answer_tokens,), generator=g).tolist() for _ in range(n)]
    prompts = [PROMPT] * n

    def batch():
        out = ex.explain_batch(images, prompts, answers)
        _sync(model)
        return out

    def one_by_one():
        out = [ex.explain(im, p, a) for im, p, a in zip(images, prompts, answers)]
        _sync(model)
        return out

    return {"batch": batch, "one-by-one": one_by_one}
