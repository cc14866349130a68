"""One dispatch point per fused stage of the fast path (DESIGN 2).

Each public function checks its arguments once (so every backend fails the same way, with a message that
names the bad value), picks a backend with :func:`resolve_backend` and runs it:

- ``triton``: the kernels in ``mmx_fast.kernels`` (CUDA tensors; CPU tensors only through the Triton
  interpreter, ``TRITON_INTERPRET=1``, which is how the tests run them). Imported lazily, so
  ``import mmx_fast.ops`` never needs triton.
- ``torch``: :mod:`mmx_fast.ops.torch_impl`, vectorised PyTorch on any device (the CPU fast path).
- ``native``: C++ CPU kernels (``csrc/``), when built; until then it falls back to ``torch`` with a
  one-time warning.

``backend="auto"`` (the default) means: the environment variable ``MMX_FAST_BACKEND`` if it is set to
something other than ``auto``; otherwise ``triton`` for CUDA tensors when triton and the kernels import,
else ``torch``.

Stages without a Triton kernel (``msea_aggregate``, and ``rank_gaussian_filter`` unless the kernels
export one) run the torch implementation on the tensors' device whatever the backend.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

import torch

from . import torch_impl

__all__ = [
    "BACKENDS",
    "resolve_backend",
    "gather_logit_lens",
    "topk_rankings",
    "rbo_pairs",
    "refine",
    "rank_gaussian_filter",
    "normalize_max",
    "msea_aggregate",
]

BACKENDS = ("auto", "triton", "torch", "native")
RBO_VARIANTS = ("ext", "truncated", "min")
AGGREGATIONS = ("mean", "max")
ENV_VAR = "MMX_FAST_BACKEND"

_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# --------------------------------------------------------------------------------------------------
# Backend resolution
# --------------------------------------------------------------------------------------------------


def _as_device(device) -> torch.device:
    if device is None:
        return torch.device("cpu")
    if isinstance(device, torch.Tensor):
        return device.device
    return torch.device(device)


def _triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def _load_kernels_package() -> ModuleType:
    """``mmx_fast.kernels`` (installed with package-dir mapping ``mmx_fast.kernels -> kernels``). In a
    source tree that is not installed, the top-level ``kernels/`` directory next to ``mmx_fast/`` is
    loaded under that name instead."""
    try:
        return importlib.import_module("mmx_fast.kernels")
    except ModuleNotFoundError as err:
        if err.name not in ("mmx_fast.kernels",):
            raise
    src = Path(__file__).resolve().parents[2] / "kernels"
    init = src / "__init__.py"
    if not init.is_file():
        raise ModuleNotFoundError(
            "the Triton kernels package mmx_fast.kernels is not importable (install the project, "
            "e.g. `pip install -e .`, or use backend='torch')",
            name="mmx_fast.kernels",
        )
    spec = importlib.util.spec_from_file_location(
        "mmx_fast.kernels", init, submodule_search_locations=[str(src)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["mmx_fast.kernels"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("mmx_fast.kernels", None)
        raise
    import mmx_fast

    mmx_fast.kernels = module
    return module


def _kernel(submodule: str) -> ModuleType:
    """``mmx_fast.kernels.<submodule>``, imported on first use."""
    _load_kernels_package()
    return importlib.import_module(f"mmx_fast.kernels.{submodule}")


def _triton_ready() -> bool:
    """True when triton is installed and the kernels package imports with ``HAS_TRITON``."""
    if not _triton_installed():
        return False
    try:
        pkg = _load_kernels_package()
    except Exception as err:  # a broken or missing kernels package must not break the torch path
        _warn_once("kernels-import", f"mmx_fast.kernels failed to import ({err!r}); using the torch backend")
        return False
    return bool(getattr(pkg, "HAS_TRITON", True))


def _interpreter_on() -> bool:
    """Triton's CPU interpreter is selected (``TRITON_INTERPRET=1``; also true/yes/on, as triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _native_module() -> ModuleType | None:
    """The native C++ backend (``mmx_fast.native``, csrc/) when it builds or is already built; None when it
    cannot be built or ``MMX_FAST_NATIVE=0``. The first call may compile it (about 10 s, cached on disk)."""
    try:
        from .. import native
    except ImportError:
        return None
    return native if native.available() else None


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
        # chosen by measurement (benches/, RESULTS.md): Triton on CUDA; on CPU the native kernels beat the
        # vectorised torch path on every stage they implement (gather_logit_lens stays torch: one GEMM)
        if dev.type == "cuda" and _triton_ready():
            return "triton"
        if dev.type == "cpu" and _native_module() is not None:
            return "native"
        return "torch"
    if name == "triton":
        if not _triton_installed():
            raise ValueError(
                f"{origin} needs the triton package, which is not installed; use backend='torch'"
            )
        if dev.type != "cuda" and not _interpreter_on():
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


def _launcher(backend: str, submodule: str, name: str):
    """The backend's launcher for a stage, or None for the torch implementation."""
    if backend == "triton":
        return getattr(_kernel(submodule), name)
    if backend == "native":
        return getattr(_native_module(), name, None)
    return None


