"""Native C++ CPU kernels of the fused stages (``csrc/``), registered as torch custom ops ``torch.ops.mmx_fast.*``.

The extension is compiled once (one translation unit, ``-O3 -fopenmp``; about 10 s of compiler time on an
idle core, see README "Native C++ kernels") into a cache directory (``$TORCH_EXTENSIONS_DIR/mmx_fast`` if set,
else ``~/.cache/mmx_fast/torch_extensions``; one sub-folder per Python / torch version, rebuilt when the
sources change), then loaded with ``torch.ops.load_library``. It is built with
``torch.utils.cpp_extension.load`` when ninja is installed and by calling the C++ compiler directly otherwise.

Ahead of time: ``python -m mmx_fast.native build`` (prints where and how long; ``--force`` rebuilds,
``info`` only says where and whether it is built). Otherwise the first use builds it and says so: one line on
stderr and an INFO record on the ``mmx_fast.native`` logger when the compiler starts, the elapsed seconds while
it runs, and the time taken when it ends. ``Explainer`` loads it when it is constructed, so the build is never
counted in an explanation's ``timings``.

Environment variable ``MMX_FAST_NATIVE``:

- ``auto`` (default): build / load on first use; if that fails, :func:`available` is False and ONE warning
  says why (callers use the vectorised torch path).
- ``0``: never built or loaded; :func:`available` is False, :func:`load` raises.
- ``1``: required; a failed build raises RuntimeError (from :func:`available` and :func:`load`).

Ops (schemas defined in C++ with ``TORCH_LIBRARY(mmx_fast, m)``, CPU kernels in ``TORCH_LIBRARY_IMPL``):

- ``rankings_topk(Tensor h, Tensor w_u, int k, int tile=0) -> Tensor`` (int64 [R, k])
- ``rankings_rbo(Tensor a, Tensor b, float p=0.9, str variant="ext") -> Tensor`` (float32 [T, C])
- ``refine(Tensor a_t, Tensor ctx, Tensor weights, bool apply_filter, float cancellation_floor) -> Tensor``
  (float32 [T, H, W])
- ``refine_filter(Tensor x) -> Tensor`` (x's dtype, [..., H, W])

:func:`load` registers each op's fake (meta) implementation, so ``torch.compile`` traces functions that call
the ops, and its CUDA implementation, the Triton launcher (the torch implementation where there is no
Triton kernel), both read from the one dispatch table, ``mmx_fast.ops.table.OPS``. The Python wrappers below
are what that table's ``native`` entries name (:mod:`mmx_fast.ops` validates the arguments); they raise
RuntimeError when the extension is not available. Importing this module never builds anything, and it
imports nothing from :mod:`mmx_fast.ops` but the table (when it loads the library).

Numerics and threads (details in ``csrc/mmx_fast_ops.cpp``):

- top-k: each vocabulary tile's logits are the float32 GEMM of the reference (``at::mm`` on the upcast tile),
  ranked by an exact (value desc, id asc) integer key, so the rankings equal the reference's, ties and NaN
  included. One parallel region per call: each thread streams its own vocabulary range (single-threaded
  GEMMs) with its own running top-k per row; the exact per-thread top-k sets are merged at the end.
- RBO: float64 sums of the depth weights (the histogram of max(i, j), cumulatively summed and dotted with the
  RBO weights, folded into one table), returned as float32.
- refine: ahat accumulated in float32 over the contexts in index order; beta, the residual, the rank Gaussian
  filter (9-input sorting network) and the normalisation in float64.
- Work is split over vocabulary ranges, context lists or targets and every output element is computed by one
  thread in a fixed order, so results do not depend on ``torch.get_num_threads()``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .constants import CANCELLATION_FLOOR

__all__ = [
    "ENV_VAR",
    "available",
    "load",
    "build_error",
    "build",
    "BuildResult",
    "source_files",
    "rankings_topk",
    "rankings_candidates",
    "rankings_rbo",
    "refine",
    "refine_filter",
]

ENV_VAR = "MMX_FAST_NATIVE"
_MODES = ("0", "1", "auto")
_NAME = "mmx_fast_ops"
_SOURCES = ("mmx_fast_ops.cpp",)
_CFLAGS = ("-O3", "-fopenmp")
_LDFLAGS = ("-fopenmp",)
_OPS = ("rankings_topk", "rankings_candidates", "rankings_rbo", "refine", "refine_filter")

_lock = threading.RLock()
_loaded_path: str | None = None
_error: str | None = None
_warned = False
_last_build: BuildResult | None = None

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build` did: the library's ``path``, the wall ``seconds`` spent (compiling and loading),
    ``cached`` (True: an earlier build of these exact sources was loaded, nothing compiled) and ``tool``
    (``ninja``, the compiler's name, or ``cache``)."""

    path: str
    seconds: float
    cached: bool
    tool: str


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


