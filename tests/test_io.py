"""``mmx_fast.io``: atomic writes, the colour map and the one ``save`` (``Explanation.save`` and the CLI)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mmx_fast import Explanation, io


def _exp(with_image: bool = True) -> Explanation:
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(3, 4, 5, generator=g)
    return Explanation(
        maps=maps,
        answer_ids=[7, 8, 9],
        answer_tokens=["A", " cat", "."],
        grid=(4, 5),
        prompt="What is it?",
        image=Image.fromarray(np.full((30, 40, 3), 90, np.uint8)) if with_image else None,
        raw_maps=maps * 3,
        scale_maps={0.5: torch.rand(3, 2, 3, generator=g), 1.0: maps * 2},
        timings={"forward": 0.5},
        view_box=(0.25, 0.0, 0.75, 1.0),
    )


def test_save_writes_every_array_the_json_and_one_overlay_per_token(tmp_path):
    exp = _exp()
    assert exp.save(tmp_path / "out") == tmp_path / "out"
    names = sorted(os.listdir(tmp_path / "out"))
    assert names == [
        io.RESULT_MARKER,
        "explanation.json",
        "maps.npz",
        "token_000.png",
        "token_001.png",
        "token_002.png",
    ]
    with np.load(tmp_path / "out" / "maps.npz") as z:
        assert set(z.files) == {"maps", "grid", "answer_ids", "raw_maps", "scale_0.5", "scale_1.0"}
        np.testing.assert_array_equal(z["maps"], exp.maps.numpy())
        np.testing.assert_array_equal(z["scale_0.5"], exp.scale_maps[0.5].numpy())
        assert z["answer_ids"].tolist() == [7, 8, 9] and z["grid"].tolist() == [4, 5]
    assert json.loads((tmp_path / "out" / "explanation.json").read_text()) == exp.to_dict()
    png = Image.open(tmp_path / "out" / "token_001.png")
    assert png.size == (40, 30) and np.array_equal(np.asarray(png), np.asarray(exp.overlay(1)))


def test_save_with_info_and_without_image(tmp_path):
    io.save(_exp(with_image=False), tmp_path, info={"x": "é"})
    assert sorted(os.listdir(tmp_path)) == [io.RESULT_MARKER, "explanation.json", "maps.npz"]
    assert (tmp_path / "explanation.json").read_bytes() == '{\n  "x": "é"\n}\n'.encode()


def test_overlay_only_inside_the_view_box():
    exp = _exp()
    out = np.asarray(exp.overlay(0, alpha=1.0)).astype(int)
    base = np.asarray(exp.image).astype(int)
    left, top, right, bottom = exp.box_pixels()
    assert (left, top, right, bottom) == (10, 0, 30, 30)
    assert np.array_equal(out[:, :left], base[:, :left]) and np.array_equal(out[:, right:], base[:, right:])
    assert not np.array_equal(out[:, left:right], base[:, left:right])


def test_jet_ends_and_rounding():
    x = np.array([[0.0, 0.5, 1.0]])
    np.testing.assert_allclose(io.jet(x)[0], [[0, 0, 0.5], [0.5, 1, 0.5], [0.5, 0, 0]])
    y = np.array([[0.30118]])  # green: (1.5 - |4x - 2|) * 255 = 179.70
    assert io.jet_uint8(y)[0, 0, 1] == 179 and io.jet_uint8(y, rounding="round")[0, 0, 1] == 180
    with pytest.raises(ValueError, match="rounding='up' is not allowed"):
        io.jet_uint8(x, rounding="up")


def test_map_uint8_and_index_errors():
    exp = _exp()
    np.testing.assert_array_equal(
        exp.map_uint8(-1), np.floor(exp.maps[2].numpy().astype(np.float64) * 255 + 1e-4)
    )
    with pytest.raises(IndexError, match="token index 3 is out of range; this answer has 3 tokens"):
        exp.heatmap(3)
    with pytest.raises(TypeError, match="must be an integer"):
        exp.map_uint8(True)


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    io.atomic_write_bytes(path, b"old")
    assert path.read_bytes() == b"old" and path.stat().st_mode & 0o777 == 0o666 & ~io._umask()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        io.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.txt"]


def test_replace_dir_swaps_in_only_over_an_untouched_earlier_result(tmp_path):
    final, tmp = tmp_path / "r", tmp_path / ".r.tmp"
    final.mkdir()
    (final / "old").write_text("1")
    tmp.mkdir()
    (tmp / "new").write_text("2")
    # not a result of ours: left alone, the new folder goes to the next free name
    assert io.replace_dir(tmp, final) == tmp_path / "r-2"
    assert os.listdir(final) == ["old"] and os.listdir(tmp_path / "r-2") == ["new"]
    # an untouched earlier result (the marker lists every file) is replaced, the old one removed
    io.write_result_marker(final)
    assert io.is_replaceable_result(final)
    tmp.mkdir()
    (tmp / "newer").write_text("3")
    assert io.replace_dir(tmp, final) == final
    assert os.listdir(final) == ["newer"] and sorted(os.listdir(tmp_path)) == ["r", "r-2"]


def test_is_replaceable_result_refuses_anything_else(tmp_path):
    r = tmp_path / "r"
    r.mkdir()
    (r / "maps.npz").write_bytes(b"x")
    io.write_result_marker(r)
    assert io.is_replaceable_result(r)
    (r / "extra.txt").write_text("user")  # a file the marker does not list
    assert not io.is_replaceable_result(r)
    os.unlink(r / "extra.txt")
    os.unlink(r / "maps.npz")
    os.mkdir(r / "maps.npz")  # a listed name that is a folder
    assert not io.is_replaceable_result(r)
    os.rmdir(r / "maps.npz")
    link = tmp_path / "link"
    link.symlink_to(r, target_is_directory=True)
    assert io.is_replaceable_result(r) and not io.is_replaceable_result(link)
    (r / io.RESULT_MARKER).write_text("not json")
    assert not io.is_replaceable_result(r)
    assert not io.is_replaceable_result(tmp_path / "missing")


def test_save_never_overwrites_a_file_it_did_not_write(tmp_path):
    (tmp_path / "token_001.png").write_bytes(b"my holiday photo")
    with pytest.raises(
        FileExistsError, match=r"already holds 'token_001\.png', which mmx-fast did not write"
    ):
        _exp().save(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["token_001.png"]  # nothing written
    assert (tmp_path / "token_001.png").read_bytes() == b"my holiday photo"
    other = tmp_path / "other"
    _exp().save(other)
    _exp().save(other)  # its own files: overwritten
    (other / "notes.txt").write_text("mine")
    _exp(with_image=False).save(other)  # other files beside ours are fine, and kept
    assert (other / "notes.txt").read_text() == "mine"
