"""Constraints for CI's drift jobs (.ci/drift), printed on stdout.

    python .ci/bounds.py newest   # torch as locked; everything else free inside pyproject's ranges
    python .ci/bounds.py lowest   # torch as locked; every lower bound of the library's own dependencies and
                                  # of the serve / tam / video extras pinned; test tools as locked

torch always stays at the locked CPU build: only that wheel can be had here, and CI must never download a
multi-GB CUDA build. Reads pyproject.toml and requirements/cpu.lock (standard library only).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
LOWEST_GROUPS = ("serve", "tam", "video")  # extras whose lower bounds users rely on at run time


def _name(req: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower().replace("_", "-")


def lock() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+)$", (ROOT / "requirements" / "cpu.lock").read_text(), re.M)
    return {_name(n): v for n, v in pins}


def lower_bounds() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for group in LOWEST_GROUPS:
        reqs += project["optional-dependencies"][group]
    out = {}
    for req in reqs:
        floor = re.search(r">=\s*([0-9][^,;\s]*)", req)
        if floor and _name(req) != "torch":
            out[_name(req)] = floor.group(1)
    return out


def main(mode: str) -> str:
    locked = lock()
    lines = [f"torch=={locked['torch']}"]
    if mode == "lowest":
        lines += [f"{n}=={v}" for n, v in sorted(lower_bounds().items())]
    elif mode != "newest":
        raise SystemExit(f"mode {mode!r} is not allowed; expected newest or lowest")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(main(sys.argv[1] if len(sys.argv) > 1 else ""))
