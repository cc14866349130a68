"""TAM's official code (xmed-lab/TAM ``tam.py``), driven the way its demo drives it, for comparison.

Never vendored and never run in CI: set ``TAM_SRC`` to a checkout of https://github.com/xmed-lab/TAM (its
``tam.py`` imports cv2, fitz (PyMuPDF) and scipy; install them yourself). Without ``TAM_SRC`` everything
here reports "unavailable" and the benchmarks skip.

The demo calls ``TAM(tokens, vision_shape, logits, special_ids, vis_inputs, processor, save_fn, i,
raw_map_records, eval_only)`` once per generation round ``i`` with ``logits = [model.lm_head(f[-1]) for f
in outputs.hidden_states]``: ``logits[0]`` = one ``lm_head`` call over the prompt ([1, L, V]) and
``logits[i]`` = one call at the position that produced answer token i ([1, 1, V]). Here the logits come
from the same scale-1.0 hidden states our ``tam`` preset uses: generation's states, one ``lm_head`` call per
round as the demo makes them (``per_round=True``), or a teacher-forced forward's states (forced answers),
one call over all positions as the model's forward makes them; ``save_fn=''`` (TAM's evaluation mode: no
visualisation written).
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import torch
import torch.nn.functional as F


def load_tam() -> tuple[ModuleType | None, str]:
    """(TAM's ``tam`` module, "") or (None, why not)."""
    src = os.environ.get("TAM_SRC", "").strip()
    if not src:
        return None, "TAM_SRC is not set (point it at a checkout of xmed-lab/TAM to compare with it)"
    if not os.path.isfile(os.path.join(src, "tam.py")):
        return None, f"TAM_SRC={src!r} has no tam.py"
    if src not in sys.path:
        sys.path.insert(0, src)
    try:
        mod = importlib.import_module("tam")
    except Exception as err:  # cv2 / fitz / scipy missing, or another module called tam
        return None, f"importing tam.py from TAM_SRC failed: {err!r}"
    if not hasattr(mod, "TAM"):
        return None, f"the tam module imported from {getattr(mod, '__file__', '?')} has no TAM()"
    return mod, ""


def special_ids_for(adapter, base) -> dict:
    """TAM's ``special_ids`` for a Qwen2-VL-family chat prompt: the image between vision start / end, the
    prompt between vision end and the chat tail (end of turn, assistant header), the answer after it."""
    tok = adapter.tokenizer
    vs = tok.convert_tokens_to_ids("<|vision_start|>")
    ve = tok.convert_tokens_to_ids("<|vision_end|>")
    tail = base.input_ids[base.prompt_span[1] :]
    return {"img_id": [vs, ve], "prompt_id": [ve, list(tail)], "answer_id": [list(tail[1:]), -1]}


def tam_logit_list(
    h1: torch.Tensor, w_u: torch.Tensor, prompt_len: int, num_answer: int, per_round: bool = False
) -> list:
    """TAM's ``logit_list``: per_round (generation's states) one ``lm_head`` call per round, as the demo
    makes them; otherwise (a teacher-forced forward's states) one call over every position, split per
    round."""
    x = h1.to(w_u.dtype)
    if per_round:
        out = [F.linear(x[None, :prompt_len], w_u)]
        out += [F.linear(x[None, prompt_len - 1 + i : prompt_len + i], w_u) for i in range(1, num_answer)]
        return out
    logits = F.linear(x, w_u)
    out = [logits[:prompt_len][None]]
    out += [logits[prompt_len - 1 + i][None, None] for i in range(1, num_answer)]
    return out


def official_tam_maps(tam_mod, adapter, processor, base, image, answer, h1, w_u, per_round=False):
    """uint8 maps [T, H, W] from TAM's own ``TAM()``, one call per answer token as in its demo."""
    import numpy as np

    tokens = base.input_ids + list(answer)
    logit_list = tam_logit_list(h1, w_u, base.length, len(answer), per_round)
    special = special_ids_for(adapter, base)
    shape = (int(base.grid[0]), int(base.grid[1]))
    records: list = []
    maps = []
    for i in range(len(answer)):
        m = tam_mod.TAM(tokens, shape, logit_list, special, [image], processor, "", i, records, True)
        maps.append(np.asarray(m, dtype=np.uint8).reshape(shape))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return np.stack(maps, 0)
