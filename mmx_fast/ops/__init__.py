"""The fast path's stages, one entry point per operation, each dispatched to a backend (docs/design.md §2).

One table, :data:`OPS` (``mmx_fast/ops/table.py``), maps each operation (named by its stage word:
``logit_lens``, ``msea``, ``rankings_*``, ``refine*``, ``tam_*``) to its implementations by backend, and every
public function below runs its operation through :func:`_run`:

- ``torch``: the vectorised PyTorch implementation in the stage's module (:mod:`.logit_lens`, :mod:`.msea`,
  :mod:`.rankings`, :mod:`.refine`, :mod:`.tam`); any device; the CPU fast path and the fallback everywhere.
- ``native``: the C++ CPU kernels (``csrc/``, :mod:`mmx_fast.native`), when built; until then the backend
  falls back to ``torch`` with a one-time warning.
- ``triton``: the kernels in ``mmx_fast.kernels`` (CUDA tensors; CPU tensors only through the Triton
  interpreter, ``TRITON_INTERPRET=1``, which is how the tests run them). Imported lazily, so
  ``import mmx_fast.ops`` never needs triton.

An operation without an implementation for the resolved backend (``msea``, ``rankings_certified``,
``rankings_base``, ``refine_normalize`` and ``tam_*`` everywhere, ``logit_lens`` on ``native``,
``refine_filter`` on ``triton``) runs the torch implementation on the tensors' device, as do empty inputs.

The stage words name both a module (``mmx_fast/ops/refine.py``) and a public function (``ops.refine``): the
attribute ``mmx_fast.ops.refine`` is the function. Reach a torch implementation with ``from
mmx_fast.ops.refine import refine_torch``, or through ``OPS["refine"].torch``.

Every public function checks its arguments once here (so every backend fails the same way, with a message
that names the bad value); the kernel launchers and the C++ entry points keep only cheap invariant checks.
Shared constants come from :mod:`mmx_fast.constants` and are passed in.

``backend="auto"`` (the default) means: the environment variable ``MMX_FAST_BACKEND`` if it is set to
something other than ``auto``; otherwise ``triton`` for CUDA tensors when triton and the kernels import,
``native`` for CPU tensors when the C++ kernels build, else ``torch``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

from .. import kernels_loader
from ..constants import AGGREGATIONS, BACKENDS, CANCELLATION_FLOOR, RANKINGS_PRECISIONS, RBO_VARIANTS
from . import table
from .rankings import (
    CERTIFY_STATS,
    _pad_rows,
    candidate_count,
    rankings_certified_f32,
    rankings_scored_torch,
)
from .table import OPS

__all__ = [
    "BACKENDS",
    "OPS",
    "ENV_VAR",
    "resolve_backend",
    "logit_lens",
    "msea",
    "rankings_topk",
    "rankings_topk_base",
    "rankings_rbo",
    "resolve_rankings_precision",
    "CERTIFY_STATS",
    "refine",
    "refine_filter",
    "refine_normalize",
    "tam_argmax",
    "tam_mitigation",
]

ENV_VAR = "MMX_FAST_BACKEND"

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------
# Running an operation of the table
# --------------------------------------------------------------------------------------------------


def _native_module():
    """The native C++ backend (``mmx_fast.native``, csrc/) when it builds or is already built; None when it
    cannot be built or ``MMX_FAST_NATIVE=0``. The first call may compile it (about 10 s, cached on disk)."""
    try:
        from .. import native
    except ImportError:
        return None
    return native if native.available() else None


def _impl(op: str, backend: str, device, empty: bool = False) -> Callable:
    """The implementation of ``op`` on the resolved backend (torch when it has none there, or ``empty``)."""
    if empty:
        return OPS[op].torch
    name = resolve_backend(backend, device)
    return table.impl(op, name, _native_module() if name == "native" else None)


def _run(op: str, backend: str, device, *args, empty: bool = False):
    """Run ``op`` (a row of :data:`OPS`) on the resolved backend with the checked ``args``."""
    return _impl(op, backend, device, empty)(*args)


# --------------------------------------------------------------------------------------------------
# Backend resolution
# --------------------------------------------------------------------------------------------------


def _as_device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.Tensor):
        return device.device
    return torch.device(device)


def _triton_ready() -> bool:
    """True when triton is installed and every kernel module of ``mmx_fast.kernels`` imports."""
    if not kernels_loader.triton_installed():
        return False
    kernels = kernels_loader.triton_kernels()
    if not kernels.available:  # a broken or missing kernels package must not break the torch path
        _warn_once(
            "kernels-import",
            f"mmx_fast.kernels failed to import ({kernels.import_error}); using the torch backend",
        )
    return kernels.available


def resolve_backend(backend: str = "auto", device=None) -> str:
    """The backend that will run for tensors on ``device``: ``"triton"``, ``"torch"`` or ``"native"``.

    - ``"auto"``: ``MMX_FAST_BACKEND`` when set (and not ``auto``); else ``"triton"`` for CUDA tensors if
      triton and ``mmx_fast.kernels`` import; ``"native"`` for CPU tensors if the C++ kernels build
      (``MMX_FAST_NATIVE=0`` turns them off); else ``"torch"``.
    - ``"triton"``: needs triton installed, and CUDA tensors, or ``TRITON_INTERPRET=1`` in the environment
      for CPU tensors (the interpreter); ValueError otherwise.
    - ``"native"``: the C++ backend if built, else ``"torch"`` with a one-time warning.
    - ``"torch"``: always available.

    A name outside ``BACKENDS`` (argument or environment variable) raises ValueError naming it.
    """
    raw = backend
    name = backend.strip().lower() if isinstance(backend, str) else backend
    if name not in BACKENDS:
        raise ValueError(f"backend={raw!r} is not allowed; expected one of {', '.join(BACKENDS)}")
    origin = f"backend={raw!r}"
    if name == "auto":
        env_raw = os.environ.get(ENV_VAR, "")
        env = env_raw.strip().lower()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(
                    f"{ENV_VAR}={env_raw!r} is not allowed; expected one of {', '.join(BACKENDS)}"
                )
            name = env
            origin = f"{ENV_VAR}={env_raw!r}"
    dev = _as_device(device)
    if name == "auto":
        # chosen by measurement (benches/RESULTS.md): Triton on CUDA; on CPU the native kernels beat the
        # vectorised torch path on every stage they implement (logit_lens stays torch: one GEMM)
        if dev.type == "cuda" and _triton_ready():
            return "triton"
        if dev.type == "cpu" and _native_module() is not None:
            return "native"
        return "torch"
    if name == "triton":
        if not kernels_loader.triton_installed():
            raise ValueError(
                f"{origin} needs the triton package, which is not installed; use backend='torch'"
            )
        if dev.type != "cuda" and not kernels_loader.interpreter_on():
            raise ValueError(
                f"{origin} needs CUDA tensors, got tensors on {dev}; Triton kernels run on the CPU only "
                "through the interpreter (set TRITON_INTERPRET=1 before importing mmx_fast.kernels), "
                "otherwise use backend='torch'"
            )
        return "triton"
    if name == "native":
        if _native_module() is not None:
            return "native"
        _warn_once("native", f"{origin}: the native C++ backend is not built; falling back to 'torch'")
        return "torch"
    return "torch"


# --------------------------------------------------------------------------------------------------
# The validation layer: every argument checked once, whatever the backend
# --------------------------------------------------------------------------------------------------


def _shape(x) -> object:
    return tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_matrix(name: str, x, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor {what}; got {_shape(x)}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor; got {x.dtype}")


def _check_same_device(**tensors: torch.Tensor) -> None:
    devices = {str(t.device) for t in tensors.values()}
    if len(devices) > 1:
        desc = ", ".join(f"{k} on {t.device}" for k, t in tensors.items())
        raise ValueError(f"all tensors must be on one device; got {desc}")


def _check_vocab_ids(ids, w_u: torch.Tensor) -> torch.Tensor:
    ids = torch.as_tensor(ids, device=w_u.device)
    if ids.numel() == 0:
        ids = ids.to(torch.long)  # torch.as_tensor([]) is float32
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"ids must be integer vocab ids; got dtype {ids.dtype}")
    ids = ids.to(torch.long).reshape(-1)
    v = w_u.shape[0]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= v):
        raise ValueError(f"vocab ids must lie in [0, {v}); got min {int(ids.min())}, max {int(ids.max())}")
    return ids


def _check_rankings(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"rankings_rbo needs {name} as a 2-D tensor of rankings [n, k]; got {_shape(x)}")
    if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"rankings_rbo takes integer id lists; got {name} of dtype {x.dtype}")


def _check_maps(a_t, ctx, weights) -> None:
    if not isinstance(a_t, torch.Tensor) or a_t.dim() != 3:
        raise ValueError(
            f"refine needs a_t [T, H, W]; got {_shape(a_t) if isinstance(a_t, torch.Tensor) else a_t!r}"
        )
    if not isinstance(ctx, torch.Tensor) or ctx.dim() != 3 or ctx.shape[1:] != a_t.shape[1:]:
        raise ValueError(
            f"refine needs ctx [C, H, W] on the grid of a_t {tuple(a_t.shape[1:])}; got {_shape(ctx)}"
        )
    if not isinstance(weights, torch.Tensor) or weights.shape != (a_t.shape[0], ctx.shape[0]):
        raise ValueError(
            f"refine needs weights [T, C] = [{a_t.shape[0]}, {ctx.shape[0]}]; "
            f"got {tuple(weights.shape) if isinstance(weights, torch.Tensor) else weights!r}"
        )
    if a_t.shape[1] < 1 or a_t.shape[2] < 1:
        raise ValueError(f"refine needs a non-empty grid; got {tuple(a_t.shape[1:])}")
    for name, x in (("a_t", a_t), ("ctx", ctx), ("weights", weights)):
        if not x.dtype.is_floating_point:
            raise TypeError(f"refine needs floating-point {name}; got {x.dtype}")
    _check_same_device(a_t=a_t, ctx=ctx, weights=weights)


def _check_msea(per_scale, coverages, grid, aggregate: str):
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate={aggregate!r} is not allowed; expected one of {', '.join(AGGREGATIONS)}")
    per_scale = list(per_scale)
    coverages = [tuple(float(c) for c in cov) for cov in coverages]
    if not per_scale:
        raise ValueError("msea needs at least one scale; got none")
    if len(per_scale) != len(coverages):
        raise ValueError(
            f"msea needs one coverage per scale; got {len(per_scale)} scales and {len(coverages)} coverages"
        )
    try:
        grid = (int(grid[0]), int(grid[1]))
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"grid={grid!r} is not allowed; expected (Hc, Wc) with Hc, Wc >= 1") from None
    if grid[0] < 1 or grid[1] < 1:
        raise ValueError(f"grid={grid!r} is not allowed; expected (Hc, Wc) with Hc, Wc >= 1")
    m = per_scale[0].shape[0] if per_scale[0].dim() == 3 else None
    for i, (maps, cov) in enumerate(zip(per_scale, coverages)):
        if not isinstance(maps, torch.Tensor) or maps.dim() != 3 or maps.shape[0] != m or 0 in maps.shape[1:]:
            raise ValueError(
                f"per_scale[{i}] must be [M, h, w] with the same M for every scale and h, w >= 1; got "
                f"{tuple(maps.shape) if isinstance(maps, torch.Tensor) else maps!r}"
            )
        if len(cov) == 4:
            y0, x0, y1, x1 = cov
            if not all(c == int(c) for c in cov) or not (0 <= y0 < y1 <= grid[0] and 0 <= x0 < x1 <= grid[1]):
                raise ValueError(
                    f"coverages[{i}]={cov!r} is not allowed; a box (y0, x0, y1, x1) must be whole cells with "
                    f"0 <= y0 < y1 <= {grid[0]} and 0 <= x0 < x1 <= {grid[1]}"
                )
        elif len(cov) != 2 or not all(c > 0 and c == c and c != float("inf") for c in cov):
            raise ValueError(
                f"coverages[{i}]={cov!r} is not allowed; expected (cy, cx), positive and finite, or a box "
                "(y0, x0, y1, x1) of canonical cells"
            )
    _check_same_device(**{f"per_scale[{i}]": t for i, t in enumerate(per_scale)})
    return per_scale, coverages, grid


# --------------------------------------------------------------------------------------------------
# Public operations, by stage
# --------------------------------------------------------------------------------------------------


def logit_lens(z: torch.Tensor, w_u: torch.Tensor, ids, backend: str = "auto") -> torch.Tensor:
    """Stage ``logit_lens`` (docs/design.md §1.1): raw maps ``clamp(W_U[ids] @ z.T, 0)`` with float32
    accumulation.

    z: [N, d] visual-token hidden states; w_u: [V, d] unembedding; ids: [M] vocab ids (tensor or sequence).
    Returns [M, N] float32. Only the M rows of W_U named by ``ids`` are read.
    """
    _check_matrix("z", z, "[N, d]")
    _check_matrix("w_u", w_u, "[V, d]")
    if z.shape[1] != w_u.shape[1]:
        raise ValueError(f"z [N, d] and w_u [V, d] must share d; got {tuple(z.shape)} and {tuple(w_u.shape)}")
    _check_same_device(z=z, w_u=w_u)
    ids = _check_vocab_ids(ids, w_u)
    empty = ids.numel() == 0 or z.shape[0] == 0
    return _run("logit_lens", backend, w_u.device, z, w_u, ids, empty=empty)


def msea(per_scale, coverages, grid, aggregate: str = "mean", backend: str = "auto") -> torch.Tensor:
    """Stage ``msea`` (docs/design.md §1.2) for all maps at once: per_scale[s] is [M, h_s, w_s] (one per
    scale, or one per (scale, view) for tiled models), coverages[s] its (cy, cx) coverage of the canonical grid
    ``grid`` = (Hc, Wc) or the box (y0, x0, y1, x1) of canonical cells it is resized onto; returns [M, Hc, Wc]
    (``mean`` or ``max`` per cell over the covering maps). Equal to
    :func:`mmx_fast.reference.msea.msea_aggregate`.

    Runs the torch implementation on the maps' device for every backend (it is a few resizes)."""
    per_scale, coverages, grid = _check_msea(per_scale, coverages, grid, aggregate)
    return _run("msea", backend, per_scale[0].device, per_scale, coverages, grid, aggregate)


