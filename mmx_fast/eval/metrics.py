"""Obj-IoU, Func-IoU, F1-IoU (and precision / recall), computed as xmed-lab/TAM's ``eval.py`` ``evaluate()``.

Per sample (:func:`evaluate_sample`), given one uint8 map per answer token on the model's visual-token grid
(TAM's maps are ``(map * 255).astype(uint8)``; ours come from ``Explanation.map_uint8``), the answer's words
(:func:`mmx_fast.eval.words.group_words`), their labels (:func:`mmx_fast.eval.words.word_labels`), the
class-id mask (pixel value = category id) and the category dict:

- **Obj-IoU.** For every word with label > 0 (a noun matched to a category; note: a category id 0 is never
  evaluated, as in TAM) and for every token of that word: the map is resized to the mask size with OpenCV's
  bilinear ``cv2.resize`` (:func:`resize_bilinear_u8`, bit-exact), thresholded with Otsu
  (:func:`otsu_threshold_u8`, bit-exact with ``cv2.threshold(..., THRESH_BINARY + THRESH_OTSU)``: foreground
  is ``map > t``), and compared with ``gt = (mask == label)``: ``IoU = TP / |gt or pred|``,
  ``precision = TP / |pred|``, ``recall = TP / |gt|``. Only when ``gt`` is non-empty; a category named in the
  answer but absent from the mask adds no IoU (but its threshold still counts, below). The word's value is the
  max IoU over its tokens, with the precision / recall of the first token reaching that max.
- **Merging.** When a matched noun directly follows a word with the same label (``"teddy bear"``,
  ``"tennis racket"``), the last two Obj-IoU entries are merged by max (precision / recall follow the kept
  entry). TAM does this whenever the two labels are equal and there are at least two entries, *even if the
  current word added no entry* (its category is absent from the mask): then it merges two earlier, unrelated
  entries. ``merge="tam"`` (default) keeps that, so numbers compare with the paper's; ``merge="strict"`` only
  merges when the current word added an entry.
- **Func-IoU.** Every noun word (matched or not, label > 0 or -1) contributes the max over its tokens of the
  Otsu threshold of the resized map. If the sample has at least one noun, the threshold ``f`` is the mean of
  these; for every function word (label -2) the value is the mean over its tokens of the fraction of cells of
  the token's map *on the grid, not resized* with ``value < f``.
- **Missing mask.** TAM uses ``np.zeros_like(maps[0])``: a grid-sized empty mask, so maps are "resized" to
  the grid, no IoU is added, thresholds and Func-IoU still are. Same here (``mask=None``).

Data set (:func:`pool`): every value of every sample is pooled and averaged (not averaged per image first):
Obj-IoU = mean of all noun-object values, Func-IoU = mean of all function-word values, F1-IoU =
``2 * Obj * Func / (Obj + Func)`` of the pooled means, precision and recall = means over the noun-object
entries.

Where TAM would produce NaN or crash we define a value instead: precision of an empty prediction (a constant
map, Otsu threshold 0, nothing above it) is 0 (TAM: 0/0 = NaN, which would make the data-set precision NaN);
F1-IoU is 0 when both means are 0 (TAM: ZeroDivisionError); a mean over no values is NaN ("n/a" in tables).

Placement (``box``): TAM stretches the map over the whole image (``placement="stretch"``, ``box=None``), even
for LLaVA, whose processor centre-crops. ``box=(x0, y0, x1, y1)`` (mask pixels, half-open) instead resizes
the map onto that rectangle of a zero canvas of the mask size (``placement="crop"``: the region the model
saw); Otsu then runs on the whole canvas. Func-IoU uses the grid maps, so placement does not change it.

Verified: :func:`resize_bilinear_u8` equals ``cv2.resize(img, (w, h))`` (INTER_LINEAR) on 3,000 random uint8
cases (upscaling, downscaling, 2x downscaling, which OpenCV routes to INTER_AREA) with OpenCV 4.10 and 5.0;
:func:`otsu_threshold_u8` equals OpenCV 4.10's Otsu threshold on all of them (OpenCV 5.0 differs in one rare
tie); both are reimplemented here in numpy (OpenCV is not a dependency).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .words import (
    LABEL_FUNCTION,
    LABEL_NOUN_OTHER,
    WordTyper,
    group_words,
    word_labels,
)

MERGES = ("tam", "strict")
PLACEMENTS = ("stretch", "crop")

_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS  # OpenCV's INTER_RESIZE_COEF_SCALE
_FLT_EPSILON = float(np.finfo(np.float32).eps)


# --------------------------------------------------------------------------------------------------------
# OpenCV-exact primitives on uint8 maps
# --------------------------------------------------------------------------------------------------------
def _linear_taps(src: int, dst: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's per-output source index and fixed-point weights (``resize``, INTER_LINEAR, 8-bit)."""
    scale = 1.0 / (dst / src)  # OpenCV: scale_x = 1 / inv_scale_x, inv_scale_x = dsize / ssize
    f = ((np.arange(dst, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s.astype(np.float32)).astype(np.float32)
    if clamp:  # only the horizontal taps are clamped; rows are clipped when fetched
        low = s < 0
        f[low], s[low] = 0, 0
        high = s >= src - 1
        f[high], s[high] = 0, src - 1
    w0 = np.rint((np.float32(1) - f) * np.float32(_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(f * np.float32(_COEF_SCALE)).astype(np.int64)
    return s, w0, w1


def resize_bilinear_u8(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(img, (w, h))`` with the default INTER_LINEAR on a 2-D uint8 array, bit for bit.

    ``size`` is ``(h, w)``. OpenCV's fixed-point path: pixel-centre sampling ``(d + 0.5) * src/dst - 0.5``
    in float32, 11-bit weights rounded half to even, a horizontal pass in int32, a vertical pass computing
    ``((b0 * (S0 >> 4)) >> 16) + ((b1 * (S1 >> 4)) >> 16) + 2) >> 2``; an exact 2x downscale in both axes
    goes through INTER_AREA (``(a + b + c + d + 2) >> 2``), as in OpenCV."""
    a = np.asarray(img)
    if a.ndim != 2:
        raise ValueError(f"map of shape {a.shape} is not supported; expected a 2-D uint8 map")
    if a.dtype != np.uint8:
        raise ValueError(
            f"map dtype {a.dtype} is not supported; expected uint8 (TAM's (map * 255).astype(uint8))"
        )
    h, w = int(size[0]), int(size[1])
    if h < 1 or w < 1:
        raise ValueError(f"target size {size} is empty; expected (h, w) >= (1, 1)")
    sh, sw = a.shape
    if sh < 1 or sw < 1:
        raise ValueError(f"map of shape {a.shape} is empty")
    src = a.astype(np.int64)
    if sw == 2 * w and sh == 2 * h:
        out = (src[0::2, 0::2] + src[0::2, 1::2] + src[1::2, 0::2] + src[1::2, 1::2] + 2) >> 2
        return out.astype(np.uint8)
    sx, a0, a1 = _linear_taps(sw, w, clamp=True)
    sy, b0, b1 = _linear_taps(sh, h, clamp=False)
    rows = src[:, sx] * a0 + src[:, np.minimum(sx + 1, sw - 1)] * a1
    r0 = np.clip(sy, 0, sh - 1)
    r1 = np.clip(sy + 1, 0, sh - 1)
    out = (((b0[:, None] * (rows[r0] >> 4)) >> 16) + ((b1[:, None] * (rows[r1] >> 4)) >> 16) + 2) >> 2
    return out.astype(np.uint8)


def otsu_threshold_u8(img: np.ndarray) -> int:
    """Otsu's threshold of a uint8 array as OpenCV computes it (``getThreshVal_Otsu_8u``), bit for bit.

    The 256-bin histogram is scanned from 0 upwards in float64; bins where either class weight is below
    FLT_EPSILON are skipped; the first bin with the strictly largest between-class variance wins; 0 when no
    split exists (a constant map). Foreground is ``img > t`` (``THRESH_BINARY``)."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"Otsu input dtype {a.dtype} is not supported; expected uint8")
    if a.size == 0:
        raise ValueError("Otsu input is empty")
    hist = np.bincount(a.ravel(), minlength=256).tolist()
    scale = 1.0 / a.size
    mu = 0.0
    for i in range(256):
        mu += i * float(hist[i])
    mu *= scale
    mu1 = q1 = 0.0
    max_sigma = 0.0
    max_val = 0
    for i in range(256):
        p_i = hist[i] * scale
        mu1 *= q1
        q1 += p_i
        q2 = 1.0 - q1
        if min(q1, q2) < _FLT_EPSILON or max(q1, q2) > 1.0 - _FLT_EPSILON:
            continue
        mu1 = (mu1 + i * p_i) / q1
        mu2 = (mu - q1 * mu1) / q2
        sigma = q1 * q2 * (mu1 - mu2) * (mu1 - mu2)
        if sigma > max_sigma:
            max_sigma = sigma
            max_val = i
    return int(max_val)


def place_map(
    map_u8: np.ndarray, size: tuple[int, int], box: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """The grid map at the mask's size ``(h, w)``: stretched over all of it (``box=None``, TAM), or resized
    onto ``box = (x0, y0, x1, y1)`` (half-open, mask pixels) of a zero canvas."""
    if box is None:
        return resize_bilinear_u8(map_u8, size)
    h, w = int(size[0]), int(size[1])
    x0, y0, x1, y1 = (int(v) for v in box)
    x0, x1 = max(0, min(x0, w)), max(0, min(x1, w))
    y0, y1 = max(0, min(y0, h)), max(0, min(y1, h))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"placement box {box} is empty inside a {h}x{w} mask")
    out = np.zeros((h, w), dtype=np.uint8)
    out[y0:y1, x0:x1] = resize_bilinear_u8(map_u8, (y1 - y0, x1 - x0))
    return out


def box_in_mask(
    box_frac: tuple[float, float, float, float] | None, size: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """A box given as fractions of the image (x0, y0, x1, y1 in [0, 1]) in pixels of a mask of ``size``
    (h, w), rounded to the nearest pixel; None stays None (stretch)."""
    if box_frac is None:
        return None
    h, w = size
    x0, y0, x1, y1 = box_frac
    return (round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))


# --------------------------------------------------------------------------------------------------------
# one sample
# --------------------------------------------------------------------------------------------------------
@dataclass
class SampleScores:
    """What one answer contributes, in TAM's order.

    obj_iou / precision / recall: one entry per matched noun object (after merging).
    func_iou: one entry per function word (empty when the answer has no noun).
    noun_thresholds: per noun word, the max Otsu threshold over its tokens.
    func_threshold: their mean (None without nouns).
    """

    obj_iou: list[float] = field(default_factory=list)
    func_iou: list[float] = field(default_factory=list)
    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    noun_thresholds: list[int] = field(default_factory=list)
    func_threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SampleScores:
        return cls(
            obj_iou=[float(v) for v in d.get("obj_iou", [])],
            func_iou=[float(v) for v in d.get("func_iou", [])],
            precision=[float(v) for v in d.get("precision", [])],
            recall=[float(v) for v in d.get("recall", [])],
            noun_thresholds=[int(v) for v in d.get("noun_thresholds", [])],
            func_threshold=None if d.get("func_threshold") is None else float(d["func_threshold"]),
        )


def _as_maps(maps: Any) -> list[np.ndarray]:
    if hasattr(maps, "detach"):  # a torch tensor
        maps = maps.detach().cpu().numpy()
    out = []
    for i, m in enumerate(maps):
        a = np.asarray(m)
        if a.ndim != 2 or a.dtype != np.uint8:
            raise ValueError(
                f"map {i} has shape {a.shape} and dtype {a.dtype}; expected 2-D uint8 maps "
                "(Explanation.map_uint8, TAM's (map * 255).astype(uint8))"
            )
        out.append(a)
    return out


def evaluate_sample(
    maps: Any,
    groups: Sequence[Sequence[int]],
    labels: Sequence[int],
    mask: np.ndarray | None,
    *,
    box: tuple[int, int, int, int] | None = None,
    merge: str = "tam",
) -> SampleScores:
    """TAM's ``evaluate()`` for one answer (see the module docstring for every rule).

    maps:   uint8 [T, h, w] (or a list of T uint8 [h, w] maps), one per answer token.
    groups: token indices of each word (:func:`~mmx_fast.eval.words.group_words`); they must cover
            exactly tokens 0..T-1 in order.
    labels: one label per word (:func:`~mmx_fast.eval.words.word_labels`): category id, -1 unmatched noun,
            -2 function word, -3 others.
    mask:   uint8 [H, W] class-id mask, or None when missing (TAM: a grid-sized empty mask).
    box:    placement rectangle in mask pixels (None: stretch, as TAM).
    merge:  ``"tam"`` (default, TAM's behaviour) or ``"strict"``.
    """
    if merge not in MERGES:
        raise ValueError(f"merge={merge!r} is not allowed; expected one of {', '.join(MERGES)}")
    maps = _as_maps(maps)
    if len(groups) != len(labels):
        raise ValueError(f"got {len(groups)} words but {len(labels)} labels; expected one label per word")
    flat = [j for g in groups for j in g]
    if flat != list(range(len(maps))):
        raise ValueError(
            f"the words' token indices {flat[:8]}... do not cover the {len(maps)} maps exactly once in order"
        )
    scores = SampleScores()
    if not maps:
        return scores
    if mask is None:
        mask = np.zeros_like(maps[0])
        box = None
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask of shape {mask.shape} is not supported; expected a 2-D class-id mask")
    size = (int(mask.shape[0]), int(mask.shape[1]))

    resized: dict[int, tuple[int, np.ndarray]] = {}

    def otsu(j: int) -> tuple[int, np.ndarray]:
        if j not in resized:
            m = place_map(maps[j], size, box)
            t = otsu_threshold_u8(m)
            resized[j] = (t, m > t)
        return resized[j]

    obj, pre, rec = scores.obj_iou, scores.precision, scores.recall
    for i, (group, label) in enumerate(zip(groups, labels)):
        label = int(label)
        if label > 0:
            gt = mask == label
            gt_n = int(gt.sum())
            ious, pres, recs, thresh = [], [], [], []
            for j in group:
                t, pred = otsu(j)
                if gt_n != 0:
                    tp = float(np.logical_and(gt, pred).sum())
                    pred_n = int(pred.sum())
                    ious.append(tp / float(np.logical_or(gt, pred).sum()))
                    pres.append(tp / pred_n if pred_n else 0.0)  # TAM: 0/0 = NaN
                    recs.append(tp / gt_n)
                thresh.append(t)
            scores.noun_thresholds.append(max(thresh))
            if ious:
                best = max(ious)
                k = ious.index(best)
                obj.append(best)
                pre.append(pres[k])
                rec.append(recs[k])
            same_as_previous = i > 0 and int(labels[i - 1]) == label
            if len(obj) > 1 and same_as_previous and (merge == "tam" or ious):
                keep = -1 if obj[-1] > obj[-2] else -2
                obj[-2], pre[-2], rec[-2] = obj[keep], pre[keep], rec[keep]
                del obj[-1], pre[-1], rec[-1]
        elif label == LABEL_NOUN_OTHER:
            scores.noun_thresholds.append(max(otsu(j)[0] for j in group))

    if scores.noun_thresholds:
        f = sum(scores.noun_thresholds) / len(scores.noun_thresholds)
        scores.func_threshold = float(f)
        for group, label in zip(groups, labels):
            if int(label) == LABEL_FUNCTION:
                fr = [float((maps[j] < f).sum()) / maps[j].size for j in group]
                scores.func_iou.append(sum(fr) / len(fr))
    return scores


def evaluate_answer(
    maps: Any,
    raw_tokens: Sequence[str],
    decoded: Sequence[str],
    mask: np.ndarray | None,
    categories: Mapping[str, int],
    typer: WordTyper,
    *,
    box: tuple[int, int, int, int] | None = None,
    merge: str = "tam",
) -> tuple[SampleScores, list[str], list[list[int]], list[int]]:
    """Group tokens into words, label them with ``typer`` and :func:`evaluate_sample`.
    Returns (scores, words, groups, labels)."""
    words, groups = group_words(raw_tokens, decoded)
    labels = word_labels(typer, words, categories)
    return evaluate_sample(maps, groups, labels, mask, box=box, merge=merge), words, groups, labels


# --------------------------------------------------------------------------------------------------------
# the data set
# --------------------------------------------------------------------------------------------------------
@dataclass
class PooledMetrics:
    """Data-set metrics (fractions in [0, 1]; NaN when there is no value to average)."""

    obj_iou: float
    func_iou: float
    f1_iou: float
    precision: float
    recall: float
    n_obj: int
    n_func: int
    n_samples: int

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def f1_iou(obj: float, func: float) -> float:
    """Harmonic mean of the pooled Obj-IoU and Func-IoU (0 when both are 0, NaN when either is NaN)."""
    if math.isnan(obj) or math.isnan(func):
        return float("nan")
    if obj + func == 0:
        return 0.0
    return 2 * obj * func / (obj + func)


def pool(samples: Iterable[SampleScores | Mapping[str, Any]]) -> PooledMetrics:
    """Pool every value of every sample (TAM: ``values.extend(...)`` over samples, then one mean)."""
    obj: list[float] = []
    func: list[float] = []
    pre: list[float] = []
    rec: list[float] = []
    n = 0
    for s in samples:
        if not isinstance(s, SampleScores):
            s = SampleScores.from_dict(s)
        obj.extend(s.obj_iou)
        func.extend(s.func_iou)
        pre.extend(s.precision)
        rec.extend(s.recall)
        n += 1
    o, f = _mean(obj), _mean(func)
    return PooledMetrics(
        obj_iou=o,
        func_iou=f,
        f1_iou=f1_iou(o, f),
        precision=_mean(pre),
        recall=_mean(rec),
        n_obj=len(obj),
        n_func=len(func),
        n_samples=n,
    )
