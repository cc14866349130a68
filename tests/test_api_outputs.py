"""The API conveniences of issue 14: word maps, colour maps, the Jupyter view, the attention opt-in, the
progress bar and chunked batches."""

from __future__ import annotations

import html.parser
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from mmx_fast import ExplainConfig, Explanation, io, loading
from mmx_fast.eval import words as eval_words
from mmx_fast.fast import Explainer
from mmx_fast.testing import tiny_model
from mmx_fast.words import combine_maps, group_words, token_pieces

PROMPT = "What is the cat doing?"
ANSWER = "The cat's sleeping, on a sofa."


def _photo(w=80, h=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))


def _exp(tokens, pieces=None, image=True, seed=0) -> Explanation:
    g = torch.Generator().manual_seed(seed)
    T = len(tokens)
    return Explanation(
        maps=torch.rand(T, 4, 5, generator=g),
        answer_ids=list(range(10, 10 + T)),
        answer_tokens=list(tokens),
        answer_pieces=pieces,
        grid=(4, 5),
        prompt="What is it?",
        image=_photo() if image else None,
    )


@pytest.fixture(scope="module")
def qwen():
    return tiny_model("qwen2_vl", seed=0)


# ---------------------------------------------------------------------------------------------------
# word maps
def test_word_maps_groups_sub_words_and_takes_the_max():
    tokens = ["The", " ca", "ts", "'s", " sle", "ep", "."]
    exp = _exp(tokens, pieces=["The", "Ġca", "ts", "'s", "Ġsle", "ep", "."])
    words, maps = exp.word_maps()
    assert words == ["The", "cats's", "sleep", "."]
    assert maps.shape == (4, 4, 5) and maps.dtype == torch.float32
    m = exp.maps
    torch.testing.assert_close(maps[0], m[0])
    torch.testing.assert_close(maps[1], torch.maximum(torch.maximum(m[1], m[2]), m[3]))
    torch.testing.assert_close(maps[2], torch.maximum(m[4], m[5]))
    torch.testing.assert_close(maps[3], m[6])
    # the max differs from each token's map and from the mean: a constant or a copy would fail
    assert not torch.equal(maps[2], m[4]) and not torch.equal(maps[2], m[5])
    w2, mean = exp.word_maps(reduce="mean")
    assert w2 == words
    torch.testing.assert_close(mean[2], (m[4] + m[5]) / 2)
    assert not torch.allclose(mean[2], maps[2])
    with pytest.raises(ValueError, match=r"reduce='sum' is not allowed; expected one of max, mean"):
        exp.word_maps(reduce="sum")


def test_word_maps_sentencepiece_marker_starts_a_word():
    # SentencePiece: decoding "▁cat" on its own gives "cat" (no space); the raw piece marks the new word
    exp = _exp(["A", "cat", "s"], pieces=["▁A", "▁cat", "s"])
    words, maps = exp.word_maps()
    assert words == ["A", "cats"] and maps.shape[0] == 2
    # without the pieces (an Explanation built by hand) only the decoded strings are used
    words, _ = _exp(["A", "cat", "s"]).word_maps()
    assert words == ["Acats"]


def test_word_maps_of_an_empty_answer():
    exp = Explanation(maps=torch.zeros(0, 2, 2), answer_ids=[], answer_tokens=[], grid=(2, 2))
    words, maps = exp.word_maps()
    assert words == [] and maps.shape == (0, 2, 2)


def test_word_maps_match_the_evaluation_grouping(qwen):
    """On a real tokenizer: the explanation's words are exactly eval's words for the same ids (one grouping
    function, shared), and each word map is the max of its tokens' maps."""
    model, processor = qwen
    assert eval_words.group_words is group_words  # moved, not duplicated
    exp = Explainer(model, processor, ExplainConfig(method="msea-arc")).explain(_photo(), PROMPT, ANSWER)
    words, maps = exp.word_maps()
    want_words, groups = group_words(*token_pieces(processor.tokenizer, exp.answer_ids))
    assert words == want_words and len(words) < len(exp)  # some words span several tokens
    torch.testing.assert_close(maps, combine_maps(exp.maps, groups, "max"))
    for w, g in enumerate(groups):
        torch.testing.assert_close(maps[w], exp.maps[g].amax(0))
    assert maps.min() >= 0 and maps.max() <= 1