# --------------------------------------------------------------------------------------------------
# Argument checks (shared by every backend)
# --------------------------------------------------------------------------------------------------


def _check_matrix(name: str, x, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor {what}; got {shape}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor; got {x.dtype}")


def _check_same_device(**tensors: torch.Tensor) -> None:
    devices = {str(t.device) for t in tensors.values()}
    if len(devices) > 1:
        desc = ", ".join(f"{k} on {t.device}" for k, t in tensors.items())
        raise ValueError(f"all tensors must be on one device; got {desc}")


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------


def gather_logit_lens(z: torch.Tensor, w_u: torch.Tensor, ids, backend: str = "auto") -> torch.Tensor:
    """Raw logit-lens maps (stage A): ``clamp(W_U[ids] @ z.T, 0)`` with float32 accumulation.

    z: [N, d] visual-token hidden states; w_u: [V, d] unembedding; ids: [M] vocab ids (tensor or sequence).
    Returns [M, N] float32. Only the M rows of W_U named by ``ids`` are read.
    """
    _check_matrix("z", z, "[N, d]")
    _check_matrix("w_u", w_u, "[V, d]")
    if z.shape[1] != w_u.shape[1]:
        raise ValueError(f"z [N, d] and w_u [V, d] must share d; got {tuple(z.shape)} and {tuple(w_u.shape)}")
    _check_same_device(z=z, w_u=w_u)
    ids = torch.as_tensor(ids, device=w_u.device)
    if ids.numel() == 0:
        ids = ids.to(torch.long)  # torch.as_tensor([]) is float32
    if ids.dtype.is_floating_point or ids.dtype == torch.bool or ids.is_complex():
        raise TypeError(f"ids must be integer vocab ids; got dtype {ids.dtype}")
    ids = ids.to(torch.long).reshape(-1)
    v = w_u.shape[0]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= v):
        raise ValueError(f"vocab ids must lie in [0, {v}); got min {int(ids.min())}, max {int(ids.max())}")
    be = resolve_backend(backend, w_u.device)
    fn = _launcher(be, "gather_logit_lens", "gather_logit_lens")
    if fn is None or ids.numel() == 0 or z.shape[0] == 0:
        return torch_impl.gather_logit_lens(z, w_u, ids)
    return fn(z, w_u, ids)


def topk_rankings(h: torch.Tensor, w_u: torch.Tensor, k: int, backend: str = "auto") -> torch.Tensor:
    """Rankings (stage B1): the top-``k`` vocab ids of ``h @ w_u.T`` per row, best first, ties toward the
    smaller id; equal to :func:`mmx_fast.reference.rbo.topk_ranking`. The [R, V] logits are never
    materialised (streaming over vocabulary tiles with a running top-k).

    h: [R, d]; w_u: [V, d]; returns LongTensor [R, k].
    """
    _check_matrix("h", h, "[R, d]")
    _check_matrix("w_u", w_u, "[V, d]")
    if h.shape[1] != w_u.shape[1]:
        raise ValueError(
            f"topk_rankings needs h [R, d] and w_u [V, d]; got {tuple(h.shape)} and {tuple(w_u.shape)}"
        )
    _check_same_device(h=h, w_u=w_u)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= w_u.shape[0]:
        raise ValueError(
            f"top_k={k!r} is not allowed; expected an integer 1 <= top_k <= vocabulary size {w_u.shape[0]}"
        )
    be = resolve_backend(backend, w_u.device)
    fn = _launcher(be, "rankings", "topk_rankings")
    if fn is None or h.shape[0] == 0:
        return torch_impl.topk_rankings(h, w_u, k)
    return fn(h, w_u, k)


