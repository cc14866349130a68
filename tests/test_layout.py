"""The repository's top-level folders never shadow installed packages (docs/design.md §8).

transformers >= 5.25 imports Hugging Face's ``kernels`` package. Our top-level ``kernels/`` folder (the Triton
kernels, shipped as ``mmx_fast.kernels``) once was a regular package, so with the repository root first on
``sys.path`` (``python -m ...``, ``python -c``, pytest from the root) it replaced the real one and every
transformers model module failed to import. These tests run exactly that situation in a subprocess.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmx_fast.adapters.registry import supported_model_types

ROOT = Path(__file__).resolve().parents[1]

# top-level folders holding Python files that are not the package itself: none may be a regular package that a
# distribution on the index could also provide (benches/ is one, and no distribution of that name exists:
# checked against the public index by tests/test_install.py::test_top_level_names_are_free_on_the_index)
NAMESPACE_ONLY = ("kernels", "tests", "csrc")
REGULAR_PACKAGES = ("mmx_fast", "benches")


def _run_from_root(code: str) -> subprocess.CompletedProcess:
    """``python -c code`` with the repository root as the working directory: ``-c`` puts it first on sys.path."""
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in __import__("os").environ.items() if k != "PYTHONSAFEPATH"},
    )


def _ours(path: str) -> bool:
    """Whether ``path`` is a file of the repository's own kernels/ folder."""
    return Path(path).resolve().parent == (ROOT / "kernels").resolve()


def test_top_level_folders_are_not_regular_packages():
    found = sorted(p.parent.name for p in ROOT.glob("*/__init__.py") if not p.parent.name.startswith("."))
    assert found == sorted(REGULAR_PACKAGES), (
        f"top-level regular packages {found}; allowed: {REGULAR_PACKAGES}"
    )
    for name in NAMESPACE_ONLY:
        assert (ROOT / name).is_dir() and not (ROOT / name / "__init__.py").exists(), name


def test_every_family_imports_with_the_repository_root_first_on_sys_path():
    modules = [f"transformers.models.{t}.modeling_{t}" for t in supported_model_types()]
    code = f"""
import importlib, json, sys
assert sys.path[0] in ("", {str(ROOT)!r}), sys.path[:3]
out = {{}}
try:
    import kernels
    out["kernels"] = getattr(kernels, "__file__", None)
except ImportError as err:
    out["kernels"] = "ImportError: " + str(err)
import mmx_fast.kernels.logit_lens as lens
out["mmx_fast.kernels"] = lens.__file__
for name in {modules!r}:
    importlib.import_module(name)
out["imported"] = len({modules!r})
print(json.dumps(out))
"""
    proc = _run_from_root(code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["imported"] == len(modules) >= 11
    # our kernels ship only as mmx_fast.kernels, from the repository's kernels/ folder
    assert Path(out["mmx_fast.kernels"]).resolve() == (ROOT / "kernels" / "logit_lens.py").resolve()
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        # without Hugging Face's package `import kernels` may find our folder, but only as an empty namespace
        assert out["kernels"] is None or out["kernels"].startswith("ImportError"), out["kernels"]
    else:
        # with it installed, the top-level name is Hugging Face's package, never our folder
        assert out["kernels"] is not None and not _ours(out["kernels"]), out["kernels"]


def test_transformers_imports_hugging_faces_kernels_when_installed():
    """The reproduction of the 5.25 breakage: what transformers' activations import resolves to."""
    try:
        importlib.metadata.version("kernels")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("Hugging Face's kernels package is not installed (transformers < 5.25 does not need it)")
    proc = _run_from_root(
        "import transformers.activations, kernels, sys; print(kernels.__file__); "
        "from kernels import CUDAProperties  # the name 5.25 imports\n"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not _ours(proc.stdout.strip().splitlines()[-1])


def test_every_subpackage_ships():
    """pyproject lists the packages explicitly (kernels/ and csrc/ are mapped in): every folder of mmx_fast/
    holding Python files must be listed, or a wheel install would lack it while the editable one works."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    pkg = ROOT / "mmx_fast"
    found = {"mmx_fast"} | {
        "mmx_fast." + ".".join(d.relative_to(pkg).parts)
        for d in pkg.rglob("*")
        if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.py"))
    }
    assert found <= listed, f"not listed in pyproject's [tool.setuptools] packages: {sorted(found - listed)}"