def _cpu_has_bf16_matmul() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


# ``auto`` picks the certified pass only when W_U has at least this many rows per candidate: re-scoring
# gathers R * candidate_count(k) rows of W_U, which a small vocabulary does not amortise. Measured on the
# development CPU (benches/RESULTS.md, top-50, 132 candidates): 3.6-4x faster than float32 at V = 151,936
# (1,151 rows per candidate), 1.0-1.4x slower at V = 32,064, d = 4,096 (243 per candidate).
AUTO_MIN_VOCAB_PER_CANDIDATE = 512


def resolve_rankings_precision(
    precision: str = "auto", device=None, vocab: int | None = None, k: int = 50
) -> str:
    """``"certified-bf16"`` or ``"float32"`` for the rankings' pass over W_U on ``device`` (top-``k`` over ``vocab`` ids).

    ``auto``: ``certified-bf16`` on a CPU with bfloat16 matmul hardware (AVX512-BF16 / AMX; measured
    faster there, benches/RESULTS.md) when the vocabulary has at least ``AUTO_MIN_VOCAB_PER_CANDIDATE``
    rows per candidate (Qwen2-VL's 151,936 for k = 50; not LLaVA-1.5's 32,064), ``float32`` otherwise, on
    other CPUs (an emulated bfloat16 GEMM is slower than float32) and on CUDA (the exact Triton kernel; the certified GPU variant is not built, so an explicit
    ``certified-bf16`` on a GPU runs ``float32`` with a one-time warning). A name outside
    ``RANKINGS_PRECISIONS`` raises ValueError naming it."""
    if precision not in RANKINGS_PRECISIONS:
        raise ValueError(
            f"rankings_precision={precision!r} is not allowed; expected one of {', '.join(RANKINGS_PRECISIONS)}"
        )
    dev = _as_device(device)
    if precision == "certified-bf16" and dev.type != "cpu":
        # the bound assumes float32 accumulation of the bfloat16 GEMM, which cuBLAS does not promise (split-K
        # reductions in bfloat16 are allowed by default), and the re-scoring GEMM's bitwise agreement with the
        # reference is verified on the CPU only: the exact pass runs
        _warn_once(
            "certified-gpu",
            f"rankings_precision='certified-bf16' is built for CPU tensors only; got {dev}: using 'float32'",
        )
        return "float32"
    if precision != "auto":
        return precision
    if vocab is not None and vocab < AUTO_MIN_VOCAB_PER_CANDIDATE * candidate_count(k, vocab):
        return "float32"
    return "certified-bf16" if dev.type == "cpu" and _cpu_has_bf16_matmul() else "float32"


