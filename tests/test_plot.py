"""Issue 25, what captum / grad-cam users expect from the result: maps at the image's size
(``Explanation.upsampled``, NaN where the model saw nothing, the eval harness's resize), heatmaps and overlays at
the image's size (outline, token label, colour bar), ``Explanation.plot`` on matplotlib (rendered to a PNG and
read back), any matplotlib colour map everywhere (and the four built-in ones without matplotlib), a short
``repr`` and the notebook view's random-weights warning."""

from __future__ import annotations

import base64
import io as pyio
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mmx_fast import Explanation, explain_fast, io
from mmx_fast.eval.metrics import resize_bilinear_u8
from mmx_fast.testing import tiny_model

PROMPT = "What is in the image?"


def _exp(view_box=(0.25, 0.0, 0.75, 1.0), image=True, colour=90, **kw) -> Explanation:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 4, 5, generator=g)
    return Explanation(
        maps=maps,
        answer_ids=[7, 8, 9],
        answer_tokens=["A", " cat", "."],
        grid=(4, 5),
        prompt="What is it?",
        image=Image.fromarray(np.full((30, 40, 3), colour, np.uint8)) if image else None,
        view_box=view_box,
        **kw,
    )


def _halves() -> Explanation:
    """Token 0: 1 on the left half of a 4x6 grid, 0 on the right; a black 60x40 image, no view box."""
    maps = torch.zeros(2, 4, 6)
    maps[0, :, :3] = 1.0
    maps[1] = torch.linspace(0, 1, 24).reshape(4, 6)
    return Explanation(
        maps=maps,
        answer_ids=[1, 2],
        answer_tokens=[" left", " ramp"],
        grid=(4, 6),
        image=Image.new("RGB", (60, 40)),
    )


# ---------------------------------------------------------------------------------------------------
# upsampled
def test_upsampled_is_the_eval_resize_on_the_view_box_and_nan_outside():
    exp = _exp()
    u = exp.upsampled(1)
    assert u.shape == (30, 40) and u.dtype == np.float32
    assert np.isnan(u[:, :10]).all() and np.isnan(u[:, 30:]).all()  # outside the centre crop: no value
    inside = u[:, 10:30]
    assert np.isfinite(inside).all() and 0 <= inside.min() and inside.max() <= 1
    # the eval harness's rule (OpenCV INTER_LINEAR on uint8 maps) up to its 8-bit quantisation
    want = resize_bilinear_u8(exp.map_uint8(1), (30, 20)).astype(int)
    assert np.abs(np.floor(inside * 255).astype(int) - want).max() <= 2
    every = exp.upsampled()
    assert every.shape == (3, 30, 40)
    np.testing.assert_array_equal(every[1], u)
    # another size: the box scales with it
    big = exp.upsampled(0, size=(80, 60))
    assert big.shape == (60, 80) and np.isnan(big[:, :20]).all() and np.isfinite(big[:, 20:60]).all()


def test_upsampled_samples_pixel_centres():
    """A 1x2 map [0, 1] at width 4: pixel-centre sampling gives 0, 1/4, 3/4, 1 (corner-aligned sampling would
    give 0, 1/3, 2/3, 1); at width 1 (a 2x downscale) the mean."""
    exp = Explanation(maps=torch.tensor([[[0.0, 1.0]]]), answer_ids=[1], answer_tokens=["x"], grid=(1, 2))
    np.testing.assert_allclose(exp.upsampled(0, size=(4, 1))[0], [0, 0.25, 0.75, 1], atol=1e-7)
    np.testing.assert_allclose(exp.upsampled(0, size=(1, 1)), [[0.5]], atol=1e-7)
    assert exp.upsampled(0).shape == (1, 2)  # no image: the grid's size