def rbo_pairs(
    a: torch.Tensor, b: torch.Tensor, p: float = 0.9, variant: str = "ext", backend: str = "auto"
) -> torch.Tensor:
    """RBO (stage B2) of every (target, context) pair: a [T, k], b [C, k] integer rankings -> [T, C]
    float32, equal to ``reference.rbo.rbo(a[:, None], b[None], p, variant)``."""
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"rbo_pairs needs {name} as a 2-D tensor of rankings [n, k]; got {shape}")
        if x.dtype.is_floating_point or x.dtype == torch.bool or x.is_complex():
            raise TypeError(f"rbo_pairs takes integer id lists; got {name} of dtype {x.dtype}")
    if a.shape[1] != b.shape[1] or a.shape[1] < 1:
        raise ValueError(
            f"rbo_pairs needs two non-empty lists of equal depth; got {a.shape[1]} and {b.shape[1]}"
        )
    _check_same_device(a=a, b=b)
    if variant not in RBO_VARIANTS:
        raise ValueError(f"rbo variant={variant!r} is not allowed; expected one of {', '.join(RBO_VARIANTS)}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0 < p < 1):
        raise ValueError(f"rbo_p={p!r} is not allowed; expected a number strictly between 0 and 1")
    be = resolve_backend(backend, a.device)
    fn = _launcher(be, "rankings", "rbo_pairs")
    if fn is None or a.shape[0] == 0 or b.shape[0] == 0:
        return torch_impl.rbo_pairs(a, b, float(p), variant)
    return fn(a, b, float(p), variant)


def refine(
    a_t: torch.Tensor,
    ctx: torch.Tensor,
    weights: torch.Tensor,
    apply_filter: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """ARC + filter + normalisation (stage C) for all targets at once; equal to
    :func:`mmx_fast.reference.arc.refine_one` looped over targets.

    a_t: [T, H, W] target maps; ctx: [C, H, W] context maps (shared by all targets; a target's
    non-context entries have weight 0); weights: [T, C] (``1 - r``). Per target: ``ahat = weights @ ctx
    / rowsum`` (0 if the row sum is <= 0), ``beta = <a, ahat> / <ahat, ahat>`` (0 if the denominator is 0),
    ``relu(a - beta ahat)``, TAM's rank Gaussian filter if ``apply_filter``, division by the max (an
    all-zero map stays zero). Returns [T, H, W] float32.
    """
    if not isinstance(a_t, torch.Tensor) or a_t.dim() != 3:
        raise ValueError(
            f"refine needs a_t [T, H, W]; got {tuple(a_t.shape) if isinstance(a_t, torch.Tensor) else a_t!r}"
        )
    if not isinstance(ctx, torch.Tensor) or ctx.dim() != 3 or ctx.shape[1:] != a_t.shape[1:]:
        raise ValueError(
            f"refine needs ctx [C, H, W] on the grid of a_t {tuple(a_t.shape[1:])}; got {tuple(ctx.shape)}"
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
    be = resolve_backend(backend, a_t.device)
    fn = _launcher(be, "refine", "refine")
    if fn is None or a_t.shape[0] == 0 or ctx.shape[0] == 0:
        return torch_impl.refine(a_t, ctx, weights, bool(apply_filter))
    return fn(a_t, ctx, weights, bool(apply_filter))


def rank_gaussian_filter(x: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """TAM's rank Gaussian filter (kernel 3, reflect padding; DESIGN 1.4) over the last two dims of
    ``x`` [..., H, W], all maps at once; returned in x's dtype. Equal to
    :func:`mmx_fast.reference.filters.rank_gaussian_filter` within float32 rounding."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] == 0 or x.shape[-2] == 0:
        raise ValueError(
            f"rank_gaussian_filter needs [..., H, W] with H, W >= 1; got {tuple(x.shape) if isinstance(x, torch.Tensor) else x!r}"
        )
    if not x.dtype.is_floating_point:
        raise TypeError(f"rank_gaussian_filter needs a floating-point tensor; got {x.dtype}")
    be = resolve_backend(backend, x.device)
    fn = None
    if be == "triton":
        fn = getattr(_kernel("refine"), "rank_gaussian_filter", None)
    elif be == "native":
        fn = _launcher(be, "refine", "rank_gaussian_filter")
    if fn is None or x.numel() == 0:
        return torch_impl.rank_gaussian_filter(x)
    return fn(x)


def normalize_max(x: torch.Tensor) -> torch.Tensor:
    """Each map ([..., H, W]) divided by its max; a map whose max is <= 0 becomes zero (never NaN)."""
    return torch_impl.normalize_max(x)


def msea_aggregate(
    per_scale, coverages, grid, aggregate: str = "mean", backend: str = "auto"
) -> torch.Tensor:
    """MSEA (DESIGN 1.2) for all maps at once: per_scale[s] is [M, h_s, w_s], coverages[s] its (cy, cx)
    coverage of the canonical grid ``grid`` = (Hc, Wc); returns [M, Hc, Wc] (``mean`` or ``max`` per cell
    over the covering scales). Equal to :func:`mmx_fast.reference.msea.msea_aggregate`.

    Runs the torch implementation on the maps' device for every backend (it is a few resizes)."""
    if aggregate not in AGGREGATIONS:
        raise ValueError(f"aggregate={aggregate!r} is not allowed; expected one of {', '.join(AGGREGATIONS)}")
    per_scale = list(per_scale)
    coverages = [tuple(float(c) for c in cov) for cov in coverages]
    if not per_scale:
        raise ValueError("msea_aggregate needs at least one scale; got none")
    if len(per_scale) != len(coverages):
        raise ValueError(
            f"msea_aggregate needs one coverage per scale; got {len(per_scale)} scales and {len(coverages)} coverages"
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
        if len(cov) != 2 or not all(c > 0 and c == c and c != float("inf") for c in cov):
            raise ValueError(f"coverages[{i}]={cov!r} is not allowed; expected (cy, cx), positive and finite")
    _check_same_device(**{f"per_scale[{i}]": t for i, t in enumerate(per_scale)})
    resolve_backend(backend, per_scale[0].device)  # validates the name; every backend runs the torch code
    return torch_impl.msea_aggregate(per_scale, coverages, grid, aggregate)
