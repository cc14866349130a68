"""The pieces both paths share (the oracle and the fast path call the same function, so no equality test of
the two can catch a bug in them): each checked against a brute-force restatement of its definition.

- ``reference.msea.placement``: the MSEA placement rule (docs/design.md §1.2);
- ``pipeline.view_maps`` / ``msea_inputs``: every view's map cut from the flat logit-lens maps;
- ``pipeline.stacked`` / ``unstacked`` / ``per_frame`` / ``scale_answer_maps``: a video's frames;
- ``pipeline.TextSide.predicting_positions`` / ``map_ids``: which positions predict which tokens.
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch

from mmx_fast.adapters.geometry import TileView, canonical_box
from mmx_fast.pipeline import (
    TextSide,
    map_ids,
    msea_inputs,
    per_frame,
    scale_answer_maps,
    stacked,
    unstacked,
    view_maps,
)
from mmx_fast.reference.msea import placement


def _nearest(target: float, lo: int, hi: int) -> int:
    """The integer in [lo, hi] nearest ``target``, ties to the even one, by search over every candidate."""
    return min(range(lo, hi + 1), key=lambda n: (abs(n - target), n % 2))


def _placement_brute(hw, coverage, grid):
    """The definition (docs/design.md §1.2): c < 1: the image fills the top-left c fraction of the scale's
    grid, whose nearest whole cells (at least one) are resized onto the whole canonical axis; c >= 1: the
    whole map shows the top-left 1/c of the image and goes onto the nearest whole canonical cells (at least
    one); a box: the whole map onto the box."""
    (h, w), (hc, wc) = hw, grid
    if len(coverage) == 4:
        return (h, w, *coverage)
    out = []
    for n, nc, c in ((h, hc, coverage[0]), (w, wc, coverage[1])):
        out.append((_nearest(c * n, 1, n), nc) if c < 1 else (n, _nearest(nc / c, 1, nc)))
    (src_h, dst_h), (src_w, dst_w) = out
    return src_h, src_w, 0, 0, dst_h, dst_w


def test_msea_placement_is_its_definition():
    checked = 0
    coverages = (0.2, 0.25, 0.5, 0.6, 0.75, 1.0, 1.25, 1.5, 2.0, 3.5, 7.0)
    for h, w, hc, wc in itertools.product((1, 2, 3, 7, 8, 13), (1, 4, 9), (1, 3, 8, 17), (2, 6, 23)):
        for cy, cx in itertools.product(coverages, coverages[::3]):
            assert placement((h, w), (cy, cx), (hc, wc)) == _placement_brute((h, w), (cy, cx), (hc, wc))
            checked += 1
    assert (
        placement((4, 5), (1, 2, 3, 6), (8, 8))
        == (4, 5, 1, 2, 3, 6)
        == _placement_brute((4, 5), (1, 2, 3, 6), (8, 8))
    )
    assert checked > 9_000
    # the cases the rule is for: half the grid shows the image / the map shows half the image
    assert placement((8, 8), (0.5, 0.5), (8, 8)) == (4, 4, 0, 0, 8, 8)
    assert placement((8, 8), (2.0, 2.0), (8, 8)) == (8, 8, 0, 0, 4, 4)


def _tiled_inputs(views):
    return SimpleNamespace(views=views, temporal=None, coverage=(1.0, 1.0))


def test_view_maps_cut_every_view_from_its_tokens():
    """Tiled: the map of view v at (i, r, c) is the flat map's value of token ``start + r * w + c``; its
    placement is the view's box in whole canonical cells."""
    views = (
        TileView(0, 4, (2, 2), (0.0, 0.0, 1.0, 1.0), "thumbnail"),
        TileView(4, 10, (2, 3), (0.0, 0.0, 0.5, 1.0), "tile 0,0"),
        TileView(10, 16, (3, 2), (0.5, 0.0, 1.0, 1.0), "tile 0,1"),
    )
    flat = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    maps, places = view_maps(_tiled_inputs(views), flat, (4, 6))
    assert len(maps) == 3
    for v, m, p in zip(views, maps, places):
        assert tuple(m.shape) == (5, *v.grid)
        for i, r, c in itertools.product(range(5), range(v.grid[0]), range(v.grid[1])):
            assert m[i, r, c] == flat[i, v.start + r * v.grid[1] + c]
        assert p == canonical_box(v.box, (4, 6))
    assert places == [(0, 0, 4, 6), (0, 0, 4, 3), (0, 3, 4, 6)]