# ---------------------------------------------------------------------------------------------------
# colour maps
@pytest.mark.parametrize(
    "name, at0, at_half, at1",
    [
        ("jet", (0, 0, 0.5), (0.5, 1, 0.5), (0.5, 0, 0)),
        ("gray", (0, 0, 0), (0.5, 0.5, 0.5), (1, 1, 1)),
        ("hot", (0, 0, 0), (1, 0.5, 0), (1, 1, 1)),
        (
            "viridis",
            (0x44 / 255, 0x01 / 255, 0x54 / 255),
            (0x21 / 255, 0x91 / 255, 0x8C / 255),
            (0xFD / 255, 0xE7 / 255, 0x25 / 255),
        ),
    ],
)
def test_colormaps_known_values(name, at0, at_half, at1):
    rgb = io.colorize(np.array([[0.0, 0.5, 1.0]]), name)
    assert rgb.shape == (1, 3, 3)
    np.testing.assert_allclose(rgb[0], [at0, at_half, at1], atol=1e-12)
    u8 = io.colormap_uint8(np.array([[0.0, 0.5, 1.0]]), name, rounding="round")
    np.testing.assert_array_equal(u8[0], np.round(np.array([at0, at_half, at1]) * 255).astype(np.uint8))


def test_viridis_is_monotone_in_lightness_and_between_stops():
    x = np.linspace(0, 1, 101)[None]
    rgb = io.colorize(x, "viridis")[0]
    lum = rgb @ np.array([0.2126, 0.7152, 0.0722])
    assert np.all(np.diff(lum) > 0)  # perceptually ordered: brighter for larger values
    np.testing.assert_allclose(rgb[25], np.array([0x3B, 0x52, 0x8B]) / 255, atol=1e-12)


def test_colormap_option_on_heatmap_overlay_and_save(tmp_path):
    exp = _exp(["A", " cat", "."])
    jet = np.asarray(exp.heatmap(1))
    assert np.array_equal(jet, np.asarray(exp.heatmap(1, colormap="jet")))  # jet stays the default
    assert jet.shape[:2] == exp.image.size[::-1]  # at the image's size (issue 25)
    gray = np.asarray(exp.heatmap(1, colormap="gray"))
    assert gray.shape == jet.shape and not np.array_equal(gray, jet)
    assert np.all(gray[..., 0] == gray[..., 1]) and np.all(gray[..., 1] == gray[..., 2])
    want = np.floor(exp.upsampled(1).astype(np.float64) * 255).astype(np.uint8)
    assert np.abs(gray[..., 0].astype(int) - want).max() <= 1
    grid = np.asarray(exp.heatmap(1, size=(5, 4), colormap="gray"))  # the grid's own size on request
    want = np.floor(exp.maps[1].numpy().astype(np.float64) * 255).astype(np.uint8)
    assert np.abs(grid[..., 0].astype(int) - want).max() <= 1
    ov = exp.overlay(1, colormap="viridis")
    assert ov.size == exp.image.size and not np.array_equal(np.asarray(ov), np.asarray(exp.overlay(1)))
    out = exp.save(tmp_path / "r", colormap="hot")
    saved = np.asarray(Image.open(out / io.overlay_name(1)))
    assert np.array_equal(saved, np.asarray(exp.overlay(1, colormap="hot")))
    for call in (
        lambda: exp.heatmap(0, colormap="rainbowish"),
        lambda: exp.overlay(0, colormap="Jet"),
        lambda: exp.save(tmp_path / "bad", colormap="Magma"),
    ):
        with pytest.raises(
            ValueError,
            match=r"colormap='\w+' is not allowed; expected one of jet, viridis, gray, hot or a matplotlib",
        ):
            call()
    assert not (tmp_path / "bad").exists()  # refused before anything was written