def _mode() -> str:
    raw = os.environ.get(ENV_VAR, "auto")
    mode = raw.strip().lower() or "auto"
    aliases = {"off": "0", "false": "0", "no": "0", "on": "1", "true": "1", "yes": "1"}
    mode = aliases.get(mode, mode)
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR}={raw!r} is not allowed; expected one of 0, 1, auto")
    return mode


def source_files() -> list[Path]:
    """The C++ sources: ``csrc/`` at the repository root (source tree / editable install), else the copy
    shipped as package data (``mmx_fast/csrc``)."""
    here = Path(__file__).resolve().parent
    for folder in (here.parent / "csrc", here / "csrc"):
        files = [folder / name for name in _SOURCES]
        if all(f.is_file() for f in files):
            return files
    raise FileNotFoundError(
        f"the native sources {', '.join(_SOURCES)} were found neither in {here.parent / 'csrc'} nor in "
        f"{here / 'csrc'} (package data)"
    )


def _cache_root() -> Path:
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env) / "mmx_fast"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "mmx_fast" / "torch_extensions"


def _build_dir(sources: list[Path]) -> Path:
    """One folder per (Python, torch, sources) so that an upgrade or an edit never loads a stale library."""
    digest = hashlib.sha256()
    for f in sources:
        digest.update(f.read_bytes())
    digest.update(" ".join(_CFLAGS + _LDFLAGS).encode())
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}_torch{torch.__version__}".replace("+", "_")
    return _cache_root() / tag / digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------------


def _ninja_available() -> bool:
    try:
        from torch.utils.cpp_extension import is_ninja_available

        return bool(is_ninja_available())
    except Exception:
        return False


def _build_with_ninja(sources: list[Path], build_dir: Path) -> str:
    from torch.utils import cpp_extension

    build_dir.mkdir(parents=True, exist_ok=True)
    cpp_extension.load(
        name=_NAME,
        sources=[str(s) for s in sources],
        extra_cflags=list(_CFLAGS),
        extra_ldflags=list(_LDFLAGS),
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )  # also loads the library into torch.ops
    return str(build_dir / f"{_NAME}.so")