def test_upsampled_refuses_bad_sizes():
    exp = _exp()
    for bad in ((0, 5), (5,), "40x30", (4.0, 3), (True, 3)):
        with pytest.raises(ValueError, match=r"size=.* is not allowed; expected None or \(width, height\)"):
            exp.upsampled(0, size=bad)
    with pytest.raises(ValueError, match="MAX_UPSAMPLED_ELEMENTS"):
        exp.upsampled(size=(20000, 20000))
    with pytest.raises(IndexError, match="token index 3 is out of range"):
        exp.upsampled(3)


def test_upsampled_video_has_the_time_axis_at_frame_size():
    frames = tuple(Image.new("RGB", (50, 20), (k * 40, 0, 0)) for k in range(4))
    maps = torch.rand(2, 2, 3, 5, generator=torch.Generator().manual_seed(1))
    exp = Explanation(
        maps=maps, answer_ids=[1, 2], answer_tokens=["a", "b"], grid=(3, 5), image=frames[0], frames=frames
    )
    assert exp.upsampled().shape == (2, 2, 20, 50) and exp.upsampled(1).shape == (2, 20, 50)
    assert np.isfinite(exp.upsampled()).all()
    assert exp.heatmap(0, frame=1).size == (50, 20)


def test_llava_centre_crop_is_nan_and_outlined_qwen_sees_everything():
    wide = Image.fromarray(np.tile(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], (100, 1, 3)))
    model, processor = tiny_model("llava", seed=0)
    exp = explain_fast(model, processor, wide, PROMPT, answer="A red house.")
    u = exp.upsampled(0)
    assert u.shape == (100, 200)
    assert np.isnan(u[:, :50]).all() and np.isnan(u[:, 150:]).all() and np.isfinite(u[:, 50:150]).all()
    assert exp.heatmap(0).size == (200, 100)
    grey = np.asarray(exp.heatmap(0))
    assert (grey[:, :50] == io.OUTSIDE_GRAY).all() and (grey[:, 150:] == io.OUTSIDE_GRAY).all()
    over = np.asarray(exp.overlay(0))
    src = np.asarray(wide)
    assert np.array_equal(over[:, :50], src[:, :50]) and np.array_equal(over[:, 150:], src[:, 150:])
    assert (over[:, 50] == 255).all() and (over[:, 149] == 255).all()  # the outline, just inside the box
    assert not np.array_equal(np.asarray(exp.overlay(0, outline=False))[:, 50], over[:, 50])
    qm, qp = tiny_model("qwen2_vl", seed=0)
    q = explain_fast(qm, qp, wide, PROMPT, answer="A red house.")
    assert q.view_box is None and np.isfinite(q.upsampled()).all() and q.upsampled().shape[1:] == (100, 200)


# ---------------------------------------------------------------------------------------------------
# overlays: label and colour bar
def test_overlay_label_and_colorbar():
    exp = _exp(view_box=None, colour=200)
    plain = np.asarray(exp.overlay(1))
    labelled = np.asarray(exp.overlay(1, label=True))
    assert labelled.shape == plain.shape
    corner = labelled[:8, :20]
    assert (corner == 0).all(axis=-1).any() and (corner.min(-1) > 150).any()  # dark box, light text
    assert np.array_equal(labelled[20:], plain[20:])  # only the corner changes
    bar = exp.overlay(1, colorbar=True, colormap="gray")
    w, h = bar.size
    assert h == 30 and w > 40
    px = np.asarray(bar)
    np.testing.assert_array_equal(px[:, :40], np.asarray(exp.overlay(1, colormap="gray")))
    col = px[:, 40 + 4 + 2]  # inside the bar: 1 (white) at the top, 0 (black) at the bottom
    assert tuple(col[0]) == (255, 255, 255) and tuple(col[-1]) == (0, 0, 0)
    assert np.all(np.diff(col[:, 0].astype(int)) <= 0)


