"""Hostile input to the evaluation harness (issue 13, defects 9-14, and more of their kind).

The table rows run the real ``mmx-fast eval`` entry point in a subprocess (``python -m mmx_fast eval``) and
check the contract for bad input: exit status 2, one line on stderr naming the bad value, nothing written
(or, where an output folder existed, nothing in it changed). The other tests check the defined result
where the input is odd but valid (colliding sample ids, non-UTF-8 names, damaged result files).
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmx_fast.eval import datasets as D
from mmx_fast.eval import distributed, options, store
from mmx_fast.eval import run as R

REPO = Path(__file__).resolve().parents[1]
MAX_BYTES = getattr(D, "MAX_ANNOTATION_BYTES", 1 << 30)  # getattr: the file also runs against older versions
ERR = "mmx-fast: error: "


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    for k in ("MMX_FAST_DEBUG", "WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(extra)
    return env


def _eval(args: list, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``mmx-fast eval ARGS`` in a subprocess (args may be bytes: non-UTF-8 argv)."""
    return subprocess.run(
        [sys.executable, "-m", "mmx_fast", "eval", *args],
        capture_output=True,
        env=env or _env(),
        cwd=REPO,
        timeout=300,
    )


def _jpeg(path: Path, seed: int = 0, h: int = 56, w: int = 72) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path, "JPEG")


def _mask(path: Path, h: int = 56, w: int = 72) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : h // 2, w // 4 : (3 * w) // 4] = 3
    Image.fromarray(m, mode="L").save(path)


def _anno(root: Path, items: list, raw: bytes | None = None) -> Path:
    """A GranDf folder with anno.json holding ``items`` (or the bytes ``raw``); images and masks are created
    for every string path in the items."""
    root.mkdir(parents=True, exist_ok=True)
    for k, it in enumerate(items):
        if isinstance(it, list) and len(it) >= 3:
            if isinstance(it[0], str) and it[0].strip() and "\x00" not in it[0]:
                _jpeg(root / it[0], seed=k)
            if isinstance(it[2], str) and it[2].strip() and "\x00" not in it[2]:
                _mask(root / it[2])
    (root / "anno.json").write_bytes(raw if raw is not None else json.dumps(items).encode())
    return root


def _coco(root: Path, images: list, captions: object = None) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / D.COCO_INSTANCES).write_text(json.dumps({"images": images}))
    if captions is not None:
        (root / D.COCO_CAPTIONS).write_text(json.dumps(captions))
    return root


def _coco_in(d: Path, images: list | None = None, captions: object = None) -> Path:
    return _coco(d / "coco", images or [{"id": 139}], captions)


GOOD = [["images/a.jpg", "a cat", "masks/a.png", {"cat": 3}]]
RUN = ["--model", "tiny:qwen2_vl", "--quiet", "--methods", "logit-lens", "--max-new-tokens", "2"]
RUN += ["--word-typer", "fallback"]


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return _anno(tmp_path_factory.mktemp("hostile") / "GranDf_good", GOOD)


# ----------------------------------------------------------------------------------------------------
# the table: (data set builder, extra args, environment) -> exit 2, one line naming the value, nothing written
@dataclass(frozen=True)
class Case:
    id: str
    data: Callable[[Path], Path] | None  # builds the data set under the given folder; None: the good one
    extra: tuple = ()
    match: str = ""
    env: tuple = ()  # extra environment variables


def _entries(*items) -> Callable[[Path], Path]:
    return lambda d: _anno(d / "GranDf_x", list(items))


def _raw(data: bytes) -> Callable[[Path], Path]:
    return lambda d: _anno(d / "GranDf_x", [], raw=data)


def _sparse(d: Path) -> Path:
    root = _anno(d / "GranDf_x", GOOD)
    with open(root / "anno.json", "r+b") as f:
        f.truncate(MAX_BYTES + 1)  # sparse: no real disk use
    return root


