"""Evaluation with TAM's plausibility metrics (Obj-IoU, Func-IoU, F1-IoU, precision, recall).

- ``metrics``: the per-sample computation of xmed-lab/TAM's ``eval.py`` ``evaluate()`` (OpenCV-exact bilinear
  resize and Otsu on uint8 maps, reimplemented in numpy) and the data-set pooling;
- ``words``: tokens -> words -> word types (NLTK as TAM, or an offline fallback) -> category labels;
- ``datasets``: loaders for TAM's released COCO 2014 / GranDf / OpenPSG layouts;
- ``run``: generate once, explain with every method, append JSON lines, resume, shard over torchrun ranks,
  merge, report; its concerns one module each: ``options``, ``distributed`` (torchrun), ``store`` (the output
  folder: JSON-line shards, run.json), ``runner`` (one sample), ``summary`` (pooled metrics, the table);
- ``cli``: ``mmx-fast eval`` and ``python -m mmx_fast.eval``.

Importing this package does not import transformers (models load only in ``run``).
"""

from .datasets import COCO_CATEGORIES, EvalDataset, Sample, load_dataset, load_mask
from .metrics import (
    PooledMetrics,
    SampleScores,
    evaluate_answer,
    evaluate_sample,
    otsu_threshold_u8,
    pool,
    resize_bilinear_u8,
)
from .words import (
    CallableWordTyper,
    FallbackWordTyper,
    NltkWordTyper,
    WordTyper,
    get_word_typer,
    group_words,
    word_labels,
)

__all__ = [
    "COCO_CATEGORIES",
    "CallableWordTyper",
    "EvalDataset",
    "FallbackWordTyper",
    "NltkWordTyper",
    "PooledMetrics",
    "Sample",
    "SampleScores",
    "WordTyper",
    "evaluate_answer",
    "evaluate_sample",
    "get_word_typer",
    "group_words",
    "load_dataset",
    "load_mask",
    "otsu_threshold_u8",
    "pool",
    "resize_bilinear_u8",
    "word_labels",
]