def test_save_annotate_writes_labelled_overlays(tmp_path):
    exp = _exp(view_box=None)
    out = exp.save(tmp_path / "r", annotate=True)
    png = np.asarray(Image.open(out / io.overlay_name(2)))
    assert np.array_equal(png, np.asarray(exp.overlay(2, label=True, colorbar=True)))
    assert png.shape[1] > 40


# ---------------------------------------------------------------------------------------------------
# colour maps: any matplotlib name everywhere, the built-in four without matplotlib
def test_matplotlib_colormap_on_heatmap_overlay_and_report(tmp_path):
    import matplotlib

    exp = _exp(view_box=None)
    heat = np.asarray(exp.heatmap(0, colormap="magma"))
    want = (matplotlib.colormaps["magma"](np.clip(exp.upsampled(0), 0, 1))[..., :3] * 255).astype(np.uint8)
    np.testing.assert_array_equal(heat, want)
    assert not np.array_equal(np.asarray(exp.overlay(0, colormap="magma")), np.asarray(exp.overlay(0)))
    with pytest.raises(
        ValueError,
        match=r"colormap='Magma' is not allowed; expected one of jet, viridis, gray, hot or a matplotlib",
    ):
        exp.heatmap(0, colormap="Magma")
    # to_html colours its heatmaps with the chosen map (it used to be jet whatever was asked)
    for name in ("gray", "magma"):
        page = exp.to_html(tmp_path / f"{name}.html", colormap=name).read_text()
        pngs = [
            np.asarray(Image.open(pyio.BytesIO(base64.b64decode(b))).convert("RGB"))
            for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
        ]
        want = io.colormap_uint8(exp.maps[0].numpy().astype(np.float64), name, rounding="round")
        jet = io.colormap_uint8(exp.maps[0].numpy().astype(np.float64), "jet", rounding="round")
        assert any(p.shape == want.shape and np.array_equal(p, want) for p in pngs)
        assert not any(p.shape == jet.shape and np.array_equal(p, jet) for p in pngs)


