"""The contract between the engine and a model family, and the ``Adapter`` base class that runs it.

An adapter knows how one family (Qwen2-VL, LLaVA-1.5, InternVL) builds its chat prompt, where its visual
tokens sit and on which grid, where the user's instruction text sits, and how to get the last-layer normed
hidden states of a teacher-forced sequence. The attribution math never touches model internals; it only
sees ``PromptInputs`` and hidden-state tensors.

The base class does all of it; a family file (``qwen2_vl.py``, ``llava.py``, ``internvl.py``) only sets its data
(class attributes below) and overrides the hooks that really differ. The mechanics live by concern in
``prompt`` (chat template, prompt span), ``geometry`` (scales, canvases, view box) and ``generation``
(batched rows, greedy generation, captured states).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from PIL import Image

from ..video import Video
from . import generation
from . import geometry as geo
from . import prompt as prompt_mod
from .geometry import Box, Geometry, TileView


@dataclass
class PromptInputs:
    """One (image, prompt) pair prepared for the model at one MSEA scale.

    inputs:           processor outputs for batch size 1 (``input_ids`` [1, L], ``attention_mask``, pixel
                      tensors, ``image_grid_thw`` / ``mm_token_type_ids`` where the family needs them).
    visual_positions: LongTensor [N], sequence positions of the LLM visual tokens, row-major over ``grid``.
    grid:             (h, w) of the visual tokens at this scale; ``h * w == N``.
    prompt_span:      (start, end), half-open sequence positions of the user's instruction text tokens (no
                      template, special or image tokens).
    scale:            the MSEA scale alpha these inputs were built for.
    coverage:         ``(fy, fx)``; for dynamic-resolution families (1.0, 1.0): the grid shows the whole image.
                      For fixed-size families the image was pasted top-left on a canvas: fy = fx = alpha
                      (alpha < 1: only the top-left alpha fraction of this grid shows the image; alpha > 1:
                      this grid shows only the top-left 1/alpha fraction of the image).
    image:            the image actually given to the processor at this scale (for overlays / debugging).
    text:             the rendered chat prompt.
    base_image:       fixed-size families: the processed scale-1.0 image the canvas was built from; else None.
    model_image_hw:   (height, width) in pixels of the image the model saw (after the processor's resizing).
    temporal:         video only (``mmx_fast.video``): t of the (t, h, w) visual grid after the model's temporal
                      merge (map k covers frames 2k, 2k + 1); ``visual_positions`` are then row-major over
                      (t, h, w) and ``grid`` is one frame's (h, w). None for an image.
    views:            tiled families: the views (thumbnail, tiles) as slices of ``visual_positions``, each with its
                      grid and the box of the image it shows (``geometry.TileView``); ``grid`` is then the stitched
                      tile grid. None for single-view families (the one view is ``grid`` with ``coverage``).
    """

    inputs: dict[str, torch.Tensor]
    visual_positions: torch.Tensor
    grid: tuple[int, int]
    prompt_span: tuple[int, int]
    scale: float = 1.0
    coverage: tuple[float, float] = (1.0, 1.0)
    image: Image.Image | None = None
    text: str = ""
    base_image: Image.Image | None = None
    model_image_hw: tuple[int, int] | None = None
    temporal: int | None = None
    views: tuple[TileView, ...] | None = None

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[-1])

    @property
    def input_ids(self) -> list[int]:
        return self.inputs["input_ids"][0].tolist()

    @property
    def frames(self) -> int:
        """Maps per id: t for a video, 1 for an image."""
        return self.temporal or 1

    def stack_shape(self, m: int) -> tuple[int, int, int]:
        """Shape of ``m`` ids' maps over this input's visual tokens, one frame per map: [m * t, h, w]
        (id-major, then t)."""
        return (m * self.frames, *self.grid)


# The model types whose adapter explains video, named when another family refuses a video. Filled in by
# ``adapters/registry.py``, which knows the families (this module must not import it: a cycle).
VIDEO_MODEL_TYPES: list[str] = []


class Adapter:
    """Base class. A family sets ``family``, ``model_types``, ``geometry`` (and where needed
    ``processor_kwargs``); ``config_types`` and ``processor_classes`` follow from
    ``model_types``."""

    # --- a family's data ----------------------------------------------------------------------------
    family: ClassVar[str] = ""
    # config.model_type -> the transformers processor class that family's checkpoints use.
    model_types: ClassVar[Mapping[str, str]] = {}
    # How an image at an MSEA scale becomes the visual-token grid (see ``geometry``).
    geometry: ClassVar[Geometry] = Geometry()
    # Extra keyword arguments for every processor call (e.g. InternVL: ``crop_to_patches=False``).
    processor_kwargs: ClassVar[dict[str, Any]] = {}
    # Keys of processor outputs that are per-token ([1, L]); every other tensor is per-image and is concatenated
    # along dim 0 when rows are batched (pixel_values, image_grid_thw, image_sizes, ...).
    token_keys: ClassVar[tuple[str, ...]] = (
        "input_ids",
        "attention_mask",
        "mm_token_type_ids",
        "token_type_ids",
    )
    # Per-token keys whose answer part is not 0 in a teacher-forced row (PaliGemma: ``token_type_ids`` 1, the
    # causal suffix after its bidirectional prefix; generation gives generated tokens the same value).
    answer_token_types: ClassVar[Mapping[str, int]] = {}
    # Processor outputs the model must not get (PaliGemma's training ``labels``).
    drop_keys: ClassVar[tuple[str, ...]] = ()
    # False where the visual tokens' states depend on text after them (PaliGemma's bidirectional prefix): a
    # pass that stops after the last visual token would then change them.
    causal_visual_states: ClassVar[bool] = True
    # How the fast path groups its teacher-forced forwards (``forward_hidden_rows``, docs/design.md §2): rows
    # of similar length share a right-padded batch while the padding stays within ``bucket_waste`` of the
    # real tokens and the batch within ``bucket_tokens`` padded tokens (which also bounds its activations).
    bucket_waste: ClassVar[float] = 0.1
    bucket_tokens: ClassVar[int] = 8192
    # Derived from ``model_types``: the accepted config types and processor class names (anywhere in the MRO).
    config_types: ClassVar[tuple[str, ...]] = ()
    processor_classes: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model_types" in cls.__dict__:  # a family's own explicit values win
            if "config_types" not in cls.__dict__:
                cls.config_types = tuple(cls.model_types)
            if "processor_classes" not in cls.__dict__:
                cls.processor_classes = tuple(dict.fromkeys(cls.model_types.values()))

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor

    # --- inputs ------------------------------------------------------------------------------------
    def prepare(self, image: Image.Image | Video, prompt: str, scale: float = 1.0) -> PromptInputs:
        """Chat prompt with the image at ``scale`` (RGB PIL in, see ``mmx_fast.images``); the image is laid out
        by the family's ``geometry``. A ``mmx_fast.video.Video`` goes to ``prepare_video``."""
        scale = geo.check_scale(scale)
        if isinstance(image, Video):
            return self.prepare_video(image, prompt, scale)
        ip = self.processor.image_processor
        view = self.geometry.view(ip, geo.rgb(image), scale, self.processor_kwargs)
        text = self.chat_text(prompt)
        inputs = self.run_processor(view.image, text, **view.overrides)
        vis = self.visual_positions_of(inputs["input_ids"])
        views = None
        if isinstance(self.geometry, geo.Tiled):
            try:
                layout = self.geometry.layout(self, inputs, view)
            except ValueError as e:
                raise ValueError(f"{self.model_type}: {e}") from None
            self.check_token_count(
                vis.numel(), layout.expected, f"the {layout.grid[0]}x{layout.grid[1]} tiled layout"
            )
            if layout.keep is not None:
                vis = vis[layout.keep]
            grid, model_hw, views = layout.grid, layout.model_hw, layout.views
            self.check_token_count(views[-1].stop if views else 0, vis.numel(), "its views")
        else:
            self.check_token_count(
                vis.numel(),
                self.expected_visual_tokens(inputs),
                f"its {type(self.geometry).__name__} geometry",
            )
            try:
                grid, model_hw = self.geometry.grid(ip, inputs, vis.numel(), view)
            except ValueError as e:
                raise ValueError(f"{self.model_type}: {e}") from None
            self.check_token_count(vis.numel(), grid[0] * grid[1], f"the {grid[0]}x{grid[1]} grid")
        return PromptInputs(
            inputs=inputs,
            visual_positions=vis,
            grid=grid,
            prompt_span=self.find_prompt_span(text, prompt, inputs["input_ids"]),
            scale=scale,
            coverage=view.coverage,
            image=view.image,
            text=text,
            base_image=view.base_image,
            model_image_hw=model_hw,
            views=views,
        )

    def prepare_video(self, video: Video, prompt: str, scale: float) -> PromptInputs:
        """Hook: chat prompt with a video (frames resized by ``scale``); only video families implement it."""
        if isinstance(self.geometry, geo.Tiled):
            raise ValueError(
                f"model type {self.model_type!r} lays an image out as tiles ({type(self.geometry).__name__}); "
                f"video is not explained for tiled models, only for: {', '.join(VIDEO_MODEL_TYPES)}"
            )
        raise ValueError(
            f"model type {self.model_type!r} does not take video; video is explained for: "
            f"{', '.join(VIDEO_MODEL_TYPES)}"
        )

    @property
    def model_type(self) -> str:
        return str(getattr(getattr(self.model, "config", None), "model_type", type(self.model).__name__))

    def expected_visual_tokens(self, inputs: dict[str, torch.Tensor]) -> int:
        """Hook: how many visual tokens a single-view family's geometry predicts for these processor outputs
        (tiled families predict theirs with ``geometry.layout``). Dynamic resolution:
        ``prod(image_grid_thw) / merge_size**2``; fixed size: the model config's ``image_seq_length`` where it has
        one, else the family overrides this with the count its vision tower and projector produce."""
        if self.geometry.dynamic_resolution:
            thw = inputs["image_grid_thw"].reshape(-1, 3)
            merge = int(getattr(self.image_processor, "merge_size", 1))
            return int(thw.prod(-1).sum()) // (merge * merge)
        seq = getattr(getattr(self.model, "config", None), "image_seq_length", None)
        if isinstance(seq, int):
            return seq
        raise NotImplementedError(f"{type(self).__name__} must say how many visual tokens it expects")

    def check_token_count(self, located: int, predicted: int, what: str) -> None:
        """Never silent (issue 15, docs/design.md §1.2): the visual tokens located in the sequence must be exactly
        what the geometry predicts, else an error naming the model type (a wrong image token id would otherwise
        give a 1x1 or a shifted map)."""
        if located != predicted or predicted == 0:
            raise ValueError(
                f"{self.model_type}: found {located} visual tokens but {what} predicts {predicted}; the processor "
                f"and the model config disagree (or this {type(self.model).__name__} variant is not supported)"
            )

    def chat_text(self, prompt: str) -> str:
        """The family's chat prompt (one user turn: the image, then ``prompt``; generation prompt appended)."""
        return prompt_mod.chat_text(self.processor, self.tokenizer, prompt)

    def run_processor(self, image: Image.Image, text: str, **overrides: Any) -> dict[str, torch.Tensor]:
        """The processor on one (image, chat text) pair; batch size 1, tensors only."""
        kwargs = {**self.processor_kwargs, **overrides}
        out = self.processor(images=[image], text=[text], return_tensors="pt", **kwargs)
        return {k: v for k, v in out.items() if torch.is_tensor(v) and k not in self.drop_keys}

    @property
    def image_token_id(self) -> int:
        """Id of the LLM visual token (image pad / IMG_CONTEXT / expanded <image>)."""
        tid = getattr(self.processor, "image_token_id", None)
        if tid is None:
            cfg = self.model.config
            tid = getattr(cfg, "image_token_id", None)
            if tid is None:
                tid = getattr(cfg, "image_token_index", None)
        if tid is None:
            raise ValueError(f"cannot find the image token id of {type(self.processor).__name__}")
        return int(tid)

    def visual_positions_of(self, input_ids: torch.Tensor) -> torch.Tensor:
        return prompt_mod.visual_positions(input_ids, self.image_token_id)

    def find_prompt_span(self, text: str, prompt: str, input_ids: torch.Tensor) -> tuple[int, int]:
        """Half-open token positions (in the processor's expanded ``input_ids``) of the user's instruction
        text inside the rendered chat ``text`` (see ``prompt.find_prompt_span``)."""
        return prompt_mod.find_prompt_span(
            self.tokenizer, text, prompt, input_ids, self.image_token_id, render=self.chat_text
        )

    # --- image geometry ----------------------------------------------------------------------------
    @property
    def image_processor(self) -> Any:
        """The processor's image processor (None when it has none)."""
        return getattr(self.processor, "image_processor", None)

    @property
    def dynamic_resolution(self) -> bool:
        return self.geometry.dynamic_resolution

    def view_box(self, image: Image.Image) -> Box | None:
        """The part of ``image`` the scale-1.0 visual-token grid shows, as fractions (x0, y0, x1, y1); None
        for the whole image (dynamic-resolution families, processors that only resize). A processor that
        centre-crops (LLaVA's CLIP) shows the crop. Cached per image size."""
        cache = self.__dict__.setdefault("_view_boxes", {})
        return self.geometry.view_box(self.image_processor, image.size, self.processor_kwargs, cache)

    def processed_image(self, image: Image.Image) -> Image.Image:
        """Fixed-size families: the image exactly as the processor feeds it to the model at scale 1.0 (after
        its own resize / centre-crop / padding), as uint8 RGB."""
        return geo.processed_image(self.processor.image_processor, image, self.processor_kwargs)

    def canvas_fill(self) -> tuple[int, int, int]:
        """The processor's mean colour as uint8 RGB (``round(mean * 255)``)."""
        return geo.canvas_fill(self.processor.image_processor)

    # --- tokens ------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    def encode_answer(self, text: str) -> list[int]:
        """Token ids of a forced answer text (no special tokens added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode_tokens(self, ids: list[int]) -> list[str]:
        """One display string per id (byte-level pieces decoded on their own)."""
        return [self.tokenizer.decode([i], skip_special_tokens=False) for i in ids]

    def lm_head_weight(self) -> torch.Tensor:
        """The unembedding W_U [V, d] (a view, never a copy)."""
        return self.model.get_output_embeddings().weight

    def stop_token_ids(self) -> set[int]:
        ids: set[int] = set()
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None) if gen is not None else None
        if eos is None:
            eos = getattr(self.tokenizer, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif eos is not None:
            ids.update(int(e) for e in eos)
        return ids

    def pad_id(self) -> int:
        """The id padded rows are filled with: the tokenizer's pad token, else the smallest stop token, else 0."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        if pad is None:
            stops = sorted(self.stop_token_ids())
            pad = stops[0] if stops else 0
        return int(pad)

    def _pad_id(self) -> int:
        """Old name of ``pad_id`` (kept while callers move over)."""
        return self.pad_id()

    # --- forwards ----------------------------------------------------------------------------------
    def base_model(self) -> Any:
        """Hook: the base model (vision tower + projector + decoder) whose ``last_hidden_state`` is normed."""
        return generation.base_model_of(self.model)

    def decoder(self) -> Any:
        """Hook: the text decoder whose ``last_hidden_state`` is what lm_head reads."""
        return generation.decoder_of(self.model)

    def collate(
        self, prompts: Sequence[PromptInputs], answers: Sequence[Sequence[int]], side: str
    ) -> tuple[dict[str, torch.Tensor], list[int], int]:
        """One padded batch of ``prompt_i + answer_i`` rows. Returns (inputs, row lengths, padded length)."""
        return generation.collate(
            prompts,
            answers,
            side,
            token_keys=self.token_keys,
            pad_id=self.pad_id(),
            device=self.model.device,
            dtype=self.model.dtype,
            answer_fills=self.answer_token_types,
        )

    def forward_hidden(self, prompt: PromptInputs, answer_ids: list[int]) -> torch.Tensor:
        """Teacher-forced forward of prompt + answer ids; returns the last-layer normed hidden states
        (what ``lm_head`` consumes) for every position, shape [L + T, d], in the model's dtype."""
        return self.forward_hidden_batch([prompt], [list(answer_ids)])[0]

    @torch.no_grad()
    def forward_hidden_batch(
        self, prompts: Sequence[PromptInputs], answers: Sequence[Sequence[int]]
    ) -> list[torch.Tensor]:
        """One right-padded, batched, teacher-forced forward over all rows (prompt_i + answer_i); per row the
        unpadded last-layer normed hidden states [L_i + T_i, d]. Only the base model runs: no lm_head, no
        per-layer hidden states. Rows of different input kinds (images and videos) run as one batch per kind."""
        groups = _groups_by_inputs(prompts)
        if len(groups) > 1:
            out: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
            for g in groups:
                for i, h in zip(
                    g, self.forward_hidden_batch([prompts[i] for i in g], [answers[i] for i in g])
                ):
                    out[i] = h
            return out
        inputs, lengths, _ = self.collate(prompts, answers, side="right")
        out = self.base_model()(**inputs, use_cache=False, return_dict=True)
        hidden = out.last_hidden_state
        return [hidden[i, :n] for i, n in enumerate(lengths)]

    @torch.no_grad()
    def forward_hidden_rows(
        self,
        prompts: Sequence[PromptInputs],
        answers: Sequence[Sequence[int]],
        prefix_only: Sequence[bool] | None = None,
    ) -> list[torch.Tensor]:
        """The fast path's forwards (docs/design.md §2): per row, the last-layer normed states of
        ``prompt_i + answer_i``, or, where ``prefix_only[i]``, of the prompt cut after its last visual token
        (``generation.visual_prefix``: no instruction, no answer; [last visual + 1, d]). Rows are grouped by
        length (``generation.length_buckets``: ``bucket_waste``, ``bucket_tokens``) and each group is one
        ``forward_hidden_batch``; the result is in the order of ``prompts``. Rows of different input kinds
        (images and videos) are bucketed per kind."""
        if len(prompts) != len(answers):
            generation.check_rows(prompts, answers)  # raises: one answer per prompt
        if prefix_only is not None and len(prefix_only) != len(prompts):
            raise ValueError(
                f"got {len(prefix_only)} prefix_only flags for {len(prompts)} prompts; expected one each"
            )
        groups = _groups_by_inputs(prompts)
        if len(groups) > 1:
            out_all: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
            for g in groups:
                sub = self.forward_hidden_rows(
                    [prompts[i] for i in g],
                    [answers[i] for i in g],
                    None if prefix_only is None else [prefix_only[i] for i in g],
                )
                for i, h in zip(g, sub):
                    out_all[i] = h
            return out_all
        generation.check_rows(prompts, answers)
        flags = [False] * len(prompts) if prefix_only is None else [bool(f) for f in prefix_only]
        if len(flags) != len(prompts):
            raise ValueError(
                f"got {len(flags)} prefix_only flags for {len(prompts)} prompts; expected one each"
            )
        rows = [generation.visual_prefix(p, self.token_keys) if f else p for p, f in zip(prompts, flags)]
        tails = [[] if f else list(a) for a, f in zip(answers, flags)]
        lengths = [r.length + len(t) for r, t in zip(rows, tails)]
        out: list[torch.Tensor | None] = [None] * len(rows)
        for bucket in generation.length_buckets(lengths, self.bucket_waste, self.bucket_tokens):
            hidden = self.forward_hidden_batch([rows[i] for i in bucket], [tails[i] for i in bucket])
            for i, h in zip(bucket, hidden):
                out[i] = h
        return out  # type: ignore[return-value]

    # --- generation --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompt: PromptInputs, max_new_tokens: int) -> list[int]:
        """Greedy answer ids at this prompt (scale 1.0), KV cache on, stop token(s) excluded."""
        inputs = {k: v.to(self.model.device) if torch.is_tensor(v) else v for k, v in prompt.inputs.items()}
        out = generation.greedy(self.model, inputs, max_new_tokens, self.pad_id())
        return generation.until_stop(out[0, prompt.length :].tolist(), self.stop_token_ids())

    @torch.no_grad()
    def generate_batch(self, prompts: Sequence[PromptInputs], max_new_tokens: int) -> list[list[int]]:
        """Left-padded batched greedy generation; each row equals ``generate`` on that prompt alone (one batch
        per input kind: images, videos)."""
        groups = _groups_by_inputs(prompts)
        if len(groups) > 1:
            out: list[list[int]] = [[] for _ in prompts]
            for g in groups:
                for i, a in zip(g, self.generate_batch([prompts[i] for i in g], max_new_tokens)):
                    out[i] = a
            return out
        inputs, _, width = self.collate(prompts, [[] for _ in prompts], side="left")
        out = generation.greedy(self.model, inputs, max_new_tokens, self.pad_id())
        stops = self.stop_token_ids()
        return [generation.until_stop(row, stops) for row in out[:, width:].tolist()]

    @torch.no_grad()
    def generate_with_states(
        self, prompts: Sequence[PromptInputs], max_new_tokens: int
    ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Greedy answers (as ``generate`` / ``generate_batch``) plus the last-layer normed states that the
        generation computed on the way, captured by a forward hook on the decoder (never
        ``output_hidden_states``): per row [L_i + T_i - 1, d], i.e. every prompt position and every answer
        position but the last (whose state predicts nothing we explain). These equal the teacher-forced
        states of ``forward_hidden`` up to float rounding, so the scale-1.0 forward need not run again."""
        answers, states, _ = self.generate_scored(prompts, max_new_tokens, 0)
        return answers, states

    @torch.no_grad()
    def generate_scored(
        self, prompts: Sequence[PromptInputs], max_new_tokens: int, keep_scores: int
    ) -> tuple[list[list[int]], list[torch.Tensor], list[generation.StepScores | None]]:
        """``generate_with_states`` plus, per row, the ``keep_scores`` best logits ``lm_head`` computed at
        each answer-predicting position (``generation.StepScores``; None where none were kept, e.g.
        ``keep_scores`` 0 or an lm_head that is not a plain ``x @ W_U.T``): the answer rows' rankings come
        from these, so no vocabulary row is scored twice (docs/design.md §1.3)."""
        groups = _groups_by_inputs(prompts)
        if len(groups) > 1:  # images and videos: one generation per kind
            answers_all: list[list[int]] = [[] for _ in prompts]
            states_all: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
            scores_all: list[generation.StepScores | None] = [None] * len(prompts)
            for g in groups:
                got, kept, sc = self.generate_scored([prompts[i] for i in g], max_new_tokens, keep_scores)
                for i, a, st, s in zip(g, got, kept, sc):
                    answers_all[i], states_all[i], scores_all[i] = a, st, s
            return answers_all, states_all, scores_all
        head = generation.scoring_head(self.model, self.lm_head_weight()) if keep_scores > 0 else None
        with (
            generation.captured_states(self.decoder()) as captured,
            generation.captured_scores(head, keep_scores) as scored,
        ):
            if len(prompts) == 1:
                answers = [self.generate(prompts[0], max_new_tokens)]
                width = prompts[0].length
            else:
                answers = self.generate_batch(prompts, max_new_tokens)
                width = max(p.length for p in prompts)  # left padding: real tokens end at ``width``
        states = generation.stitch_states(captured, prompts, answers, width)
        if head is None:
            return answers, states, [None] * len(prompts)
        return answers, states, generation.stitch_scores(scored, prompts, answers, states)


def _groups_by_inputs(prompts: Sequence[PromptInputs]) -> list[list[int]]:
    """Indices of ``prompts`` grouped by their input keys (an image's and a video's inputs cannot share a
    batch), in order of first appearance."""
    groups: dict[frozenset[str], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(frozenset(p.inputs), []).append(i)
    return list(groups.values())
