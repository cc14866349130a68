"""The dependency set resolves, as a user on a fresh machine would get it: ``pip install --dry-run`` of the
README's install lines with the lock's torch and every extra, against pip's default (public) index.

pip runs with ``--isolated`` and ``PIP_CONFIG_FILE=/dev/null``, so no machine-wide pip configuration (local
wheel folders, constraints files) takes part, except where a case says so; no index address is written here,
pip's default is the public one. The resolutions run concurrently (they wait on the network) and need the
index: without it these tests skip, saying so, except in CI (``CI=true``), where an unreachable index is a
failure.

Cases:
- PyPI's torch (a CUDA build on Linux x86_64) + every extra but flash-attn: one Triton, the one torch pins.
- the same + flash-attn (an sdist: its metadata is built beside this environment's torch).
- PyTorch's CPU build + every extra: from a local ``torch==X+cpu`` wheel that pip's own configuration points
  at (on this project's machines), else skipped.
- the lock (requirements/cpu.lock) is complete: resolving the locked extras under it installs exactly its pins.
- installing the package into this environment keeps its torch (a range, never a reinstall).
- our top-level regular packages other than mmx_fast share no name with a distribution on the index.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
LOCK_FILE = ROOT / "requirements" / "cpu.lock"
LOCK = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", LOCK_FILE.read_text(), re.M))
LOCK = {k.lower().replace("_", "-"): v for k, v in LOCK.items()}
TORCH = LOCK["torch"].split("+")[0]
LOCK_EXTRAS = re.search(r"^LOCK_EXTRAS \?= (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1).split()
EXTRAS = sorted(PYPROJECT["project"]["optional-dependencies"])
NO_FLASH = ",".join(e for e in EXTRAS if e != "flash-attn")


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


def _index(*args: str) -> subprocess.CompletedProcess:
    """``pip index versions ...`` against pip's default index, no machine configuration."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "--isolated", *args],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
    )


def _index_reachable() -> bool:
    try:
        return _index("pip").returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _need_index() -> None:
    if not _index_reachable():
        msg = "pip's default index is unreachable: the dependency resolution cannot be checked here"
        if CI:
            pytest.fail(f"CI=true but {msg}")
        pytest.skip(msg)


def _local_cpu_wheel_dirs() -> list[str]:
    """Folders pip's own configuration (find-links) offers that hold a torch==TORCH+cpu wheel."""
    cfg = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True
    ).stdout
    dirs = re.findall(r"find-links='([^']+)'", cfg) + os.environ.get("PIP_FIND_LINKS", "").split()
    found = []
    for d in dict.fromkeys(x for v in dirs for x in v.split()):
        if Path(d).is_dir() and list(Path(d).glob(f"torch-{TORCH}+cpu-*.whl")):
            found.append(d)
    return found


def _resolve(reqs: list[str], *pip_args: str, fresh: bool = True, env: dict | None = None) -> dict:
    """``pip install --dry-run`` -> {"install": {name: version}, "meta": {name: metadata}}, or the error."""
    clean = _clean_env()
    clean.update(env or {})
    cmd = [sys.executable, "-m", "pip", "install", "--isolated", "--dry-run", "--quiet", "--report", "-"]
    cmd += ["--ignore-installed"] if fresh else []
    proc = subprocess.run([*cmd, *pip_args, *reqs], capture_output=True, text=True, env=clean, timeout=900)
    if proc.returncode != 0:
        return {"error": f"pip exit {proc.returncode}:\n{proc.stderr[-4000:]}"}
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    meta = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"] for i in report["install"]}
    return {"install": {n: m["version"] for n, m in meta.items()}, "meta": meta}


def _project(extras: str) -> str:
    return f"mmx-fast[{extras}] @ {ROOT.as_uri()}"


@pytest.fixture(scope="module")
def resolved():
    _need_index()
    cases = {
        "cuda": ([f"torch=={TORCH}", _project(NO_FLASH)], [], {}),
        "flash": (
            [f"torch=={TORCH}", _project("flash-attn")],
            ["--no-build-isolation"],  # flash-attn's setup.py imports torch
            {"env": {"FLASH_ATTENTION_SKIP_CUDA_BUILD": "TRUE"}},
        ),
        "keeps-torch": ([_project("triton")], [], {"fresh": False}),
    }
    if local := _local_cpu_wheel_dirs():
        cpu_where = f"a local wheel in {local[0]}"
        cases["cpu"] = ([f"torch=={TORCH}+cpu", _project(NO_FLASH)], ["--find-links", local[0]], {})
        cases["lock"] = (
            [f"torch=={TORCH}+cpu", _project(",".join(LOCK_EXTRAS))],
            ["--find-links", local[0], "-c", str(LOCK_FILE)],
            {},
        )
    else:
        cpu_where = f"no local torch=={TORCH}+cpu wheel is configured for pip here"
    with ThreadPoolExecutor(len(cases)) as pool:
        futures = {k: pool.submit(_resolve, reqs, *args, **kw) for k, (reqs, args, kw) in cases.items()}
        out = {k: f.result() for k, f in futures.items()}
    out["cpu_where"] = cpu_where
    return out