# ---------------------------------------------------------------------------------------------------
# the Jupyter view
class _Collect(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.text, self.open = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in ("img", "br"):
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(markup: str) -> _Collect:
    p = _Collect()
    p.feed(markup)
    p.close()
    assert p.open == [], f"unclosed tags {p.open}"
    return p


@pytest.mark.parametrize("with_image", [True, False])
def test_repr_html_shows_every_token_and_escapes(with_image):
    tokens = ["Hi", " <script>alert(1)</script>", " \"q\" & 'a'", "<img src=x onerror=y>", "."]
    exp = _exp(tokens, image=with_image)
    markup = exp._repr_html_()
    p = _parse(markup)
    assert not any(tag == "script" for tag, _ in p.tags)
    assert "<script>" not in markup and "onerror=y>" not in markup
    text = "".join(p.text)
    for tok in tokens:
        assert tok in text  # every token, shown as text (unescaped by the parser)
    imgs = [a for tag, a in p.tags if tag == "img"]
    assert len(imgs) == len(tokens) and all(a["src"].startswith("data:image/jpeg;base64,") for a in imgs)
    assert len({a["src"] for a in imgs}) == len(tokens)  # one distinct map per token, not one picture


def test_repr_html_of_an_empty_answer():
    exp = Explanation(maps=torch.zeros(0, 2, 2), answer_ids=[], answer_tokens=[], grid=(2, 2), prompt="<b>")
    p = _parse(exp._repr_html_())
    assert not any(tag == "img" for tag, _ in p.tags) and "<b>" in "".join(p.text)


def test_repr_html_is_bounded_for_long_answers():
    from mmx_fast import report

    T = 600
    exp = _exp([f" w{i}" for i in range(T)] + ["x" * 10_000], seed=1)
    exp = Explanation(
        maps=torch.rand(T + 1, 24, 24),
        answer_ids=list(range(T + 1)),
        answer_tokens=exp.answer_tokens,
        grid=(24, 24),
        prompt="p" * 100_000,
        image=_photo(2000, 1500),
    )
    markup = exp._repr_html_()
    p = _parse(markup)
    imgs = [a for tag, a in p.tags if tag == "img"]
    assert len(imgs) == report.NOTEBOOK_THUMB_TOKENS
    text = "".join(p.text)
    assert all(f"w{i}" in text for i in range(T))
    assert len(markup) < 600_000  # bounded whatever the prompt / answer length and image size
    assert "p" * (report.NOTEBOOK_MAX_TEXT_CHARS + 1) not in markup


# ---------------------------------------------------------------------------------------------------
# the attention implementation
@pytest.mark.parametrize(
    "requested, flash, device, dtype, want",
    [
        ("auto", True, "cuda", torch.bfloat16, "flash_attention_2"),
        ("auto", True, "cuda", torch.float32, "sdpa"),
        ("auto", True, "cpu", torch.bfloat16, "sdpa"),
        ("auto", False, "cuda", torch.float16, "sdpa"),
        ("flash_attention_2", True, "cuda", torch.float16, "flash_attention_2"),
        ("sdpa", True, "cuda", torch.float16, "sdpa"),
        ("eager", False, "cpu", torch.float32, "eager"),
    ],
)
def test_resolve_attn_implementation_rules(requested, flash, device, dtype, want):
    got = loading.resolve_attn_implementation(requested, device_type=device, dtype=dtype, flash_attn=flash)
    assert got == want


@pytest.mark.parametrize(
    "flash, device, dtype, why",
    [
        (False, "cuda", torch.bfloat16, "flash-attn is not installed"),
        (True, "cpu", torch.bfloat16, "the model is on 'cpu'; flash-attention 2 runs only on CUDA"),
        (
            True,
            "cuda",
            torch.float32,
            "the model's dtype is float32; flash-attention 2 needs float16 or bfloat16",
        ),
    ],
)
def test_explicit_flash_attention_that_cannot_run_is_refused(flash, device, dtype, why):
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2' cannot be used: " + why):
        loading.resolve_attn_implementation(
            "flash_attention_2", device_type=device, dtype=dtype, flash_attn=flash
        )


def test_explainer_leaves_the_callers_model_alone_by_default(monkeypatch):
    model, processor = tiny_model("llava", seed=0)
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: True)  # even with flash-attn "installed"
    set_calls = []
    monkeypatch.setattr(model, "set_attn_implementation", lambda name: set_calls.append(name))
    ex = Explainer(model, processor, ExplainConfig())
    assert ex.attn_implementation is None and set_calls == []
    assert model.config._attn_implementation == "sdpa"


def test_explainer_attn_opt_in(monkeypatch):
    model, processor = tiny_model("llava", seed=0)
    ex = Explainer(model, processor, ExplainConfig(), attn_implementation="eager")
    assert ex.attn_implementation == "eager"
    assert (
        model.config._attn_implementation == "eager"
        and model.config.text_config._attn_implementation == "eager"
    )
    # "auto" on a CPU float32 model: sdpa, also when flash-attn is installed
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: True)
    ex = Explainer(model, processor, ExplainConfig(), attn_implementation="auto")
    assert ex.attn_implementation == "sdpa" and model.config._attn_implementation == "sdpa"
    with pytest.raises(ValueError, match="runs only on CUDA"):
        Explainer(model, processor, ExplainConfig(), attn_implementation="flash_attention_2")
    assert model.config._attn_implementation == "sdpa"  # refused before anything changed
    with pytest.raises(ValueError, match=r"attn_implementation='flash2' is not allowed; expected one of"):
        Explainer(model, processor, ExplainConfig(), attn_implementation="flash2")


def test_load_refuses_explicit_flash_attention_on_cpu():
    with pytest.raises(ValueError, match="flash-attention 2 runs only on CUDA|flash-attn is not installed"):
        loading.load("tiny:llava", attn_implementation="flash_attention_2")


