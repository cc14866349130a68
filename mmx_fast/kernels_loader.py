"""The Triton kernels, ``mmx_fast.kernels.<stage>``, imported lazily (nothing here needs triton).

The top-level ``kernels/`` folder of the repository ships as ``mmx_fast.kernels`` (package-dir mapping in
pyproject.toml). It has no ``__init__.py`` on purpose: a folder without one is at most a namespace portion, and
Python prefers any regular package of the same name wherever it sits on ``sys.path``. So with the repository
root on ``sys.path`` (``python -m``, ``python -c``, pytest) our folder can never shadow Hugging Face's
``kernels`` package, which transformers >= 5.25 imports (docs/design.md §8). What a package ``__init__`` would
hold (which launchers exist, whether triton imports, interpreter or GPU) lives here instead.

Used by the dispatch layer (:mod:`mmx_fast.ops`) and by the CUDA registrations of the native custom ops
(:mod:`mmx_fast.native`); it imports neither.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType

__all__ = ["TritonKernels", "interpreter_on", "kernel_module", "triton_installed", "triton_kernels"]

# launcher name -> the stage module (kernels/<stage>.py) that defines it
LAUNCHERS = {
    "logit_lens": "logit_lens",
    "rankings_topk": "rankings",
    "rankings_rbo": "rankings",
    "refine": "refine",
}
STAGES = ("logit_lens", "rankings", "refine")


def triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def interpreter_on() -> bool:
    """Triton's CPU interpreter is selected (``TRITON_INTERPRET=1``; also true/yes/on, as triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def kernel_module(stage: str) -> ModuleType:
    """``mmx_fast.kernels.<stage>`` (``logit_lens``, ``rankings``, ``refine``), imported on first use.

    Triton chooses between compiling for the GPU and its CPU interpreter when ``@triton.jit`` runs, i.e. when
    the module is first imported: without a GPU, set ``TRITON_INTERPRET=1`` in ``os.environ`` before."""
    if stage not in STAGES:
        raise ValueError(f"kernel stage {stage!r} is not allowed; expected one of {', '.join(STAGES)}")
    try:
        return importlib.import_module(f"mmx_fast.kernels.{stage}")
    except ModuleNotFoundError as err:
        if err.name not in ("mmx_fast.kernels", f"mmx_fast.kernels.{stage}"):
            raise
        raise ModuleNotFoundError(
            f"the Triton kernels module mmx_fast.kernels.{stage} is not importable: install the project "
            "(`pip install -e .` maps the repository's kernels/ folder onto mmx_fast.kernels), or use "
            "backend='torch'",
            name=err.name,
        ) from err


@dataclass(frozen=True)
class TritonKernels:
    """Whether the Triton kernels import here and how they were built, plus their launchers.

    ``available`` is False when triton or a kernel module fails to import (``import_error`` says why); the
    launchers are then absent and :meth:`launcher` raises ImportError. ``interpreted`` is True when
    ``@triton.jit`` built them for the CPU interpreter."""

    available: bool
    interpreted: bool
    import_error: str | None
    modules: tuple[ModuleType, ...] = ()

    def launcher(self, name: str):
        """The launcher ``name`` (one of :data:`LAUNCHERS`)."""
        if name not in LAUNCHERS:
            raise AttributeError(f"no Triton launcher {name!r}; expected one of {', '.join(LAUNCHERS)}")
        if not self.available:
            raise ImportError(
                f"mmx_fast.kernels.{name} is unavailable: triton could not be imported ({self.import_error})"
            )
        return getattr(kernel_module(LAUNCHERS[name]), name)

    def __getattr__(self, name: str):
        # kernels.logit_lens(...), as the launchers of a package would read
        if name in LAUNCHERS:
            return self.launcher(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def usable(self, device) -> bool:
        """Whether the kernels can run on tensors on ``device``: compiled kernels need CUDA tensors; under the
        interpreter they run on CPU tensors."""
        if not self.available:
            return False
        import torch

        device = torch.device(device)
        if self.interpreted:
            return device.type == "cpu"
        return device.type == "cuda" and torch.cuda.is_available()


@functools.cache
def triton_kernels() -> TritonKernels:
    """Imports every kernel module once; never raises (a missing or broken triton must not break
    ``import mmx_fast`` or the torch path)."""
    try:
        modules = tuple(kernel_module(stage) for stage in STAGES)
    except Exception as exc:  # depends on the environment
        return TritonKernels(False, False, f"{type(exc).__name__}: {exc}")
    return TritonKernels(True, bool(modules[0].INTERPRETED), None, modules)