def _ok(res: dict, case: str) -> dict:
    if case not in res:
        pytest.skip(f"the CPU build of torch cannot be resolved here: {res['cpu_where']}")
    assert "error" not in res[case], f"{case}: {res[case]['error']}"
    return res[case]


def _check_common(r: dict, torch_version: str) -> None:
    inst = r["install"]
    assert inst["torch"] == torch_version
    assert "mmx-fast" in inst
    # one Triton, the one torch itself asks for (CUDA builds pin it; CPU builds leave it to the extra)
    torch_wants = [
        Requirement(q)
        for q in r["meta"]["torch"].get("requires_dist", [])
        if q.startswith("triton") and Requirement(q).marker is not None and Requirement(q).marker.evaluate()
    ]
    for req in torch_wants:
        assert Version(inst["triton"]) in req.specifier, (inst["triton"], str(req))
    # our own ranges admit what was resolved
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        assert Version(inst[req.name]) in req.specifier, (req, inst[req.name])


def test_cuda_torch_and_every_extra_resolve(resolved):
    r = _ok(resolved, "cuda")
    _check_common(r, TORCH)
    assert any(n.startswith("nvidia-") for n in r["install"]), (
        "PyPI's Linux torch is expected to be a CUDA build"
    )
    assert r["install"]["triton"] == "3.7.1"  # what CUDA torch 2.13.0 pins; the extras accept it
    for extra in EXTRAS:
        if extra == "flash-attn":
            continue
        for dep in PYPROJECT["project"]["optional-dependencies"][extra]:
            req = Requirement(dep)
            assert req.name in r["install"] and Version(r["install"][req.name]) in req.specifier, (extra, dep)


def test_flash_attn_extra_resolves_with_cuda_torch(resolved):
    r = _ok(resolved, "flash")
    _check_common(r, TORCH)
    assert "flash-attn" in r["install"]


def test_cpu_torch_and_every_extra_resolve(resolved):
    r = _ok(resolved, "cpu")
    _check_common(r, f"{TORCH}+cpu")
    assert not any(n.startswith("nvidia-") for n in r["install"]), sorted(r["install"])
    assert Version(r["install"]["triton"]) >= Version("3.7")


def test_the_lock_is_complete_and_inside_our_ranges(resolved):
    """Installing the locked extras under the lock takes exactly the locked versions: no package is missing from
    it (pip would pick one freely) and each pin is inside pyproject's ranges."""
    r = _ok(resolved, "lock")
    inst = {k: v for k, v in r["install"].items() if k != "mmx-fast"}
    missing = sorted(set(inst) - set(LOCK))
    assert not missing, f"resolved but not locked (run `make lock`): {missing}"
    differ = {k: (v, LOCK[k]) for k, v in inst.items() if v != LOCK[k]}
    assert not differ, f"resolved version != locked version: {differ}"
    for dep in PYPROJECT["project"]["dependencies"]:
        req = Requirement(dep)
        assert Version(LOCK[req.name]) in req.specifier, (str(req), LOCK[req.name])


def test_top_level_names_are_free_on_the_index():
    """A top-level regular package of ours named like a distribution would shadow it (as kernels/ shadowed
    Hugging Face's kernels): benches/ is the only one besides mmx_fast (tests/test_layout.py)."""
    _need_index()
    for name in ("benches",):
        proc = _index(name)
        assert proc.returncode != 0 and "No matching distribution" in proc.stderr, (name, proc.stdout)


def test_installing_into_an_environment_keeps_its_torch(resolved):
    """``pip install mmx-fast`` where torch is installed (here this environment's build) never replaces it."""
    r = _ok(resolved, "keeps-torch")
    assert "torch" not in r["install"], r["install"]
    assert not any(n.startswith("nvidia-") for n in r["install"]), sorted(r["install"])


def test_declared_lower_bounds_are_honest(resolved):
    """requires-python admits no Python a dependency refuses; our torch floor is not below transformers'."""
    r = _ok(resolved, "cuda")
    ours = SpecifierSet(PYPROJECT["project"]["requires-python"])
    floor = min(v for v in ("3.9", "3.10", "3.11", "3.12", "3.13") if v in ours)
    for name, meta in r["meta"].items():
        spec = meta.get("requires_python")
        if spec:
            assert floor in SpecifierSet(spec), f"{name} needs Python {spec} but we declare {ours}"
    tf_torch = [
        Requirement(q)
        for q in r["meta"]["transformers"].get("requires_dist", [])
        if q.startswith("torch") and 'extra == "torch"' in q
    ]
    ours_torch = next(Requirement(d) for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch"))
    ours_floor = min(s.version for s in ours_torch.specifier if s.operator == ">=")
    for req in tf_torch:
        theirs = [s.version for s in req.specifier if s.operator == ">="]
        assert all(Version(ours_floor) >= Version(t) for t in theirs), (str(ours_torch), str(req))