def _check_topk_args(h, w_u, k) -> None:
    _check_matrix("h", h, "[R, d]")
    _check_matrix("w_u", w_u, "[V, d]")
    if h.shape[1] != w_u.shape[1]:
        raise ValueError(
            f"rankings_topk needs h [R, d] and w_u [V, d]; got {tuple(h.shape)} and {tuple(w_u.shape)}"
        )
    _check_same_device(h=h, w_u=w_u)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= w_u.shape[0]:
        raise ValueError(
            f"top_k={k!r} is not allowed; expected an integer 1 <= top_k <= vocabulary size {w_u.shape[0]}"
        )


def _native_candidates(backend: str, device) -> Callable | None:
    """The native float32 candidate pass (``native.rankings_candidates``) when ``backend`` resolves to the
    native kernels on this CPU; None otherwise (the torch backend keeps the exact pass with k0 folded in)."""
    if resolve_backend(backend, device) != "native":
        return None
    return _impl("rankings_candidates", backend, device)


def _exact_topk(backend: str, device) -> Callable:
    """The exact float32 top-k of the resolved backend (torch when it has none)."""
    return _impl("rankings_topk", backend, device)


def rankings_topk(
    h: torch.Tensor, w_u: torch.Tensor, k: int, backend: str = "auto", precision: str = "float32"
) -> torch.Tensor:
    """Stage ``rankings``, top-k (docs/design.md §1.3): the top-``k`` vocab ids of ``h @ w_u.T`` per row,
    best first, ties toward the smaller id; equal to :func:`mmx_fast.reference.rankings.topk_ranking`. The
    [R, V] logits are never materialised (streaming over vocabulary tiles with a running top-k).

    ``precision``: ``float32`` (the exact pass), ``certified-bf16`` (a bfloat16 candidate pass whose result
    is proven equal to the float32 one, rows it cannot prove re-run exactly; docs/design.md §5) or ``auto``
    (:func:`resolve_rankings_precision`). Every precision returns the same rankings.

    h: [R, d]; w_u: [V, d]; returns LongTensor [R, k].
    """
    _check_topk_args(h, w_u, k)
    if resolve_rankings_precision(precision, w_u.device, w_u.shape[0], k) == "certified-bf16" and h.shape[0]:
        exact = _exact_topk(backend, w_u.device)
        return _run("rankings_certified", backend, w_u.device, h, w_u, k, None, exact)[0]
    return _run("rankings_topk", backend, w_u.device, h, w_u, k, empty=h.shape[0] == 0)


