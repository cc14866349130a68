"""The evaluation harness: TAM's metrics on hand-built maps, the data-set loaders, and the runner end to end
(single process == 2-rank torchrun; an interrupted run resumes to the same table)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_jpeg, write_png_mask
from PIL import Image

from mmx_fast.eval import datasets as D
from mmx_fast.eval import distributed, options, runner, store
from mmx_fast.eval import metrics as M
from mmx_fast.eval import run as R
from mmx_fast.eval import words as W

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# OpenCV-exact primitives (golden values from cv2 4.10: cv2.resize(a, (w, h)), cv2.threshold(..., OTSU))
def test_resize_matches_opencv_fixed_point():
    a = np.array([[0, 255], [255, 0]], np.uint8)
    want = np.array([[0, 25, 127, 229, 255], [128, 127, 128, 127, 128], [255, 229, 127, 25, 0]], np.uint8)
    np.testing.assert_array_equal(M.resize_bilinear_u8(a, (3, 5)), want)  # float bilinear would give 127.5s
    b = np.array([[10, 200, 37], [90, 3, 255]], np.uint8)
    want_b = np.array(
        [
            [10, 37, 118, 200, 130, 60, 37],
            [30, 47, 99, 151, 125, 100, 92],
            [70, 67, 60, 52, 116, 179, 201],
            [90, 77, 40, 3, 111, 219, 255],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(M.resize_bilinear_u8(b, (4, 7)), want_b)
    c = (np.arange(16, dtype=np.uint8) * 16).reshape(4, 4)
    np.testing.assert_array_equal(
        M.resize_bilinear_u8(c, (3, 3)), [[13, 35, 56], [99, 120, 141], [184, 205, 227]]
    )
    np.testing.assert_array_equal(
        M.resize_bilinear_u8(c, (2, 2)), [[40, 72], [168, 200]]
    )  # 2x down: INTER_AREA
    np.testing.assert_array_equal(M.resize_bilinear_u8(b, (2, 3)), b)  # same size: identity
    with pytest.raises(ValueError, match="uint8"):
        M.resize_bilinear_u8(b.astype(np.float32), (4, 4))


def test_otsu_on_uint8_maps():
    assert M.otsu_threshold_u8(np.array([10] * 50 + [200] * 50, np.uint8)) == 10  # first maximiser wins
    assert M.otsu_threshold_u8(np.array([0] * 30 + [1] * 30 + [254] * 40, np.uint8)) == 1
    assert M.otsu_threshold_u8(np.full((5, 5), 77, np.uint8)) == 0  # no split: 0, everything is foreground
    assert M.otsu_threshold_u8(np.zeros((5, 5), np.uint8)) == 0
    d = np.array([[165, 166, 67, 20], [0, 37, 42, 0], [0, 254, 108, 14]], np.uint8)
    r = M.resize_bilinear_u8(d, (7, 9))
    assert int(r.sum()) == 4540
    t = M.otsu_threshold_u8(r)
    assert t == 90 and int((r > t).sum()) == 20


# ----------------------------------------------------------------------------------------------------
# words
def test_group_words_follows_tam():
    raw = ["Ġa", "Ġted", "dy", "'s", ".", "Ċ", "The", "▁cat", "", "Ġ中"]
    dec = [" a", " ted", "dy", "'s", ".", "\n", "The", "cat", "", " 中"]
    words, groups = W.group_words(raw, dec)
    assert words == ["a", "teddy's", ".\nThe", "cat", "", "中"]
    assert groups == [[0], [1, 2, 3], [4, 5, 6], [7], [8], [9]]
    assert (
        W.is_punctuation("./")
        and not W.is_punctuation(".,")
        and W.is_punctuation("")
        and not W.is_punctuation("'s")
    )


def test_word_labels_last_category_wins_and_fallback_plurals():
    fb = W.FallbackWordTyper()
    cats = D.COCO_CATEGORIES
    # TAM quirk kept: "dog" also matches "hot dog", which comes later in TAM's dict
    assert W.word_label(fb, "dog", cats) == 58
    assert W.word_label(fb, "Dogs", cats) == 58
    assert W.word_label(fb, "people", cats) == W.LABEL_OTHERS  # not a noun for the fallback, not "person"
    assert W.word_label(fb, "glasses", cats) == 46
    assert W.word_label(fb, "buses", cats) == 6
    assert W.word_label(fb, "mice", cats) == 74
    assert W.word_label(fb, "the", cats) == W.LABEL_FUNCTION
    assert W.word_label(fb, "on", cats) == W.LABEL_OTHERS
    assert W.word_label(fb, "hot-dog", {"hotdog": 7}) == 7  # "-" removed before matching


def test_nltk_typer_tag_mapping_with_injected_tagger():
    tags = {"the": "DT", "dog": "NN", "people": "NNS", "in": "IN", "two": "CD", "its": "PRP$", "runs": "VBZ"}
    lemmas = {"dogs": "dog", "people": "people"}
    t = W.NltkWordTyper(pos_tag=lambda ws: [(ws[0], tags[ws[0]])], lemmatize=lambda w: lemmas.get(w, w))
    cats = {"person": 1, "dog": 18}
    assert [W.word_label(t, w, cats) for w in ["the", "dog", "people", "in", "two", "its", "runs"]] == [
        -2,
        18,
        -1,  # a noun outside the categories (TAM's WordNet keeps "people")
        -3,
        -3,
        -2,
        -3,
    ]


def test_get_word_typer_specs(tmp_path, monkeypatch):
    assert W.get_word_typer("fallback").name == "fallback"
    auto = W.get_word_typer("auto")
    assert auto.name in ("nltk", "fallback")
    (tmp_path / "my_typer_mod.py").write_text("def kind(word):\n    return 'noun'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    t = W.get_word_typer("my_typer_mod:kind")
    assert t.word_type("x", []) == "noun" and t.name == "kind"
    assert W.get_word_typer(lambda w: "others").word_type("x", []) == "others"
    with pytest.raises(ValueError, match="module:attribute"):
        W.get_word_typer("nonsense")


# ----------------------------------------------------------------------------------------------------
# one sample, hand-built maps and masks (grid == mask size, so the resize is the identity)
def _mask():
    m = np.zeros((4, 4), np.uint8)
    m[0:2, 0:3] = 3  # 6 pixels of category 3
    m[3, :] = 5  # 4 pixels of category 5
    return m


def _hot(cells, value=255, shape=(4, 4)):
    a = np.zeros(shape, np.uint8)
    for y, x in cells:
        a[y, x] = value
    return a


def test_obj_iou_precision_recall_and_multi_token_words():
    tl = [(0, 0), (0, 1), (1, 0), (1, 1)]
    maps = np.stack(
        [
            _hot(tl),  # word "cat" token 1: TP 4, union 6
            _hot(tl[:1]),  # word "cat" token 2: TP 1, union 6 -> the word keeps the max (token 1)
            _hot([(3, 0), (3, 1), (0, 3)]),  # word "dog": TP 2, pred 3, gt 4, union 5
        ]
    )
    s = M.evaluate_sample(maps, [[0, 1], [2]], [3, 5], _mask())
    assert s.obj_iou == pytest.approx([4 / 6, 2 / 5])
    assert s.precision == pytest.approx([1.0, 2 / 3])
    assert s.recall == pytest.approx([4 / 6, 2 / 4])
    assert s.noun_thresholds == [0, 0]  # binary maps: Otsu threshold 0
    assert s.func_iou == []  # no function word


def test_func_iou_threshold_and_nouns_outside_categories():
    graded = np.array([[0, 10, 20, 30]] * 4, np.uint8)  # Otsu threshold 10 on this map
    flat = np.full((4, 4), 40, np.uint8)  # constant: threshold 0
    func1 = np.array([[0, 4, 5, 6]] * 4, np.uint8)
    func2 = np.array([[9, 0, 0, 0]] * 4, np.uint8)
    maps = np.stack([graded, flat, func1, func2, func1])
    # words: "apple" (noun, not a category), "cat" (category 3), "the" (function, 2 tokens), "on" (other)
    s = M.evaluate_sample(maps, [[0], [1], [2, 3], [4]], [-1, 3, -2, -3], _mask())
    assert M.otsu_threshold_u8(graded) == 10
    assert s.noun_thresholds == [10, 0]
    assert s.func_threshold == 5.0
    # cells strictly below 5: func1 -> 2 of 4 columns, func2 -> 3 of 4; the word's value is their mean
    assert s.func_iou == pytest.approx([0.625])
    assert len(s.obj_iou) == 1  # the unmatched noun adds a threshold, not an IoU
    # without any noun there is no Func-IoU at all
    assert M.evaluate_sample(maps[2:4], [[0, 1]], [-2], _mask()).func_iou == []


def test_merging_consecutive_same_label_words_and_tams_quirk():
    good = _hot([(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)])  # IoU 1 with category 3
    half = _hot([(0, 0), (0, 1), (0, 2)])  # IoU 0.5
    dog = _hot([(3, 0), (3, 1)])  # IoU 0.5 with category 5
    # "tennis racket": consecutive words with the same label are one object (max)
    s = M.evaluate_sample(np.stack([half, good]), [[0], [1]], [3, 3], _mask())
    assert s.obj_iou == [1.0] and s.precision == [1.0] and s.recall == [1.0]
    # "cat dog teddy bear" where "teddy bear" (88) is absent from the mask: TAM merges cat and dog anyway
    maps = np.stack([half, dog, good, good])
    tam = M.evaluate_sample(maps, [[0], [1], [2], [3]], [3, 5, 88, 88], _mask(), merge="tam")
    strict = M.evaluate_sample(maps, [[0], [1], [2], [3]], [3, 5, 88, 88], _mask(), merge="strict")
    assert tam.obj_iou == [0.5] and len(tam.precision) == len(tam.recall) == 1
    assert strict.obj_iou == [0.5, 0.5]
    assert tam.noun_thresholds == strict.noun_thresholds and len(tam.noun_thresholds) == 4


def test_missing_mask_empty_prediction_and_bad_inputs():
    maps = np.stack([_hot([(0, 0)]), np.zeros((4, 4), np.uint8)])
    s = M.evaluate_sample(maps, [[0], [1]], [3, -2], None)  # TAM: a grid-sized empty mask
    assert s.obj_iou == [] and s.noun_thresholds == [0] and s.func_iou == [0.0]
    s = M.evaluate_sample(maps[1:], [[0]], [3], _mask())  # constant map: empty prediction
    assert s.obj_iou == [0.0] and s.precision == [0.0]  # TAM: NaN; defined as 0
    with pytest.raises(ValueError, match="cover"):
        M.evaluate_sample(maps, [[0]], [3], _mask())


def test_resized_evaluation_and_crop_placement():
    grid = np.array([[0, 255], [0, 0]], np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[0:4, 4:8] = 3
    s = M.evaluate_sample(grid[None], [[0]], [3], mask)
    up = M.resize_bilinear_u8(grid, (8, 8))
    pred = up > M.otsu_threshold_u8(up)
    gt = mask == 3
    assert s.obj_iou == pytest.approx([(pred & gt).sum() / (pred | gt).sum()])
    placed = M.place_map(grid, (8, 8), (4, 0, 8, 4))
    assert placed[4:, :].sum() == 0 and placed[:, :4].sum() == 0
    np.testing.assert_array_equal(placed[0:4, 4:8], M.resize_bilinear_u8(grid, (4, 4)))
    assert M.box_in_mask((0.25, 0.0, 0.75, 1.0), (10, 8)) == (2, 0, 6, 10)


def test_pooling_is_over_values_not_images():
    a = M.SampleScores(obj_iou=[1.0], func_iou=[0.2], precision=[1.0], recall=[0.5])
    b = M.SampleScores(obj_iou=[0.0, 0.0], func_iou=[0.8, 0.8, 0.8], precision=[0.0, 1.0], recall=[0.0, 0.0])
    p = M.pool([a, b.to_dict()])
    assert p.obj_iou == pytest.approx(1 / 3)  # per-image averaging would give 0.5
    assert p.func_iou == pytest.approx(2.6 / 4)
    assert p.f1_iou == pytest.approx(2 * (1 / 3) * 0.65 / (1 / 3 + 0.65))
    assert p.precision == pytest.approx(2 / 3) and p.recall == pytest.approx(1 / 6)
    assert (p.n_obj, p.n_func, p.n_samples) == (3, 4, 2)
    empty = M.pool([])
    assert math.isnan(empty.obj_iou) and empty.to_dict()["obj_iou"] is None
    assert M.f1_iou(0.0, 0.0) == 0.0


# ----------------------------------------------------------------------------------------------------
# loaders


def make_coco(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "image").mkdir()
    (root / "seg_label").mkdir()
    ids = [139, 285, 632]
    inst = {"images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in ids]}
    caps = {"annotations": [{"image_id": 139, "caption": "a room"}, {"image_id": 285, "caption": "a bear"}]}
    (root / D.COCO_INSTANCES).write_text(json.dumps(inst))
    (root / D.COCO_CAPTIONS).write_text(json.dumps(caps))
    for k, i in enumerate(ids):
        if i != 632:  # image 632 is missing
            write_jpeg(root / "image" / f"{i:012d}.jpg", 48, 64, k)
        if i != 285:  # mask 285 is missing
            write_png_mask(root / "seg_label" / f"{i:012d}.png", 48, 64, (1, 23))
    return root


def make_anno(root: Path, n: int = 5, sizes=None) -> Path:
    root.mkdir(parents=True)
    sizes = sizes or [(60, 80), (84, 84), (56, 100), (70, 62), (90, 70), (64, 64)]
    items = []
    for k in range(n):
        h, w = sizes[k % len(sizes)]
        img, mask = f"images/{k:03d}.jpg", f"masks/{k:03d}.png"
        (root / "images").mkdir(exist_ok=True)
        (root / "masks").mkdir(exist_ok=True)
        if k != 2:  # sample 2 has no image
            write_jpeg(root / img, h, w, 100 + k)
        if k != 3:  # sample 3 has no mask
            write_png_mask(root / mask, h, w)
        items.append([img, f"caption {k}", mask, {"cat": 3, "dog": 5}])
    (root / "anno.json").write_text(json.dumps(items))
    return root


def test_coco_loader(tmp_path):
    ds = D.load_dataset(make_coco(tmp_path / "coco2014"))
    assert (
        ds.layout == "coco" and ds.prompt == D.COCO_PROMPT == "Write a one-sentence caption for this image:"
    )
    assert [s.id for s in ds.samples] == ["139", "285", "632"]
    s = ds.samples[0]
    assert s.image.endswith("image/000000000139.jpg") and s.mask.endswith("seg_label/000000000139.png")
    assert s.categories["teddy bear"] == 88 and list(s.categories)[-1] == "toothbrush"
    assert s.captions == ("a room",)
    assert ds.missing_images == ["632"] and ds.missing_masks == ["285"]
    assert any("no reference caption" in p for p in ds.problems)
    m = D.load_mask(s.mask)
    assert m.dtype == np.uint8 and m.shape == (48, 64) and set(np.unique(m)) == {0, 1, 23}


def test_grandf_and_openpsg_loaders(tmp_path):
    g = D.load_dataset(make_anno(tmp_path / "GranDf_eval", n=4))
    assert (
        g.layout == "grandf" and g.prompt == "Write a description for this image using around two sentences:"
    )
    assert [s.id for s in g.samples] == [f"images/{k:03d}.jpg" for k in range(4)]
    assert g.missing_images == ["images/002.jpg"] and g.missing_masks == ["images/003.jpg"]
    assert g.samples[0].categories == {"cat": 3, "dog": 5} and g.samples[0].captions == ("caption 0",)
    o = D.load_dataset(make_anno(tmp_path / "openpsg", n=2))
    assert o.layout == "openpsg" and "three sentences" in o.prompt
    plain = make_anno(tmp_path / "other", n=1)
    with pytest.raises(ValueError, match="--dataset"):
        D.load_dataset(plain)
    assert D.load_dataset(plain, "openpsg", prompt="Describe.").prompt == "Describe."
    with pytest.raises(ValueError, match="TAM-format"):
        D.load_dataset(tmp_path)


def test_mask_encodings(tmp_path):
    idx = np.array([[0, 3], [5, 3]], np.uint8)
    p = Image.fromarray(idx, mode="P")
    p.putpalette([0, 0, 0, 10, 10, 10, 20, 20, 20, 200, 0, 0, 0, 0, 0, 0, 255, 0] + [0] * 750)
    p.save(tmp_path / "p.png")
    np.testing.assert_array_equal(D.load_mask(tmp_path / "p.png"), idx)  # palette indices, not colours
    Image.fromarray(np.stack([idx] * 3, -1)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(D.load_mask(tmp_path / "rgb.png"), idx)
    Image.fromarray(np.stack([idx, idx * 0, idx], -1)).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match="colour"):
        D.load_mask(tmp_path / "colour.png")


# ----------------------------------------------------------------------------------------------------
# JSON lines
def test_jsonl_append_resume_ignores_and_cuts_partial_line(tmp_path):
    path = tmp_path / "shard-000-of-001.jsonl"
    with store.JsonlAppender(path) as w:
        w.append({"id": "a", "status": "ok"})
    with open(path, "ab") as f:
        f.write(b'{"id": "b", "sta')  # a write cut short by a kill
    recs, bad = store.read_jsonl(path)
    assert [r["id"] for r in recs] == ["a"] and bad == 1
    with store.JsonlAppender(path) as w:  # the owner cuts the partial line before appending
        assert w.cut == len(b'{"id": "b", "sta')
        w.append({"id": "b", "status": "ok"})
    recs, bad = store.read_jsonl(path)
    assert [r["id"] for r in recs] == ["a", "b"] and bad == 0


def test_view_box_for_centre_cropping_processor():
    from mmx_fast.fast import Explainer
    from mmx_fast.testing import tiny_model

    model, proc = tiny_model("llava")
    ad = Explainer(model, proc, "logit-lens").adapter
    img = Image.new("RGB", (200, 90))
    # CLIP: shortest edge 90 -> 112, so 200 -> 248; centre crop 112 starts at (248 - 112) // 2 = 68
    assert ad.view_box(img) == pytest.approx((68 / 248, 0.0, 180 / 248, 1.0))
    assert ad.view_box(Image.new("RGB", (50, 50))) is None  # square: the crop is the whole image
    model, proc = tiny_model("qwen2_vl")
    assert Explainer(model, proc, "logit-lens").adapter.view_box(img) is None


# ----------------------------------------------------------------------------------------------------
# end to end on a tiny model
TYPER_MODULE = """
from mmx_fast.eval.words import CallableWordTyper

