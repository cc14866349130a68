"""One sample of ``mmx-fast eval`` (:meth:`Runner.evaluate_one`): generate the answer once, explain it with every
method from one shared forward, score the uint8 maps with TAM's metrics; the result is one JSON record."""

from __future__ import annotations

import io
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_write_bytes
from .datasets import Sample, load_mask
from .metrics import box_in_mask, evaluate_sample
from .words import WordTyper, group_words, retokenization_mismatch, token_pieces, word_labels

RECORD_VERSION = 1


def generate_answer(
    adapter: Any, prompt_inputs: Any, max_new_tokens: int, keep_stop: bool
) -> tuple[list[int], int | None]:
    """Greedy answer ids (stop token excluded) and the stop token id if generation ended on one (only looked
    for with ``keep_stop``; otherwise None)."""
    if not keep_stop:
        return adapter.generate(prompt_inputs, max_new_tokens), None
    import torch

    model = adapter.model
    inputs = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in prompt_inputs.inputs.items()}
    with torch.no_grad():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=adapter._pad_id(),
        )
    stops = adapter.stop_token_ids()
    answer: list[int] = []
    for tok in out[0, prompt_inputs.length :].tolist():
        if tok in stops:
            return answer, int(tok)
        answer.append(int(tok))
    return answer, None


@dataclass
class Runner:
    """Holds the model's explainers, the word typer and the scoring settings for a sequence of samples."""

    model: Any
    processor: Any
    methods: tuple[str, ...]
    typer: WordTyper
    max_new_tokens: int = 256
    placement: str = "stretch"
    merge: str = "tam"
    include_stop_token: bool = False
    backend: str = "auto"
    explainers: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..config import ExplainConfig
        from ..fast import Explainer

        for m in self.methods:
            cfg = ExplainConfig(method=m, max_new_tokens=self.max_new_tokens, backend=self.backend)
            self.explainers[m] = Explainer(self.model, self.processor, cfg)

    @property
    def adapter(self) -> Any:
        return self.explainers[self.methods[0]].adapter

    def evaluate_one(self, sample: Sample, save_maps_dir: Path | None = None) -> dict:
        """The JSON record of one sample (see the module docstring); never raises for a bad sample."""
        from ..images import load_image

        rec: dict[str, Any] = {"v": RECORD_VERSION, "id": sample.id, "index": sample.index}
        if not sample.image_exists:
            rec.update(status="missing_image", error=f"image file {sample.image!r} does not exist")
            return rec
        t0 = time.perf_counter()
        try:
            image = load_image(sample.image)
            ad = self.adapter
            tok = ad.tokenizer
            ids, stop = generate_answer(
                ad, ad.prepare(image, sample.prompt, 1.0), self.max_new_tokens, self.include_stop_token
            )
            explained = ids + ([stop] if stop is not None else [])
            t_gen = time.perf_counter() - t0
            raw, decoded = token_pieces(tok, explained)
            words, groups = group_words(raw, decoded) if explained else ([], [])
            labels = word_labels(self.typer, words, sample.categories)
            mask = load_mask(sample.mask) if sample.mask_exists else None
            box = None
            if self.placement == "crop" and mask is not None:
                box = box_in_mask(ad.view_box(image), mask.shape)
            methods: dict[str, Any] = {}
            times = {"generate": round(t_gen, 4)}
            arrays: dict[str, np.ndarray] = {"answer_ids": np.asarray(explained, dtype=np.int64)}
            # every method from the SAME teacher-forced forward (one batched pass over the union of scales)
            t1 = time.perf_counter()
            first = self.explainers[self.methods[0]]
            exps = first.explain_methods(
                image,
                sample.prompt,
                [self.explainers[m].config for m in self.methods],
                answer=list(explained),
            )
            times["explain_all_methods"] = round(time.perf_counter() - t1, 4)
            for m, exp in zip(self.methods, exps):
                if list(exp.answer_ids) != explained:
                    raise RuntimeError(f"method {m} explained ids {exp.answer_ids}, expected {explained}")
                maps = (
                    np.stack([exp.map_uint8(i) for i in range(len(exp))])
                    if len(exp)
                    else np.zeros((0, *exp.grid), np.uint8)
                )
                scores = evaluate_sample(maps, groups, labels, mask, box=box, merge=self.merge)
                methods[m] = scores.to_dict()
                arrays[m] = maps
                times[m] = round(exp.timings.get("attribution", 0.0), 4)
            if save_maps_dir is not None:
                buf = io.BytesIO()
                np.savez_compressed(buf, **arrays)
                atomic_write_bytes(save_maps_dir / f"{sample.index:07d}.npz", buf.getvalue())
            rec.update(
                status="ok",
                answer=tok.decode(ids, skip_special_tokens=True),
                answer_ids=ids,
                stop_token=stop,
                tokens=decoded,
                words=words,
                groups=groups,
                labels=labels,
                grid=list(maps.shape[1:]) if len(explained) else None,
                mask_missing=mask is None,
                placement_box=list(box) if box is not None else None,
                retokenization_mismatch=retokenization_mismatch(tok, explained),
                methods=methods,
                time_s=times,
            )
        except Exception as e:  # recorded, counted, retried by a re-run
            rec.update(
                status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=8)
            )
        return rec
