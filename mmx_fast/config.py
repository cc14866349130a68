"""One validated configuration for every method the engine can run.

The three presets are named points in this space; every other point (MSEA with TAM's mitigation, ARC
without MSEA, ``max`` aggregation, ...) is reachable by overriding fields, so the paper's ablation table
can be re-run. See README "Spec decisions" for why each default is what it is.
"""

from __future__ import annotations

import itertools
import math
import numbers
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

import numpy as np

from .constants import AGGREGATIONS, BACKENDS, RANKINGS_PRECISIONS, RBO_VARIANTS, TAM_FITS

METHODS = ("msea-arc", "tam", "logit-lens")
MITIGATIONS = ("arc", "tam", "none")
BASES = ("argmin", "none")
# the most answer tokens generated (``max_new_tokens``) or forced (``mmx_fast.pipeline.MAX_ANSWER_TOKENS``)
MAX_NEW_TOKENS = 1024
#: the most MSEA scales one config may ask for (each is one more forward per image; the paper uses 3)
MAX_SCALES = 16

# What each preset sets; fields not listed keep their dataclass defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "msea-arc": {"scales": (0.5, 0.75, 1.0), "mitigation": "arc", "aggregate": "mean", "filter": True},
    "tam": {"scales": (1.0,), "mitigation": "tam", "aggregate": "mean", "filter": True},
    "logit-lens": {"scales": (1.0,), "mitigation": "none", "aggregate": "mean", "filter": False},
}


def _fail(name: str, value: Any, allowed: str) -> None:
    raise ValueError(f"ExplainConfig.{name}={_plain(value)!r} is not allowed; expected {allowed}")


def _plain(value: Any) -> Any:
    """numpy / other ``numbers`` scalars as the plain Python value they stand for (so that a message shows
    ``0.5``, not ``np.float64(0.5)``, and ``to_dict`` stays JSON); anything else as it is."""
    if isinstance(value, bool):
        return value
    if isinstance(value, np.bool_):  # numpy's bool is no numbers.Integral
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _is_int(value: Any) -> bool:
    return (
        isinstance(value, numbers.Integral)
        and not isinstance(value, bool)
        and not isinstance(value, np.bool_)
    )


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not isinstance(value, np.bool_)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or isinstance(value, np.bool_)


