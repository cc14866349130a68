"""The grounded model trained in the repo (docs/design.md §9): its scenes, its files, and what its maps mean.

The meaning test (``test_default_method_points_at_the_named_object``) runs the shipped model on a fixed
held-out set: a change that keeps fast == reference but breaks what the maps mean (a transposed grid, a wrong
token's logit, maps of the prompt instead of the answer) fails it. Nothing here trains.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmx_fast.grounded import evaluate as E
from mmx_fast.grounded.model import answer_token_id, grounded_processor, untrained_model
from mmx_fast.grounded.scenes import COLOURS, PATTERNS, held_out_scenes, make_scene, vocabulary_lines
from mmx_fast.grounded.train import chat_text, collate

# The meaning test's fixed held-out set (its thresholds are below, beside the measured values).
MEANING_SCENES = 16
MEANING_SEED = (
    40_000  # a fixed held-out stream, disjoint from training (seeds < 10_000) and the table (10_000)
)


def test_scenes_are_seeded_and_masks_match_the_drawn_objects():
    a = make_scene(np.random.default_rng(7), 3)
    b = make_scene(np.random.default_rng(7), 3)
    assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.masks, b.masks)
    c = make_scene(np.random.default_rng(8), 3)
    assert a.image.tobytes() != c.image.tobytes()
    img = np.asarray(a.image, dtype=np.int32)
    assert not (a.masks.sum(0) > 1).any()  # objects never overlap
    for i, o in enumerate(a.objects):
        inside = img[a.masks[i]]
        bright = inside[inside.sum(1) >= inside.sum(1).mean()].mean(
            0
        )  # the colour; stripes / dots are darker
        assert np.abs(bright - np.array(COLOURS[o.colour])).max() < 25, (o, bright)
        dark_share = (inside.sum(1) < 0.6 * inside.sum(1).max()).mean()
        assert (dark_share < 0.05) == (o.pattern == "plain"), (o, dark_share)
        assert a.masks[i].sum() > 400  # large objects
    background = img[~a.masks.any(0)].mean(0)
    assert np.abs(background - 118).max() < 3


def test_every_question_has_one_answer_and_names_its_object():
    rng = np.random.default_rng(3)
    for _ in range(50):
        s = make_scene(rng)
        assert len({o.colour for o in s.objects}) == len(s.objects) == len({o.pattern for o in s.objects})
        assert len(s.questions) == 2 * len(s.objects)
        for q in s.questions:
            o = s.objects[q.named]
            if q.kind == "colour":
                assert q.answer == o.colour and f" {o.pattern} " in q.prompt
            else:
                assert q.answer == o.pattern and f" {o.colour} " in q.prompt


def test_held_out_scenes_have_two_or_three_objects():
    scenes = held_out_scenes(10)
    assert sorted({len(s.objects) for s in scenes}) == [2, 3]
    again = held_out_scenes(10)
    assert all(x.image.tobytes() == y.image.tobytes() for x, y in zip(scenes, again))


def test_answers_are_one_token_and_training_labels_only_the_answer():
    processor = grounded_processor()
    tok = processor.tokenizer
    ids = {w: answer_token_id(tok, w) for w in list(COLOURS) + list(PATTERNS)}
    assert len(set(ids.values())) == len(ids)
    assert all(len(tok(line)["input_ids"]) < 12 for line in vocabulary_lines())
    s = make_scene(np.random.default_rng(0), 2)
    q = s.questions[0]
    enc = collate(processor, [s.image], [chat_text(processor, q.prompt, q.answer)])
    labelled = (enc["labels"][0] != -100).nonzero().flatten().tolist()
    n = int(enc["attention_mask"][0].sum())
    assert labelled == [n - 2, n - 1]  # the answer token and the end-of-turn token, nothing else
    assert enc["labels"][0, n - 2] == ids[q.answer] and enc["labels"][0, n - 1] == tok.eos_token_id
    image_id = tok.convert_tokens_to_ids("<|image_pad|>")
    assert int((enc["input_ids"][0] == image_id).sum()) == 16  # 112 px -> a 4x4 grid


def test_score_map_pointing_share_iou():
    s = make_scene(np.random.default_rng(11), 2)
    cov = E.cell_coverage(s.masks, (4, 4))
    assert cov.shape == (2, 4, 4) and np.all(cov.sum(0) <= 1 + 1e-9)
    on0 = ((cov[0] > 0) & (cov[0] > cov[1])).astype(float)  # the cells object 0 owns
    assert on0.sum() >= 2
    p, share, iou = E.score_map(on0, s.masks, 0)
    assert p == 1.0 and share > 0.9 and iou > 0.2
    p, share, iou = E.score_map(on0, s.masks, 1)
    assert p == 0.0 and share < 0.1 and iou < 0.05
    p, share, _ = E.score_map(np.ones((4, 4)), s.masks, 0)
    owner = np.where(cov.max(0) > 0, cov.argmax(0), -1)
    assert p == pytest.approx((owner == 0).mean()) and share == pytest.approx(cov[0].sum() / cov.sum())
    p, share, _ = E.score_map(np.zeros((4, 4)), s.masks, 0)  # no mass anywhere: share 0, not NaN
    assert share == 0.0


def test_bootstrap_interval_contains_the_mean_and_shrinks():
    rng = np.random.default_rng(0)
    v = rng.random(400)
    m, lo, hi = E.bootstrap_ci(v, np.arange(400) // 4)
    assert lo < m < hi and m == pytest.approx(v.mean())
    m2, lo2, hi2 = E.bootstrap_ci(v[:40], np.arange(40) // 4)
    assert hi2 - lo2 > hi - lo


@pytest.fixture(scope="module")
def shipped():
    import mmx_fast

    return mmx_fast.load("grounded", device="cpu")


def test_shipped_model_loads_with_its_processor(shipped):
    model, processor = shipped
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration" and model.dtype == torch.bfloat16
    from mmx_fast.loading import builtin_model_path

    weights = builtin_model_path("grounded") / "model.safetensors"
    assert weights.stat().st_size < 10_000_000
    fresh = grounded_processor()
    s = make_scene(np.random.default_rng(5), 3)
    text = chat_text(fresh, s.questions[0].prompt)
    a = processor(images=[s.image], text=[text], return_tensors="pt")
    b = fresh(images=[s.image], text=[text], return_tensors="pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def meaning(shipped):
    model, processor = shipped
    scenes = held_out_scenes(MEANING_SCENES, seed=MEANING_SEED)
    trained = E.localisation(model, processor, scenes, ("msea-arc", "grad-rollout", "uniform"))
    um, up = untrained_model()
    untrained = E.localisation(um, up, scenes, ("msea-arc", "grad-rollout"))
    acc, n = E.accuracy(model, processor, scenes)
    u_acc, _ = E.accuracy(um, up, scenes)
    return scenes, trained, untrained, (acc, u_acc), n


def _mean(scores, key):
    return float(np.mean([getattr(s, key) for s in scores]))


# Measured on the shipped model (step-500 checkpoint, docs/design.md §9) on MEANING_SCENES scenes (80 named
# tokens), seed MEANING_SEED: msea-arc share 0.414 (untrained 0.288, uniform 0.400), pointing 0.156;
# grad-rollout share 0.664, pointing 0.688 (untrained 0.397 / 0.338; uniform 0.400 / 0.272); accuracy 36%
# (untrained 0%). Thresholds: the measured values minus a margin of about 0.05.
MSEA_SHARE_MIN = 0.37
GRAD_ROLLOUT_SHARE_MIN = 0.60
GRAD_ROLLOUT_POINTING_MIN = 0.62


def test_shipped_model_is_the_trained_one(meaning):
    """The shipped weights answer far above the untrained model. They do NOT meet the issue's gate (>= 95%):
    36% is chance (the model names an attribute present in the scene without binding it to the question);
    see docs/design.md §9 and README "Does it mean anything?"."""
    _, _, _, (acc, u_acc), n = meaning
    assert n >= 60 and acc >= 0.3 and acc > u_acc + 0.2, (acc, u_acc)


def test_maps_point_at_the_named_object(meaning):
    """The meaning regression on a fixed held-out set: the default method's named-object share stays above its
    measured value minus a margin and above the untrained model's; gradient rollout, the one method whose maps
    clearly land on the named object for this model, stays above its measured share and pointing minus a
    margin and well above the untrained model and a uniform map. (The issue's targets for the default method,
    pointing >= 0.8 and share >= 0.7, are not met by this model: docs/design.md §9.)"""
    _, trained, untrained, _, _ = meaning
    ours = trained["msea-arc"]
    assert len(ours) >= 60
    assert _mean(ours, "share") >= MSEA_SHARE_MIN
    assert _mean(ours, "share") > _mean(untrained["msea-arc"], "share") + 0.05
    gr = trained["grad-rollout"]
    assert _mean(gr, "share") >= GRAD_ROLLOUT_SHARE_MIN and _mean(gr, "pointing") >= GRAD_ROLLOUT_POINTING_MIN
    for other in (untrained["grad-rollout"], trained["uniform"]):
        assert _mean(gr, "share") > _mean(other, "share") + 0.15
        assert _mean(gr, "pointing") > _mean(other, "pointing") + 0.15


def test_meaning_test_fails_for_maps_that_miss_the_object(meaning, shipped):
    """The same scoring on maps that keep their values but lose their place (the grid flipped both ways: still
    exact numbers, wrong cells) falls below the thresholds: the meaning test is not vacuous."""
    from mmx_fast.reference.baselines import baseline_maps

    scenes, _, _, _, _ = meaning
    model, processor = shipped
    flipped = []
    for r in E.named_tokens(scenes):
        m = baseline_maps(model, processor, r[1], r[2], r[3], "grad-rollout")[0].flip(0, 1)
        flipped.append(E.TokenScore(r[0], *E.score_map(m.numpy(), scenes[r[0]].masks, r[4])))
    assert _mean(flipped, "share") < GRAD_ROLLOUT_SHARE_MIN - 0.1


def test_baselines_target_the_token_and_stay_in_range(shipped):
    from mmx_fast.reference.baselines import BASELINES, baseline_maps

    model, processor = shipped
    attn = model.config._attn_implementation
    s = held_out_scenes(1, seed=MEANING_SEED)[0]
    q = s.questions[0]
    for method in BASELINES:
        m = baseline_maps(model, processor, s.image, q.prompt, q.answer, method)
        assert m.shape == (1, 4, 4) and m.dtype == torch.float32, method
        assert torch.isfinite(m).all() and m.min() >= 0 and m.max() == 1.0, method
    other = [a for a in list(COLOURS) + list(PATTERNS) if a != q.answer][0]
    a = baseline_maps(model, processor, s.image, q.prompt, q.answer, "grad-cam")
    b = baseline_maps(model, processor, s.image, q.prompt, other, "grad-cam")
    assert not torch.equal(a, b)  # the target is the explained token's logit
    assert model.config._attn_implementation == attn  # switched to eager for attention weights, then back
    with pytest.raises(ValueError, match="method='cam'"):
        baseline_maps(model, processor, s.image, q.prompt, q.answer, "cam")


def test_eval_cli_runs_the_grounded_set(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-m", "mmx_fast", "eval", "--dataset", "grounded", "--limit", "2",
         "--methods", "logit-lens", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "| logit-lens (trained) |" in r.stdout and "| uniform |" in r.stdout
    assert (out / "table.md").read_text().strip() == r.stdout.strip()
    bad = subprocess.run(
        [sys.executable, "-m", "mmx_fast", "eval", "--dataset", "grounded", "--data", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--data" in bad.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "mmx_fast", "eval", "--data", str(tmp_path), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2 and "--model is required" in missing.stderr


def test_write_results_replaces_only_its_section(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n\n## Other\n\nkept\n")
    E.write_results("table one", path)
    E.write_results("table two", path)
    text = path.read_text()
    assert text.count(E.RESULTS_HEADING) == 1 and "table one" not in text and "table two" in text
    assert text.startswith("# Results\n\n## Other\n\nkept\n") and text.index(E.RESULTS_BEGIN) > text.index(
        "kept"
    )
