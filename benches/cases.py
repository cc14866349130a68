"""Benchmark cases shared by the pytest-benchmark suites, ``memory.py`` and ``gpu_check.py``.

A *stage case* is one fused stage at one size; :func:`stage_callables` builds its inputs once and returns
one zero-argument callable per provider:

- ``reference``: what ``mmx_fast.reference.explain`` does for that stage (per scale / per target loops,
  full [R, V] logits and a full sort for rankings, the float64 filter);
- ``fast``: what ``mmx_fast.fast.Explainer`` does, through ``mmx_fast.ops`` with ``backend="auto"``
  (Triton on CUDA; on the CPU the native C++ kernels where they are built and implement the stage, else
  vectorised torch; see :func:`fast_backend`);
- ``torch`` / ``triton`` / ``native``: ``mmx_fast.ops`` with that backend forced (the suites add ``torch``
  whenever ``auto`` picks something else, so the vectorised torch path is always measured).

Stages (docs/design.md §2), one word each as in mmx_fast.ops, kernels/, csrc/ and tests/test_stage_*.py:

- ``logit_lens``  gathered logit lens: ``clamp(W_U[ids] @ Z.T, 0)`` for the visual tokens of the three default scales
  (0.5, 0.75, 1.0; about 1.81 n tokens in all for n at scale 1.0) and M = T + P + 1 ids.
- ``rankings``  top-k + base id + RBO: top-50 of ``h @ W_U.T`` for the P + T predicting positions and the base
  id k0 (argmin of ``W_U @ sum z`` over N_FIXED visual states), then RBO of each answer token against its
  context (the reference: per target, as ``arc_reference``; the fast provider: ``ops.rankings_topk_base``
  with ``precision="auto"``, as the product).
- ``certified`` (benches/test_bench_certified.py, :func:`certified_callables`): stage B's pass over W_U alone
  (top-k rankings of P + T rows), float32 ``H @ W_U.T`` + ``topk`` vs the exact fast path vs the certified
  bfloat16 pass, with its fallback count.
- ``refine``  interference map, beta, ReLU, rank Gaussian filter, max-normalisation for the T targets
  on the canonical grid (n cells), with P + T + 1 context maps.
- ``refine_filter``  the rank Gaussian filter alone on [T, H, W].
- ``msea``  MSEA resize + mean over the three scales for M maps.

Sizes: n visual tokens at scale 1.0 (100 to 4,000), T answer tokens (10 to 200), P = 20 prompt tokens, the
(vocabulary, hidden) of LLaVA-1.5-7B (32,064 x 4,096) and Qwen2-VL-2B (151,936 x 1,536).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .models import MODEL_SHAPES, grid_for, scale_token_counts

SCALES = (0.5, 0.75, 1.0)
PROMPT_TOKENS = 20
TOP_K = 50
RBO_P = 0.9

FULL_N = (100, 400, 1000, 4000)
FULL_T = (10, 50, 200)
N_FIXED = 400  # the n at which T is swept (about a 640x480 image in Qwen2-VL: 391 tokens)
T_FIXED = 50  # the T at which n is swept
QUICK_N = (100,)
QUICK_T = (10,)

STAGES = ("logit_lens", "rankings", "refine", "refine_filter", "msea")
STAGE_TITLES = {
    "logit_lens": "logit_lens: gathered logit lens",
    "rankings": "rankings: top-k + RBO",
    "refine": "refine: ARC + filter + norm",
    "refine_filter": "refine_filter: rank Gaussian filter",
    "msea": "msea: MSEA aggregate",
}
# Which stages depend on the model's (vocabulary, hidden) shape.
MODEL_STAGES = ("logit_lens", "rankings")


def quick_mode(default: bool = False) -> bool:
    """``MMX_BENCH_QUICK`` (1/true/yes/on or 0/false/no/off) if set, else ``default``."""
    raw = os.environ.get("MMX_BENCH_QUICK", "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    return default


@dataclass(frozen=True)
class StageCase:
    stage: str
    model: str | None  # key of MODEL_SHAPES, for stages logit_lens and rankings
    n: int | None  # visual tokens at scale 1.0 (stages logit_lens, refine, refine_filter, msea)
    t: int  # answer tokens

    @property
    def vocab(self) -> int | None:
        return MODEL_SHAPES[self.model][0] if self.model else None

    @property
    def hidden(self) -> int | None:
        return MODEL_SHAPES[self.model][1] if self.model else None

    @property
    def id(self) -> str:
        parts = [self.stage]
        if self.model:
            parts.append(self.model)
        if self.n is not None:
            parts.append(f"n{self.n}")
        parts.append(f"T{self.t}")
        return "-".join(parts)

    @property
    def group(self) -> str:
        """pytest-benchmark group: the providers of one case sit side by side."""
        size = []
        if self.model:
            size.append(f"{self.model} V={self.vocab} d={self.hidden}")
        if self.n is not None:
            size.append(f"n={self.n}")
        size.append(f"T={self.t}")
        return f"{STAGE_TITLES[self.stage]} | " + " ".join(size)

    def info(self) -> dict:
        return {
            "kind": "stage",
            "stage": self.stage,
            "model": self.model,
            "vocab": self.vocab,
            "hidden": self.hidden,
            "n": self.n,
            "t": self.t,
            "prompt_tokens": PROMPT_TOKENS,
        }


def stage_cases(stage: str, quick: bool) -> list[StageCase]:
    """The sweep of one stage: n over its range at T_FIXED, T over its range at N_FIXED (per model for
    the model-dependent stages); the smallest sizes only in quick mode."""
    ns, ts = (QUICK_N, QUICK_T) if quick else (FULL_N, FULL_T)
    n_fix, t_fix = (ns[0], ts[0]) if quick else (N_FIXED, T_FIXED)
    models = tuple(MODEL_SHAPES) if stage in MODEL_STAGES else (None,)
    out: list[StageCase] = []
    for model in models:
        if stage == "rankings":  # independent of n
            out += [StageCase(stage, model, None, t) for t in ts]
            continue
        sizes = [(n, t_fix) for n in ns]
        if stage in ("logit_lens", "refine"):
            sizes += [(n_fix, t) for t in ts if (n_fix, t) not in sizes]
        out += [StageCase(stage, model, n, t) for n, t in sizes]
    return out


def all_stage_cases(quick: bool) -> list[StageCase]:
    return [c for s in STAGES for c in stage_cases(s, quick)]


# ---------------------------------------------------------------------------------------------- inputs


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_dtype(device) -> torch.dtype:
    """bfloat16 on CUDA (as the models run there), float32 on CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _generator(device, seed: int) -> torch.Generator:
    return torch.Generator(device=torch.device(device)).manual_seed(seed)


