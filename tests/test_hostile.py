"""A hostile user against the CLI, the Python API and the report (issue 13): nothing of theirs is ever deleted,
every bad value gets a one-line error naming it (exit status 2) before the model loads, nothing half-written.

CLI cases whose exit status or argv bytes matter run the real entry point in a subprocess; the others call
``mmx_fast.cli.main`` in-process (the same code, and it returns the exit status).
"""

from __future__ import annotations

import gc
import json
import os
import re
import resource
import socket
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmx_fast import ExplainConfig, explain_fast
from mmx_fast.cli import main

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "mmx_fast" / "assets" / "grace_hopper.jpg"
PROMPT = "Who is in the picture?"
ERR = "mmx-fast: error: "
MARKER = ".mmx-fast-result.json"


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("MMX_FAST_DEBUG", None)
    return env


def _run(*args, cwd: Path | None = None, mem_gb: float | None = None, timeout: float = 300):
    """The real CLI in a subprocess; ``args`` may be bytes (argv that is not UTF-8). stdout/stderr as bytes."""
    limit = None
    if mem_gb is not None:
        cap = int(mem_gb * 2**30)

        def limit():
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"mmx_fast", *[a if isinstance(a, bytes) else a.encode() for a in args]],
        capture_output=True,
        env=_env(),
        cwd=cwd or REPO,
        timeout=timeout,
        preexec_fn=limit,
    )  # fmt: skip


def _one_error(stderr: bytes | str) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERR), text
    assert "Traceback" not in text
    return lines[0]


def _photo(path: Path, w: int = 64, h: int = 48, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def _explain(*args: str, capsys=None) -> tuple[int, str, str]:
    rc = main(["explain", "--model", "tiny:qwen2_vl", "--prompt", PROMPT, "--answer", "A cat.", "-q", *args])
    if capsys is None:
        return rc, "", ""
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------
# defect 1: an output folder replaces only an earlier mmx-fast result
def test_defect1_user_folder_named_like_the_stem_survives(tmp_path):
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "src" / "main.py").write_text("print('mine')\n")
    _photo(proj / "src.png")
    r = _run("explain", "--model", "tiny:qwen2_vl", "--image", "proj/src.png", "--prompt", PROMPT, "--answer",
             "A cat.", "--out", "proj", "-q", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (proj / "src" / "main.py").read_text() == "print('mine')\n"
    assert sorted(p.name for p in (proj / "src").iterdir()) == ["main.py"]
    assert Path(r.stdout.decode().strip()) == (proj / "src-2" / "report.html").resolve()
    assert (proj / "src-2" / MARKER).is_file()


def test_defect1_image_folder_as_out_and_other_non_results_survive(tmp_path, capsys):
    cat = tmp_path / "cat"
    _photo(cat / "cat.jpg")
    (cat / "notes.txt").write_text("sibling")
    before = _tree(cat)
    rc, out, err = _explain("--image", str(cat / "cat.jpg"), "--out", str(tmp_path), capsys=capsys)
    assert rc == 0, err
    assert _tree(cat) == before
    assert Path(out.strip()) == (tmp_path / "cat-2" / "report.html").resolve()

    # a plain file, a symlink to a user folder and an empty user folder at OUT/<stem> survive too
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "cat").write_text("a file named like the stem")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("keep")
    (out_dir / "cat-2").symlink_to(victim, target_is_directory=True)
    (out_dir / "cat-3").mkdir()
    rc, out, err = _explain("--image", str(cat / "cat.jpg"), "--out", str(out_dir), capsys=capsys)
    assert rc == 0, err
    assert (out_dir / "cat").read_text() == "a file named like the stem"
    assert (out_dir / "cat-2").is_symlink() and (victim / "keep.txt").read_text() == "keep"
    assert list((out_dir / "cat-3").iterdir()) == []
    assert Path(out.strip()) == (out_dir / "cat-4" / "report.html").resolve()