def test_view_maps_single_view_and_video():
    """One view: the flat map on the scale's grid with its coverage; a video: one map per (id, frame), id-major,
    frame k holding tokens k * h * w ... (k + 1) * h * w - 1."""
    t, h, w, m = 3, 2, 4, 2
    flat = torch.arange(m * t * h * w, dtype=torch.float32).reshape(m, t * h * w)
    inputs = SimpleNamespace(views=None, coverage=(0.5, 0.75), stack_shape=lambda n: (n * t, h, w))
    (maps,), (cov,) = view_maps(inputs, flat, (4, 4))
    assert cov == (0.5, 0.75) and tuple(maps.shape) == (m * t, h, w)
    for i, k, r, c in itertools.product(range(m), range(t), range(h), range(w)):
        assert maps[i * t + k, r, c] == flat[i, k * h * w + r * w + c]


def test_msea_inputs_keep_scale_order_and_own_their_views():
    one = SimpleNamespace(
        inputs=SimpleNamespace(views=None, coverage=(1.0, 1.0), stack_shape=lambda n: (n, 2, 2))
    )
    tiled = SimpleNamespace(
        inputs=_tiled_inputs((TileView(0, 1, (1, 1), (0, 0, 1, 1)), TileView(1, 2, (1, 1), (0, 0, 1, 1))))
    )
    flats = [torch.zeros(3, 4), torch.ones(3, 2)]
    maps, places, owned = msea_inputs([one, tiled], flats, (2, 2))
    assert owned == [slice(0, 1), slice(1, 3)] and len(maps) == len(places) == 3
    assert float(maps[0].sum()) == 0 and all(float(m.sum()) == 3 for m in maps[1:])


def _video_base(t, hc, wc):
    return SimpleNamespace(frames=t, grid=(hc, wc), temporal=t)


@pytest.mark.parametrize("t", [1, 3])
def test_frames_stack_unstack_and_filter_per_frame(t):
    """stacked: id m's frame k is rows k*Hc..(k+1)*Hc of its [t*Hc, Wc] map; unstacked undoes it into
    [T, t, Hc, Wc]; per_frame applies a function to each frame alone."""
    hc, wc, m = 2, 3, 4
    g = torch.Generator().manual_seed(1)
    per_id_frame = torch.rand(m * t, hc, wc, generator=g)  # MSEA output: id-major, then frame
    base = _video_base(t, hc, wc) if t > 1 else SimpleNamespace(frames=1, grid=(hc, wc), temporal=None)
    s = stacked(per_id_frame, base)
    assert tuple(s.shape) == (m, t * hc, wc)
    for i, k in itertools.product(range(m), range(t)):
        assert torch.equal(s[i, k * hc : (k + 1) * hc], per_id_frame[i * t + k])
    u = unstacked(s, base)
    if t > 1:
        assert tuple(u.shape) == (m, t, hc, wc)
        for i, k in itertools.product(range(m), range(t)):
            assert torch.equal(u[i, k], per_id_frame[i * t + k])
        # per_frame: a function that reads the whole map (its max) sees one frame at a time
        out = per_frame(s, base, lambda x: x / x.amax(dim=(-2, -1), keepdim=True))
        for i, k in itertools.product(range(m), range(t)):
            frame = s[i, k * hc : (k + 1) * hc]
            assert torch.allclose(out[i, k * hc : (k + 1) * hc], frame / frame.max())
        answer = scale_answer_maps(per_id_frame, SimpleNamespace(temporal=t, frames=t), 2)
        assert tuple(answer.shape) == (2, t, hc, wc)
        for i, k in itertools.product(range(2), range(t)):
            assert torch.equal(answer[i, k], per_id_frame[i * t + k])
    else:
        assert u is s and torch.equal(s, per_id_frame)


def test_predicting_positions_predict_their_tokens():
    """Position q - 1 predicts the token at q: for the prompt span's tokens and for every answer token (which
    follows the prompt); map_ids: answer ids, prompt ids, k0, then the extra classes."""
    prompt_seq = [900, 901, 902, 11, 12, 13, 14, 903, 904]  # template, 4 instruction tokens at 3..6, template
    answer = [21, 22, 23]
    text = TextSide(prompt_seq + answer, len(prompt_seq), (3, 7), answer)
    pred_prompt, pred_answer = text.predicting_positions()
    assert [text.seq_ids[p + 1] for p in pred_prompt] == text.prompt_ids == [11, 12, 13, 14]
    assert [text.seq_ids[p + 1] for p in pred_answer] == answer
    assert map_ids(text, 7, [5, 6]) == [21, 22, 23, 11, 12, 13, 14, 7, 5, 6]
