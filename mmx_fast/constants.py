"""Constants shared by the configuration, the reference oracle, the dispatch layer and the kernels, defined
once here (docs/design.md §3). Kernel launchers and the C++ ops take them as arguments."""

from __future__ import annotations

# Backends of the fast path (``mmx_fast.ops``); ``auto`` picks one per device.
BACKENDS = ("auto", "triton", "torch", "native")

# Rank-biased overlap variants (docs/design.md §1.3): Webber's extrapolated RBO, RBO@k, the lower bound.
RBO_VARIANTS = ("ext", "truncated", "min")

# How MSEA combines the scales covering a cell (docs/design.md §1.2).
AGGREGATIONS = ("mean", "max")

# How the ``tam`` mitigation fits its interference scale (docs/design.md §1.5): ``tam`` is TAM's own fit
# (scipy's ``minimize_scalar`` on TAM's float32 objective, reproduced exactly; needs scipy), ``closed-form``
# the exact least-squares optimum <a, b> / <b, b> in float64.
TAM_FITS = ("tam", "closed-form")

# ARC (docs/design.md §1.3): residual cells at or below this fraction of max(A_t) count as zero. When A_t is
# (nearly) a multiple of Ahat, relu(A_t - beta Ahat) is pure cancellation noise (~1e-7 of A_t in float32),
# and max-normalisation would blow that noise up to a full-strength map that differs between float32 and
# float64.
CANCELLATION_FLOOR = 1e-5

# Precision of stage rankings' pass over W_U (docs/design.md §1.3, §5): ``certified-bf16`` (a bfloat16 candidate pass,
# proven equal to float32, uncertified rows re-run exactly), ``float32`` (the exact pass), ``auto`` (per device).
RANKINGS_PRECISIONS = ("auto", "certified-bf16", "float32")

__all__ = [
    "AGGREGATIONS",
    "BACKENDS",
    "CANCELLATION_FLOOR",
    "RANKINGS_PRECISIONS",
    "RBO_VARIANTS",
    "TAM_FITS",
]