@functools.lru_cache(maxsize=2)
def unembedding(model: str, device: str, dtype: torch.dtype) -> torch.Tensor:
    """A random W_U [V, d] of the model's shape (scale 0.02, as a trained LM head roughly is); cached."""
    v, d = MODEL_SHAPES[model]
    g = _generator(device, 1234)
    w = torch.empty((v, d), device=device, dtype=torch.float32)
    w.normal_(0.0, 0.02, generator=g)
    return w.to(dtype)


# Stages each non-torch backend implements; the others run the torch code under that backend.
BACKEND_STAGES = {
    "native": ("rankings", "refine", "refine_filter"),
    "triton": ("logit_lens", "rankings", "refine"),
}


def auto_backend(device) -> str:
    """What ``backend="auto"`` resolves to on ``device`` (building / loading the native CPU kernels on first
    use, so that no timed call pays for it)."""
    from mmx_fast import ops

    return ops.resolve_backend("auto", torch.device(device))


def fast_backend(stage: str, device, case: StageCase | None = None) -> str:
    """The implementation the ``fast`` provider runs for ``stage`` on ``device`` (for ``rankings`` with a
    ``case``: also the precision ``auto`` picks for its vocabulary, e.g. ``certified-bf16 + native``)."""
    be = auto_backend(device)
    be = be if stage in BACKEND_STAGES.get(be, STAGES) else "torch"
    if stage == "rankings" and case is not None and case.vocab:
        from mmx_fast import ops

        if (
            ops.resolve_rankings_precision("auto", torch.device(device), case.vocab, TOP_K)
            == "certified-bf16"
        ):
            return f"certified-bf16 + {be}"
    return be