def test_builtin_colormaps_work_without_matplotlib(tmp_path, monkeypatch):
    for mod in [m for m in list(sys.modules) if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    exp = _exp()
    for name in io.COLORMAPS:
        assert exp.heatmap(0, colormap=name).size == (40, 30)
        assert exp.overlay(0, colormap=name, label=True, colorbar=True).size[1] == 30
        exp.save(tmp_path / name, colormap=name)
        exp.to_html(tmp_path / f"{name}.html", colormap=name)
    with pytest.raises(
        ValueError, match=r"colormap='magma' is not one of the built-in .* matplotlib is not installed"
    ):
        exp.overlay(0, colormap="magma")
    with pytest.raises(
        ImportError, match=r"Explanation.plot needs matplotlib \(pip install 'mmx-fast\[plot\]'\)"
    ):
        exp.plot(0)


# ---------------------------------------------------------------------------------------------------
# plot
def _render(fig, dpi=10) -> np.ndarray:
    buf = pyio.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return np.asarray(Image.open(buf).convert("RGB")).astype(int)


def test_plot_one_token_renders_the_map_over_the_image():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = _halves()
    fig = plt.figure(figsize=(6, 4), dpi=10)
    ax = fig.add_axes([0, 0, 1, 1])
    assert exp.plot(0, ax=ax, cmap="gray", alpha=1.0, colorbar=False) is ax
    px = _render(fig)
    plt.close(fig)
    assert px.shape == (40, 60, 3)
    assert px[:, :25].min() >= 240 and px[:, 35:].max() <= 15  # the left half hot, the right half cold
    # alpha 0.5 over a blue image: the hot half is a blend of white and blue, the cold half of black and blue
    exp = Explanation(**{**exp.__dict__, "image": Image.new("RGB", (60, 40), (0, 0, 200))})
    fig = plt.figure(figsize=(6, 4), dpi=10)
    exp.plot(0, ax=fig.add_axes([0, 0, 1, 1]), cmap="gray", alpha=0.5, colorbar=False)
    px = _render(fig)
    plt.close(fig)
    np.testing.assert_allclose(px[5:35, 2:25].mean((0, 1)), [128, 128, 228], atol=3)
    np.testing.assert_allclose(px[5:35, 36:58].mean((0, 1)), [0, 0, 100], atol=3)


def test_plot_leaves_what_the_model_did_not_see_as_the_image_and_outlines_it():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = _exp(colour=0)
    exp = Explanation(**{**exp.__dict__, "image": Image.new("RGB", (40, 30), (0, 0, 200))})
    fig = plt.figure(figsize=(4, 3), dpi=40)
    exp.plot(0, ax=fig.add_axes([0, 0, 1, 1]), cmap="magma", alpha=1.0, colorbar=False)
    px = _render(fig, dpi=40)  # 4 output pixels per image pixel
    plt.close(fig)
    assert px.shape == (120, 160, 3)
    np.testing.assert_array_equal(
        px[8:112, 4:36], np.broadcast_to([0, 0, 200], (104, 32, 3))
    )  # left of the box
    np.testing.assert_array_equal(
        px[8:112, 124:156], np.broadcast_to([0, 0, 200], (104, 32, 3))
    )  # right of it
    assert (px[20:100, 37:43].min(-1).max(-1) > 200).all()  # the white outline along the box's left edge
    inner = px[20:100, 50:110]
    assert not (inner == [0, 0, 200]).all(-1).any()  # the map covers the box


def test_plot_grid_of_tokens_and_words_and_errors():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = _exp(answer_pieces=["A", "Ġcat", "."])
    fig = exp.plot(cmap="viridis")
    maps_drawn = [a for a in fig.axes if a.get_images()]
    assert len(maps_drawn) == 3 and [a.get_title() for a in maps_drawn] == [
        "token 0: 'A'",
        "token 1: ' cat'",
        "token 2: '.'",
    ]
    plt.close(fig)
    fig = exp.plot([2, 0], colorbar=False)
    assert [a.get_title() for a in fig.axes if a.get_images()] == ["token 2: '.'", "token 0: 'A'"]
    plt.close(fig)
    fig = exp.plot(words=True, colorbar=False)
    words = exp.word_maps()[0]
    assert [a.get_title() for a in fig.axes if a.get_images()] == [
        f"token {k}: {w!r}" for k, w in enumerate(words)
    ]
    plt.close(fig)
    with pytest.raises(ValueError, match="ax= is for one map"):
        exp.plot(None, ax=object())
    with pytest.raises(ValueError, match="3 maps asked for, more than max_maps=2"):
        exp.plot(max_maps=2)
    with pytest.raises(ValueError, match=r"alpha=2 is not allowed"):
        exp.plot(0, alpha=2)
    with pytest.raises(ValueError, match="colormap='nope' is not allowed"):
        exp.plot(0, cmap="nope")
    plt.close("all")


# ---------------------------------------------------------------------------------------------------
# repr, notebook view
def test_repr_is_short_and_says_what_it_is():
    exp = _exp(config=None)
    text = repr(exp)
    assert text == "Explanation(tokens=3, grid=4x5, image=40x30, answer='A cat.')"
    assert "tensor" not in repr(_exp(random_weights=True)) and "random_weights=True" in repr(
        _exp(random_weights=True)
    )


def test_notebook_view_warns_on_random_weights(tmp_path):
    model, processor = tiny_model("qwen2_vl", seed=0)
    exp = explain_fast(model, processor, Image.new("RGB", (56, 56)), PROMPT, answer="A cat.")
    assert exp.random_weights and "random_weights=True" in repr(exp)
    assert "Random weights." in exp._repr_html_() and "RANDOM weights" in exp._repr_html_()
    assert "RANDOM weights" in exp.to_html(tmp_path / "r.html").read_text()
    assert "Random weights." not in _exp()._repr_html_()