@dataclass(frozen=True)
class ExplainConfig:
    """How to explain. ``ExplainConfig(method="tam")`` applies the preset; any field given explicitly
    overrides the preset's value (``ExplainConfig(method="msea-arc", aggregate="max")``).

    Fields
    ------
    method: preset name, one of ``METHODS``.
    scales: MSEA image scales; must contain 1.0 (the canonical grid and the rankings come from it).
    aggregate: how MSEA combines scales per cell, ``mean`` (paper default) or ``max`` (paper ablation).
    mitigation: ``arc`` (the paper), ``tam`` (TAM's estimated causal inference), ``none`` (raw logit lens).
    filter: apply TAM's rank Gaussian filter after mitigation.
    top_k: ranking depth for ARC (paper: 50).
    rbo_p: RBO persistence, in (0, 1).
    rbo_variant: ``ext`` (Webber et al. Eq. 32, default), ``truncated`` or ``min``.
    tam_fit: how the ``tam`` mitigation fits the interference scale: ``tam`` (default) is TAM's own fit,
        scipy's ``minimize_scalar`` on TAM's float32 objective, reproduced exactly (needs scipy);
        ``closed-form`` is the exact least-squares optimum (no scipy). Read only when mitigation is ``tam``.
    base: ``argmin`` adds the base map A_0 of the least-activated vocab id (r_0 = 0); ``none`` omits it.
    max_new_tokens: generation budget when no answer is forced.
    backend: kernel backend for the fast path (``auto``, ``triton``, ``torch``, ``native``); the
        environment variable ``MMX_FAST_BACKEND`` overrides ``auto``.
    keep_scale_maps: also return the per-scale raw maps and the pre-mitigation maps.
    rankings_precision: stage rankings' pass over W_U (the ARC rankings and the base id k0): ``certified-bf16``
        (a bfloat16 candidate pass proven equal to float32; rows it cannot prove re-run in float32),
        ``float32`` (the exact pass) or ``auto`` (certified on a CPU with bfloat16 matmul hardware,
        float32 elsewhere; ``mmx_fast.ops.resolve_rankings_precision``). The result is the same.
    """

    method: Literal["msea-arc", "tam", "logit-lens"] = "msea-arc"
    scales: tuple[float, ...] | None = None
    aggregate: str | None = None
    mitigation: str | None = None
    filter: bool | None = None
    top_k: int = 50
    rbo_p: float = 0.9
    rbo_variant: str = "ext"
    tam_fit: str = "tam"
    base: str = "argmin"
    max_new_tokens: int = 32
    backend: str = "auto"
    keep_scale_maps: bool = False
    rankings_precision: str = "auto"

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or self.method not in METHODS:
            _fail("method", self.method, f"one of {', '.join(METHODS)}")
        preset = PRESETS[self.method]
        for name, value in preset.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        # scales
        scales = self.scales
        if isinstance(scales, (str, bytes)):
            _fail("scales", self.scales, "a non-empty sequence of positive numbers (not a string)")
        if _is_real(scales):
            scales = (scales,)
        try:
            n = len(scales) if hasattr(scales, "__len__") else None
            scales = list(itertools.islice(iter(scales), MAX_SCALES + 1))  # an endless iterator stops here
        except TypeError:
            _fail("scales", self.scales, "a non-empty sequence of positive numbers")
        if len(scales) > MAX_SCALES:  # each scale is a model forward per image
            count = f"{n}" if n is not None else f"more than {MAX_SCALES}"
            raise ValueError(
                f"ExplainConfig.scales of {count} scales is not allowed; expected at most {MAX_SCALES} "
                "(mmx_fast.config.MAX_SCALES)"
            )
        if not all(_is_real(s) for s in scales):
            _fail("scales", self.scales, "a non-empty sequence of positive numbers (int or float, not str)")
        scales = tuple(float(s) for s in scales)
        if len(scales) == 0:
            _fail("scales", self.scales, "a non-empty sequence of positive numbers containing 1.0")
        for s in scales:
            if not math.isfinite(s) or s <= 0:
                _fail(
                    "scales",
                    self.scales,
                    "positive finite numbers (got a zero, negative or non-finite scale)",
                )
            if s > 8:
                _fail("scales", self.scales, "scales in (0, 8]")
        if len(set(scales)) != len(scales):
            _fail("scales", self.scales, "distinct scales (duplicates given)")
        if 1.0 not in scales:
            _fail("scales", self.scales, "a sequence containing 1.0 (the canonical grid)")
        object.__setattr__(self, "scales", tuple(sorted(scales)))
        if self.aggregate not in AGGREGATIONS:
            _fail("aggregate", self.aggregate, f"one of {', '.join(AGGREGATIONS)}")
        if self.mitigation not in MITIGATIONS:
            _fail("mitigation", self.mitigation, f"one of {', '.join(MITIGATIONS)}")
        for name in ("filter", "keep_scale_maps"):
            value = getattr(self, name)
            if not _is_bool(value):
                _fail(name, value, "True or False")
            object.__setattr__(self, name, bool(value))
        if not _is_int(self.top_k) or not 1 <= self.top_k <= 64:
            _fail("top_k", self.top_k, "an integer in [1, 64] (the fused ranking kernels keep k <= 64)")
        object.__setattr__(self, "top_k", int(self.top_k))
        p = self.rbo_p
        if not _is_real(p) or not math.isfinite(p) or not 0 < p < 1:
            _fail("rbo_p", self.rbo_p, "a number strictly between 0 and 1")
        object.__setattr__(self, "rbo_p", float(p))
        if self.rbo_variant not in RBO_VARIANTS:
            _fail("rbo_variant", self.rbo_variant, f"one of {', '.join(RBO_VARIANTS)}")
        if self.tam_fit not in TAM_FITS:
            _fail("tam_fit", self.tam_fit, f"one of {', '.join(TAM_FITS)}")
        if self.base not in BASES:
            _fail("base", self.base, f"one of {', '.join(BASES)}")
        n = self.max_new_tokens
        if not _is_int(n) or not 1 <= n <= MAX_NEW_TOKENS:
            _fail("max_new_tokens", n, f"an integer in [1, {MAX_NEW_TOKENS}]")
        object.__setattr__(self, "max_new_tokens", int(n))
        if self.backend not in BACKENDS:
            _fail("backend", self.backend, f"one of {', '.join(BACKENDS)}")
        if not isinstance(self.rankings_precision, str) or self.rankings_precision not in RANKINGS_PRECISIONS:
            _fail("rankings_precision", self.rankings_precision, f"one of {', '.join(RANKINGS_PRECISIONS)}")

    @property
    def is_exact_tam(self) -> bool:
        """True when the config is TAM as published (single scale, TAM mitigation and fit, filter)."""
        return self.mitigation == "tam" and self.scales == (1.0,) and self.filter and self.tam_fit == "tam"

    def check_runtime(self) -> None:
        """Fail before any model work when this config needs an optional package that is missing: TAM's
        own fit (``tam_fit="tam"`` with ``mitigation="tam"``) needs scipy."""
        if self.mitigation == "tam" and self.tam_fit == "tam":
            import importlib.util

            if importlib.util.find_spec("scipy") is None:
                raise ImportError(
                    "ExplainConfig.tam_fit='tam' (TAM's own scalar fit, the tam preset's default) needs scipy, "
                    "which is not installed; install it (pip install 'mmx-fast[tam]') or use "
                    "tam_fit='closed-form' (the exact least-squares optimum, no scipy)"
                )

    def resolved_backend(self) -> str:
        """The backend to run: ``backend``, or for ``"auto"`` the ``MMX_FAST_BACKEND`` environment variable
        when set (one of ``BACKENDS``), else ``"auto"``."""
        if self.backend != "auto":
            return self.backend
        env = os.environ.get("MMX_FAST_BACKEND", "auto").strip().lower() or "auto"
        if env not in BACKENDS:
            raise ValueError(
                f"MMX_FAST_BACKEND={env!r} is not allowed; expected one of {', '.join(BACKENDS)}"
            )
        return env

    def with_(self, **changes: Any) -> ExplainConfig:
        """A changed copy. Changing ``method`` re-applies that method's preset (every field a preset sets goes
        back to the new preset's value); fields given in the same call win."""
        if "method" not in changes:
            return replace(self, **changes)
        preset_fields = {name for preset in PRESETS.values() for name in preset}
        kwargs = {f.name: getattr(self, f.name) for f in fields(self)}
        kwargs.update({name: None for name in preset_fields})
        kwargs.update(changes)
        return ExplainConfig(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON values (``scales`` as a list)."""
        d = asdict(self)
        d["scales"] = list(d["scales"])
        return d

    @classmethod
    def field_names(cls) -> list[str]:
        """The config's field names, in declaration order."""
        return [f.name for f in fields(cls)]
