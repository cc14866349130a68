"""A data-set run killed with SIGKILL mid-way resumes with no sample lost or counted twice, and its output
files are never left half-written.

``python -m mmx_fast.eval`` runs as a child process on a synthetic GranDf-layout data set; once its shard
file holds at least 3 complete lines the child is SIGKILLed, then the same command is re-run to completion.
The result must equal an uninterrupted run into another folder (started at the same time): the same
per-sample records (timings aside), the same summary, the same table, the same saved maps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import write_jpeg, write_png_mask

REPO = Path(__file__).resolve().parents[1]
N_SAMPLES = 48  # ~0.1 s each on the tiny model: the run lasts seconds, long enough to be killed mid-way
KILL_AFTER = 3  # complete shard lines
SHARD = "shard-000-of-001.jsonl"

TYPER_MODULE = """
from mmx_fast.eval.words import CallableWordTyper

def _kind(word):
    return ("noun", "function", "others")[sum(map(ord, word)) % 3]

TYPER = CallableWordTyper(_kind, same_word=lambda a, b: (len(a) + len(b)) % 2 == 0, name="crash-typer")
"""


def make_dataset(root: Path, n: int) -> tuple[Path, list[str]]:
    """A GranDf-layout data set of ``n`` samples, every image and mask present."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    items = []
    for k in range(n):
        h, w = 84 + 8 * (k % 3), 84 + 8 * (k % 4)
        write_jpeg(root / "images" / f"{k:03d}.jpg", h, w, 1000 + k)
        write_png_mask(root / "masks" / f"{k:03d}.png", h, w)
        items.append([f"images/{k:03d}.jpg", f"caption {k}", f"masks/{k:03d}.png", {"cat": 3, "dog": 5}])
    (root / "anno.json").write_text(json.dumps(items))
    return root, [it[0] for it in items]


def _env(typer_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "MMX_FAST_DEBUG"):
        env.pop(k, None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(typer_dir), env.get("PYTHONPATH", "")])
    # one thread each: both runs do the same float reductions, and two runs share the two cores
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _cmd(data: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "mmx_fast.eval", "--model", "tiny:qwen2_vl", "--data", str(data), "--out", str(out),
        "--max-new-tokens", "8", "--word-typer", "crash_typer:TYPER", "--save-maps", "--quiet",
    ]  # fmt: skip


def _complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _records(data: bytes) -> tuple[list[dict], bytes]:
    """(every complete line parsed as a JSON object, the bytes after the last newline)."""
    lines = data.split(b"\n")
    tail = lines.pop()
    recs = []
    for i, line in enumerate(lines):
        rec = json.loads(line, parse_constant=_reject_constant)  # every complete line is valid JSON
        assert isinstance(rec, dict), f"line {i}: {line[:80]!r}"
        recs.append(rec)
    return recs, tail


def _reject_constant(name: str):
    raise AssertionError(f"non-finite number {name} in a JSON output file")


def _check_outputs_whole(out: Path, shard_tail_ok: bool) -> None:
    """Every output file is whole: JSON files parse, every JSON-lines line parses (a partial last line only
    in the shard, and only when ``shard_tail_ok``), every saved map loads."""
    for p in sorted(out.glob("*.jsonl")):
        _, tail = _records(p.read_bytes())
        assert not tail or (shard_tail_ok and p.name == SHARD), (
            f"{p.name} ends with a partial line {tail[:60]!r}"
        )
    for p in sorted(out.glob("*.json")):
        json.loads(p.read_text(), parse_constant=_reject_constant)
    for p in sorted((out / "maps").glob("*.npz")):
        with np.load(p) as z:
            assert "answer_ids" in z.files and all(
                z[k].dtype == np.uint8 for k in z.files if k != "answer_ids"
            )


def _stable(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "time_s"}  # timings differ between runs, nothing else may


def _maps(out: Path) -> dict[str, dict[str, np.ndarray]]:
    result = {}
    for p in sorted((out / "maps").glob("*.npz")):
        with np.load(p) as z:
            result[p.name] = {k: z[k] for k in z.files}
    return result