def stage_providers(device) -> tuple[str, ...]:
    """``reference`` and ``fast`` (``backend="auto"``); plus ``torch`` (the vectorised torch path, forced)
    when ``auto`` picks another backend on ``device`` (native C++ on the CPU, Triton on CUDA)."""
    return ("reference", "fast") + (("torch",) if auto_backend(device) != "torch" else ())


def reference_skip_reason(case: StageCase, device) -> str | None:
    """Sizes at which the slow reference is not run on the CPU (to keep ``make bench`` under 15 minutes);
    the fast provider still runs there. None: run it."""
    if torch.device(device).type != "cpu":
        return None
    if case.stage == "rankings" and case.model == "qwen2vl" and case.t >= 200:
        return "reference rankings sort 220 x 151,936 full logits (~10 s a call on this CPU)"
    return None


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def stage_callables(
    case: StageCase, device=None, dtype=None, providers=("reference", "fast"), seed: int = 0
) -> dict[str, Callable[[], object]]:
    """Inputs of ``case`` built once on ``device``; one zero-argument callable per provider. Callables
    synchronise CUDA before returning, so wall-clock timers measure the work."""
    from mmx_fast import ops
    from mmx_fast.reference.logit_lens import logit_lens_maps
    from mmx_fast.reference.msea import msea_aggregate as ref_msea
    from mmx_fast.reference.rankings import base_vocab_id, rbo, topk_ranking
    from mmx_fast.reference.refine import rank_gaussian_filter as ref_filter
    from mmx_fast.reference.refine import refine_one

    device = torch.device(device or default_device())
    dtype = dtype or default_dtype(device)
    g = _generator(device, seed)
    p, t = PROMPT_TOKENS, case.t

    def randn(*shape, dt=dtype):
        return torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dt)

    def rand(*shape):
        return torch.rand(shape, generator=g, device=device, dtype=torch.float32)

    fns: dict[str, Callable[[], object]] = {}

    def backend_of(provider: str) -> str:
        return "auto" if provider == "fast" else provider

    if case.stage == "logit_lens":
        w_u = unembedding(case.model, str(device), dtype)
        counts = scale_token_counts(case.n, SCALES)
        zs = [randn(c, case.hidden) for c in counts]
        ids = torch.randint(0, case.vocab, (t + p + 1,), generator=g, device=device)

        def ref_a():
            out = [logit_lens_maps(z, w_u, ids) for z in zs]
            _sync(device)
            return out

        def make_fast_a(backend):
            # what the product runs per device (mmx_fast.fast.logit_lens_grids): one launch over every
            # scale's states concatenated on Triton, one GEMM per scale elsewhere (no torch.cat copy)
            if ops.resolve_backend(backend, device) == "triton":

                def fast_a():
                    out = ops.logit_lens(torch.cat(zs, 0), w_u, ids, backend=backend)
                    _sync(device)
                    return out

            else:

                def fast_a():
                    out = [ops.logit_lens(z, w_u, ids, backend=backend) for z in zs]
                    _sync(device)
                    return out

            return fast_a

        for prov in providers:
            fns[prov] = ref_a if prov == "reference" else make_fast_a(backend_of(prov))

    elif case.stage == "rankings":
        w_u = unembedding(case.model, str(device), dtype)
        h = randn(p + t, case.hidden)
        z = randn(N_FIXED, case.hidden)  # the scale-1.0 visual states, for the base id k0

        def ref_b():
            k0 = base_vocab_id(z, w_u)
            rank_prompt = topk_ranking(h[:p], w_u, TOP_K)
            rank_answer = topk_ranking(h[p:], w_u, TOP_K)
            rs = []
            for i in range(t):  # as reference.oracle.arc_reference, one target at a time
                ctx = torch.cat([rank_prompt, rank_answer[:i]], 0)
                rs.append(rbo(ctx, rank_answer[i].expand_as(ctx), p=RBO_P, variant="ext"))
            _sync(device)
            return torch.cat([rank_prompt, rank_answer], 0), rs, k0

        def make_fast_b(backend):
            def fast_b():  # as the product: rankings and k0 in one pass (precision "auto"), then RBO
                ranks, k0 = ops.rankings_topk_base(h, w_u, TOP_K, z, backend=backend, precision="auto")
                r = ops.rankings_rbo(ranks[p:], ranks, RBO_P, "ext", backend=backend)
                _sync(device)
                return ranks, r, k0

            return fast_b

        for prov in providers:
            fns[prov] = ref_b if prov == "reference" else make_fast_b(backend_of(prov))

    elif case.stage == "refine":
        hh, ww = grid_for(case.n)
        a_t = rand(t, hh, ww)
        prompt_maps = rand(p, hh, ww)
        base_map = rand(1, hh, ww)
        r = rand(t, p + t)
        w = 1 - r
        causal = torch.ones_like(w, dtype=torch.bool)
        causal[:, p:] = torch.ones(t, t, dtype=torch.bool, device=device).tril(-1)
        w = torch.where(causal, w, torch.zeros_like(w))
        w_full = torch.cat([w, torch.ones(t, 1, device=device)], 1)
        ctx = torch.cat([prompt_maps, a_t, base_map], 0)

        def ref_c():
            out = []
            for i in range(t):  # as arc_reference: per-target context, then refine_one
                ctx_i = torch.cat([prompt_maps, a_t[:i], base_map], 0)
                w_i = torch.cat([w[i, : p + i], w_full[i, -1:]])
                out.append(refine_one(a_t[i], ctx_i, w_i, apply_filter=True))
            res = torch.stack(out, 0)
            _sync(device)
            return res

        def make_fast_c(backend):
            def fast_c():
                res = ops.refine(a_t, ctx, w_full, apply_filter=True, backend=backend)
                _sync(device)
                return res

            return fast_c

        for prov in providers:
            fns[prov] = ref_c if prov == "reference" else make_fast_c(backend_of(prov))

    elif case.stage == "refine_filter":
        hh, ww = grid_for(case.n)
        x = torch.relu(rand(t, hh, ww) - 0.2)

        def ref_f():
            res = ref_filter(x)
            _sync(device)
            return res

        def make_fast_f(backend):
            def fast_f():
                res = ops.refine_filter(x, backend=backend)
                _sync(device)
                return res

            return fast_f

        for prov in providers:
            fns[prov] = ref_f if prov == "reference" else make_fast_f(backend_of(prov))

    elif case.stage == "msea":
        m = t + p + 1
        grid = grid_for(case.n)
        per_scale = [rand(m, *grid_for(c)) for c in scale_token_counts(case.n, SCALES)[:-1]]
        per_scale.append(rand(m, *grid))
        covs = [(1.0, 1.0)] * len(per_scale)

        def ref_m():
            res = ref_msea(per_scale, covs, grid, "mean")
            _sync(device)
            return res

        def make_fast_m(backend):
            def fast_m():
                res = ops.msea(per_scale, covs, grid, "mean", backend=backend)
                _sync(device)
                return res

            return fast_m

        for prov in providers:
            fns[prov] = ref_m if prov == "reference" else make_fast_m(backend_of(prov))
    else:
        raise ValueError(f"unknown stage {case.stage!r}; expected one of {', '.join(STAGES)}")
    return fns


