"""The paper-faithful pure-PyTorch path: one small function per equation, and ``explain``, the oracle."""

from .logit_lens import logit_lens_maps
from .msea import msea_aggregate, to_canonical
from .oracle import explain
from .rankings import base_vocab_id, prefix_overlaps, rbo, rbo_weights, topk_ranking
from .refine import (
    arc_weights,
    interference_map,
    least_squares_beta,
    normalize_max,
    rank_gaussian_filter,
    refine_one,
)
from .tam import tam_maps, tam_rank_gaussian_filter, tam_token_strings

__all__ = [
    "arc_weights",
    "base_vocab_id",
    "explain",
    "interference_map",
    "least_squares_beta",
    "logit_lens_maps",
    "msea_aggregate",
    "normalize_max",
    "prefix_overlaps",
    "rank_gaussian_filter",
    "rbo",
    "rbo_weights",
    "refine_one",
    "tam_maps",
    "tam_rank_gaussian_filter",
    "tam_token_strings",
    "to_canonical",
    "topk_ranking",
]