def test_sigkill_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    data, ids = make_dataset(tmp_path / "GranDf_crash", N_SAMPLES)
    typer_dir = tmp_path / "typer"
    typer_dir.mkdir()
    (typer_dir / "crash_typer.py").write_text(textwrap.dedent(TYPER_MODULE))
    env = _env(typer_dir)
    ref_out, out = tmp_path / "uninterrupted", tmp_path / "killed"
    shard = out / SHARD

    logs = {name: open(tmp_path / f"{name}.log", "wb") for name in ("ref", "victim", "resume")}
    try:
        ref = subprocess.Popen(
            _cmd(data, ref_out), cwd=REPO, env=env, stdout=logs["ref"], stderr=subprocess.STDOUT
        )
        victim = subprocess.Popen(
            _cmd(data, out), cwd=REPO, env=env, stdout=logs["victim"], stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 180
            while _complete_lines(shard) < KILL_AFTER:
                if victim.poll() is not None:
                    pytest.fail(
                        f"the run ended (status {victim.returncode}) before it could be killed; "
                        f"make the data set bigger: {(tmp_path / 'victim.log').read_text()[-2000:]}"
                    )
                assert time.monotonic() < deadline, "the run wrote no records in 180 s"
                time.sleep(0.005)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait(timeout=60)
        finally:
            if victim.poll() is None:
                victim.kill()
                victim.wait()
        assert victim.returncode == -signal.SIGKILL

        # --- right after the kill: nothing half-written but (at most) the shard's last line
        before = shard.read_bytes()
        done, tail = _records(before)
        assert KILL_AFTER <= len(done) < N_SAMPLES, f"killed after {len(done)} of {N_SAMPLES} samples"
        print(f"killed after {len(done)} of {N_SAMPLES} samples; partial last line: {len(tail)} bytes")
        if not tail:  # the kill fell between two lines (usual: one os.write per line): tear the next one
            torn = json.dumps({"v": 1, "id": ids[len(done)], "status": "ok"}).encode()[:-9]
            with open(shard, "ab") as f:
                f.write(torn)
            before += torn
            tail = torn
        assert [r["id"] for r in done] == ids[: len(done)] and all(r["status"] == "ok" for r in done)
        for name in ("results.jsonl", "summary.json", "table.md"):
            assert not (out / name).exists(), f"{name} written by a run that never finished"
        _check_outputs_whole(out, shard_tail_ok=True)
        assert len(list((out / "maps").glob("*.npz"))) in (len(done), len(done) + 1)  # maps precede lines

        # --- resume to completion
        resume = subprocess.run(
            _cmd(data, out), cwd=REPO, env=env, stdout=logs["resume"], stderr=subprocess.STDOUT, timeout=300
        )
        assert resume.returncode == 0, (tmp_path / "resume.log").read_text()[-3000:]
        assert ref.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()
        for f in logs.values():
            f.close()

    # --- after the resume: the finished lines kept byte for byte, each sample exactly once, nothing partial
    after = shard.read_bytes()
    kept = before[: len(before) - len(tail)]
    assert after.startswith(kept), "the resumed run rewrote finished lines"
    shard_recs, shard_tail = _records(after)
    assert shard_tail == b""
    assert [r["id"] for r in shard_recs] == ids  # none lost, none evaluated twice, data-set order
    for d in (out, ref_out):
        _check_outputs_whole(d, shard_tail_ok=False)
        assert sorted(p.name for p in d.glob("shard-*.jsonl")) == [SHARD]

    results, _ = _records((out / "results.jsonl").read_bytes())
    ref_results, _ = _records((ref_out / "results.jsonl").read_bytes())
    assert [r["id"] for r in results] == ids and len({r["id"] for r in results}) == N_SAMPLES
    assert all(r["status"] == "ok" for r in results)
    assert [_stable(r) for r in results] == [_stable(r) for r in ref_results]
    assert (out / "table.md").read_text() == (ref_out / "table.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads((ref_out / "summary.json").read_text())
    c = summary["counts"]
    assert (c["selected"], c["evaluated"], c["error"], c["unfinished"], c["ignored_lines"]) == (
        N_SAMPLES,
        N_SAMPLES,
        0,
        0,
        0,
    )
    assert any(m["n_obj"] > 0 and m["n_func"] > 0 for m in summary["methods"].values())  # a real table
    maps, ref_maps = _maps(out), _maps(ref_out)
    assert sorted(maps) == sorted(ref_maps) and len(maps) == N_SAMPLES
    for name, arrays in maps.items():
        assert sorted(arrays) == sorted(ref_maps[name])
        for k, a in arrays.items():
            np.testing.assert_array_equal(a, ref_maps[name][k], err_msg=f"{name}:{k}")
    # an atomic write cut by the kill may leave a hidden temp file, never a visible partial output
    visible = {p.relative_to(out) for p in out.rglob("*") if not p.name.startswith(".")}
    assert visible == {p.relative_to(ref_out) for p in ref_out.rglob("*") if not p.name.startswith(".")}