def test_defect1_only_a_marked_untouched_result_is_replaced(tmp_path, capsys):
    img = _photo(tmp_path / "img" / "photo.png")
    out = tmp_path / "out"
    assert _explain("--image", str(img), "--out", str(out), capsys=capsys)[0] == 0
    marker = json.loads((out / "photo" / MARKER).read_text())
    assert sorted(marker["files"]) == sorted(p.name for p in (out / "photo").iterdir() if p.name != MARKER)
    assert marker["mmx_fast_result"] == 1 and isinstance(marker["version"], str)
    rc, printed, err = _explain("--image", str(img), "--out", str(out), capsys=capsys)
    assert rc == 0 and Path(printed.strip()) == (out / "photo" / "report.html").resolve(), err
    assert sorted(p.name for p in out.iterdir()) == ["photo"]
    # the user added a file: the folder is theirs now
    (out / "photo" / "my-notes.txt").write_text("mine")
    rc, printed, err = _explain("--image", str(img), "--out", str(out), capsys=capsys)
    assert rc == 0 and Path(printed.strip()) == (out / "photo-2" / "report.html").resolve(), err
    assert (out / "photo" / "my-notes.txt").read_text() == "mine"
    # a forged marker naming a user's file does not make the folder replaceable if it holds a sub-folder
    (out / "photo-3" / "sub").mkdir(parents=True)
    (out / "photo-3" / MARKER).write_text(json.dumps({"mmx_fast_result": 1, "version": 1, "files": ["sub"]}))
    rc, printed, err = _explain("--image", str(img), "--out", str(out), "--answer", "A dog.", capsys=capsys)
    assert rc == 0, err
    assert (out / "photo-3" / "sub").is_dir()
    # photo-2 (our untouched result) was the first replaceable name
    assert Path(printed.strip()) == (out / "photo-2" / "report.html").resolve()


# ---------------------------------------------------------------------------------------------------
# defect 2 / 17: image headers checked (aspect ratio, pixels) before the model loads, for every family
def test_defect2_extreme_aspect_ratio_is_refused_before_the_model_loads(tmp_path):
    strip = tmp_path / "strip.png"
    Image.new("RGB", (60000, 1), (10, 20, 30)).save(strip)
    assert strip.stat().st_size < 1000
    r = _run("explain", "--model", "tiny:llava", "--image", str(strip), "--prompt", PROMPT, "--out",
             str(tmp_path / "out"), mem_gb=3.5, timeout=240)  # fmt: skip
    line = _one_error(r.stderr)
    assert r.returncode == 2
    assert "strip.png' of size 60000x1 has aspect ratio 60000:1" in line and "limit of 50:1" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "internvl"])
def test_defect2_api_refuses_extreme_aspect_for_every_family(family):
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model(family)
    with pytest.raises(ValueError, match=r"2000x20 .*aspect ratio 100(\.0)?:1 .*50:1"):
        explain_fast(model, processor, Image.new("RGB", (2000, 20)), PROMPT, answer="A cat.")


def test_image_limits_header_only(tmp_path):
    from mmx_fast.images import MAX_ASPECT, MAX_PIXELS, check_image_file

    assert MAX_ASPECT == 50 and MAX_PIXELS == 100_000_000
    ok = tmp_path / "ok.png"
    Image.new("RGB", (50, 1)).save(ok)
    assert check_image_file(ok) == (50, 1)
    bad = tmp_path / "bad.png"
    Image.new("RGB", (1, 51)).save(bad)
    with pytest.raises(ValueError, match=r"bad\.png'.*1x51.*aspect ratio 51(\.0)?:1 .*50:1"):
        check_image_file(bad)
    from test_bad_inputs import png_claiming

    big = tmp_path / "big.png"
    big.write_bytes(png_claiming(10001, 10000))  # header only: checked without decoding
    with pytest.raises(ValueError, match=r"big\.png'.*10001x10000.*100010000 pixels.*100000000"):
        check_image_file(big)


def test_defect17_images_are_decoded_one_at_a_time(tmp_path, capsys, monkeypatch):
    import mmx_fast.cli
    import mmx_fast.images

    paths = [str(_photo(tmp_path / f"im{i}.png", seed=i)) for i in range(3)]
    alive: list[weakref.ref] = []
    real_load, real_write = mmx_fast.images.load_image, mmx_fast.cli.write_result
    peak = []

    def load(image, *a, **k):
        im = real_load(image, *a, **k)
        alive.append(weakref.ref(im))
        return im

    def write(*a, **k):
        gc.collect()
        peak.append(sum(r() is not None for r in alive))
        return real_write(*a, **k)

    monkeypatch.setattr(mmx_fast.images, "load_image", load)
    monkeypatch.setattr(mmx_fast.cli, "write_result", write)
    rc, out, err = _explain("--image", *paths, "--out", str(tmp_path / "out"), capsys=capsys)
    assert rc == 0, err
    assert len(peak) == 3 and max(peak) <= 1, peak