def rankings_topk_base(
    h: torch.Tensor,
    w_u: torch.Tensor,
    k: int,
    z: torch.Tensor,
    backend: str = "auto",
    precision: str = "auto",
    scores: tuple | None = None,
) -> tuple[torch.Tensor, int]:
    """Stage ``rankings`` and the base id in one pass over W_U: ``(rankings_topk(h, w_u, k), k0)`` with
    ``k0 = argmin_j [W_U sum_i z_i]_j`` (ties to the smaller id), equal to
    ``reference.rankings.base_vocab_id(z, w_u)``. z: [N, d] (the scale-1.0 visual states).

    ``certified-bf16`` folds the base row into the bfloat16 candidate pass (its argmin certified like the
    rankings); ``float32`` runs the exact top-k and one float32 GEMV. Fallbacks are counted in
    :data:`CERTIFY_STATS`.

    ``scores``: ``(start, values, ids, logits_dtype)`` when rows ``start:start + n`` of ``h`` were already
    scored over the whole vocabulary by the model's lm_head during generation (``values`` / ``ids``: each
    row's best logits, descending, [n, keep]; ``adapters.generation.StepScores``). Those rows are ranked
    from these scores, certified against the float32 reference (:func:`.rankings.rankings_scored_torch`),
    and the pass over W_U runs only for the other rows (and those it could not certify): no vocabulary row
    is scored twice (docs/design.md §1.3). The rankings are the same with or without ``scores``."""
    _check_topk_args(h, w_u, k)
    _check_matrix("z", z, "[N, d]")
    if z.shape[1] != w_u.shape[1]:
        raise ValueError(f"z [N, d] and w_u [V, d] must share d; got {tuple(z.shape)} and {tuple(w_u.shape)}")
    _check_same_device(z=z, w_u=w_u)
    s = z.to(torch.float32).sum(0)  # as reference.rankings.base_vocab_id
    r = h.shape[0]
    rest = None  # rows the pass over W_U must rank (None: all)
    ranks = None
    if scores is not None and r and w_u.device.type == "cpu":
        start, values, ids, logits_dtype = scores
        rows = torch.arange(start, start + values.shape[0], device=h.device)
        got, ok = rankings_scored_torch(h, w_u, k, rows, values, ids, logits_dtype)
        ranks = torch.empty((r, k), dtype=torch.int64, device=h.device)
        ranks[rows[ok]] = got[ok]
        done = torch.zeros(r, dtype=torch.bool, device=h.device)
        done[rows[ok]] = True
        rest = (~done).nonzero().flatten()
    # the pass runs on at least min(R, 16) rows (fillers discarded): the GEMMs then sum in the reference's
    # order (rankings._pad_rows), so every row's ranking is the one a pass over all R rows gives
    sel = None if rest is None else (_pad_rows(rest, r) if rest.numel() else rest)
    hp = h if sel is None else h[sel]
    if resolve_rankings_precision(precision, w_u.device, w_u.shape[0], k) == "certified-bf16":
        got, k0 = _run(
            "rankings_certified", backend, w_u.device, hp, w_u, k, s, _exact_topk(backend, w_u.device)
        )
    elif w_u.device.type == "cpu":  # one float32 pass over W_U with k0's row riding along
        exact = _exact_topk(backend, w_u.device)
        got, k0 = rankings_certified_f32(hp, w_u, k, s, exact, _native_candidates(backend, w_u.device))
    else:
        got = _run("rankings_topk", backend, w_u.device, hp, w_u, k, empty=hp.shape[0] == 0)
        k0 = _run("rankings_base", backend, w_u.device, z, w_u)
    if rest is None:
        return got, int(k0)
    ranks[rest] = got[: rest.numel()]
    return ranks, int(k0)


