"""The ``mmx-fast`` command line and the HTML report, on tiny random-weight models (nothing downloads)."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import types
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmx_fast import ExplainConfig
from mmx_fast.cli import DEMO_ANSWER, main

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "mmx_fast" / "assets" / "grace_hopper.jpg"
PROMPT = "Who is in the picture?"
ANSWER = "A woman in a navy uniform."


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    env.pop("MMX_FAST_DEBUG", None)
    return env


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mmx_fast", *args],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=cwd or REPO,
        timeout=300,
    )


@pytest.fixture(scope="module")
def photo_copy(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("images")
    p = d / "portrait.png"
    Image.open(PHOTO).convert("RGB").resize((160, 188)).save(p)
    return p


def _check_folder(folder: Path, n_expected_tokens: int | None = None) -> int:
    assert (folder / "report.html").is_file()
    z = np.load(folder / "maps.npz")
    maps = z["maps"]
    T, Hc, Wc = maps.shape
    assert maps.dtype == np.float32 and 0 <= maps.min() and maps.max() <= 1
    assert tuple(z["grid"]) == (Hc, Wc)
    assert z["answer_ids"].shape == (T,)
    assert z["raw_maps"].shape == (T, Hc, Wc)
    info = json.loads((folder / "explanation.json").read_text())
    assert len(info["answer_tokens"]) == T == len(info["tokens"]) == len(info["answer_ids"])
    assert info["grid"] == [Hc, Wc] and info["files"]["maps_shape"] == [T, Hc, Wc]
    assert {"generate", "forward", "attribution", "load_model"} <= set(info["timings"])
    assert info["config"]["method"] in ("msea-arc", "tam", "logit-lens")
    pngs = sorted(folder.glob("token_*.png"))
    assert len(pngs) == T and [p.name for p in pngs] == [t["overlay"] for t in info["tokens"]]
    assert Image.open(pngs[0]).size == (info["image"]["width"], info["image"]["height"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["report.html", "maps.npz", "explanation.json", ".mmx-fast-result.json"] + [p.name for p in pngs]
    )
    if n_expected_tokens is not None:
        assert T == n_expected_tokens
    return T


def _no_temp_left(out: Path) -> None:
    left = [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".mmx-fast-result.json"]
    assert not left, f"temporary files left behind: {left}"


# ---------------------------------------------------------------------------------------------------
def test_explain_writes_every_output(tmp_path, photo_copy, capsys):
    other = tmp_path / "b"
    other.mkdir()
    same_stem = other / "portrait.jpg"
    Image.open(photo_copy).save(same_stem)
    out = tmp_path / "out"
    rc = main(
        ["explain", "--model", "tiny:qwen2_vl", "--image", str(photo_copy), str(same_stem), "--prompt", PROMPT,
         "--answer", ANSWER, "--scales", "0.5", "1.0", "--top-k", "20", "--out", str(out), "--quiet"]
    )  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert sorted(p.name for p in out.iterdir()) == ["portrait", "portrait-2"]  # stems made unique
    lines = cap.out.strip().splitlines()
    assert [Path(x) for x in lines] == [
        (out / "portrait" / "report.html").resolve(),
        (out / "portrait-2" / "report.html").resolve(),
    ]
    T = _check_folder(out / "portrait")
    _check_folder(out / "portrait-2", T)
    z = np.load(out / "portrait" / "maps.npz")
    assert sorted(k for k in z.files if k.startswith("scale_")) == ["scale_0.5", "scale_1.0"]
    info = json.loads((out / "portrait" / "explanation.json").read_text())
    assert "".join(info["answer_tokens"]) == ANSWER and info["answer_forced"] is True
    assert info["config"]["scales"] == [0.5, 1.0] and info["config"]["top_k"] == 20
    assert info["model"] == {"id": "tiny:qwen2_vl", "family": "qwen2_vl", "random_weights": True}
    html = (out / "portrait" / "report.html").read_text()
    assert "RANDOM weights" in html
    assert len(re.findall(r'class="chip"', html)) == T
    _no_temp_left(out)
    # files are readable like normally created ones (not the 0600 of temp files)
    assert (out / "portrait" / "report.html").stat().st_mode & 0o044 == (0o644 & ~_umask()) & 0o044


def _umask() -> int:
    m = os.umask(0o022)
    os.umask(m)
    return m


def test_explain_generates_when_no_answer_is_given(tmp_path, photo_copy, capsys):
    out = tmp_path / "out"
    rc = main(["explain", "--model", "tiny:internvl", "--image", str(photo_copy), "--prompt", "Describe it.",
               "--max-new-tokens", "3", "--method", "tam", "--out", str(out), "-q"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    T = _check_folder(out / "portrait")
    assert 0 < T <= 3
    info = json.loads((out / "portrait" / "explanation.json").read_text())
    assert info["answer_forced"] is False and info["config"]["method"] == "tam"


def _save_tiny(family: str, folder: Path) -> None:
    """A tiny model folder as a user would have it: weights, tokenizer, image processor, processor config."""
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model(family)
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    processor.to_json_file(str(folder / "processor_config.json"))


def test_explain_loads_a_local_model_folder(tmp_path, photo_copy, capsys):
    """save_pretrained -> --model PATH, offline; Qwen2-VL needs the torchvision-free processor fallback."""
    folder = tmp_path / "tiny-qwen"
    _save_tiny("qwen2_vl", folder)
    args = ["--image", str(photo_copy), "--prompt", PROMPT, "--answer", ANSWER, "--quiet"]
    assert main(["explain", "--model", str(folder), "--out", str(tmp_path / "a"), *args]) == 0, (
        capsys.readouterr().err
    )
    assert main(["explain", "--model", "tiny:qwen2_vl", "--out", str(tmp_path / "b"), *args]) == 0
    a = np.load(tmp_path / "a" / "portrait" / "maps.npz")["maps"]
    b = np.load(tmp_path / "b" / "portrait" / "maps.npz")["maps"]
    np.testing.assert_array_equal(a, b)
    info = json.loads((tmp_path / "a" / "portrait" / "explanation.json").read_text())
    assert info["model"]["random_weights"] is False
    assert "RANDOM weights" not in (tmp_path / "a" / "portrait" / "report.html").read_text()


def test_rerun_replaces_a_result_and_a_failed_write_leaves_nothing(tmp_path, photo_copy, capsys, monkeypatch):
    out = tmp_path / "out"
    base = [
        "explain",
        "--model",
        "tiny:llava",
        "--image",
        str(photo_copy),
        "--prompt",
        PROMPT,
        "--out",
        str(out),
        "-q",
    ]
    assert main([*base, "--answer", "A cat."]) == 0
    assert main([*base, "--answer", "A woman in a uniform."]) == 0  # replaces its own earlier result
    assert sorted(p.name for p in out.iterdir()) == ["portrait"]
    T = _check_folder(out / "portrait")
    (out / "portrait" / "stale.txt").write_text("old")  # now the folder holds a user's file: never replaced
    assert main([*base, "--answer", "A cat."]) == 0
    assert (out / "portrait" / "stale.txt").read_text() == "old"
    _check_folder(out / "portrait-2")
    _no_temp_left(out)
    capsys.readouterr()

    import mmx_fast.report

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mmx_fast.report, "write_report", broken)
    assert main([*base, "--answer", "A woman."]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmx-fast: error:") and "No space left" in err[0]
    os.unlink(out / "portrait" / "stale.txt")
    _check_folder(out / "portrait", T)  # the earlier result is intact
    _no_temp_left(out)
    new_out = tmp_path / "fresh"
    assert main([*base[:-3], "--answer", "A woman.", "--out", str(new_out), "-q"]) != 0
    assert not new_out.exists() or not any(new_out.iterdir())


# ---------------------------------------------------------------------------------------------------
# bad input: one line on stderr, non-zero exit, nothing written
def _bad_cases(tmp: Path, photo: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "notes.jpg").write_text("this is not an image\n")
    truncated = tmp / "truncated.jpg"
    truncated.write_bytes(PHOTO.read_bytes()[:300])
    (tmp / "a_dir").mkdir()
    bert = tmp / "bert-model"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    empty_model = tmp / "empty-model"
    empty_model.mkdir()
    (tmp / "a_file").write_text("x")
    img, ok = str(photo), ["--prompt", PROMPT, "--model", "tiny:qwen2_vl"]
    cases = {
        "missing image": (["--image", str(tmp / "nope.png"), *ok], "no such file"),
        "directory as image": (["--image", str(tmp / "a_dir"), *ok], "directory"),
        "not an image": (["--image", str(tmp / "notes.jpg"), *ok], "not a readable image"),
        "truncated image": (["--image", str(truncated), *ok], "truncated"),
        "second image missing": (["--image", img, str(tmp / "nope2.png"), *ok], "no such file"),
        "model not offline": (
            ["--image", img, "--prompt", PROMPT, "--model", "no-such-org/no-such-model"],
            "local",
        ),
        "model path missing": (["--image", img, "--prompt", PROMPT, "--model", "./no/such/folder"], "local"),
        "unsupported family": (
            ["--image", img, "--prompt", PROMPT, "--model", str(bert)],
            "unsupported model family",
        ),
        "unsupported tiny": (["--image", img, "--prompt", PROMPT, "--model", "tiny:gpt2"], "unsupported"),
        "folder without config": (
            ["--image", img, "--prompt", PROMPT, "--model", str(empty_model)],
            "config.json",
        ),
        "empty prompt": (["--image", img, "--prompt", "   ", "--model", "tiny:qwen2_vl"], "prompt"),
        "empty answer": (["--image", img, *ok, "--answer", ""], "answer"),
        "bad method": (["--image", img, *ok, "--method", "gradcam"], "invalid choice"),
        "scales without 1.0": (["--image", img, *ok, "--scales", "0.5", "0.75"], "--scales"),
        "scales not numbers": (["--image", img, *ok, "--scales", "big"], "scale"),
        "negative scale": (["--image", img, *ok, "--scales", "-1", "1"], "--scales"),
        "top-k too large": (["--image", img, *ok, "--top-k", "500"], "--top-k"),
        "top-k zero": (["--image", img, *ok, "--top-k", "0"], "--top-k"),
        "missing --image": ([*ok], "required"),
        "out under a file": (["--image", img, *ok, "--out", str(tmp / "a_file" / "out")], "not a directory"),
        "out is a file": (["--image", img, *ok, "--out", str(tmp / "a_file")], "not a directory"),
    }
    if os.path.isdir("/proc/self"):
        cases["out not writable"] = (
            ["--image", img, *ok, "--out", "/proc/mmx-fast-test-out"],
            "not writable",
        )
    if not torch.cuda.is_available():
        cases["no cuda"] = (["--image", img, *ok, "--device", "cuda"], "cuda")
    return cases


def test_bad_inputs_give_one_line_and_write_nothing(tmp_path, photo_copy, capsys):
    cases = _bad_cases(tmp_path, photo_copy)
    for name, (args, expect) in cases.items():
        out = tmp_path / f"out-{name.replace(' ', '-')}"
        if "--out" not in args:
            args = [*args, "--out", str(out)]
        rc = main(["explain", *args])
        cap = capsys.readouterr()
        lines = cap.err.strip().splitlines()
        assert rc != 0, name
        assert len(lines) == 1, f"{name}: {cap.err!r}"
        assert lines[0].startswith("mmx-fast: error: "), f"{name}: {lines[0]}"
        assert expect.lower() in lines[0].lower(), f"{name}: {lines[0]}"
        assert "Traceback" not in cap.err and cap.out == "", name
        assert not out.exists(), f"{name}: {out} was created"
    assert not Path("/proc/mmx-fast-test-out").exists()


def test_bad_input_in_a_subprocess_and_existing_out_stays_empty(tmp_path, photo_copy):
    out = tmp_path / "out"
    out.mkdir()
    r = _run("explain", "--model", "tiny:qwen2_vl", "--image", str(tmp_path / "missing.jpg"), "--prompt", PROMPT,
             "--out", str(out))  # fmt: skip
    assert r.returncode != 0
    assert r.stderr.strip().splitlines() == [
        f"mmx-fast: error: --image {str(tmp_path / 'missing.jpg')!r}: no such file"
    ]
    assert r.stdout == "" and list(out.iterdir()) == []
    r = _run("explain", "--model", "tiny:qwen2_vl", "--image", str(photo_copy), "--prompt", PROMPT, "--out", str(out),
             "--scales", "0.5")  # fmt: skip
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "1.0" in r.stderr
    assert list(out.iterdir()) == []


def test_demo_runs_offline_and_prints_the_report_path(tmp_path):
    r = _run("demo", "--family", "qwen2_vl", "--out", "demo-out", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    path = Path(r.stdout.strip().splitlines()[-1])
    assert (
        path.is_absolute()
        and path.is_file()
        and path == (tmp_path / "demo-out" / "grace_hopper" / "report.html")
    )
    html = path.read_text()
    assert "RANDOM weights" in html and "random-weight" in html.lower()
    info = json.loads((path.parent / "explanation.json").read_text())
    assert "".join(info["answer_tokens"]) == DEMO_ANSWER
    assert info["model"]["random_weights"] is True
    assert len(list(path.parent.glob("token_*.png"))) == len(info["tokens"]) > 5


def test_demo_explains_the_trained_model_on_the_shipped_scenes(tmp_path):
    """`mmx-fast demo` (no --family): the grounded model explains each shipped scene's right answer (forced); its
    reports say which object the answer names, that the model does not yet meet its gate, and carry no
    random-weights warning."""
    r = _run("demo", "--out", "demo-out", "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    paths = [Path(line) for line in r.stdout.strip().splitlines()]
    index = json.loads(files("mmx_fast").joinpath("grounded", "demo", "scenes.json").read_text())
    assert [p.parent.name for p in paths] == [e["image"].removesuffix(".png") for e in index]
    answers = []
    for path, entry in zip(paths, index):
        html = path.read_text()
        assert "RANDOM weights" not in html and entry["names"] in html and "NOT YET MEANINGFUL" in html
        info = json.loads((path.parent / "explanation.json").read_text())
        assert info["model"]["random_weights"] is False
        answers.append("".join(info["answer_tokens"]).strip())
    assert answers == [e["answer"] for e in index]


def test_demo_photo_ships_with_the_package():
    from importlib.resources import files

    res = files("mmx_fast").joinpath("assets", "grace_hopper.jpg")
    with Image.open(io.BytesIO(res.read_bytes())) as im:
        assert im.format == "JPEG" and im.size[0] == 320
    assert len(res.read_bytes()) < 60_000
    assert "public domain" in files("mmx_fast").joinpath("assets", "README.md").read_text().lower()


# ---------------------------------------------------------------------------------------------------
def test_help_version_and_no_command(capsys):
    assert main([]) == 2
    assert "explain" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("mmx-fast ")
    with pytest.raises(SystemExit) as e:
        main(["explain", "--help"])
    assert e.value.code == 0 and "--scales" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmx-fast: error:")


def test_eval_subcommand_is_lazy(monkeypatch, capsys):
    calls = {}
    fake = types.ModuleType("mmx_fast.eval.cli")

    def add_arguments(parser):
        parser.add_argument("--n", type=int, default=1)

    def run(args):
        calls["n"] = args.n
        return 7

    fake.add_arguments, fake.run = add_arguments, run
    monkeypatch.setitem(sys.modules, "mmx_fast.eval.cli", fake)
    assert main(["eval", "--n", "3"]) == 7 and calls == {"n": 3}
    monkeypatch.setitem(sys.modules, "mmx_fast.eval.cli", None)  # import fails
    assert main(["eval"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmx-fast: error:") and "eval" in err[0]


# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explanation():
    from mmx_fast.fast import Explainer
    from mmx_fast.testing import tiny_model

    model, processor = tiny_model("qwen2_vl")
    return Explainer(model, processor, ExplainConfig(keep_scale_maps=True)).explain(
        Image.open(PHOTO), 'What is <b>this</b> & "that"?', answer="A woman in a navy uniform stands."
    )


def test_to_html_is_self_contained(explanation, tmp_path):
    exp = explanation
    path = exp.to_html(tmp_path / "sub" / "page.html", title="My <title>", note="Random weights, beware.")
    html = Path(path).read_text()
    T = len(exp)
    assert html.startswith("<!DOCTYPE html>")
    # nothing fetched from elsewhere
    assert not re.search(r"""(src|href|action|poster)\s*=\s*["']?\s*(https?:|//)""", html, re.I)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:|//)", html, re.I) and "@import" not in html
    assert "http://" not in html and "https://" not in html
    # one chip per token, in order, the prompt escaped, the note and the config shown
    chips = re.findall(r'<button type="button" class="chip" data-i="(\d+)"', html)
    assert [int(c) for c in chips] == list(range(T))
    assert "What is &lt;b&gt;this&lt;/b&gt; &amp; &quot;that&quot;?" in html and "<b>this</b>" not in html
    assert "My &lt;title&gt;" in html and "Random weights, beware." in html
    for key in ("rbo_variant", "top_k", "mitigation", "0.5, 0.75, 1"):
        assert key in html
    # embedded heatmaps are grid-sized PNGs, one per token and view (final, before ARC, three scales)
    data = json.loads(
        re.search(r'<script type="application/json" id="mmx-data">(.*?)</script>', html, re.S).group(1)
    )
    assert [v["key"] for v in data["views"]] == ["final", "raw", "scale-0.5", "scale-0.75", "scale-1"]
    assert all(len(v["maps"]) == T for v in data["views"])
    first = Image.open(io.BytesIO(base64.b64decode(data["views"][0]["maps"][0].split(",", 1)[1])))
    assert first.format == "PNG" and first.size == (exp.grid[1], exp.grid[0])
    assert len(html) < 400_000