def _build_with_compiler(sources: list[Path], build_dir: Path) -> str:
    """Without ninja: one compiler call, written to a temporary name and renamed into place (several
    processes may build at once)."""
    from torch.utils import cpp_extension

    target = build_dir / f"{_NAME}.so"
    if target.is_file():  # renamed into place only when complete
        return str(target)
    build_dir.mkdir(parents=True, exist_ok=True)
    cxx = os.environ.get("CXX", "c++")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    lib_dirs = [f"-L{p}" for p in cpp_extension.library_paths()]
    rpaths = [f"-Wl,-rpath,{p}" for p in cpp_extension.library_paths()]
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=build_dir)
    os.close(fd)
    cmd = [
        cxx,
        *[str(s) for s in sources],
        "-shared",
        "-fPIC",
        "-std=c++20",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        *_CFLAGS,
        *includes,
        *lib_dirs,
        *rpaths,
        "-lc10",
        "-ltorch_cpu",
        "-ltorch",
        *_LDFLAGS,
        "-o",
        tmp,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as err:
        os.unlink(tmp)
        raise RuntimeError(f"cannot run the C++ compiler {cxx!r}: {err}") from None
    if proc.returncode != 0:
        os.unlink(tmp)
        raise RuntimeError(f"{cxx} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    os.replace(tmp, target)
    return str(target)


class _BuildProgress:
    """Tells the user a compiler is running: one line on stderr and an INFO log record when it starts, the
    elapsed seconds while it runs (rewritten in place on a terminal, a line every ``interval`` s otherwise)
    and one line with the time taken when it ends."""

    def __init__(self, build_dir: Path, tool: str, stream=None, interval: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (1.0 if self.tty else 15.0)
        self.msg = (
            f"mmx_fast: compiling the native C++ kernels with {tool} (once per torch version, about 10-60 s; "
            f"cached in {build_dir}; ahead of time: python -m mmx_fast.native build)"
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stderr never breaks the build
            pass

    def _tick(self) -> None:
        while not self._stop.wait(self.interval):
            elapsed = time.perf_counter() - self.t0
            if self.tty:
                self._write(f"\r{self.msg} ... {elapsed:.0f} s")
            else:
                self._write(f"mmx_fast: still compiling the native C++ kernels ({elapsed:.0f} s)\n")

    def __enter__(self) -> _BuildProgress:
        self.t0 = time.perf_counter()
        log.info(self.msg)
        self._write(self.msg + (" ..." if self.tty else "\n"))
        self._thread = threading.Thread(target=self._tick, name="mmx_fast-native-build", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.seconds = time.perf_counter() - self.t0
        end = "failed" if exc_type is not None else "built"
        line = f"mmx_fast: native C++ kernels {end} in {self.seconds:.1f} s"
        (log.warning if exc_type is not None else log.info)(line)
        self._write(("\r" + self.msg + " ... done\n" if self.tty else "") + line + "\n")


def _build_and_load() -> BuildResult:
    t0 = time.perf_counter()
    sources = source_files()
    build_dir = _build_dir(sources)
    if sysconfig.get_platform().startswith("win"):
        raise RuntimeError("the native kernels are built for Linux/macOS toolchains only")
    cached = build_dir / f"{_NAME}.so"
    done = build_dir / f"{_NAME}.so.ok"  # written once a build has completed and loaded (never partial)
    if cached.is_file() and done.is_file():
        path, tool = str(cached), "cache"  # built before from these exact sources: no build tool is invoked
    elif _ninja_available():
        tool = "ninja"
        with _BuildProgress(build_dir, f"{os.environ.get('CXX', 'c++')} (ninja)"):
            path = _build_with_ninja(sources, build_dir)  # ninja's file lock serialises concurrent builds
    else:
        tool = os.environ.get("CXX", "c++")
        with _BuildProgress(build_dir, tool):
            path = _build_with_compiler(sources, build_dir)
    if not hasattr(torch.ops.mmx_fast, "rankings_topk"):
        torch.ops.load_library(path)
    _register_python_impls()
    if not done.is_file():
        try:
            done.write_text(f"{torch.__version__}\n")
        except OSError:  # a read-only cache still works, it is just rebuilt-checked next time
            pass
    return BuildResult(path=path, seconds=time.perf_counter() - t0, cached=tool == "cache", tool=tool)


def build(force: bool = False) -> BuildResult:
    """Build (if needed) and load the extension now, ahead of first use; returns a :class:`BuildResult`.
    ``force=True`` deletes this version's cached build first (only before the library is loaded in this
    process). Raises RuntimeError like :func:`load`."""
    global _loaded_path, _error
    if force:
        if _loaded_path is not None:
            raise RuntimeError(
                f"the native library is already loaded in this process ({_loaded_path}); rebuild it from a "
                "fresh process: python -m mmx_fast.native build --force"
            )
        build_dir = _build_dir(source_files())
        if build_dir.is_dir() and _cache_root() in build_dir.parents:
            shutil.rmtree(build_dir)  # a folder of our own cache, named by the sources' digest
        with _lock:
            _error = None
    if _loaded_path is not None and _last_build is not None:
        return BuildResult(path=_loaded_path, seconds=0.0, cached=True, tool="loaded")
    load()
    assert _last_build is not None
    return _last_build


def main(argv: list[str] | None = None) -> int:
    """``python -m mmx_fast.native build [--force] | info``: build ahead of time, or say where the build is."""
    import argparse

    from mmx_fast import native as mod  # the package's module, also under ``python -m`` (one set of ops)

    parser = argparse.ArgumentParser(
        prog="python -m mmx_fast.native", description="Build the native C++ CPU kernels ahead of first use."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_build = sub.add_parser(
        "build", help="compile (if not cached) and load the kernels; prints where and how long"
    )
    p_build.add_argument("--force", action="store_true", help="delete this version's cached build first")
    sub.add_parser("info", help="print the cache folder and whether the kernels are built (builds nothing)")
    args = parser.parse_args(argv)
    if args.command == "info":
        build_dir = mod._build_dir(mod.source_files())
        built = (build_dir / f"{_NAME}.so.ok").is_file()
        print(f"{'built' if built else 'not built'}: {build_dir / (_NAME + '.so')}")
        return 0
    if mod._mode() == "0":
        print(f"the native C++ kernels are disabled ({ENV_VAR}=0); nothing built", file=sys.stderr)
        return 2
    try:
        res = mod.build(force=args.force)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    what = "cached build loaded" if res.cached else f"built with {res.tool}"
    print(f"{what} in {res.seconds:.1f} s: {res.path}")
    return 0


if __name__ == "__main__":  # the command needs only what is defined above
    sys.exit(main())


def load() -> str:
    """Build (first use) and load the extension; returns the library's path. Raises RuntimeError when it is
    disabled (``MMX_FAST_NATIVE=0``) or cannot be built (the message carries the compiler's output)."""
    global _loaded_path, _error, _last_build
    if _loaded_path is not None:
        return _loaded_path
    if _mode() == "0":
        raise RuntimeError(f"the native C++ kernels are disabled ({ENV_VAR}=0)")
    with _lock:
        if _loaded_path is not None:
            return _loaded_path
        if _error is not None:
            raise RuntimeError(_error)
        try:
            _last_build = _build_and_load()
            _loaded_path = _last_build.path
        except Exception as err:
            _error = f"the native C++ kernels could not be built or loaded: {type(err).__name__}: {err}"
            raise RuntimeError(_error) from err
        return _loaded_path


def available() -> bool:
    """True when the native ops are loaded (building them on first call). ``MMX_FAST_NATIVE=0``: False.
    ``auto``: False after a failed build, with one RuntimeWarning. ``1``: a failed build raises."""
    global _warned
    mode = _mode()
    if mode == "0":
        return False
    if _loaded_path is not None:
        return True
    try:
        load()
        return True
    except RuntimeError as err:
        if mode == "1":
            raise RuntimeError(f"{err} ({ENV_VAR}=1 requires them)") from None
        if not _warned:
            _warned = True
            warnings.warn(
                f"{err}; using the vectorised torch path instead (set {ENV_VAR}=0 to skip the build)",
                RuntimeWarning,
                stacklevel=2,
            )
        return False


def build_error() -> str | None:
    """Why the last build failed (None when it did not fail or was not tried)."""
    return _error


# --------------------------------------------------------------------------------------------------
# The ops, by stage: Python wrappers (their fakes and CUDA implementations: mmx_fast.ops.table.OPS)
# --------------------------------------------------------------------------------------------------


def _ops():
    if _loaded_path is None:
        load()
    return torch.ops.mmx_fast


# Stage rankings ------------------------------------------------------------------------------------


def rankings_topk(h: torch.Tensor, w_u: torch.Tensor, k: int, tile: int = 0) -> torch.Tensor:
    """Top-``k`` vocab ids of ``h @ w_u.T`` per row, best first, ties toward the smaller id: int64 [R, k].
    Streams over vocabulary tiles of ``tile`` rows (0: automatic) with a running top-k per row; the
    logits of a tile are the float32 GEMM the reference uses, so the rankings equal the reference's."""
    return _ops().rankings_topk(h, w_u, int(k), int(tile))


def rankings_candidates(h: torch.Tensor, w_u: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``h``, the ``keep`` largest float32 scores ``h . w_j`` (descending, ties to the smaller id)
    and their ids: (float32 [R, keep], int64 [R, keep]). The scores come from the op's own AVX2/FMA dot
    products (another summation order than the reference's GEMM, within gamma_d |h| |w_j| of it): candidates
    for ``ops.rankings``' certified pass, never rankings by themselves (docs/design.md §5.2)."""
    return _ops().rankings_candidates(h, w_u, int(keep))


def rankings_rbo(a: torch.Tensor, b: torch.Tensor, p: float = 0.9, variant: str = "ext") -> torch.Tensor:
    """RBO of every (target, context) pair of rankings: a [T, k], b [C, k] -> float32 [T, C], equal to
    ``reference.rankings.rbo(a[:, None], b[None], p, variant)``."""
    return _ops().rankings_rbo(a, b, float(p), str(variant))


# Stage refine --------------------------------------------------------------------------------------


def refine(
    a_t: torch.Tensor,
    ctx: torch.Tensor,
    weights: torch.Tensor,
    apply_filter: bool = True,
    cancellation_floor: float = CANCELLATION_FLOOR,
) -> torch.Tensor:
    """ARC (interference map, closed-form beta, ReLU with the cancellation floor), TAM's rank Gaussian
    filter if ``apply_filter``, max-normalisation, for all targets: float32 [T, H, W]."""
    return _ops().refine(a_t, ctx, weights, bool(apply_filter), float(cancellation_floor))


def refine_filter(x: torch.Tensor) -> torch.Tensor:
    """TAM's rank Gaussian filter (kernel 3, reflect padding) over the last two dims, computed in float64,
    returned in x's dtype."""
    return _ops().refine_filter(x)


_registered = False


def _register_python_impls() -> None:
    global _registered
    if _registered:
        return
    from .ops.table import OPS  # the one dispatch table: each C++ op's fake and its CUDA implementation

    for row in OPS.values():
        if row.native is not None:
            torch.library.register_fake(f"mmx_fast::{row.native}")(row.fake)
            torch.library.register_kernel(f"mmx_fast::{row.native}", "cuda")(row.triton or row.torch)
    _registered = True
