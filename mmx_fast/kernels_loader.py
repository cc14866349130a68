"""Finds the Triton kernels package ``mmx_fast.kernels`` (imported lazily, so nothing here needs triton).

Used by the dispatch layer (:mod:`mmx_fast.ops`) and by the CUDA registrations of the native custom ops
(:mod:`mmx_fast.native`); it imports neither.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["interpreter_on", "kernel_module", "kernels_package", "triton_installed"]


def triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


def interpreter_on() -> bool:
    """Triton's CPU interpreter is selected (``TRITON_INTERPRET=1``; also true/yes/on, as triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def kernels_package() -> ModuleType:
    """``mmx_fast.kernels`` (installed with package-dir mapping ``mmx_fast.kernels -> kernels``). In a
    source tree that is not installed, the top-level ``kernels/`` directory next to ``mmx_fast/`` is
    loaded under that name instead."""
    try:
        return importlib.import_module("mmx_fast.kernels")
    except ModuleNotFoundError as err:
        if err.name not in ("mmx_fast.kernels",):
            raise
    src = Path(__file__).resolve().parents[1] / "kernels"
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


def kernel_module(stage: str) -> ModuleType:
    """``mmx_fast.kernels.<stage>`` (``logit_lens``, ``rankings``, ``refine``), imported on first use."""
    kernels_package()
    return importlib.import_module(f"mmx_fast.kernels.{stage}")