def test_to_html_without_image_or_extras(explanation, tmp_path):
    from dataclasses import replace

    exp = replace(explanation, image=None, scale_maps=None, raw_maps=None, timings={})
    html = Path(exp.to_html(tmp_path / "r.html")).read_text()
    assert 'id="base"' not in html and 'id="compare"' not in html
    assert len(re.findall(r'class="chip"', html)) == len(exp)
    empty = replace(explanation, maps=torch.zeros(0, *explanation.grid), answer_ids=[], answer_tokens=[])
    html = Path(empty.to_html(tmp_path / "e.html")).read_text()
    assert "answer is empty" in html and 'class="chip"' not in html


def test_explain_targets_and_colormap(tmp_path, photo_copy, capsys):
    """``--targets`` explains only those answer tokens (an index and a word); ``--colormap`` colours the overlays
    and the report; bad values are one error line, exit 2, nothing written."""
    out = tmp_path / "out"
    rc = main(
        ["explain", "--model", "tiny:qwen2_vl", "--image", str(photo_copy), "--prompt", PROMPT, "--answer", ANSWER,
         "--method", "logit-lens", "--targets", "0", "navy", "--colormap", "gray", "--out", str(out), "--quiet"]
    )  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    folder = out / photo_copy.stem
    info = json.loads((folder / "explanation.json").read_text())
    z = np.load(folder / "maps.npz")
    pos = info["token_positions"]
    assert pos[0] == 0 and len(pos) >= 2 and z["maps"].shape[0] == len(pos) == len(info["answer_tokens"])
    assert "navy" in "".join(info["answer_tokens"]).replace(" ", "")
    from mmx_fast import io as mio

    page = (folder / "report.html").read_text()
    pngs = [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB"))
        for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    ]
    want = mio.colormap_uint8(z["maps"][0].astype(np.float64), "gray", rounding="round")
    assert any(p.shape == want.shape and np.array_equal(p, want) for p in pngs)  # the report is grey
    for args, expect in (
        (["--targets", "zebra"], "target word 'zebra' is not a word of the answer"),
        (["--targets", "99"], "target token index 99 is out of range"),
        (["--colormap", "nope"], "--colormap='nope' is not allowed"),
    ):
        bad = tmp_path / "bad"
        rc = main(["explain", "--model", "tiny:qwen2_vl", "--image", str(photo_copy), "--prompt", PROMPT,
                   "--answer", ANSWER, "--out", str(bad), "--quiet", *args])  # fmt: skip
        cap = capsys.readouterr()
        lines = cap.err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and lines[0].startswith("mmx-fast: error: "), cap.err
        assert expect in lines[0]