def check_agreement(case: StageCase, ref_out, fast_out) -> None:
    """Raise AssertionError when the fast output does not match the reference's for ``case`` (so the
    benchmark compares equivalent work)."""
    if case.stage == "logit_lens":
        ref = torch.cat(ref_out, 1).float()
        if isinstance(fast_out, (list, tuple)):  # one [M, N_s] per scale (the CPU product path)
            fast_out = torch.cat(list(fast_out), 1)
        torch.testing.assert_close(fast_out.float(), ref, rtol=2e-2, atol=2e-2 * float(ref.abs().max()))
    elif case.stage == "rankings":
        ranks_ref, rs, k0_ref = ref_out
        ranks, r, k0 = fast_out
        assert torch.equal(ranks.cpu(), ranks_ref.cpu()), "rankings differ from the reference's"
        assert k0 == k0_ref, f"base id {k0} differs from the reference's {k0_ref}"
        p = PROMPT_TOKENS
        for i, ri in enumerate(rs):
            torch.testing.assert_close(r[i, : p + i].double().cpu(), ri.double().cpu(), rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(fast_out.float().cpu(), ref_out.float().cpu(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------ certified rankings (stage B)


@dataclass(frozen=True)
class CertifiedCase:
    model: str
    t: int  # answer tokens; rows R = PROMPT_TOKENS + t

    @property
    def id(self) -> str:
        return f"certified-{self.model}-T{self.t}"

    @property
    def group(self) -> str:
        v, d = MODEL_SHAPES[self.model]
        return f"certified: stage B pass over W_U | {self.model} V={v} d={d} R={PROMPT_TOKENS + self.t}"

    def info(self) -> dict:
        v, d = MODEL_SHAPES[self.model]
        return {
            "kind": "certified",
            "model": self.model,
            "vocab": v,
            "hidden": d,
            "t": self.t,
            "rows": PROMPT_TOKENS + self.t,
            "prompt_tokens": PROMPT_TOKENS,
        }


CERTIFIED_PROVIDERS = ("matmul", "float32", "certified")


def certified_cases(quick: bool) -> list[CertifiedCase]:
    ts = QUICK_T if quick else (10, 30, 50)
    return [CertifiedCase(m, t) for m in MODEL_SHAPES for t in ts]


def certified_callables(case: CertifiedCase, device=None, dtype=None, seed: int = 0) -> dict:
    """Providers of stage B's pass over W_U (top-k of R = P + T rows; no RBO, no k0):

    - ``matmul``: the bare float32 ``torch.topk(H @ W_U.T, k)`` (W_U upcast when it is not float32);
    - ``float32``: ``ops.rankings_topk(..., precision="float32")``, the exact streamed fast path;
    - ``certified``: ``ops.rankings_topk(..., precision="certified-bf16")`` (W_U's bfloat16 copy and norms
      cached before timing, as in a long-lived Explainer).
    """
    from mmx_fast import ops

    device = torch.device(device or default_device())
    dtype = dtype or default_dtype(device)
    v, d = MODEL_SHAPES[case.model]
    w_u = unembedding(case.model, str(device), dtype)
    g = _generator(device, seed)
    h = torch.randn((PROMPT_TOKENS + case.t, d), generator=g, device=device).to(dtype)

    def matmul():
        out = torch.topk(h.float() @ w_u.float().T, TOP_K, dim=1).indices
        _sync(device)
        return out

    def make(precision):
        def run():
            out = ops.rankings_topk(h, w_u, TOP_K, precision=precision)
            _sync(device)
            return out

        return run

    return {"matmul": matmul, "float32": make("float32"), "certified": make("certified-bf16")}