def rankings_rbo(
    a: torch.Tensor, b: torch.Tensor, p: float = 0.9, variant: str = "ext", backend: str = "auto"
) -> torch.Tensor:
    """Stage ``rankings``, RBO (docs/design.md §1.3) of every (target, context) pair: a [T, k], b [C, k]
    integer rankings -> [T, C] float32, equal to ``reference.rankings.rbo(a[:, None], b[None], p, variant)``."""
    _check_rankings("a", a)
    _check_rankings("b", b)
    if a.shape[1] != b.shape[1] or a.shape[1] < 1:
        raise ValueError(
            f"rankings_rbo needs two non-empty lists of equal depth; got {a.shape[1]} and {b.shape[1]}"
        )
    _check_same_device(a=a, b=b)
    if variant not in RBO_VARIANTS:
        raise ValueError(f"rbo variant={variant!r} is not allowed; expected one of {', '.join(RBO_VARIANTS)}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 < p < 1):
        raise ValueError(f"rbo_p={p!r} is not allowed; expected a number strictly between 0 and 1")
    empty = a.shape[0] == 0 or b.shape[0] == 0
    return _run("rankings_rbo", backend, a.device, a, b, float(p), variant, empty=empty)


def refine(
    a_t: torch.Tensor,
    ctx: torch.Tensor,
    weights: torch.Tensor,
    apply_filter: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """Stage ``refine`` (docs/design.md §1.3-1.4): ARC + filter + normalisation for all targets at once;
    equal to :func:`mmx_fast.reference.refine.refine_one` looped over targets.

    a_t: [T, H, W] target maps; ctx: [C, H, W] context maps (shared by all targets; a target's
    non-context entries have weight 0); weights: [T, C] (``1 - r``). Per target: ``ahat = weights @ ctx
    / rowsum`` (0 if the row sum is <= 0), ``beta = <a, ahat> / <ahat, ahat>`` (0 if the denominator is 0),
    ``relu(a - beta ahat)`` with cells at or below ``CANCELLATION_FLOOR * max(a)`` set to zero, TAM's rank
    Gaussian filter if ``apply_filter``, division by the max (an all-zero map stays zero). Returns
    [T, H, W] float32.
    """
    _check_maps(a_t, ctx, weights)
    empty = a_t.shape[0] == 0 or ctx.shape[0] == 0
    args = (a_t, ctx, weights, bool(apply_filter), CANCELLATION_FLOOR)
    return _run("refine", backend, a_t.device, *args, empty=empty)


def refine_filter(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """TAM's rank Gaussian filter (kernel 3, reflect padding; docs/design.md §1.4) over the last two dims
    of ``x`` [..., H, W], all maps at once; returned in x's dtype. Equal to
    :func:`mmx_fast.reference.refine.rank_gaussian_filter` within float32 rounding."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(
            f"refine_filter needs [..., H, W] with H, W >= 1; got {_shape(x) if isinstance(x, torch.Tensor) else x!r}"
        )
    if not x.dtype.is_floating_point:
        raise TypeError(f"refine_filter needs a floating-point tensor; got {x.dtype}")
    return _run("refine_filter", backend, x.device, x, empty=x.numel() == 0)


def refine_normalize(x: torch.Tensor) -> torch.Tensor:
    """Each map ([..., H, W]) divided by its max; a map whose max is <= 0 becomes zero (never NaN)."""
    return _run("refine_normalize", "torch", x.device, x)


def tam_argmax(h1: torch.Tensor, w_u: torch.Tensor, pos: int, groups) -> int:
    """Stage ``tam`` (docs/design.md §1.5): the argmax (first index on ties) of the logits at ``pos`` as TAM's
    ``lm_head`` call over the group holding ``pos`` computes them, certified over a streamed top-k
    (:func:`mmx_fast.ops.tam.tam_argmax`). h1: [L, d] last-layer states; groups: TAM's ``lm_head`` calls.
    Torch only (TAM's sequential algorithm; no backend to choose)."""
    _check_matrix("h1", h1, "[L, d]")
    _check_matrix("w_u", w_u, "[V, d]")
    if not 0 <= int(pos) < h1.shape[0]:
        raise ValueError(f"tam_argmax needs 0 <= pos < {h1.shape[0]}; got pos={pos!r}")
    return _run("tam_argmax", "torch", w_u.device, h1, w_u, int(pos), groups)


def tam_mitigation(
    tokenizer,
    text,
    h1,
    w_u,
    groups,
    argmax_s: int,
    visual_positions,
    grid,
    apply_filter: bool,
    fit: str,
    image_maps=None,
    frames: int = 1,
) -> torch.Tensor:
    """Stage ``tam`` (docs/design.md §1.5): TAM's mitigation on the class columns only, float32 [T, H, W]
    (:func:`mmx_fast.ops.tam.tam_mitigation_fast`; image_maps: None for TAM's own image scores, {vocab id:
    flat MSEA map} for MSEA + TAM). Torch / numpy only (TAM's sequential algorithm; no backend to choose)."""
    _check_matrix("h1", h1, "[L, d]")
    _check_matrix("w_u", w_u, "[V, d]")
    args = (
        tokenizer,
        text,
        h1,
        w_u,
        groups,
        argmax_s,
        visual_positions,
        grid,
        apply_filter,
        fit,
        image_maps,
        frames,
    )
    return _run("tam_mitigation", "torch", w_u.device, *args)
