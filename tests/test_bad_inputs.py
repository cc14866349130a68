"""A table-driven battery of bad inputs over the Python API, the ``mmx-fast`` CLI and the evaluation.

Every row of every table either asserts the exception type AND that its message names the bad value, or
asserts the defined result (a valid ``Explanation``: float32 maps [T, Hc, Wc], finite, in [0, 1]). The API
rows run against both ``mmx_fast.reference.explain`` and ``mmx_fast.explain_fast``. CLI rows check the
contract "one line on stderr, ``mmx-fast: error: ...``, non-zero exit, nothing written".

Rows may be marked ``xfail(strict=True)`` for behaviour the engine does not have yet (with the reason);
when the engine is fixed they XPASS, and strict mode turns that into a failure so the marker gets removed.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import re
import struct
import subprocess
import sys
import textwrap
import types
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from mmx_fast import ExplainConfig, explain_fast
from mmx_fast.adapters.base import Adapter
from mmx_fast.explanation import Explanation
from mmx_fast.reference import explain

REPO = Path(__file__).resolve().parents[1]
# the "header claims 10000 x 10000" file trips PIL's warning (100 Mpx > 89 Mpx) before it fails
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
PROMPT = "What is in the image?"
ANSWER = "The cat."
ERR = "mmx-fast: error: "


# ----------------------------------------------------------------------------------------------------
# files
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels but whose data holds almost nothing."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _chunk(b"IEND", b"")
    )


def _encoded(arr: np.ndarray, fmt: str) -> bytes:
    b = io.BytesIO()
    Image.fromarray(arr).save(b, format=fmt)
    return b.getvalue()


def make_files(d: Path) -> dict[str, Path]:
    """Every bad (and odd-but-valid) image file the battery uses."""
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    jpg, png = _encoded(arr, "JPEG"), _encoded(arr, "PNG")
    raw: dict[str, bytes] = {
        "notes.jpg": b"this is a text file, not a JPEG\n",
        "zero-bytes.jpg": b"",
        "truncated.jpg": jpg[: len(jpg) // 2],
        "truncated.png": png[: len(png) // 2],
        "header-only.png": png[:33],
        "zero-size.png": png_claiming(0, 0),
        "bomb.png": png_claiming(20000, 10000),  # 200 Mpx: above PIL's decompression-bomb error limit
        "claims-10k.png": png_claiming(10000, 10000),  # 100 Mpx header, no pixel data
    }
    c = bytearray(png)  # flip bytes inside the IDAT stream: zlib / CRC fails
    for i in range(len(c) // 2, len(c) // 2 + 8):
        c[i] ^= 0xFF
    raw["corrupt.png"] = bytes(c)
    c = bytearray(jpg)  # destroy the SOI marker: not identifiable as JPEG
    c[0:4] = b"\x00\x00\x00\x00"
    raw["corrupt-header.jpg"] = bytes(c)
    c = bytearray(jpg)  # garbage inside the entropy-coded scan: libjpeg decodes it anyway
    for i in range(len(c) // 3, len(c) // 3 + 40):
        c[i] = 0xFF if i % 2 else 0xD9
    raw["corrupt-scan.jpg"] = bytes(c)
    out = {}
    for name, data in raw.items():
        (d / name).write_bytes(data)
        out[name] = d / name
    Image.fromarray((rng.random((40, 50)) * 65535).astype(np.uint16)).save(d / "gray16.png")
    assert Image.open(d / "gray16.png").mode.startswith("I;16")
    Image.fromarray(arr).convert("CMYK").save(d / "cmyk.jpg")
    assert Image.open(d / "cmyk.jpg").mode == "CMYK"
    pal = Image.fromarray(arr).quantize(16)
    pal.save(d / "palette-alpha.png", transparency=0)
    with Image.open(d / "palette-alpha.png") as im:
        assert im.mode == "P" and im.info.get("transparency") == 0
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "one-pixel.png")
    Image.new("RGB", (3000, 10), (200, 10, 10)).save(d / "wide.png")  # aspect ratio 300:1
    (d / "a-folder.jpg").mkdir()
    os.mkfifo(d / "pipe.jpg")
    names = (
        "gray16.png",
        "cmyk.jpg",
        "palette-alpha.png",
        "one-pixel.png",
        "a-folder.jpg",
        "wide.png",
        "pipe.jpg",
    )
    for name in names:
        out[name] = d / name
    return out


def photo(w: int = 80, h: int = 60, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


class Env:
    """Models and files shared by the battery; models are built on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "files").mkdir()
        self.files = make_files(root / "files")

    @functools.cached_property
    def qwen(self):
        from mmx_fast.testing import tiny_model

        return tiny_model("qwen2_vl", seed=0)

    @property
    def model(self):
        return self.qwen[0]

    @property
    def processor(self):
        return self.qwen[1]

    @property
    def vocab(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @functools.cached_property
    def llava(self):
        from mmx_fast.testing import tiny_model

        return tiny_model("llava", seed=0)

    @functools.cached_property
    def small_vocab(self):
        """A real Qwen2-VL whose unembedding has only 32 rows: the only way to reach ``top_k > vocabulary``
        (ExplainConfig caps top_k at 64; the tiny models' vocabulary is ~1160)."""
        from mmx_fast.testing import tiny_model

        model, processor = tiny_model("qwen2_vl", seed=0)
        model.set_output_embeddings(torch.nn.Linear(model.config.text_config.hidden_size, 32, bias=False))
        assert model.get_output_embeddings().weight.shape[0] == 32
        return model, processor


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return Env(tmp_path_factory.mktemp("bad-inputs"))


def assert_valid(exp: Explanation) -> None:
    """The defined result: a well-formed Explanation with finite maps in [0, 1]."""
    assert isinstance(exp, Explanation)
    m = exp.maps
    assert m.dtype == torch.float32 and m.ndim == 3
    assert tuple(m.shape) == (len(exp.answer_ids), *exp.grid)
    assert all(g >= 1 for g in exp.grid)
    assert len(exp.answer_tokens) == len(exp.answer_ids)
    assert bool(torch.isfinite(m).all()), "NaN / Inf in the maps"
    assert m.numel() == 0 or (float(m.min()) >= 0 and float(m.max()) <= 1)
    assert exp.image is None or exp.image.mode == "RGB"
    json.dumps(exp.to_dict(), allow_nan=False)


# ----------------------------------------------------------------------------------------------------
# the table machinery
@dataclass(frozen=True)
class Case:
    """One row. ``call(env, fn, monkeypatch)`` runs it (``fn``: the API entry point under test). Either
    ``raises`` + ``match`` (a regex that must find the bad value in the message) or ``check(result, env)``."""

    id: str
    call: Callable[..., Any]
    raises: type[BaseException] | None = None
    match: str | Callable[[Env], str] | None = None
    check: Callable[[Any, Env], None] | None = None
    xfail: str | None = None
    xfail_raises: Any = None


def params(cases: list[Case]) -> list:
    out = []
    for c in cases:
        marks = []
        if c.xfail:
            marks.append(pytest.mark.xfail(strict=True, reason=c.xfail, raises=c.xfail_raises))
        out.append(pytest.param(c, id=c.id, marks=marks))
    return out


def run_case(case: Case, thunk: Callable[[], Any], env: Env) -> None:
    if case.raises is not None:
        with pytest.raises(case.raises) as info:
            thunk()
        msg = str(info.value)
        pattern = case.match(env) if callable(case.match) else case.match
        assert pattern is not None and re.search(pattern, msg), f"{case.id}: message {msg!r}"
    else:
        result = thunk()
        if isinstance(result, Explanation):
            assert_valid(result)
        if case.check is not None:
            case.check(result, env)


FNS = [pytest.param(explain, id="reference"), pytest.param(explain_fast, id="fast")]


# ----------------------------------------------------------------------------------------------------
# API: images
def _image_call(name: str, **kw):
    def call(env: Env, fn, mp):
        return fn(env.model, env.processor, env.files[name], PROMPT, answer=ANSWER, **kw)

    return call


def _obj_call(make_image: Callable[[], Any]):
    def call(env: Env, fn, mp):
        return fn(env.model, env.processor, make_image(), PROMPT, answer=ANSWER)

    return call


def _call_prompt(prompt: str):
    def call(env: Env, fn, mp):
        return fn(env.model, env.processor, photo(), prompt, answer=ANSWER)

    return call


def _check_size(w: int, h: int):
    def check(exp: Explanation, env: Env) -> None:
        assert exp.image.size == (w, h) and len(exp) == len(env.processor.tokenizer(ANSWER)["input_ids"])

    return check


def _check_transparent_is_white(exp: Explanation, env: Env) -> None:
    with Image.open(env.files["palette-alpha.png"]) as im:
        transparent = np.asarray(im) == im.info["transparency"]
    assert transparent.any()
    assert (np.asarray(exp.image)[transparent] == 255).all()


IMAGE_CASES = [
    Case("text-file-named-jpg", _image_call("notes.jpg"), ValueError, r"notes\.jpg'.*not a readable image"),
    Case("zero-byte-jpg", _image_call("zero-bytes.jpg"), ValueError, r"zero-bytes\.jpg'.*not a readable"),
    Case("truncated-jpeg", _image_call("truncated.jpg"), ValueError, r"truncated\.jpg'.*truncated"),
    Case("truncated-png", _image_call("truncated.png"), ValueError, r"truncated\.png'.*truncated"),
    Case("png-header-only", _image_call("header-only.png"), ValueError, r"header-only\.png'.*not a readable"),
    Case("corrupt-png-data", _image_call("corrupt.png"), ValueError, r"corrupt\.png'.*corrupt"),
    Case(
        "corrupt-jpeg-header",
        _image_call("corrupt-header.jpg"),
        ValueError,
        r"corrupt-header\.jpg'.*readable",
    ),
    Case("corrupt-jpeg-scan-decodes", _image_call("corrupt-scan.jpg"), check=_check_size(64, 48)),
    Case("png-claiming-0x0", _image_call("zero-size.png"), ValueError, r"zero-size\.png'.*not a readable"),
    Case(
        "png-claiming-10kx10k-no-data",
        _image_call("claims-10k.png"),
        ValueError,
        r"claims-10k\.png'.*truncated",
    ),
    Case(
        "png-claiming-200-megapixels",
        _image_call("bomb.png"),
        ValueError,
        r"bomb\.png'.*(200000000 pixels|20000x10000)",
    ),
    Case("directory-as-image", _image_call("a-folder.jpg"), ValueError, r"a-folder\.jpg'.*is a directory"),
    Case("fifo-as-image", _image_call("pipe.jpg"), ValueError, r"pipe\.jpg' is not a regular file"),
    Case(
        "aspect-300-to-1",
        _image_call("wide.png"),
        ValueError,
        r"wide\.png' of size 3000x10 has aspect ratio 300:1",
    ),
    Case(
        "array-aspect-60-to-1",
        _obj_call(lambda: np.zeros((1, 60, 3), np.uint8)),
        ValueError,
        r"size 60x1 has aspect ratio 60:1.*50:1",
    ),
    Case("prompt-too-long", _call_prompt("x" * 16385), ValueError, r"prompt of 16385 characters is too long"),
    Case(
        "missing-file",
        _obj_call(lambda: "/nonexistent/mmx/photo.jpg"),
        ValueError,
        r"photo\.jpg'.*does not exist",
    ),
    Case("pil-0x0", _obj_call(lambda: Image.new("RGB", (0, 0))), ValueError, r"size 0x0 is empty"),
    Case("array-0x7", _obj_call(lambda: np.zeros((7, 0, 3), np.uint8)), ValueError, r"size 0x7 is empty"),
    Case("array-with-nan", _obj_call(lambda: np.full((8, 8, 3), np.nan)), ValueError, r"NaN or Inf"),
    Case("jpeg-bytes-object", _obj_call(lambda: b"\xff\xd8\xff\xe0"), TypeError, r"image of type bytes"),
    Case("one-by-one-pixel", _image_call("one-pixel.png"), check=_check_size(1, 1)),
    Case("sixteen-bit-png", _image_call("gray16.png"), check=_check_size(50, 40)),
    Case("cmyk-jpeg", _image_call("cmyk.jpg"), check=_check_size(64, 48)),
    Case("palette-with-alpha", _image_call("palette-alpha.png"), check=_check_transparent_is_white),
]


# ----------------------------------------------------------------------------------------------------
# API: prompts, answers, token indices, configs given by name, top_k vs the vocabulary, models
def _call(prompt=PROMPT, answer=ANSWER, config=None, model=None):
    def call(env: Env, fn, mp):
        m, p = model(env) if model is not None else env.qwen
        return fn(m, p, photo(), prompt, answer=answer, config=config)

    return call


def _check_empty_answer(exp: Explanation, env: Env) -> None:
    """A forced answer that tokenises to nothing gives T = 0: maps [0, Hc, Wc], no ids, no tokens, and
    every per-token accessor refuses index 0."""
    assert exp.answer_ids == [] and exp.answer_tokens == [] and exp.answer_text == ""
    assert tuple(exp.maps.shape) == (0, *exp.grid) and exp.grid == (2, 3)  # 80x60 -> qwen grid 2x3
    for f in (exp.heatmap, exp.overlay, exp.map_uint8):
        with pytest.raises(IndexError, match=r"token index 0 is out of range; this answer has 0 tokens"):
            f(0)


def _token_index(i):
    def call(env: Env, fn, mp):
        exp = fn(env.model, env.processor, photo(), PROMPT, answer=[300, 301, 302])
        assert_valid(exp)
        return exp.overlay(i)

    return call


def _other_processor(kind: str):
    def call(env: Env, fn, mp):
        if kind == "llava-processor":
            return fn(env.model, env.llava[1], photo(), PROMPT, answer=ANSWER)
        if kind == "qwen-processor-for-llava":
            return fn(env.llava[0], env.processor, photo(), PROMPT, answer=ANSWER)
        return fn(env.model, env.processor.tokenizer, photo(), PROMPT, answer=ANSWER)

    return call


def _unsupported_model(model):
    def call(env: Env, fn, mp):
        return fn(model, env.processor, photo(), PROMPT, answer=ANSWER)

    return call


CALL_CASES = [
    Case("prompt-empty", _call(prompt=""), ValueError, r"prompt='' is empty"),
    Case("prompt-whitespace", _call(prompt="\t\n "), ValueError, r"prompt='\\t\\n ' is empty"),
    Case("prompt-bytes", _call(prompt=b"What?"), TypeError, r"prompt of type bytes"),
    Case("answer-empty-string-gives-T0", _call(answer=""), check=_check_empty_answer),
    Case(
        "answer-id-equal-to-vocab",
        lambda env, fn, mp: _call(answer=[5, env.vocab])(env, fn, mp),
        ValueError,
        lambda env: rf"ids \[{env.vocab}\] are out of range; expected ids in \[0, {env.vocab}\)",
    ),
    Case("answer-id-negative", _call(answer=[-1, 5]), ValueError, r"ids \[-1\] are out of range"),
    Case("answer-id-huge", _call(answer=[10**12]), ValueError, r"ids \[1000000000000\] are out of range"),
    Case(
        "answer-2d-tensor",
        _call(answer=torch.tensor([[1, 2]])),
        TypeError,
        r"answer=\[\[1, 2\]\] is not supported",
    ),
    Case("answer-bools", _call(answer=[True, False]), TypeError, r"answer=\[True, False\]"),
    Case(
        "token-index-past-end",
        _token_index(3),
        IndexError,
        r"token index 3 is out of range; this answer has 3",
    ),
    Case("token-index-negative", _token_index(-4), IndexError, r"token index -4 is out of range"),
    Case("token-index-float", _token_index(1.0), TypeError, r"token index 1\.0 must be an integer"),
    Case("method-misspelt-underscore", _call(config="msea_arc"), ValueError, r"method='msea_arc'.*msea-arc"),
    Case("method-misspelt-case", _call(config="TAM"), ValueError, r"method='TAM' is not allowed"),
    Case("method-unknown", _call(config="gradcam"), ValueError, r"method='gradcam' is not allowed"),
    Case("config-dict", _call(config={"method": "tam"}), TypeError, r"config of type dict"),
    Case(
        "top-k-above-vocabulary",
        _call(answer=[5, 6, 7], config=ExplainConfig(top_k=50), model=lambda env: env.small_vocab),
        ValueError,
        r"top_k=50 is larger than the vocabulary \(32\)",
    ),
    Case(
        "top-k-above-vocabulary-generated-answer",
        _call(
            answer=None, config=ExplainConfig(top_k=33, max_new_tokens=2), model=lambda env: env.small_vocab
        ),
        ValueError,
        r"top_k=33 is larger than the vocabulary \(32\)",
    ),
    Case(
        "forced-id-outside-small-vocab",
        _call(answer=[5, 40], config=ExplainConfig(top_k=8), model=lambda env: env.small_vocab),
        ValueError,
        r"ids \[40\] are out of range; expected ids in \[0, 32\)",
    ),
    Case(
        "model-without-config",
        _unsupported_model(torch.nn.Linear(2, 2)),
        ValueError,
        r"Linear has no config\.model_type",
    ),
    Case("model-none", _unsupported_model(None), ValueError, r"NoneType has no config\.model_type"),
    Case(
        "model-type-bert",
        _unsupported_model(types.SimpleNamespace(config=types.SimpleNamespace(model_type="bert"))),
        ValueError,
        r"model type 'bert' is not supported; supported model types: qwen2_vl",
    ),
    Case(
        "llava-processor-for-qwen",
        _other_processor("llava-processor"),
        ValueError,
        r"processor LlavaProcessor \(a llava processor\) does not match model type 'qwen2_vl'",
    ),
    Case(
        "qwen-processor-for-llava",
        _other_processor("qwen-processor-for-llava"),
        ValueError,
        r"Qwen2VLProcessor \(a qwen2_vl processor\) does not match model type 'llava'",
    ),
    Case(
        "bare-tokenizer-as-processor",
        _other_processor("tokenizer"),
        ValueError,
        r"not a recognised multimodal processor\) does not match model type 'qwen2_vl'",
    ),
]


# ----------------------------------------------------------------------------------------------------
# API: non-finite hidden states (the defined behaviour: a ValueError naming the problem, never NaN maps
# and never silently all-zero maps)


def _inject(where: str, value: float, method: str):
    def call(env: Env, fn, mp):
        original = Adapter.forward_hidden_batch

        def poisoned(self, prompts, answers):
            out = []
            for p, h in zip(prompts, original(self, prompts, answers)):
                h = h.clone()
                if where == "visual":
                    h[int(p.visual_positions[1]), 0] = value
                else:  # the last answer position (an ARC / TAM ranking row)
                    h[-1, :] = value
                out.append(h)
            return out

        mp.setattr(Adapter, "forward_hidden_batch", poisoned)  # reference.forward_hidden delegates to it
        return fn(
            env.model, env.processor, photo(), PROMPT, answer=ANSWER, config=ExplainConfig(method=method)
        )

    return call


NONFINITE_CASES = [
    Case(f"{what}-in-{where}-hidden-state-{method}", _inject(where, value, method), ValueError,
         r"non-finite hidden states")
    for what, value, where, method in [
        ("nan", float("nan"), "visual", "msea-arc"),
        ("inf", float("inf"), "visual", "logit-lens"),  # today: NaN maps
        ("nan", float("nan"), "answer", "tam"),
    ]
]  # fmt: skip

API_CASES = IMAGE_CASES + CALL_CASES + NONFINITE_CASES


@pytest.mark.parametrize("fn", FNS)
@pytest.mark.parametrize("case", params(API_CASES))
def test_api(case: Case, fn, env: Env, monkeypatch):
    run_case(case, lambda: case.call(env, fn, monkeypatch), env)


# ----------------------------------------------------------------------------------------------------
# configuration values (raised while building the ExplainConfig, before any entry point runs)
CONFIG_CASES = [
    (dict(scales=[]), r"ExplainConfig\.scales=\[\] is not allowed; expected a non-empty"),
    (dict(scales=[0]), r"ExplainConfig\.scales=\[0\] is not allowed.*zero, negative"),
    (dict(scales=[-1]), r"ExplainConfig\.scales=\[-1\] is not allowed.*zero, negative"),
    (dict(scales=[100]), r"ExplainConfig\.scales=\[100\] is not allowed; expected scales in \(0, 8\]"),
    (dict(scales=[1.0, 0.5, 1.0]), r"ExplainConfig\.scales=\[1\.0, 0\.5, 1\.0\].*duplicates"),
    (dict(scales=[1, 1.0]), r"ExplainConfig\.scales=\[1, 1\.0\].*duplicates"),
    (dict(scales=[math.inf, 1.0]), r"ExplainConfig\.scales=\[inf, 1\.0\].*non-finite"),
    (dict(top_k=0), r"ExplainConfig\.top_k=0 is not allowed"),
    (dict(top_k=65), r"ExplainConfig\.top_k=65 is not allowed; expected an integer in \[1, 64\]"),
    (dict(top_k=True), r"ExplainConfig\.top_k=True is not allowed"),
    (dict(rbo_p=0), r"ExplainConfig\.rbo_p=0 is not allowed; expected a number strictly between 0 and 1"),
    (dict(rbo_p=1), r"ExplainConfig\.rbo_p=1 is not allowed"),
    (dict(rbo_p=float("nan")), r"ExplainConfig\.rbo_p=nan is not allowed"),
    (dict(method="logit_lens"), r"ExplainConfig\.method='logit_lens' is not allowed; expected one of"),
    (dict(max_new_tokens=0), r"ExplainConfig\.max_new_tokens=0 is not allowed"),
    (
        dict(max_new_tokens=1025),
        r"ExplainConfig\.max_new_tokens=1025 is not allowed; expected an integer in \[1, 1024\]",
    ),
    (
        dict(keep_scale_maps="yes"),
        r"ExplainConfig\.keep_scale_maps='yes' is not allowed; expected True or False",
    ),
    (dict(scales=["0.5", 1]), r"ExplainConfig\.scales=\['0\.5', 1\] is not allowed"),
]


@pytest.mark.parametrize(
    "kwargs, match", CONFIG_CASES, ids=[re.sub(r"\W+", "-", repr(k)) for k, _ in CONFIG_CASES]
)
def test_config_values(kwargs, match):
    with pytest.raises(ValueError) as info:
        ExplainConfig(**kwargs)
    assert re.search(match, str(info.value)), str(info.value)


# ----------------------------------------------------------------------------------------------------
# a 10,000 x 10,000 image: memory stays bounded (the processor's pixel limits cap the model side) and the
# result is valid; measured in a child process so its peak RSS is its own
BIG_CHILD = textwrap.dedent(
    """
    import json, resource, sys, warnings
    import torch
    from mmx_fast import ExplainConfig, explain_fast
    from mmx_fast.reference import explain
    from mmx_fast.testing import tiny_model

    warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning (100 Mpx > 89 Mpx)
    torch.set_num_threads(2)
    model, processor = tiny_model("qwen2_vl", seed=0)
    out = []
    for fn, method in ((explain_fast, "msea-arc"), (explain, "logit-lens")):
        e = fn(model, processor, sys.argv[1], "What is in the image?", answer="The cat.",
               config=ExplainConfig(method=method))
        m = e.maps
        out.append({"shape": list(m.shape), "grid": list(e.grid), "finite": bool(torch.isfinite(m).all()),
                    "min": float(m.min()), "max": float(m.max()), "size": list(e.image.size)})
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"results": out, "peak_rss_mb": peak_mb}))
    """
)


def test_ten_thousand_square_image_bounded_memory(tmp_path):
    path = tmp_path / "huge.png"
    big = Image.new("RGB", (10000, 10000), (40, 90, 160))
    big.paste(photo(100, 100).resize((2000, 2000), Image.NEAREST), (3000, 5000))
    big.save(path, compress_level=1)
    del big
    proc = subprocess.run(
        [sys.executable, "-c", BIG_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="2"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    print(res)  # pytest -s shows the peak RSS
    for r in res["results"]:
        assert r["size"] == [10000, 10000]
        assert r["finite"] and 0 <= r["min"] <= r["max"] <= 1
        assert r["shape"][0] == 3 and r["shape"][1:] == r["grid"]
        assert r["grid"][0] * r["grid"][1] <= 64  # the processor's max_pixels (224 x 224) caps the grid
    assert res["peak_rss_mb"] < 3 * 1024, res


# ----------------------------------------------------------------------------------------------------
# CLI: one line on stderr, non-zero exit, nothing written
@dataclass(frozen=True)
class CliCase:
    id: str
    args: Callable[[Env], list[str]]  # without --out
    match: str
    code: int = 2


def _img(name: str, *extra: str):
    return lambda env: [
        "--image",
        str(env.files[name]),
        "--prompt",
        PROMPT,
        "--model",
        "tiny:qwen2_vl",
        *extra,
    ]


def _ok(*extra: str):
    return lambda env: [
        "--image", str(REPO / "mmx_fast" / "assets" / "grace_hopper.jpg"), "--prompt", PROMPT,
        "--model", "tiny:qwen2_vl", *extra,
    ]  # fmt: skip


CLI_CASES = [
    CliCase("text-file-named-jpg", _img("notes.jpg"), r"--image '.*notes\.jpg' is not a readable image"),
    CliCase("zero-byte-jpg", _img("zero-bytes.jpg"), r"zero-bytes\.jpg' is not a readable image"),
    CliCase("truncated-png", _img("truncated.png"), r"truncated\.png' is corrupt or truncated"),
    CliCase("corrupt-png", _img("corrupt.png"), r"corrupt\.png' is corrupt or truncated"),
    CliCase("corrupt-jpeg-header", _img("corrupt-header.jpg"), r"corrupt-header\.jpg' is not a readable"),
    CliCase("png-claiming-0x0", _img("zero-size.png"), r"zero-size\.png' is not a readable image"),
    CliCase("png-claiming-200-megapixels", _img("bomb.png"), r"bomb\.png'.*200000000 pixels"),
    CliCase("scales-zero", _ok("--scales", "0", "1"), r"--scales=\(0\.0, 1\.0\) is not allowed"),
    CliCase("scales-hundred", _ok("--scales", "100", "1"), r"--scales=\(100\.0, 1\.0\).*\(0, 8\]"),
    CliCase("scales-duplicate", _ok("--scales", "1", "1.0"), r"--scales=\(1\.0, 1\.0\).*duplicates"),
    CliCase("scales-nan", _ok("--scales", "nan", "1"), r"--scales=\(nan, 1\.0\) is not allowed"),
    CliCase("scales-none-given", _ok("--scales"), r"argument --scales: expected at least one argument"),
    CliCase("top-k-65", _ok("--top-k", "65"), r"--top-k=65 is not allowed"),
    CliCase("top-k-negative", _ok("--top-k", "-3"), r"invalid --top-k '-3'"),
    CliCase("method-misspelt", _ok("--method", "msea_arc"), r"invalid choice: 'msea_arc'"),
    CliCase("max-new-tokens-zero", _ok("--max-new-tokens", "0"), r"invalid --max-new-tokens '0'"),
    CliCase(
        "max-new-tokens-1025", _ok("--max-new-tokens", "1025"), r"'1025'; expected an integer in \[1, 1024\]"
    ),
    CliCase(
        "aspect-300-to-1", _img("wide.png"), r"--image '.*wide\.png' of size 3000x10 has aspect ratio 300:1"
    ),
    CliCase("fifo-as-image", _img("pipe.jpg"), r"--image '.*pipe\.jpg' is not a regular file"),
    CliCase(
        "prompt-too-long",
        lambda env: [*_ok()(env)[:2], "--prompt", "x" * 16385, "--model", "tiny:qwen2_vl"],
        r"--prompt of 16385 characters is too long; at most 16384",
    ),
    CliCase("out-empty", lambda env: [*_ok()(env), "--out", ""], r"--out '' is empty"),
    CliCase("answer-too-long", _ok("--answer", "y" * 16385), r"--answer of 16385 characters is too long"),
    CliCase(
        "prompt-empty",
        lambda env: [*_ok()(env)[:2], "--prompt", "", "--model", "tiny:qwen2_vl"],
        r"--prompt is empty",
    ),
    CliCase("answer-whitespace", _ok("--answer", "  \t"), r"--answer is empty"),
    CliCase(
        "tiny-family-misspelt", _ok("--model", "tiny:qwen2vl"), r"unsupported tiny model family 'qwen2vl'"
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CLI_CASES])
def test_cli(case: CliCase, env: Env, tmp_path, capsys):
    from mmx_fast.cli import main

    out = tmp_path / "out"
    args = case.args(env)
    rc = main(["explain", *args, *([] if "--out" in args else ["--out", str(out)]), "--quiet"])
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert rc == case.code, cap.err
    assert len(lines) == 1 and lines[0].startswith(ERR), cap.err
    assert re.search(case.match, lines[0]), lines[0]
    assert "Traceback" not in cap.err and cap.out == ""
    assert not out.exists()


def test_cli_subprocess_text_file_named_jpg(env: Env, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    env_vars = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    env_vars.pop("MMX_FAST_DEBUG", None)
    path = str(env.files["notes.jpg"])
    r = subprocess.run(
        [sys.executable, "-m", "mmx_fast", "explain", "--model", "tiny:qwen2_vl", "--image", path,
         "--prompt", PROMPT, "--out", str(out)],
        capture_output=True, text=True, env=env_vars, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"{ERR}--image {path!r} is not a readable image (PIL cannot identify it)"
    ]
    assert r.stdout == "" and list(out.iterdir()) == []


def test_cli_odd_but_valid_images(env: Env, tmp_path, capsys):
    """16-bit, CMYK, palette-with-alpha, 1x1 and a JPEG with a damaged scan: all explained, all valid."""
    from mmx_fast.cli import main

    names = ["gray16.png", "cmyk.jpg", "palette-alpha.png", "one-pixel.png", "corrupt-scan.jpg"]
    out = tmp_path / "out"
    rc = main(
        ["explain", "--model", "tiny:qwen2_vl", "--image", *[str(env.files[n]) for n in names], "--prompt", PROMPT,
         "--answer", ANSWER, "--method", "logit-lens", "--out", str(out), "--quiet"]
    )  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    assert len(cap.out.strip().splitlines()) == len(names)
    for n in names:
        folder = out / Path(n).stem
        with np.load(folder / "maps.npz") as z:
            maps = z["maps"]
        assert maps.dtype == np.float32 and maps.shape[0] > 0
        assert np.isfinite(maps).all() and 0 <= maps.min() and maps.max() <= 1
        info = json.loads((folder / "explanation.json").read_text())
        assert info["answer"] == ANSWER
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders left


# ----------------------------------------------------------------------------------------------------
# evaluation
def _tiny_jpeg(path: Path, h: int = 56, w: int = 72, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
        path, "JPEG"
    )


def _mask(path: Path, h: int = 56, w: int = 72) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((h, w), np.uint8)
    m[h // 4 : h // 2, w // 4 : (3 * w) // 4] = 3
    Image.fromarray(m, mode="L").save(path)


def _reject_constant(name: str):
    raise AssertionError(f"non-finite number {name} in a JSON output file")


@pytest.fixture(scope="module")
def eval_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-bad")
    good = root / "GranDf_one"
    _tiny_jpeg(good / "images" / "a.jpg")
    _mask(good / "masks" / "a.png")
    (good / "anno.json").write_text(json.dumps([["images/a.jpg", "c", "masks/a.png", {"cat": 3}]]))
    (root / "no_annotations").mkdir()
    (root / "no_annotations" / "images").mkdir()
    bad_json = root / "GranDf_badjson"
    bad_json.mkdir()
    (bad_json / "anno.json").write_text('[["images/a.jpg", ')
    not_list = root / "GranDf_notlist"
    not_list.mkdir()
    (not_list / "anno.json").write_text(json.dumps({"images": []}))
    (root / "a_file").write_text("keep me\n")
    return {
        "good": good,
        "missing": root / "does-not-exist",
        "no_annotations": root / "no_annotations",
        "bad_json": bad_json,
        "not_list": not_list,
        "file": root / "a_file",
    }


@dataclass(frozen=True)
class EvalCase:
    id: str
    args: Callable[[dict[str, Path], Path], list[str]]  # (dirs, out) -> args after "eval"
    match: str
    code: int | None = 2  # None: any non-zero
    writes_nothing: bool = True
    xfail: str | None = None


def _ev(data: str, *extra: str, out: Callable[[dict[str, Path], Path], Path] | None = None):
    def args(d: dict[str, Path], o: Path) -> list[str]:
        target = out(d, o) if out is not None else o
        return ["--model", "tiny:qwen2_vl", "--data", str(d[data]), "--out", str(target), "--quiet", *extra]

    return args


_PROC_OUT = "/proc/mmx-fast-bad-inputs-out"
EVAL_CASES = [
    EvalCase("data-dir-missing", _ev("missing"), r"--data '.*does-not-exist' is not a folder"),
    EvalCase(
        "annotation-file-missing", _ev("no_annotations"), r"no_annotations' is not a TAM-format data set"
    ),
    EvalCase(
        "coco-annotation-missing",
        _ev("good", "--dataset", "coco"),
        r"instances_minival2014\.json', which does not exist",
    ),
    EvalCase("annotation-not-json", _ev("bad_json"), r"anno\.json' is not valid JSON"),
    EvalCase("annotation-not-a-list", _ev("not_list"), r"anno\.json' must hold a JSON list"),
    EvalCase(
        "methods-misspelt", _ev("good", "--methods", "msea_arc"), r"--methods: invalid choice: 'msea_arc'"
    ),
    EvalCase("methods-unknown", _ev("good", "--methods", "tam", "gradcam"), r"invalid choice: 'gradcam'"),
    EvalCase(
        "methods-repeated",
        _ev("good", "--methods", "tam", "tam"),
        r"methods \['tam', 'tam'\] repeat a method",
    ),
    EvalCase("methods-none", _ev("good", "--methods"), r"argument --methods: expected at least one argument"),
    EvalCase("limit-zero", _ev("good", "--limit", "0"), r"argument --limit: invalid --limit '0'"),
    EvalCase("limit-negative", _ev("good", "--limit", "-1"), r"argument --limit: invalid --limit '-1'"),
    EvalCase(
        "max-new-tokens-zero",
        _ev("good", "--max-new-tokens", "0"),
        r"--max-new-tokens: invalid --max-new-tokens '0'",
    ),
    EvalCase("out-is-a-file", _ev("good", out=lambda d, o: d["file"]), r"a_file'", code=None),
    EvalCase("out-under-a-file", _ev("good", out=lambda d, o: d["file"] / "sub"), r"a_file/sub'", code=None),
    EvalCase("out-in-proc", _ev("good", out=lambda d, o: Path(_PROC_OUT)), re.escape(_PROC_OUT), code=None),
    EvalCase(
        "out-is-a-file-is-a-usage-error",
        _ev("good", out=lambda d, o: d["file"]),
        r"^mmx-fast: error: --out '.*a_file' (exists and )?is not (a directory|writable)",
    ),
    EvalCase(
        "tiny-family-misspelt-writes-nothing",
        _ev("good", "--model", "tiny:qwen2vl"),
        r"unsupported tiny model family 'qwen2vl'",
    ),
]


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            c,
            id=c.id,
            marks=[pytest.mark.xfail(strict=True, reason=c.xfail, raises=AssertionError)] if c.xfail else [],
        )
        for c in EVAL_CASES
    ],
)
def test_eval_cli(case: EvalCase, eval_dirs, tmp_path, capsys):
    from mmx_fast.cli import main

    if case.id == "out-in-proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc here")
    out = tmp_path / "out"
    before = eval_dirs["file"].read_text()
    rc = main(["eval", *case.args(eval_dirs, out)])
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert rc != 0 if case.code is None else rc == case.code, (rc, cap.err)
    assert len(lines) == 1 and lines[0].startswith(ERR), cap.err
    assert re.search(case.match, lines[0]), lines[0]
    assert "Traceback" not in cap.err and cap.out == ""
    assert eval_dirs["file"].read_text() == before
    assert not Path(_PROC_OUT).exists()
    if case.writes_nothing:
        assert not out.exists(), sorted(p.name for p in out.iterdir())


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--methods", "gradcam"], r"argument --methods: invalid choice: 'gradcam'"),
        (["--limit", "0"], r"argument --limit: invalid --limit '0'"),
        (["--limit", "-5"], r"argument --limit: invalid --limit '-5'"),
    ],
    ids=["methods-unknown", "limit-zero", "limit-negative"],
)
def test_eval_standalone_entry_point(extra, match, eval_dirs, tmp_path, capsys):
    """``python -m mmx_fast.eval``: like ``mmx-fast eval``, one error line, exit status 2, nothing written."""
    from mmx_fast.eval import cli as eval_cli

    out = tmp_path / "out"
    code = eval_cli.main(
        ["--model", "tiny:qwen2_vl", "--data", str(eval_dirs["good"]), "--out", str(out), *extra]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmx-fast eval: error: "), err
    assert re.search(match, err[0]), err
    assert not out.exists()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(limit=0), r"limit=0 is not allowed"),
        (dict(limit=-3), r"limit=-3 is not allowed"),
        (dict(methods=()), r"no methods given"),
        (dict(methods=("gradcam",)), r"unknown method\(s\) \['gradcam'\]"),
        (dict(methods=("tam", "tam")), r"repeat a method"),
        (dict(placement="center"), r"placement='center' is not allowed"),
    ],
    ids=["limit-zero", "limit-negative", "no-methods", "method-unknown", "method-repeated", "placement"],
)
def test_eval_options(kwargs, match, tmp_path):
    from mmx_fast.eval.options import EvalOptions
    from mmx_fast.eval.run import run_eval

    opts = EvalOptions(model="tiny:qwen2_vl", data=str(tmp_path), out=str(tmp_path / "out"), **kwargs)
    with pytest.raises(ValueError, match=match):
        opts.check()
    with pytest.raises(ValueError, match=match):
        run_eval(opts)  # checked before anything is loaded or written
    assert not (tmp_path / "out").exists()