def _kind(word):
    return ("noun", "function", "others")[sum(map(ord, word)) % 3]

TYPER = CallableWordTyper(_kind, same_word=lambda a, b: (len(a) + len(b)) % 2 == 0, name="test-typer")
"""


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    data = make_anno(root / "GranDf_tiny", n=6)
    (root / "typer").mkdir()
    (root / "typer" / "eval_test_typer.py").write_text(textwrap.dedent(TYPER_MODULE))
    sys.path.insert(0, str(root / "typer"))
    from mmx_fast.testing import tiny_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's ranks (OMP_NUM_THREADS=1): same float reductions
    try:
        mp = tiny_model("qwen2_vl")
        opts = _opts(data, root / "single")
        summary = R.run_eval(opts, model_and_processor=mp, dist=distributed.DistInfo(), echo=False)
        yield {"root": root, "data": data, "mp": mp, "summary": summary, "out": root / "single"}
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(root / "typer"))


def _opts(data, out, **kw):
    base = dict(
        model="tiny:qwen2_vl",
        data=str(data),
        out=str(out),
        methods=("msea-arc", "tam", "logit-lens"),
        max_new_tokens=6,
        word_typer="eval_test_typer:TYPER",
        progress=False,
    )
    base.update(kw)
    return options.EvalOptions(**base)


def _metrics_by_id(out: Path) -> dict:
    recs, bad = store.read_jsonl(out / "results.jsonl")
    assert bad == 0
    ids = [r["id"] for r in recs]
    assert len(ids) == len(set(ids))  # nothing counted twice
    keep = ("status", "answer_ids", "words", "labels", "groups", "methods", "mask_missing")
    return {r["id"]: {k: r.get(k) for k in keep} for r in recs}


def test_e2e_single_process_report(e2e):
    s, out = e2e["summary"], e2e["out"]
    c = s["counts"]
    assert (c["selected"], c["evaluated"], c["missing_image"], c["missing_mask"], c["error"]) == (
        6,
        5,
        1,
        1,
        0,
    )
    for m in ("msea-arc", "tam", "logit-lens"):
        r = s["methods"][m]
        assert r["n_obj"] > 0 and r["n_func"] > 0, r  # the synthetic set exercises both metrics
        assert 0 <= r["obj_iou"] <= 1 and 0 <= r["func_iou"] <= 1
    table = (out / "table.md").read_text()
    assert "| Method | Obj-IoU | Func-IoU | F1-IoU | Precision | Recall |" in table
    assert "1 missing image" in table and "test-typer" in table
    recs = _metrics_by_id(out)
    assert len(recs) == 6
    # every method scored the same answer: same words, same labels
    ok = [r for r in recs.values() if r["status"] == "ok"]
    assert all(set(r["methods"]) == {"msea-arc", "tam", "logit-lens"} for r in ok)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_e2e_torchrun_two_ranks_equals_single_process(e2e):
    out = e2e["root"] / "torchrun"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(e2e["root"] / "typer"), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "mmx_fast.eval",
        "--model", "tiny:qwen2_vl", "--data", str(e2e["data"]), "--out", str(out),
        "--max-new-tokens", "6", "--word-typer", "eval_test_typer:TYPER", "--quiet",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("shard-*.jsonl")) == [
        "shard-000-of-002.jsonl",
        "shard-001-of-002.jsonl",
    ]
    assert {r["rank"] for r in store.read_jsonl(out / "shard-001-of-002.jsonl")[0]} == {1}
    assert _metrics_by_id(out) == _metrics_by_id(e2e["out"])
    assert (out / "table.md").read_text() == (e2e["out"] / "table.md").read_text()
    assert "| Method | Obj-IoU" in proc.stdout  # rank 0 prints the table


def test_e2e_interrupted_run_resumes_to_the_same_table(e2e):
    out = e2e["root"] / "resumed"
    seen = []

    def crash_after_two(rec):
        seen.append(rec["id"])
        if len(seen) == 2:
            raise KeyboardInterrupt  # killed mid-run

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # a first run limited to 3 samples, then a run killed after 2 more
        R.run_eval(
            _opts(e2e["data"], out, limit=3),
            model_and_processor=e2e["mp"],
            dist=distributed.DistInfo(),
            echo=False,
        )
        with pytest.raises(KeyboardInterrupt):
            R.run_eval(
                _opts(e2e["data"], out),
                model_and_processor=e2e["mp"],
                dist=distributed.DistInfo(),
                after_sample=crash_after_two,
                echo=False,
            )
        shard = out / "shard-000-of-001.jsonl"
        with open(shard, "ab") as f:
            f.write(b'{"v":1,"id":"images/005.jpg","status":"o')  # the kill cut a line short
        redone = []
        summary = R.run_eval(
            _opts(e2e["data"], out),
            model_and_processor=e2e["mp"],
            dist=distributed.DistInfo(),
            after_sample=lambda r: redone.append(r["id"]),
            echo=False,
        )
    finally:
        torch.set_num_threads(threads)
    # finished samples were not redone (the missing image is retried, it costs nothing)
    assert sorted(redone) == ["images/002.jpg", "images/004.jpg", "images/005.jpg"]
    assert summary["counts"] == e2e["summary"]["counts"]
    assert _metrics_by_id(out) == _metrics_by_id(e2e["out"])
    assert (out / "table.md").read_text() == (e2e["out"] / "table.md").read_text()
    # other settings into the same folder are refused
    with pytest.raises(ValueError, match="other settings"):
        R.run_eval(
            _opts(e2e["data"], out, placement="crop"),
            model_and_processor=e2e["mp"],
            dist=distributed.DistInfo(),
        )


def test_cli_entry_points(e2e, tmp_path, capsys):
    import argparse

    from mmx_fast.eval import cli

    parser = cli.add_arguments(argparse.ArgumentParser())
    args = parser.parse_args(
        ["--model", "tiny:llava", "--data", "d", "--out", "o", "--methods", "tam", "--limit", "2"]
    )
    assert (
        args.methods == ["tam"]
        and args.limit == 2
        and args.placement == "stretch"
        and args.max_new_tokens == 256
    )
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--data", "d", "--out", "o", "--methods", "gradcam"])
    # standalone entry point, a LLaVA model, crop placement, one method, stop token explained
    code = cli.main(
        [
            "--model", "tiny:llava", "--data", str(e2e["data"]), "--out", str(tmp_path / "o"), "--methods", "tam",
            "--limit", "2", "--max-new-tokens", "3", "--placement", "crop", "--include-stop-token",
            "--word-typer", "eval_test_typer:TYPER", "--quiet", "--save-maps",
        ]
    )  # fmt: skip
    assert code == 0
    assert "| TAM (tam) |" in capsys.readouterr().out
    recs, _ = store.read_jsonl(tmp_path / "o" / "results.jsonl")
    assert recs[0]["placement_box"] is not None  # 80x60 image: LLaVA saw the centre crop
    with np.load(tmp_path / "o" / "maps" / "0000000.npz") as z:
        assert z["tam"].dtype == np.uint8 and z["tam"].shape[0] == len(recs[0]["tokens"])
    assert (
        cli.main(["--model", "tiny:llava", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
        == 2
    )


def test_generate_answer_keeps_the_stop_token_on_request():
    class Model:
        device = torch.device("cpu")

        def generate(self, **kw):
            return torch.tensor([[1, 2, 7, 8, 99, 5]])

    class Adapter:
        model = Model()

        def _pad_id(self):
            return 0

        def stop_token_ids(self):
            return {99}

    class Prompt:
        inputs = {"input_ids": torch.tensor([[1, 2]])}
        length = 2

    assert runner.generate_answer(Adapter(), Prompt(), 10, keep_stop=True) == ([7, 8], 99)