# ---------------------------------------------------------------------------------------------------
# defect 3: every input checked before the model loads; a failure mid-run keeps and prints what finished
def test_defect3_a_bad_later_image_writes_nothing(tmp_path):
    good = _photo(tmp_path / "good.png")
    wide = tmp_path / "wide.png"
    Image.new("RGB", (3000, 10)).save(wide)
    out = tmp_path / "out"
    r = _run("explain", "--model", "/no/such/model", "--image", str(good), str(wide), "--prompt", PROMPT,
             "--out", str(out))  # fmt: skip
    line = _one_error(r.stderr)
    assert r.returncode == 2 and "wide.png" in line and "aspect ratio" in line  # before --model is looked at
    assert r.stdout == b"" and not out.exists()


def test_defect3_failure_mid_run_keeps_and_prints_what_finished(tmp_path, capsys, monkeypatch):
    import mmx_fast.report

    paths = [str(_photo(tmp_path / f"im{i}.png", seed=i)) for i in range(3)]
    real, calls = mmx_fast.report.write_report, []

    def flaky(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(mmx_fast.report, "write_report", flaky)
    out = tmp_path / "out"
    rc, printed, err = _explain("--image", *paths, "--out", str(out), capsys=capsys)
    assert rc != 0
    line = _one_error(err)
    assert "No space left" in line and "im1" in line
    assert [Path(x) for x in printed.strip().splitlines()] == [(out / "im0" / "report.html").resolve()]
    assert sorted(p.name for p in out.iterdir()) == ["im0"]  # nothing half-written, nothing after the failure


# ---------------------------------------------------------------------------------------------------
# defects 4 / 5: long and non-UTF-8 file names
def test_defect4_long_names_are_shortened_uniquely(tmp_path, capsys):
    d = tmp_path / "imgs"
    a = _photo(d / ("x" * 236 + "a.png"))
    b = _photo(d / ("x" * 236 + "b.png"), seed=1)
    out = tmp_path / "out"
    rc, printed, err = _explain("--image", str(a), str(b), "--out", str(out), capsys=capsys)
    assert rc == 0, err
    folders = [Path(x).parent for x in printed.strip().splitlines()]
    assert len(folders) == 2 and folders[0] != folders[1]
    for f in folders:
        assert f.is_dir() and len(f.name.encode()) <= 100 and f.name.startswith("xxxx")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_defect5_non_utf8_file_name(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    raw = os.fsencode(d) + b"/caf\xe9-\xff.png"
    Image.new("RGB", (64, 48), (1, 2, 3)).save(os.fsdecode(raw))
    out = tmp_path / "out"
    r = _run("explain", "--model", "tiny:qwen2_vl", b"--image", raw, "--prompt", PROMPT, "--answer", "A cat.",
             "--out", str(out), "-q")  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = Path(os.fsdecode(r.stdout.strip()))
    assert report.is_file()
    folder = report.parent
    folder.name.encode("utf-8")  # a sanitised, valid UTF-8 folder name
    info = json.loads((folder / "explanation.json").read_bytes().decode("utf-8"))
    assert info["image"]["path"].endswith("caf\ufffd-\ufffd.png")
    assert "caf\ufffd-\ufffd.png" in (folder / "report.html").read_bytes().decode("utf-8")


# ---------------------------------------------------------------------------------------------------
# defect 6: the answer text is the tokenizer's decode of the whole sequence
def test_defect6_answer_text_is_decoded_as_a_whole(tmp_path, capsys):
    answer = "café ☕ 漢字"
    img = _photo(tmp_path / "p.png")
    out = tmp_path / "out"
    rc = main(["explain", "--model", "tiny:qwen2_vl", "--image", str(img), "--prompt", PROMPT, "--answer", answer,
               "--out", str(out), "-q"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    info = json.loads((out / "p" / "explanation.json").read_text(encoding="utf-8"))
    assert info["answer"] == answer
    texts = [t["text"] for t in info["tokens"]]
    assert "\ufffd" not in "".join(texts)
    assert any(re.fullmatch(r"(<0x[0-9A-F]{2}>)+", t.strip()) for t in texts), texts  # byte pieces shown
    html = (out / "p" / "report.html").read_text(encoding="utf-8")
    assert "&lt;0x" in html


def test_defect6_api_answer_text():
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("llava")
    exp = explain_fast(model, processor, Image.new("RGB", (64, 48)), PROMPT, answer="naïve ☕ ok")
    assert exp.answer_text == "naïve ☕ ok"
    assert exp.to_dict()["answer"] == "naïve ☕ ok"


# ---------------------------------------------------------------------------------------------------
# defect 7 / 16 / 17: ExplainConfig
def test_defect7_changing_the_method_reapplies_its_preset():
    assert ExplainConfig().with_(method="tam") == ExplainConfig(method="tam")
    assert ExplainConfig(method="tam").with_(method="msea-arc") == ExplainConfig()
    c = ExplainConfig().with_(method="logit-lens", scales=(0.5, 1.0), top_k=7)
    assert c.scales == (0.5, 1.0) and c.mitigation == "none" and c.filter is False and c.top_k == 7
    c = ExplainConfig(method="tam").with_(top_k=5)  # no method given: nothing re-applied
    assert c == ExplainConfig(method="tam", top_k=5)
    with pytest.raises(ValueError, match=r"method='nope'"):
        ExplainConfig().with_(method="nope")


def test_defect16_numpy_numbers_are_accepted_as_plain_numbers():
    c = ExplainConfig(
        rbo_p=np.float64(0.5), top_k=np.int64(5), max_new_tokens=np.int32(3), scales=[np.float32(0.5), 1],
        filter=np.bool_(True), keep_scale_maps=np.bool_(False),
    )  # fmt: skip
    assert c.rbo_p == 0.5 and type(c.rbo_p) is float and type(c.top_k) is int and c.top_k == 5
    assert type(c.max_new_tokens) is int and c.filter is True and c.keep_scale_maps is False
    json.dumps(c.to_dict())
    with pytest.raises(ValueError, match=r"top_k=100 is not allowed; expected an integer in \[1, 64\]"):
        ExplainConfig(top_k=np.int64(100))
    with pytest.raises(ValueError, match=r"rbo_p=1\.5 is not allowed"):
        ExplainConfig(rbo_p=np.float64(1.5))
    for bad in (True, np.bool_(True)):
        with pytest.raises(ValueError, match=r"top_k=True is not allowed"):
            ExplainConfig(top_k=bad)
    with pytest.raises(ValueError, match=r"top_k=2\.0 is not allowed; expected an integer"):
        ExplainConfig(top_k=2.0)
    with pytest.raises(ValueError, match=r"keep_scale_maps='yes' is not allowed; expected True or False"):
        ExplainConfig(keep_scale_maps="yes")
    with pytest.raises(ValueError, match=r"scales=\['0\.5', 1\] is not allowed"):
        ExplainConfig(scales=["0.5", 1])


def test_defect17_max_new_tokens_is_bounded(capsys):
    with pytest.raises(
        ValueError, match=r"max_new_tokens=1025 is not allowed; expected an integer in \[1, 1024\]"
    ):
        ExplainConfig(max_new_tokens=1025)
    rc = main(["explain", "--model", "/no/such", "--image", str(PHOTO), "--prompt", PROMPT,
               "--max-new-tokens", "100000000000", "--out", "unused"])  # fmt: skip
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "--max-new-tokens" in line and "1024" in line


def test_defect17_leftover_temp_folders_of_dead_runs_are_cleaned(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ours_dead = out / f".mmx-fast-tmp.{host}.{dead.pid}.abc123"
    ours_alive = out / f".mmx-fast-tmp.{host}.{os.getpid()}.def456"
    other_host = out / f".mmx-fast-tmp.elsewhere.{dead.pid}.ghi789"
    old_style = out / ".photo.x1y2.mmx-fast-tmp"
    for d in (ours_dead, ours_alive, other_host, old_style):
        d.mkdir()
        (d / "maps.npz").write_bytes(b"partial")
    img = _photo(tmp_path / "photo.png")
    rc, _, err = _explain("--image", str(img), "--out", str(out), capsys=capsys)
    assert rc == 0, err
    assert not ours_dead.exists()
    assert ours_alive.is_dir() and other_host.is_dir() and old_style.is_dir()


# ---------------------------------------------------------------------------------------------------
# defect 15: --prompt / --answer that are not UTF-8
@pytest.mark.parametrize("option", ["--prompt", "--answer"])
def test_defect15_non_utf8_text_options(tmp_path, option):
    other = "--answer" if option == "--prompt" else "--prompt"
    r = _run("explain", "--model", "/no/such/model", "--image", str(PHOTO), option.encode(), b"caf\xe9?", other,
             "A cat.", "--out", str(tmp_path / "out"))  # fmt: skip
    line = _one_error(r.stderr)
    assert r.returncode == 2 and option in line and "UTF-8" in line and "0xe9" in line.lower()
    assert "--image" not in line and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------
# more of their kind
def test_fifo_as_image_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    r = _run("explain", "--model", "tiny:qwen2_vl", "--image", str(fifo), "--prompt", PROMPT, "--out",
             str(tmp_path / "out"), timeout=120)  # fmt: skip
    line = _one_error(r.stderr)
    assert r.returncode == 2 and "pipe.jpg" in line and "not a regular file" in line
    from mmx_fast.images import load_image

    with pytest.raises(ValueError, match=r"pipe\.jpg'.*not a regular file"):
        load_image(fifo)


def test_dangling_symlink_as_out(tmp_path, capsys):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    rc = main(["explain", "--model", "tiny:qwen2_vl", "--image", str(PHOTO), "--prompt", PROMPT, "--out",
               str(link)])  # fmt: skip
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "--out" in line and "symbolic link" in line
    assert not (tmp_path / "gone").exists()


def test_symlink_to_a_folder_as_out_is_written_into(tmp_path, capsys):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    img = _photo(tmp_path / "p.png")
    rc, out, err = _explain("--image", str(img), "--out", str(link), capsys=capsys)
    assert rc == 0, err
    assert (real / "p" / "report.html").is_file() and link.is_symlink()


def test_exif_orientation_is_applied(tmp_path):
    from mmx_fast.images import load_image

    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 80, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (40, 80)


@pytest.mark.parametrize("mode", ["1", "LA", "I", "F", "animated"])
def test_odd_modes_and_animation_give_rgb(tmp_path, mode):
    from mmx_fast.images import load_image

    rng = np.random.default_rng(0)
    if mode == "animated":
        frames = [Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)) for _ in range(3)]
        path = tmp_path / "anim.gif"
        frames[0].save(path, save_all=True, append_images=frames[1:])
    else:
        base = Image.fromarray(rng.integers(0, 255, (30, 40), dtype=np.uint8))
        img = base.convert("LA") if mode == "LA" else base.convert(mode)
        path = tmp_path / f"m.{'tiff' if mode in ('F', 'I') else 'png'}"
        img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (40, 30)


def test_prompt_and_answer_sizes_are_bounded(capsys):
    from mmx_fast.pipeline import MAX_ANSWER_TOKENS, MAX_PROMPT_CHARS
    from mmx_fast.testing import tiny_model

    assert MAX_PROMPT_CHARS == 16384 and MAX_ANSWER_TOKENS == 1024
    rc = main(
        ["explain", "--model", "/no/such", "--image", str(PHOTO), "--prompt", "x" * 16385, "--out", "unused"]
    )
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "--prompt" in line and "16385 characters" in line and "16384" in line
    rc = main(["explain", "--model", "/no/such", "--image", str(PHOTO), "--prompt", PROMPT, "--answer",
               "y" * 16385, "--out", "unused"])  # fmt: skip
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "--answer" in line and "16384" in line
    model, processor = tiny_model("qwen2_vl")
    img = Image.new("RGB", (56, 56))
    with pytest.raises(ValueError, match=r"prompt of 20000 characters is too long; at most 16384"):
        explain_fast(model, processor, img, "z" * 20000, answer="A cat.")
    with pytest.raises(ValueError, match=r"answer of 1025 tokens is too long; at most 1024"):
        explain_fast(model, processor, img, PROMPT, answer=[5] * 1025)


def test_prompt_with_lone_surrogate_or_nul_via_the_api():
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("qwen2_vl")
    img = Image.new("RGB", (56, 56))
    with pytest.raises(ValueError, match=r"prompt is not valid text: .*udcff' at position 3"):
        explain_fast(model, processor, img, "abc\udcff", answer="A cat.")
    exp = explain_fast(model, processor, img, "What\x00is\x1b[31m this?", answer="A cat.")
    assert exp.prompt == "What\x00is\x1b[31m this?" and len(exp) > 0
    assert torch.isfinite(exp.maps).all()


def test_defect8_embedded_json_escapes_every_angle_bracket():
    from mmx_fast import Explanation
    from mmx_fast.report import render_report

    tokens = ["<!--", "<script>", "</script>", "\u2028\u2029"]
    exp = Explanation(maps=torch.zeros(4, 2, 2), answer_ids=[1, 2, 3, 4], answer_tokens=tokens, grid=(2, 2))
    page = render_report(exp)
    body = re.search(r'<script type="application/json" id="mmx-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in body and ">" not in body and "\u2028" not in body and "\u2029" not in body
    assert json.loads(body)["tokens"] == tokens
    assert page.count("<script") == 3  # the error hook, the data and the page's script, nothing more


def test_nan_pixels_in_a_later_float_tiff_write_nothing(tmp_path, capsys):
    good = _photo(tmp_path / "good.png")
    arr = np.random.default_rng(0).random((20, 30)).astype(np.float32)
    arr[3, 4] = np.nan
    bad = tmp_path / "nan.tiff"
    Image.fromarray(arr, mode="F").save(bad)
    out = tmp_path / "out"
    rc = main(["explain", "--model", "/no/such/model", "--image", str(good), str(bad), "--prompt", PROMPT,
               "--out", str(out)])  # fmt: skip
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "nan.tiff" in line and "NaN" in line and not out.exists()


def test_a_read_only_earlier_result_is_replaced_without_leftovers(tmp_path, capsys):
    img = _photo(tmp_path / "p.png")
    out = tmp_path / "out"
    assert _explain("--image", str(img), "--out", str(out), capsys=capsys)[0] == 0
    os.chmod(out / "p", 0o555)
    rc, printed, err = _explain("--image", str(img), "--out", str(out), capsys=capsys)
    assert rc == 0 and Path(printed.strip()) == (out / "p" / "report.html").resolve(), err
    assert sorted(p.name for p in out.iterdir()) == ["p"]


def test_corrupt_exif_is_ignored_silently(tmp_path, recwarn):
    from mmx_fast.images import load_image

    blob = b"Exif\x00\x00II\x2a\x00\x08\x00\x00\x00\x01\x00\x12\x01\x03\x00\x01\x00\x00\x00\x09\x00\x00\x00"
    path = tmp_path / "odd-exif.jpg"
    Image.new("RGB", (40, 20), (9, 9, 9)).save(path, exif=blob)
    assert load_image(path).size == (40, 20)
    assert not [w for w in recwarn if "EXIF" in str(w.message)]


def test_non_utf8_model_folder_name(tmp_path):
    from mmx_fast.testing import tiny_model

    raw = os.fsencode(tmp_path) + b"/model-\xff"
    folder = tmp_path / "model"
    model, processor = tiny_model("qwen2_vl")
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    processor.to_json_file(str(folder / "processor_config.json"))
    os.rename(folder, os.fsdecode(raw))
    out = tmp_path / "out"
    r = _run("explain", b"--model", raw, "--image", str(PHOTO), "--prompt", PROMPT, "--answer", "A cat.",
             "--out", str(out), "-q")  # fmt: skip
    if r.returncode == 0:
        info = json.loads((out / "grace_hopper" / "explanation.json").read_bytes().decode("utf-8"))
        assert info["model"]["id"].endswith("model-\ufffd")
    else:  # a loader that cannot open such a path: one clear line naming --model, nothing written
        line = _one_error(r.stderr)
        assert r.returncode == 2 and "--model" in line and not out.exists()


def test_a_large_msea_scale_cannot_blow_up_the_resize(tmp_path, capsys):
    """Scales up to 8 are allowed; the image is enlarged before the processor caps it, so the enlarged size is
    bounded by MAX_PIXELS too (a 4000x3000 photo at scale 8 would be a 768-megapixel, 2.3 GB intermediate)."""
    from mmx_fast.testing import tiny_model

    big = tmp_path / "big.png"
    Image.new("RGB", (4000, 3000)).save(big)
    rc = main(["explain", "--model", "/no/such/model", "--image", str(big), "--prompt", PROMPT, "--scales", "1",
               "8", "--out", str(tmp_path / "out")])  # fmt: skip
    line = _one_error(capsys.readouterr().err)
    assert rc == 2 and "big.png" in line and "scale 8 would be 32000x24000 = 768000000 pixels" in line
    model, processor = tiny_model("qwen2_vl")
    with pytest.raises(ValueError, match=r"4000x3000 at MSEA scale 8 would be 32000x24000"):
        explain_fast(model, processor, Image.new("RGB", (4000, 3000)), PROMPT, answer="A cat.",
                     config=ExplainConfig(scales=(1.0, 8.0)))  # fmt: skip
    exp = explain_fast(model, processor, Image.new("RGB", (400, 300)), PROMPT, answer="A cat.",
                       config=ExplainConfig(scales=(1.0, 2.0)))  # fmt: skip
    assert exp.scale_maps is None and len(exp) > 0