def test_eval_data_set_of_bad_images(env: Env, tmp_path, capsys):
    """Bad images inside a data set are per-sample errors (recorded, counted, exit 1), never a crash; odd but
    valid images are evaluated; every output line is valid JSON without NaN."""
    from mmx_fast.cli import main

    data = tmp_path / "GranDf_bad"
    (data / "images").mkdir(parents=True)
    items = []
    names = [
        "notes.jpg",
        "zero-bytes.jpg",
        "truncated.jpg",
        "one-pixel.png",
        "gray16.png",
        "cmyk.jpg",
        "palette-alpha.png",
    ]
    for k, n in enumerate(names):
        (data / "images" / n).write_bytes(env.files[n].read_bytes())
        _mask(data / "masks" / f"{k}.png")
        items.append([f"images/{n}", "c", f"masks/{k}.png", {"cat": 3}])
    items.append(["images/missing.jpg", "c", "masks/0.png", {"cat": 3}])
    (data / "anno.json").write_text(json.dumps(items))
    out = tmp_path / "out"
    rc = main(
        ["eval", "--model", "tiny:qwen2_vl", "--data", str(data), "--out", str(out), "--methods", "logit-lens",
         "tam", "--max-new-tokens", "3", "--word-typer", "fallback", "--quiet"]
    )  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 1, cap.err  # some samples failed
    assert "| TAM (tam) |" in cap.out
    for p in [*sorted(out.glob("*.jsonl")), out / "summary.json", out / "run.json"]:
        lines = p.read_text().splitlines() if p.suffix == ".jsonl" else [p.read_text()]
        for line in lines:
            json.loads(line, parse_constant=_reject_constant)
    recs = {r["id"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert len(recs) == len(items)
    status = {k: r["status"] for k, r in recs.items()}
    assert status == {
        "images/notes.jpg": "error",
        "images/zero-bytes.jpg": "error",
        "images/truncated.jpg": "error",
        "images/one-pixel.png": "ok",
        "images/gray16.png": "ok",
        "images/cmyk.jpg": "ok",
        "images/palette-alpha.png": "ok",
        "images/missing.jpg": "missing_image",
    }
    assert re.search(r"notes\.jpg'.*not a readable image", recs["images/notes.jpg"]["error"])
    assert re.search(r"zero-bytes\.jpg'.*not a readable image", recs["images/zero-bytes.jpg"]["error"])
    assert re.search(r"truncated\.jpg'.*truncated", recs["images/truncated.jpg"]["error"])
    summary = json.loads((out / "summary.json").read_text())
    c = summary["counts"]
    assert (c["selected"], c["evaluated"], c["error"], c["missing_image"]) == (8, 4, 3, 1)