CAPS = "annotations/captions_val2014.json"
INST = "annotations/instances_minival2014.json"
CASES = [
    # defect 10: --device / --dtype / --backend checked before anything loads
    Case("device-garbage", None, ("--device", "garbage"), r"device='garbage' is not allowed; expected auto, cpu"),
    Case("device-mps", None, ("--device", "mps"), r"device='mps' is not allowed"),
    Case("device-cuda-index-garbage", None, ("--device", "cuda:x"), r"device='cuda:x' is not allowed"),
    Case("dtype-int8", None, ("--dtype", "int8"), r"dtype='int8' is not allowed; expected one of auto, float32"),
    Case("dtype-empty", None, ("--dtype", ""), r"dtype='' is not allowed"),
    Case("backend-bogus", None, ("--backend", "bogus"), r"backend='bogus' is not allowed; expected one of auto"),
    # defect 14: the word typer, before the model loads
    Case(
        "word-typer-no-module",
        None,
        ("--word-typer", "nosuchmod:thing"),
        r"word typer 'nosuchmod:thing': cannot import module 'nosuchmod'.*module:function",
    ),
    Case(
        "word-typer-no-attribute",
        None,
        ("--word-typer", "os:nothing"),
        r"word typer 'os:nothing': module 'os' has no attribute 'nothing'.*module:function",
    ),
    Case("word-typer-a-string", None, ("--word-typer", "os:sep"), r"word typer 'os:sep' names a str"),
    Case("word-typer-no-colon", None, ("--word-typer", "nosuchmod"), r"word typer 'nosuchmod' is not allowed"),
    Case("word-typer-two-colons", None, ("--word-typer", "os:path:x"), r"word typer 'os:path:x' is not allowed"),
    # defect 11: COCO captions
    *[
        Case(
            f"coco-captions-{name}",
            functools.partial(_coco_in, captions=caps),
            (),
            rf"captions_val2014\.json'{rest}",
        )
        for name, caps, rest in [
            ("no-image-id", {"annotations": [{"caption": "x"}]}, r": annotations\[0\] is \{'caption'"),
            ("entry-null", {"annotations": [None]}, r": annotations\[0\] is None"),
            ("entry-list", {"annotations": [[139, "x"]]}, r": annotations\[0\] is \[139"),
            ("annotations-dict", {"annotations": {"image_id": 139}}, r" has no 'annotations' list"),
            ("annotations-null", {"annotations": None}, r" has no 'annotations' list"),
            ("file-a-list", [1, 2], r" has no 'annotations' list"),
            ("caption-number", {"annotations": [{"image_id": 139, "caption": 5}]}, r".*\['caption'\] is 5"),
            ("image-id-text", {"annotations": [{"image_id": "x", "caption": "c"}]}, r".*\['image_id'\] is 'x'"),
        ]
    ],
    # defect 12: COCO image ids
    *[
        Case(
            f"coco-image-id-{name}",
            functools.partial(_coco_in, images=[{"id": value}]),
            (),
            rf"instances_minival2014\.json': images\[0\]\['id'\] is {shown}; expected a non-negative integer",
        )
        for name, value, shown in [
            ("null", None, "None"),
            ("text", "abc", "'abc'"),
            ("fraction", 139.7, r"139\.7"),
            ("bool", True, "True"),
            ("negative", -1, "-1"),
            ("nan", float("nan"), "nan"),
            ("list", [139], r"\[139\]"),
        ]
    ],
    Case("coco-image-no-id", lambda d: _coco(d / "coco", [{"file": "x"}]), (), r"images\[0\] is \{'file'"),
    # more of their kind: malformed GranDf / OpenPSG files
    Case("anno-not-utf8", _raw(b'[["images/\xe9.jpg", "c", "m.png", {}]]'), (), r"anno\.json' is not UTF-8"),
    Case("anno-nested", _raw(b"[" * 100_000 + b"]" * 100_000), (), r"anno\.json' is nested too deeply"),
    Case("anno-huge", _sparse, (), rf"anno\.json' is {MAX_BYTES + 1} bytes; .* larger than"),
    Case("anno-category-300", _entries(["i/a.jpg", "c", "m/a.png", {"cat": 300}]), (), r"entry 0 categories"),
    Case("anno-category-negative", _entries(["i/a.jpg", "c", "m/a.png", {"cat": -1}]), (), r"integer 0\.\.255"),
    Case("anno-category-text", _entries(["i/a.jpg", "c", "m/a.png", {"cat": "3"}]), (), r"\{'cat': '3'\}"),
    Case("anno-category-empty-name", _entries(["i/a.jpg", "c", "m/a.png", {" ": 3}]), (), r"have an empty name"),
    Case("anno-caption-dict", _entries(["i/a.jpg", {"a": 1}, "m/a.png", {}]), (), r"entry 0 has caption \{'a'"),
    Case("anno-image-null", _entries([None, "c", "m/a.png", {}]), (), r"entry 0 has image path None"),
    Case("anno-image-empty", _entries(["", "c", "m/a.png", {}]), (), r"entry 0 has image path ''"),
    Case("anno-mask-number", _entries(["i/a.jpg", "c", 7, {}]), (), r"entry 0 has mask path 7"),
    Case("anno-image-nul", _entries(["i/a\x00.jpg", "c", "m/a.png", {}]), (), r"entry 0 has image path"),
    Case("anno-entry-short", _entries(["i/a.jpg", "c"]), (), r"entry 0 is \['i/a\.jpg', 'c'\]"),
    # more: run-time arguments and torchrun's environment
    Case("dist-timeout-nan", None, ("--dist-timeout-min", "nan"), r"dist_timeout_min=nan is not allowed"),
    Case("dist-timeout-zero", None, ("--dist-timeout-min", "0"), r"dist_timeout_min=0\.0 is not allowed"),
    Case("dist-timeout-inf", None, ("--dist-timeout-min", "inf"), r"dist_timeout_min=inf is not allowed"),
    Case("rank-out-of-range", None, (), r"RANK=5 is out of range for WORLD_SIZE=2", (("WORLD_SIZE", "2"), ("RANK", "5"))),
    Case("world-size-text", None, (), r"WORLD_SIZE='two' is not allowed", (("WORLD_SIZE", "two"),)),
    Case("world-size-zero", None, (), r"WORLD_SIZE='0' is not allowed", (("WORLD_SIZE", "0"),)),
    Case(
        "local-rank-negative",
        None,
        (),
        r"LOCAL_RANK='-1' is not allowed",
        (("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "-1")),
    ),
    Case("prompt-not-utf8", None, ("--prompt", b"Describe \xff"), r"prompt 'Describe \\udcff' holds bytes"),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_eval_bad_input(case: Case, good: Path, tmp_path: Path):
    data = case.data(tmp_path) if case.data is not None else good
    out = tmp_path / "out"
    proc = _eval([*RUN, "--data", str(data), "--out", str(out), *case.extra], env=_env(**dict(case.env)))
    err = proc.stderr.decode(errors="replace")
    lines = err.strip().splitlines()
    assert proc.returncode == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith(ERR), err[-2000:]
    assert re.search(case.match, lines[0]), lines[0]
    assert "Traceback" not in err and proc.stdout == b""
    assert not out.exists(), sorted(p.name for p in out.iterdir())


# ----------------------------------------------------------------------------------------------------
# defect 9: a failed start writes nothing, so a retry with other settings is not refused
def _broken_model(folder: Path) -> Path:
    from mmx_fast.testing import tiny_model

    model, proc = tiny_model("qwen2_vl")
    model.save_pretrained(folder)
    proc.tokenizer.save_pretrained(folder)
    proc.image_processor.save_pretrained(folder)
    proc.to_json_file(str(folder / "processor_config.json"))
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])  # cut short: the model fails to load
    return folder


def test_failed_start_leaves_no_run_json(good: Path, tmp_path: Path):
    out = tmp_path / "out"
    broken = _broken_model(tmp_path / "broken-model")
    base = ["--quiet", "--methods", "logit-lens", "--max-new-tokens", "2", "--word-typer", "fallback"]
    for attempt in (
        ["--model", str(broken), "--placement", "crop"],  # fails while loading the weights
        ["--model", "tiny:qwen2_vl", "--placement", "crop", "--device", "garbage"],
    ):
        proc = _eval([*base, *attempt, "--data", str(good), "--out", str(out)])
        assert proc.returncode == 2, proc.stderr.decode()[-2000:]
        assert not (out / "run.json").exists() and not list(out.glob("shard-*"))
    # a retry with other settings is a fresh run
    proc = _eval([*base, "--model", "tiny:qwen2_vl", "--data", str(good), "--out", str(out)])
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert json.loads((out / "run.json").read_text())["placement"] == "stretch"


# ----------------------------------------------------------------------------------------------------
# defect 12: what is accepted as a COCO image id, and repeated ids
def test_coco_image_ids_accepted_and_repeats(tmp_path: Path):
    caps = {"annotations": [{"image_id": 139.0, "caption": "a"}, {"image_id": "285", "caption": "b"}]}
    ds = D.load_dataset(_coco(tmp_path / "coco", [{"id": 139}, {"id": "285"}, {"id": 139.0}], caps))
    assert [s.id for s in ds.samples] == ["139", "285", "139#2"]
    assert ds.samples[1].image.endswith("image/000000000285.jpg")
    assert ds.samples[0].captions == ("a",) and ds.samples[1].captions == ("b",)
    assert any("1 repeated image ids" in p for p in ds.problems)


def test_annotation_file_encodings(tmp_path: Path):
    text = json.dumps(GOOD)
    for k, data in enumerate([b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16")]):
        ds = D.load_dataset(_anno(tmp_path / f"GranDf_{k}", GOOD, raw=data))
        assert [s.id for s in ds.samples] == ["images/a.jpg"]


# ----------------------------------------------------------------------------------------------------
# defect 13: ids unique by construction; nothing used twice or lost, and resumption stays right
@pytest.fixture(scope="module")
def tiny():
    from mmx_fast.testing import tiny_model

    return tiny_model("qwen2_vl")


def _opts(data: Path, out: Path, **kw) -> options.EvalOptions:
    base = dict(
        model="tiny:qwen2_vl",
        data=str(data),
        out=str(out),
        methods=("logit-lens",),
        max_new_tokens=2,
        word_typer="fallback",
        progress=False,
    )
    base.update(kw)
    return options.EvalOptions(**base)


def _run(opts: options.EvalOptions, tiny, after=None) -> dict:
    return R.run_eval(
        opts, model_and_processor=tiny, dist=distributed.DistInfo(), after_sample=after, echo=False
    )


def test_sample_ids_never_collide_and_resume(tmp_path: Path, tiny):
    paths = ["img/0.jpg", "img/0.jpg#2", "img/0.jpg", "img/50%.jpg", "img/50%25.jpg", "img/0.jpg%232"]
    items = [[p, f"c{k}", f"m/{k}.png", {"cat": 3}] for k, p in enumerate(paths)]
    data = _anno(tmp_path / "GranDf_ids", items)
    ids = [s.id for s in D.load_dataset(data).samples]
    assert len(set(ids)) == len(ids) == 6, ids
    assert ids[0] == "img/0.jpg" and ids[2] == "img/0.jpg#2" and ids[1] == "img/0.jpg%232"
    out = tmp_path / "out"
    _run(_opts(data, out, limit=3), tiny)
    redone: list[str] = []
    summary = _run(_opts(data, out), tiny, after=lambda r: redone.append(r["id"]))
    assert sorted(redone) == sorted(ids[3:])  # the first three are finished: not redone, none lost
    assert summary["counts"]["evaluated"] == 6
    recs, bad = store.read_jsonl(out / "results.jsonl")
    assert bad == 0 and [r["index"] for r in recs] == list(range(6)) and [r["id"] for r in recs] == ids
    assert json.loads((out / "run.json").read_text())["sample_ids"] == 2


def test_folder_of_an_earlier_version_resumes_unless_ids_changed(tmp_path: Path, tiny):
    data = _anno(tmp_path / "GranDf_v1", GOOD)
    out = tmp_path / "out"
    _run(_opts(data, out), tiny)
    old = json.loads((out / "run.json").read_text())
    del old["sample_ids"]  # run.json as earlier versions wrote it
    (out / "run.json").write_text(json.dumps(old))
    redone: list[str] = []
    _run(_opts(data, out), tiny, after=lambda r: redone.append(r["id"]))
    assert redone == []  # same ids: resumed
    hashed = _anno(tmp_path / "GranDf_hash", [["images/a#1.jpg", "c", "masks/a.png", {"cat": 3}]])
    out2 = tmp_path / "out2"
    _run(_opts(hashed, out2), tiny)
    (out2 / "run.json").write_text(json.dumps({**old, "data": str(hashed.resolve())}))
    with pytest.raises(ValueError, match=r"sample_ids: None -> 2"):
        _run(_opts(hashed, out2), tiny)  # ids of that folder's records mean something else now


# ----------------------------------------------------------------------------------------------------
# more of their kind: output folders and result files
def test_out_with_foreign_files_is_refused(good: Path, tmp_path: Path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "table.md").write_text("my own table\n")
    proc = _eval([*RUN, "--data", str(good), "--out", str(out)])
    err = proc.stderr.decode()
    assert proc.returncode == 2 and re.search(r"holds table\.md but no run\.json", err), err
    assert sorted(p.name for p in out.iterdir()) == ["table.md"]
    assert (out / "table.md").read_text() == "my own table\n"


def test_out_dangling_symlink_and_bad_run_json(good: Path, tmp_path: Path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    proc = _eval([*RUN, "--data", str(good), "--out", str(link)])
    err = proc.stderr.decode()
    assert proc.returncode == 2 and re.search(
        r"--out '.*link' (cannot be used|is a broken symbolic link)", err
    ), err
    assert not (tmp_path / "nowhere").exists()
    for name, content in [("list", b"[1, 2]\n"), ("latin1", b'{"model": "caf\xe9"}\n')]:
        out = tmp_path / f"out-{name}"
        out.mkdir()
        (out / "run.json").write_bytes(content)
        proc = _eval([*RUN, "--data", str(good), "--out", str(out)])
        err = proc.stderr.decode()
        assert proc.returncode == 2 and re.search(r"run\.json' is (unreadable|not a settings object)", err), (
            err
        )
        assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_damaged_shard_lines_are_ignored_and_redone(good: Path, tmp_path: Path, tiny):
    out = tmp_path / "out"
    _run(_opts(good, out), tiny)
    shard = out / "shard-000-of-001.jsonl"
    ok = shard.read_text().splitlines()[0]
    rec = json.loads(ok)
    damaged = [
        json.dumps({**rec, "id": ["images/a.jpg"]}),  # unhashable id
        json.dumps({**rec, "methods": 5}),
        json.dumps({**rec, "methods": {"logit-lens": {"obj_iou": "x"}}}),
        ok.replace('"status":"ok"', '"status":"ok","nan":NaN'),
        json.dumps({k: v for k, v in rec.items() if k != "id"}),
    ]
    shard.write_text("\n".join(damaged) + "\n")
    redone: list[str] = []
    summary = _run(_opts(good, out), tiny, after=lambda r: redone.append(r["id"]))
    assert redone == ["images/a.jpg"]  # no usable record: evaluated again
    assert summary["counts"]["evaluated"] == 1 and summary["counts"]["ignored_lines"] == 3
    (out / "maps").write_text("a file\n")
    with pytest.raises(ValueError, match=r"maps' exists and is not a directory"):
        _run(_opts(good, out, save_maps=True), tiny)
    (out / "maps").unlink()
    bad_shard = out / "shard-007-of-009.jsonl"
    bad_shard.mkdir()
    with pytest.raises(ValueError, match=r"shard-007-of-009\.jsonl' is not a file"):
        _run(_opts(good, out), tiny)


def test_non_utf8_names_round_trip(tmp_path: Path, tiny):
    """A data folder and an image whose names are not UTF-8 (anno.json names it with a \\udcXX escape): the
    run finishes, the table shows the name escaped, the record keeps the exact id."""
    if sys.platform == "win32":  # pragma: no cover
        pytest.skip("POSIX byte file names")
    root = tmp_path / os.fsdecode(b"GranDf_\xff")
    try:
        root.mkdir()
    except OSError:  # pragma: no cover - a file system that refuses such names
        pytest.skip("the file system refuses non-UTF-8 names")
    img = "images/" + os.fsdecode(b"\xe9t\xe9.jpg")
    data = _anno(root, [[img, "c", "masks/a.png", {"cat": 3}]])
    out = tmp_path / "out"
    summary = _run(_opts(data, out), tiny)
    assert summary["counts"]["evaluated"] == 1
    assert "GranDf_\\udcff" in (out / "table.md").read_text(encoding="utf-8")
    recs, bad = store.read_jsonl(out / "results.jsonl")
    assert bad == 0 and recs[0]["id"] == img


def test_empty_data_set_runs_and_reruns(tmp_path: Path, tiny):
    data = _anno(tmp_path / "GranDf_empty", [])
    out = tmp_path / "out"
    for _ in range(2):  # nothing to evaluate, no model needed; the second run accepts the first's folder
        summary = R.run_eval(_opts(data, out), dist=distributed.DistInfo(), echo=False)
        assert summary["counts"]["selected"] == 0
    assert json.loads((out / "run.json").read_text())["model"] == "tiny:qwen2_vl"
