"""Video for the Qwen-VL families (issue 15): frames in place of the image, maps [T, t, Hc, Wc] on the (t, h, w)
grid after Qwen's temporal merge (temporal_patch_size 2: map k covers frames 2k and 2k + 1).

Covered: the inputs built from frames (two equal frames == the image's pixel values and vision features; the
temporal slots hold the right frames; an odd count repeats the last frame), fast == reference on a 4-frame
tiny Qwen2-VL / Qwen2.5-VL video (every preset, forced and generated answers), the frame order (a pattern
planted in one frame pair's states comes back at that t, on the planted cells), and bad inputs.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from test_explain import ANSWER, PRESETS, photo

from mmx_fast import ExplainConfig, explain_fast
from mmx_fast.adapters import Qwen2VLAdapter, get_adapter
from mmx_fast.reference import explain
from mmx_fast.testing import tiny_model
from mmx_fast.video import MAX_FRAMES, Video, load_video, qwen_video_inputs

PROMPT = "What happens in the video?"
FRAMES = [photo(131, 97, i) for i in range(4)]  # 4 frames -> t = 2; grid 3x5 at scale 1.0

_CACHE: dict[str, tuple] = {}


def family(name: str):
    if name not in _CACHE:
        model, processor = tiny_model(name, seed=0)
        _CACHE[name] = (model, processor, get_adapter(model, processor))
    return _CACHE[name]


# --------------------------------------------------------------------------------------------------------------
# inputs: the temporal merge


def test_two_equal_frames_are_the_image():
    """Qwen patches an image by repeating it over the 2 temporal slots: a video of two copies of the image must
    give the same pixel values, the same vision features and a grid with t = 1."""
    model, _, ad = family("qwen2_vl")
    img = photo(131, 97, 0)
    vid = ad.prepare(load_video([img, img]), PROMPT, 1.0)
    im = ad.prepare(img, PROMPT, 1.0)
    assert torch.equal(vid.inputs["pixel_values_videos"], im.inputs["pixel_values"])
    assert vid.inputs["video_grid_thw"].tolist() == im.inputs["image_grid_thw"].tolist() == [[1, 6, 10]]
    assert vid.temporal == 1 and vid.grid == im.grid == (3, 5)
    with torch.no_grad():
        fv = model.model.get_video_features(vid.inputs["pixel_values_videos"], vid.inputs["video_grid_thw"])
        fi = model.model.get_image_features(im.inputs["pixel_values"], im.inputs["image_grid_thw"])
    fv = torch.cat(list(getattr(fv, "pooler_output", fv)))
    fi = torch.cat(list(getattr(fi, "pooler_output", fi)))
    torch.testing.assert_close(fv, fi, atol=0, rtol=0)


def test_temporal_slots_hold_the_frame_pairs():
    _, processor, ad = family("qwen2_vl")
    ip = processor.image_processor
    pv, thw = qwen_video_inputs(ip, FRAMES)
    assert thw.tolist() == [[2, 6, 10]]
    n, p = 60, ip.patch_size
    slots = pv.reshape(2, n, 3, 2, p, p)  # [t, patches, C, temporal slot, p, p]
    for k in range(2):
        for s in range(2):
            own = ip(images=[FRAMES[2 * k + s]], return_tensors="pt")["pixel_values"].reshape(n, 3, 2, p, p)[
                :, :, 0
            ]
            assert torch.equal(slots[k, :, :, s], own)
    assert not torch.equal(slots[0, :, :, 0], slots[0, :, :, 1])  # the two slots are different frames
    with pytest.raises(ValueError, match="multiple of temporal_patch_size=2"):
        qwen_video_inputs(ip, FRAMES[:3])


def test_odd_frame_count_repeats_the_last_frame():
    _, _, ad = family("qwen2_vl")
    odd = ad.prepare(load_video(FRAMES[:3]), PROMPT, 1.0)
    padded = ad.prepare(load_video(FRAMES[:3] + [FRAMES[2]]), PROMPT, 1.0)
    assert odd.temporal == 2 and odd.visual_positions.numel() == 2 * 3 * 5
    assert torch.equal(odd.inputs["pixel_values_videos"], padded.inputs["pixel_values_videos"])
    assert torch.equal(odd.inputs["input_ids"], padded.inputs["input_ids"])


def test_video_prompt_layout():
    _, processor, ad = family("qwen2_vl")
    tok = processor.tokenizer
    for s, grid in ((0.5, (2, 2)), (1.0, (3, 5))):
        p = ad.prepare(load_video(FRAMES), PROMPT, s)
        ids = p.inputs["input_ids"][0]
        assert p.grid == grid and p.temporal == 2 and p.coverage == (1.0, 1.0)
        n = 2 * grid[0] * grid[1]
        assert p.visual_positions.numel() == n == int((ids == ad.video_token_id).sum())
        assert torch.equal(p.inputs["mm_token_type_ids"][0], (ids == ad.video_token_id).long() * 2)
        a, b = p.prompt_span
        assert tok.decode(ids[a:b].tolist()) == PROMPT and a > int(p.visual_positions.max())


def test_qwen3_vl_video_layout_is_the_processors():
    """Qwen3-VL writes a time stamp before each temporal patch: the layout equals what transformers'
    ``Qwen3VLProcessor.replace_video_token`` produces for the same grid and frame rate (it needs a video
    processor, which needs torchvision, so its method runs on a stand-in with the video processor's two numbers)."""
    from types import SimpleNamespace

    from transformers import Qwen3VLProcessor

    _, processor, ad = family("qwen3_vl")
    for fps in (2.0, 3.0):
        p = ad.prepare(Video(tuple(FRAMES), fps), PROMPT, 1.0)
        stand_in = SimpleNamespace(
            video_processor=SimpleNamespace(merge_size=2, temporal_patch_size=2),
            vision_start_token="<|vision_start|>",
            vision_end_token="<|vision_end|>",
            video_token="<|video_pad|>",
        )
        stand_in._calculate_timestamps = functools.partial(Qwen3VLProcessor._calculate_timestamps, stand_in)
        meta = SimpleNamespace(fps=fps, frames_indices=list(range(4)))
        want = Qwen3VLProcessor.replace_video_token(
            stand_in, {"video_grid_thw": p.inputs["video_grid_thw"], "video_metadata": [meta]}, 0
        )
        assert "seconds>" in want
        text = processor.tokenizer.decode(p.input_ids)
        assert text == p.text.replace("<|video_pad|>", want, 1)
        ids = p.inputs["input_ids"][0]
        assert p.visual_positions.numel() == 30 == int((ids == ad.video_token_id).sum())
        assert p.visual_positions.tolist() == (ids == ad.video_token_id).nonzero().flatten().tolist()


# --------------------------------------------------------------------------------------------------------------
# end to end: fast == reference, shape [T, t, Hc, Wc]


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("method", PRESETS)
def test_video_fast_equals_reference(name, method):
    model, processor, _ = family(name)
    cfg = ExplainConfig(method=method, keep_scale_maps=True)
    ref = explain(model, processor, FRAMES, PROMPT, answer=ANSWER, config=cfg)
    fast = explain_fast(model, processor, FRAMES, PROMPT, answer=ANSWER, config=cfg)
    T = len(ref.answer_ids)
    assert T >= 5 and ref.grid == fast.grid == (3, 5)
    assert ref.maps.shape == fast.maps.shape == (T, 2, 3, 5)
    assert ref.frames is not None and len(ref.frames) == 4 and ref.image is ref.frames[0]
    assert torch.isfinite(ref.maps).all() and 0 <= ref.maps.min() and ref.maps.max() <= 1
    assert not torch.allclose(ref.maps[:, 0], ref.maps[:, 1])  # the two frame pairs differ
    torch.testing.assert_close(fast.maps, ref.maps, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast.raw_maps, ref.raw_maps, atol=1e-4, rtol=1e-4)
    assert ref.raw_maps.shape == (T, 2, 3, 5)
    for s, m in ref.scale_maps.items():
        assert m.shape[:2] == (T, 2)
        torch.testing.assert_close(fast.scale_maps[s], m, atol=1e-4, rtol=1e-4)


def test_video_generated_answer():
    model, processor, _ = family("qwen2_vl")
    cfg = ExplainConfig(method="msea-arc", max_new_tokens=4)
    ref = explain(model, processor, FRAMES, PROMPT, config=cfg)
    fast = explain_fast(model, processor, FRAMES, PROMPT, config=cfg)
    assert ref.answer_ids and fast.answer_ids == ref.answer_ids
    assert ref.maps.shape == (len(ref.answer_ids), 2, 3, 5)
    torch.testing.assert_close(fast.maps, ref.maps, atol=1e-4, rtol=0)
    empty = explain_fast(model, processor, FRAMES, PROMPT, answer=[], config=cfg)
    assert empty.maps.shape == (0, 2, 3, 5)


def test_video_per_frame_filter_and_joint_normalisation():
    """logit-lens (no filter): each map is the clipped logits normalised by the max over the WHOLE video, so
    exactly one frame pair reaches 1 per non-zero map; msea-arc filters each frame on its own (a frame's
    filtered map never depends on the other frame's cells)."""
    model, processor, _ = family("qwen2_vl")
    exp = explain(model, processor, FRAMES, PROMPT, answer=ANSWER, config=ExplainConfig(method="logit-lens"))
    peaks = exp.maps.amax(dim=(2, 3))  # [T, t]
    nonzero = peaks.amax(1) > 0
    assert nonzero.any()
    assert torch.allclose(peaks.amax(1)[nonzero], torch.ones(int(nonzero.sum())))
    assert (peaks[nonzero] < 1).any()  # the normalisation is joint, not per frame


# --------------------------------------------------------------------------------------------------------------
# frame order: a pattern planted in one frame pair's visual states comes back at that t


def _plant(monkeypatch, pair: int, target: int, cols: slice, strength: float = 40.0):
    """Add ``strength * W_U[target]`` to the visual states of temporal slot ``pair`` on columns ``cols`` of the
    frame grid, at every scale, on every forward (reference and fast paths both read forward_hidden_batch)."""
    orig = Qwen2VLAdapter.forward_hidden_batch

    def planted(self, prompts, answers):
        rows = orig(self, prompts, answers)
        direction = self.lm_head_weight()[target] / self.lm_head_weight()[target].norm()
        out = []
        for p, h in zip(prompts, rows):
            h = h.clone()
            t, (gh, gw) = p.frames, p.grid
            pos = p.visual_positions.reshape(t, gh, gw)
            w0, w1, _ = cols.indices(gw)
            sel = pos[pair, :, max(0, round(w0 * gw / 5)) : max(1, round(w1 * gw / 5))].reshape(-1)
            h[sel] += strength * direction
            out.append(h)
        return out

    monkeypatch.setattr(Qwen2VLAdapter, "forward_hidden_batch", planted)


@pytest.mark.parametrize("pair", [0, 1])
def test_frame_order_planted_pattern_comes_back_at_its_t(monkeypatch, pair):
    model, processor, ad = family("qwen2_vl")
    answer_ids = ad.encode_answer(ANSWER)
    target = answer_ids[2]
    _plant(monkeypatch, pair, target, slice(0, 2))  # left 2 of 5 columns (at scale 1.0)
    for fn in (explain, explain_fast):
        exp = fn(
            model, processor, FRAMES, PROMPT, answer=answer_ids, config=ExplainConfig(method="logit-lens")
        )
        m = exp.maps[2]  # [t, 3, 5]
        other = 1 - pair
        assert m[pair, :, :2].min() > 0.9  # the planted cells are the hottest of the whole video
        assert m[other].max() < 0.5 and m[pair, :, 2:].max() < 0.5
        # with MSEA (3 scales) the pattern stays in its frame pair and on the left
        exp = fn(
            model,
            processor,
            FRAMES,
            PROMPT,
            answer=answer_ids,
            config=ExplainConfig(method="msea-arc", keep_scale_maps=True),
        )
        a = exp.raw_maps[2]
        assert a[pair, :, :2].mean() > 5 * a[other].mean()
        assert a[pair, :, :2].mean() > 3 * a[pair, :, 3:].mean()


# --------------------------------------------------------------------------------------------------------------
# bad inputs


def test_frames_of_different_sizes_are_refused():
    model, processor, _ = family("qwen2_vl")
    frames = FRAMES[:2] + [photo(90, 97, 5)]
    with pytest.raises(ValueError, match=r"frame 2 is 90x97 but frame 0 is 131x97.*same size"):
        explain_fast(model, processor, frames, PROMPT, answer=ANSWER)
    with pytest.raises(ValueError, match=r"frame 2 is 90x97"):
        explain(model, processor, frames, PROMPT, answer=ANSWER)


def test_bad_videos():
    with pytest.raises(ValueError, match=r"0 frames.*1 to"):
        load_video([])
    with pytest.raises(ValueError, match=rf"{MAX_FRAMES + 1} frames"):
        load_video([FRAMES[0]] * (MAX_FRAMES + 1))
    with pytest.raises(TypeError, match="frame 1.*nested"):
        load_video([FRAMES[0], [FRAMES[1]]])
    with pytest.raises(TypeError, match="frame 0"):
        load_video([object()])
    with pytest.raises(ValueError, match="fps"):
        load_video(FRAMES, fps=0)
    v = load_video([np.zeros((30, 40, 3), np.uint8)] * 2)
    assert isinstance(v, Video) and len(v) == 2 and v.size == (40, 30)


@pytest.mark.parametrize("name", ["llava", "gemma3"])
def test_video_on_a_family_without_video_is_refused(name):
    model, processor, _ = family(name)
    with pytest.raises(ValueError, match=rf"'{name}' does not take video.*qwen2_vl, qwen2_5_vl, qwen3_vl"):
        explain_fast(model, processor, FRAMES, PROMPT, answer=ANSWER)


@pytest.mark.parametrize("name", ["llava_next", "internvl_tiled", "smolvlm"])
def test_video_on_a_tiled_family_is_refused(name):
    """Video and tiles together are not explained (docs/design.md §1.2): the error names the model type, the
    tiled geometry and the families that take video."""
    model, processor, _ = family(name)
    with pytest.raises(
        ValueError, match=r"'(llava_next|internvl|smolvlm)' lays an image out as tiles.*qwen2_vl"
    ):
        explain_fast(model, processor, FRAMES, PROMPT, answer=ANSWER)


def test_video_notebook_view_and_word_maps():
    """Jupyter's view shows the first frame pair; word maps keep the time axis."""
    model, processor, _ = family("qwen2_vl")
    exp = explain_fast(model, processor, FRAMES, PROMPT, answer="The cat.", config=ExplainConfig())
    html = exp._repr_html_()
    assert html.count("<img") == len(exp) and "data:image/jpeg" in html
    words, maps = exp.word_maps()
    assert maps.shape[1:] == exp.maps.shape[1:] and len(words) == maps.shape[0]
    assert exp.heatmap(0, frame=1, colormap="viridis").size == FRAMES[0].size  # at the frames' size


def test_video_explanation_save_and_overlays(tmp_path):
    model, processor, _ = family("qwen2_vl")
    exp = explain_fast(model, processor, FRAMES, PROMPT, answer="The cat.", config=ExplainConfig())
    T, t = exp.maps.shape[:2]
    with pytest.raises(ValueError, match=r"video explanation with 2 temporal patches: pass frame="):
        exp.overlay(0)
    with pytest.raises(IndexError, match=r"frame=2 is out of range; expected 0..1"):
        exp.heatmap(0, frame=2)
    assert exp.overlay(0, frame=1).size == FRAMES[0].size
    assert exp.to_dict()["frames"] == 4
    out = exp.save(tmp_path / "out")
    names = sorted(p.name for p in out.glob("token_*.png"))
    assert names == [f"token_{i:03d}_t{k:03d}.png" for i in range(T) for k in range(t)]
    with np.load(out / "maps.npz") as z:
        assert z["maps"].shape == (T, 2, 3, 5)
    image = explain_fast(model, processor, FRAMES[0], PROMPT, answer="The cat.", config=ExplainConfig())
    with pytest.raises(ValueError, match="only allowed for a video"):
        image.heatmap(0, frame=0)


def test_video_file_is_read_with_pyav(tmp_path):
    av = pytest.importorskip("av")
    from mmx_fast.video import read_video_file

    path = tmp_path / "clip.mp4"
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 128, 96, "yuv420p"
        for k in range(6):
            arr = np.zeros((96, 128, 3), np.uint8)
            arr[:, 20 * k : 20 * k + 20] = 255  # a white bar moving right
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    video = read_video_file(path)
    assert len(video) == 6 and video.size == (128, 96) and video.fps == pytest.approx(4.0)
    bar = [int(np.asarray(f)[:, :, 0].mean(0).argmax()) // 20 for f in video.frames]
    assert bar == list(range(6))  # decoded in order
    assert len(read_video_file(path, max_frames=3)) == 3
    model, processor, _ = family("qwen2_vl")
    exp = explain_fast(model, processor, str(path), PROMPT, answer="A bar moves.")
    want = explain_fast(model, processor, list(video.frames), PROMPT, answer="A bar moves.")
    assert exp.maps.shape[1] == 3 and torch.equal(exp.maps, want.maps)
    with pytest.raises(FileNotFoundError, match="missing.mp4"):
        read_video_file(tmp_path / "missing.mp4")


def test_batch_mixing_images_and_videos_equals_single_calls():
    from mmx_fast.fast import Explainer

    model, processor, _ = family("qwen2_vl")
    ex = Explainer(model, processor, ExplainConfig(method="msea-arc", max_new_tokens=4))
    items = [FRAMES, photo(131, 97, 0), FRAMES[:2]]
    prompts = [PROMPT, "Describe the picture.", PROMPT]
    answers = [None, None, ANSWER]
    batch = ex.explain_batch(items, prompts, answers)
    for it, p, a, b in zip(items, prompts, answers, batch):
        single = explain(
            model, processor, it, p, answer=a, config=ExplainConfig(method="msea-arc", max_new_tokens=4)
        )
        assert b.answer_ids == single.answer_ids and b.maps.shape == single.maps.shape
        torch.testing.assert_close(b.maps, single.maps, atol=1e-4, rtol=0)
    assert batch[0].maps.dim() == 4 and batch[1].maps.dim() == 3 and batch[2].maps.shape[1] == 1
