"""Building the native C++ kernels: the ahead-of-time command, the visible message and progress of a
first-use build, and that a build is never counted in an explanation's ``timings``.

The real build is exercised by tests/test_native.py; here a failing compiler (``CXX=false``, an empty cache)
shows the first-use messages without compiling, and the cached build is reused for the rest.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from mmx_fast import native

ROOT = Path(__file__).resolve().parents[1]
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _cli(*args: str, **env) -> subprocess.CompletedProcess:
    full = {**os.environ, **env, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "mmx_fast.native", *args], cwd=ROOT, env=full, capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def built():
    """The native kernels, loaded (skip where they cannot be built, except in CI)."""
    if os.environ.get(native.ENV_VAR, "auto").strip().lower() in ("0", "off", "false", "no"):
        pytest.skip(f"native kernels disabled by {native.ENV_VAR}=0")
    try:
        return native.build()
    except RuntimeError as err:
        if CI:
            pytest.fail(f"CI=true but the native kernels could not be built: {err}")
        pytest.skip(f"native C++ kernels cannot be built here (a C++ compiler is needed): {err}")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_lines_without_a_terminal(caplog, tmp_path):
    out = io.StringIO()
    with caplog.at_level(logging.INFO, logger="mmx_fast.native"):
        with native._BuildProgress(tmp_path, "c++", stream=out, interval=0.02):
            time.sleep(0.15)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("mmx_fast: compiling the native C++ kernels with c++")
    assert str(tmp_path) in lines[0] and "python -m mmx_fast.native build" in lines[0]
    assert any(line.startswith("mmx_fast: still compiling") for line in lines[1:-1]), lines
    assert lines[-1].startswith("mmx_fast: native C++ kernels built in ") and lines[-1].endswith(" s")
    logged = [r.getMessage() for r in caplog.records if r.name == "mmx_fast.native"]
    assert logged[0] == lines[0] and logged[-1] == lines[-1]


def test_progress_on_a_terminal_rewrites_one_line_and_reports_failure(caplog, tmp_path):
    out = _Tty()
    with caplog.at_level(logging.INFO, logger="mmx_fast.native"):
        with pytest.raises(KeyError):
            with native._BuildProgress(tmp_path, "c++", stream=out, interval=0.02):
                time.sleep(0.1)
                raise KeyError("boom")
    text = out.getvalue()
    assert "\r" in text and " s" in text
    assert "still compiling" not in text  # a terminal gets the counter in place, not extra lines
    assert text.rstrip("\n").splitlines()[-1].startswith("mmx_fast: native C++ kernels failed in ")
    assert any(r.levelno == logging.WARNING and "failed in" in r.getMessage() for r in caplog.records)


def test_first_use_build_says_so_on_stderr(tmp_path):
    """An empty cache and a compiler that fails at once: the first use prints the message, then the
    failure, and falls back (auto) with one warning."""
    code = "from mmx_fast import native; print(native.available())"
    full = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CXX": "false",
        "TORCH_EXTENSIONS_DIR": str(tmp_path),
        native.ENV_VAR: "auto",
    }
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"
    assert "mmx_fast: compiling the native C++ kernels" in proc.stderr
    assert str(tmp_path) in proc.stderr
    assert "mmx_fast: native C++ kernels failed in " in proc.stderr


def test_build_command(built, tmp_path):
    # the module's own cache (already built by the fixture): loaded, nothing compiled
    proc = _cli("build")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("cached build loaded in ") and proc.stdout.strip().endswith(".so")
    path = proc.stdout.strip().rsplit(": ", 1)[1]
    assert Path(path).is_file() and Path(path) == Path(built.path)
    info = _cli("info")
    assert info.returncode == 0 and info.stdout.strip() == f"built: {path}"


def test_build_command_errors(tmp_path):
    off = _cli("build", **{native.ENV_VAR: "0"})
    assert off.returncode == 2 and f"{native.ENV_VAR}=0" in off.stderr
    broken = _cli("build", CXX="false", TORCH_EXTENSIONS_DIR=str(tmp_path), **{native.ENV_VAR: "auto"})
    assert (
        broken.returncode == 1
        and broken.stderr.count("error: the native C++ kernels could not be built") == 1
    )
    info = _cli("info", TORCH_EXTENSIONS_DIR=str(tmp_path))
    assert info.returncode == 0 and info.stdout.startswith("not built: " + str(tmp_path))
    usage = _cli("bogus")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr


def test_build_is_not_counted_in_timings(built, monkeypatch):
    """The (first-use) build runs when the Explainer is constructed, never inside ``explain``."""
    from mmx_fast import ExplainConfig, Explainer
    from mmx_fast.testing import tiny_model

    monkeypatch.delenv("MMX_FAST_BACKEND", raising=False)
    phases: list[str] = []
    phase = ["construct"]
    real = native._build_and_load

    def spy():
        phases.append(phase[0])
        return real()  # the cached library: cheap, and already loaded into torch.ops

    monkeypatch.setattr(native, "_loaded_path", None)  # as in a fresh process: not loaded yet
    monkeypatch.setattr(native, "_build_and_load", spy)
    model, processor = tiny_model("qwen2_vl", seed=0)
    ex = Explainer(model, processor, ExplainConfig(method="msea-arc", max_new_tokens=3))
    phase[0] = "explain"
    exp = ex.explain(Image.new("RGB", (56, 56), (120, 30, 200)), "What is it?")
    assert phases == ["construct"]
    assert native._loaded_path == built.path
    assert set(exp.timings) == {"generate", "forward", "attribution"}