# ---------------------------------------------------------------------------------------------------
# progress bar and sub-batches
def test_chunked_batch_equals_one_batch_and_shows_progress(qwen, capsys, caplog):
    model, processor = qwen
    ex = Explainer(model, processor, ExplainConfig(method="msea-arc", max_new_tokens=4))
    images = [_photo(80, 64, k) for k in range(5)]
    prompts = [PROMPT, "Describe it.", "Where is the boat?", PROMPT, "What colour is it?"]
    answers = [ANSWER, None, None, "A red boat.", None]
    whole = ex.explain_batch(images, prompts, answers)
    runs = []
    orig = ex._run
    ex._run = lambda im, pr, an, cf, tg=None: runs.append(len(im)) or orig(im, pr, an, cf, tg)
    try:
        with caplog.at_level(logging.DEBUG, logger="mmx_fast.fast"):
            chunked = ex.explain_batch(images, prompts, answers, batch_size=2, show_progress=True)
    finally:
        ex._run = orig
    assert runs == [2, 2, 1]  # sub-batches of at most batch_size pairs
    assert len(chunked) == 5
    for a, b in zip(whole, chunked):
        assert a.answer_ids == b.answer_ids and a.answer_tokens == b.answer_tokens
        torch.testing.assert_close(a.maps, b.maps, atol=1e-5, rtol=0)  # padding rounding only
    assert not torch.allclose(chunked[1].maps[0], chunked[2].maps[0])  # different images, different maps
    err = capsys.readouterr().err
    assert "5/5" in err  # the tqdm bar reached the end
    assert sum("sub-batch" in r.getMessage() for r in caplog.records) == 3


def test_explain_batch_checks_before_the_first_sub_batch(qwen):
    model, processor = qwen
    ex = Explainer(model, processor, ExplainConfig(max_new_tokens=2))
    runs = []
    ex._run = lambda *a: runs.append(1)
    images = [_photo()] * 3
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(
            ValueError, match=r"batch_size=.* is not allowed; expected None or an integer >= 1"
        ):
            ex.explain_batch(images, ["a"] * 3, batch_size=bad)
    with pytest.raises(ValueError, match="got 3 images but 2 prompts"):
        ex.explain_batch(images, ["a"] * 2, batch_size=1)
    with pytest.raises(ValueError, match="got 1 answers for 3 images"):
        ex.explain_batch(images, ["a"] * 3, [None], batch_size=1)
    assert runs == []


def test_library_logs_instead_of_printing():
    """No print() in library modules outside the command-line entry points."""
    import ast
    import pathlib

    import mmx_fast

    root = pathlib.Path(mmx_fast.__file__).parent
    allowed = {"cli.py", "cli_common.py", "__main__.py", "native.py", "eval/cli.py", "eval/run.py"}
    # the grounded model's own command-line tools (python -m mmx_fast.grounded.train / .evaluate)
    allowed |= {"grounded/train.py", "grounded/evaluate.py"}
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                offenders.append(f"{rel}:{node.lineno}")
    assert offenders == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_attention_choice_on_cuda():
    """The CUDA path (run by benches/gpu_check.py through ``pytest -k cuda``): the caller's model is left as
    it is; "auto" picks flash-attention 2 only in bf16 / fp16 with flash-attn installed; an explicit request
    that cannot run is refused; with flash-attention the maps agree with sdpa's."""
    for dtype in (torch.float32, torch.bfloat16):
        model, processor = tiny_model("qwen2_vl", seed=0, dtype=dtype)
        model = model.cuda()
        before = model.config._attn_implementation
        Explainer(model, processor, ExplainConfig())
        assert model.config._attn_implementation == before
        want = "flash_attention_2" if dtype == torch.bfloat16 and loading.flash_attn_installed() else "sdpa"
        ex = Explainer(model, processor, ExplainConfig(), attn_implementation="auto")
        assert ex.attn_implementation == want == model.config._attn_implementation
        if dtype == torch.float32 or not loading.flash_attn_installed():
            with pytest.raises(ValueError, match="attn_implementation='flash_attention_2' cannot be used"):
                Explainer(model, processor, ExplainConfig(), attn_implementation="flash_attention_2")
        else:
            flash = ex.explain(_photo(), PROMPT, ANSWER)
            sdpa = Explainer(model, processor, ExplainConfig(), attn_implementation="sdpa")
            ref = sdpa.explain(_photo(), PROMPT, ANSWER)
            assert flash.answer_ids == ref.answer_ids
            torch.testing.assert_close(
                flash.maps, ref.maps, atol=0.1, rtol=0
            )  # bf16 attention kernels differ
        loaded, _ = loading.load("tiny:qwen2_vl", device="cuda", dtype=str(dtype).removeprefix("torch."))
        assert loaded.config._attn_implementation == want