def test_image_urls_are_explained_like_the_file(tmp_path, photo_copy, capsys):
    """``--image`` takes data: and http:// URLs (the API's limits), with the same maps as the file itself."""
    import functools
    import http.server
    import threading

    data_url = "data:image/png;base64," + base64.b64encode(photo_copy.read_bytes()).decode()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(photo_copy.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    http_url = f"http://127.0.0.1:{server.server_address[1]}/{photo_copy.name}"
    base = ["explain", "--model", "tiny:qwen2_vl", "--prompt", PROMPT, "--answer", ANSWER, "-q"]
    try:
        assert main([*base, "--image", str(photo_copy), "--out", str(tmp_path / "file")]) == 0
        assert main([*base, "--image", data_url, http_url, "--out", str(tmp_path / "url")]) == 0
    finally:
        server.shutdown()
    want = np.load(tmp_path / "file" / "portrait" / "maps.npz")["maps"]
    assert want.max() > 0
    # the data: URL has no name (folder "image"); the http URL is named after its last path segment
    for stem, shown in (("image", "data:image/png;base64,"), ("portrait", http_url)):
        folder = tmp_path / "url" / stem
        np.testing.assert_array_equal(np.load(folder / "maps.npz")["maps"], want)
        info = json.loads((folder / "explanation.json").read_text())
        assert info["image"]["path"].startswith(shown) and len(info["image"]["path"]) < 100
    capsys.readouterr()
    # a URL over the limits is refused before the model loads, with the library's message, exit 2
    big = "data:image/png;base64," + "A" * (48 * 1024 * 1024)
    assert main([*base, "--image", big, "--out", str(tmp_path / "big")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmx-fast: error: --image 'data:image/png;base64,") and "max_bytes" in err, err
    assert len(err) < 600 and not (tmp_path / "big").exists()


def test_device_takes_cuda_n_like_eval(tmp_path, photo_copy, capsys):
    """``--device cuda:0`` is an allowed value (eval accepts it too): without a GPU it is refused by the device
    check, not by argparse; a bad value names what is allowed."""
    base = ["explain", "--model", "tiny:llava", "--image", str(photo_copy), "--prompt", PROMPT, "-q"]
    for device, expect in (("cuda:0", "--device cuda:0"), ("tpu", "--device tpu")):
        if device == "cuda:0" and torch.cuda.is_available():
            continue
        assert main([*base, "--device", device, "--out", str(tmp_path / device)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"mmx-fast: error: {expect}") and "invalid choice" not in err, err
    assert main([*base, "--device", "cpu", "--out", str(tmp_path / "cpu"), "--answer", "A."]) == 0
