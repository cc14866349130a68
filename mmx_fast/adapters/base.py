"""The contract between the engine and a model family.

An adapter knows how one family (Qwen2-VL, LLaVA-1.5, InternVL) builds its chat prompt, where its visual
tokens sit and on which grid, where the user's instruction text sits, and how to get the last-layer normed
hidden states of a teacher-forced sequence. The attribution math never touches model internals; it only
sees ``PromptInputs`` and hidden-state tensors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image


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
    """

    inputs: dict[str, torch.Tensor]
    visual_positions: torch.Tensor
    grid: tuple[int, int]
    prompt_span: tuple[int, int]
    scale: float = 1.0
    coverage: tuple[float, float] = (1.0, 1.0)
    image: Image.Image | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(self.inputs["input_ids"].shape[-1])

    @property
    def input_ids(self) -> list[int]:
        return self.inputs["input_ids"][0].tolist()


class Adapter:
    """Base class. Subclasses set ``family`` and ``config_types`` and implement the abstract methods."""

    family: str = ""
    config_types: tuple[str, ...] = ()
    dynamic_resolution: bool = False

    def __init__(self, model: Any, processor: Any) -> None:
        self.model = model
        self.processor = processor

    # --- what every family must provide -------------------------------------------------------------
    def prepare(self, image: Image.Image, prompt: str, scale: float = 1.0) -> PromptInputs:
        """Chat prompt with the image at ``scale`` (RGB PIL in, see ``mmx_fast.images``)."""
        raise NotImplementedError

    def forward_hidden(self, prompt: PromptInputs, answer_ids: list[int]) -> torch.Tensor:
        """Teacher-forced forward of prompt + answer ids; returns the last-layer normed hidden states
        (what ``lm_head`` consumes) for every position, shape [L + T, d], in the model's dtype."""
        raise NotImplementedError

    # --- shared behaviour ---------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

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

    @torch.no_grad()
    def generate(self, prompt: PromptInputs, max_new_tokens: int) -> list[int]:
        """Greedy answer ids at this prompt (scale 1.0), KV cache on, stop token(s) excluded."""
        inputs = {k: v.to(self.model.device) if torch.is_tensor(v) else v for k, v in prompt.inputs.items()}
        out = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=self._pad_id(),
        )
        new = out[0, prompt.length :].tolist()
        stops = self.stop_token_ids()
        answer = []
        for tok in new:
            if tok in stops:
                break
            answer.append(int(tok))
        return answer

    def encode_answer(self, text: str) -> list[int]:
        """Token ids of a forced answer text (no special tokens added)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode_tokens(self, ids: list[int]) -> list[str]:
        """One display string per id (byte-level pieces decoded on their own)."""
        return [self.tokenizer.decode([i], skip_special_tokens=False) for i in ids]

    def _pad_id(self) -> int:
        tok = self.tokenizer
        pad = getattr(tok, "pad_token_id", None)
        if pad is None:
            stops = sorted(self.stop_token_ids())
            pad = stops[0] if stops else 0
        return int(pad)

    # --- helpers shared by the family adapters (added with the Qwen2-VL / LLaVA / InternVL adapters) ----------
    # Class names (anywhere in the processor's MRO) of the processors this family accepts.
    processor_classes: tuple[str, ...] = ()
    # Keys of processor outputs that are per-token ([1, L]); every other tensor is per-image and is concatenated
    # along dim 0 when rows are batched (pixel_values, image_grid_thw, image_sizes, ...).
    token_keys: tuple[str, ...] = ("input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids")
    # Extra keyword arguments for every processor call (e.g. InternVL: ``crop_to_patches=False``).
    processor_kwargs: dict[str, Any] = {}

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

    def chat_text(self, prompt: str) -> str:
        """The family's chat prompt (one user turn: the image, then ``prompt``; generation prompt appended)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        for owner in (self.processor, self.tokenizer):
            if getattr(owner, "chat_template", None):
                text = owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                return text[0] if isinstance(text, list) else text
        raise ValueError(
            f"{type(self.processor).__name__} has no chat template; set processor.chat_template "
            "(the model's own template) before explaining"
        )

    def run_processor(self, image: Image.Image, text: str, **overrides: Any) -> dict[str, torch.Tensor]:
        """The processor on one (image, chat text) pair; batch size 1, tensors only."""
        kwargs = {**self.processor_kwargs, **overrides}
        out = self.processor(images=[image], text=[text], return_tensors="pt", **kwargs)
        return {k: v for k, v in out.items() if torch.is_tensor(v)}

    def visual_positions_of(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids.reshape(-1) == self.image_token_id).nonzero().flatten().long()

    def find_prompt_span(self, text: str, prompt: str, input_ids: torch.Tensor) -> tuple[int, int]:
        """Half-open token positions (in the processor's expanded ``input_ids``) of the user's instruction
        text inside the rendered chat ``text``: only tokens whose characters lie in the instruction, never
        template, special or image tokens."""
        c0, c1 = self._prompt_chars(text, prompt)
        tok = self.tokenizer
        enc = tok(text, return_offsets_mapping=True)
        ids_u = list(enc["input_ids"])
        offsets = [tuple(o) for o in enc["offset_mapping"]]
        special = set(tok.all_special_ids) | {self.image_token_id}
        inside = [
            i
            for i, ((a, b), t) in enumerate(zip(offsets, ids_u))
            if b > a and a < c1 and b > c0 and t not in special
        ]
        ids_e = input_ids.reshape(-1).tolist()
        if not inside:
            # empty instruction: an empty span just before the first token after the instruction
            after = next((i for i, (a, _) in enumerate(offsets) if a >= c1 and i > 0), len(ids_u))
            s = e = after
        else:
            s, e = inside[0], inside[-1] + 1
            if inside != list(range(s, e)):
                raise ValueError(
                    f"the prompt text {prompt!r} is interrupted by special tokens in the chat prompt"
                )
        # The processor only expanded the image placeholder(s): tokens after them are shifted by a constant.
        for delta in (len(ids_e) - len(ids_u), 0):
            if 0 <= s + delta and e + delta <= len(ids_e) and ids_e[s + delta : e + delta] == ids_u[s:e]:
                vis = set(self.visual_positions_of(input_ids).tolist())
                if not vis.intersection(range(s + delta, e + delta)):
                    return (s + delta, e + delta)
        raise ValueError(f"cannot locate the prompt text {prompt!r} in the tokenized chat prompt")

    def _prompt_chars(self, text: str, prompt: str) -> tuple[int, int]:
        """Character span of ``prompt`` in the rendered chat ``text``: found by rendering the template around
        a sentinel, so a prompt that repeats template words (``assistant``) is still found in the right place."""
        sentinel = "\ue000"
        if sentinel not in prompt:
            marked = self.chat_text(sentinel)
            if marked.count(sentinel) == 1:
                c0 = marked.index(sentinel)
                suffix = marked[c0 + len(sentinel) :]
                if (
                    text.startswith(marked[:c0])
                    and text.endswith(suffix)
                    and text[c0 : c0 + len(prompt)] == prompt
                ):
                    return c0, c0 + len(prompt)
        stripped = prompt.strip()
        i = text.rfind(stripped)
        if i < 0:
            raise ValueError(f"the prompt text {prompt!r} does not appear in the rendered chat prompt")
        return i, i + len(stripped)

    def _collate(
        self, prompts: Sequence[PromptInputs], answers: Sequence[Sequence[int]], side: str
    ) -> tuple[dict[str, torch.Tensor], list[int], int]:
        """One padded batch of ``prompt_i + answer_i`` rows. Returns (inputs, row lengths, padded length)."""
        if len(prompts) != len(answers):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(answers)} answers; expected one answer per prompt"
            )
        if not prompts:
            raise ValueError("expected at least one prompt")
        keys = set(prompts[0].inputs)
        for i, p in enumerate(prompts):
            if set(p.inputs) != keys:
                raise ValueError(f"prompt {i} has inputs {sorted(p.inputs)}, prompt 0 has {sorted(keys)}")
        device = self.model.device
        dtype = self.model.dtype
        lengths = [p.length + len(a) for p, a in zip(prompts, answers)]
        width = max(lengths)
        pad_id = self._pad_id()
        batch: dict[str, torch.Tensor] = {}
        for key in sorted(keys):
            if key in self.token_keys:
                fill = pad_id if key == "input_ids" else 0
                rows = []
                for p, a, n in zip(prompts, answers, lengths):
                    head = p.inputs[key].reshape(-1).to(torch.long)
                    if key == "input_ids":
                        tail = torch.as_tensor(list(a), dtype=torch.long)
                    elif key == "attention_mask":
                        tail = torch.ones(len(a), dtype=torch.long)
                    else:
                        tail = torch.zeros(len(a), dtype=torch.long)
                    pad = torch.full((width - n,), fill, dtype=torch.long)
                    parts = (head, tail, pad) if side == "right" else (pad, head, tail)
                    rows.append(torch.cat(parts))
                batch[key] = torch.stack(rows).to(device)
            else:
                t = torch.cat([p.inputs[key] for p in prompts], dim=0)
                batch[key] = t.to(device=device, dtype=dtype if t.is_floating_point() else None)
        if "attention_mask" not in batch:
            mask = torch.zeros(len(prompts), width, dtype=torch.long)
            for i, n in enumerate(lengths):
                if side == "right":
                    mask[i, :n] = 1
                else:
                    mask[i, width - n :] = 1
            batch["attention_mask"] = mask.to(device)
        return batch, lengths, width

    def _base_model(self) -> Any:
        """The base model (vision tower + projector + decoder) whose ``last_hidden_state`` is already normed."""
        base = getattr(self.model, "model", None)
        if base is None:
            base = self.model.base_model
        return base

    @torch.no_grad()
    def forward_hidden_batch(
        self, prompts: Sequence[PromptInputs], answers: Sequence[Sequence[int]]
    ) -> list[torch.Tensor]:
        """One right-padded, batched, teacher-forced forward over all rows (prompt_i + answer_i); per row the
        unpadded last-layer normed hidden states [L_i + T_i, d]. Only the base model runs: no lm_head, no
        per-layer hidden states."""
        inputs, lengths, _ = self._collate(prompts, answers, side="right")
        out = self._base_model()(**inputs, use_cache=False, return_dict=True)
        hidden = out.last_hidden_state
        return [hidden[i, :n] for i, n in enumerate(lengths)]

    @torch.no_grad()
    def generate_batch(self, prompts: Sequence[PromptInputs], max_new_tokens: int) -> list[list[int]]:
        """Left-padded batched greedy generation; each row equals ``generate`` on that prompt alone."""
        inputs, _, width = self._collate(prompts, [[] for _ in prompts], side="left")
        out = self.model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=self._pad_id(),
        )
        stops = self.stop_token_ids()
        answers = []
        for row in out[:, width:].tolist():
            answer = []
            for tok in row:
                if tok in stops:
                    break
                answer.append(int(tok))
            answers.append(answer)
        return answers

    def _decoder(self) -> Any:
        """The text decoder whose output (``last_hidden_state``) is the final-normed states lm_head reads."""
        get = getattr(self.model, "get_decoder", None)
        dec = get() if callable(get) else None
        if dec is None:
            dec = self._base_model().language_model
        return dec

    @torch.no_grad()
    def generate_with_states(
        self, prompts: Sequence[PromptInputs], max_new_tokens: int
    ) -> tuple[list[list[int]], list[torch.Tensor]]:
        """Greedy answers (as ``generate`` / ``generate_batch``) plus the last-layer normed states that the
        generation computed on the way, captured by a forward hook on the decoder (never
        ``output_hidden_states``): per row [L_i + T_i - 1, d], i.e. every prompt position and every answer
        position but the last (whose state predicts nothing we explain). These equal the teacher-forced
        states of ``forward_hidden`` up to float rounding, so the scale-1.0 forward need not run again."""
        captured: list[torch.Tensor] = []

        def hook(_module, _args, output):
            hs = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            captured.append(hs.detach())

        handle = self._decoder().register_forward_hook(hook)
        try:
            if len(prompts) == 1:
                answers = [self.generate(prompts[0], max_new_tokens)]
                width = prompts[0].length
            else:
                answers = self.generate_batch(prompts, max_new_tokens)
                width = max(p.length for p in prompts)  # left padding: real tokens end at ``width``
        finally:
            handle.remove()
        if not captured or captured[0].shape[1] != width:
            raise RuntimeError(
                f"could not capture the decoder's states during generation (got {len(captured)} calls); "
                "use forward_hidden instead"
            )
        states = []
        for i, (p, ans) in enumerate(zip(prompts, answers)):
            parts = [captured[0][i, width - p.length :]]
            parts += [captured[k][i, -1:] for k in range(1, len(ans))]
            states.append(torch.cat(parts, 0))
        return answers, states

    # --- image geometry --------------------------------------------------------------------------------
    def view_box(self, image: Image.Image) -> tuple[float, float, float, float] | None:
        """The part of ``image`` the scale-1.0 visual-token grid shows, as fractions (x0, y0, x1, y1); None
        for the whole image. Dynamic-resolution families and processors that only resize show the whole
        image; a processor that centre-crops (LLaVA's CLIP: resize the shortest edge, crop the centre)
        shows the crop, found by running the processor's resize (crop off) on a blank image of that size."""
        if self.dynamic_resolution:
            return None
        ip = getattr(self.processor, "image_processor", None)
        if ip is None or not getattr(ip, "do_center_crop", False):
            return None
        cache = self.__dict__.setdefault("_view_boxes", {})  # it depends only on the image size
        if image.size not in cache:
            cache[image.size] = self._crop_box(ip, image.size)
        return cache[image.size]

    def _crop_box(self, ip, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
        crop = ip.crop_size
        ch = crop["height"] if isinstance(crop, dict) else crop.height
        cw = crop["width"] if isinstance(crop, dict) else crop.width
        out = ip(
            images=[Image.new("RGB", size)],
            do_center_crop=False,
            do_rescale=False,
            do_normalize=False,
            return_tensors=None,
            **getattr(self, "processor_kwargs", {}),
        )
        arr = np.asarray(out["pixel_values"][0])
        chw = arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3)
        h, w = (arr.shape[1], arr.shape[2]) if chw else arr.shape[:2]
        top, left = (h - ch) // 2, (w - cw) // 2
        box = (max(0.0, left / w), max(0.0, top / h), min(1.0, (left + cw) / w), min(1.0, (top + ch) / h))
        return None if box == (0.0, 0.0, 1.0, 1.0) else box

    @staticmethod
    def _check_scale(scale: float) -> float:
        scale = float(scale)
        if not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale={scale!r} is not allowed; expected a finite number > 0")
        return scale

    @staticmethod
    def _rgb(image: Image.Image) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"image of type {type(image).__name__} is not supported; expected an RGB PIL image"
            )
        if image.mode != "RGB":
            from ..images import to_rgb

            image = to_rgb(image)
        return image

    @staticmethod
    def _resize_by(image: Image.Image, scale: float) -> Image.Image:
        """``image`` resized by ``scale`` (PIL bilinear, at least 1 px per side); the image itself at 1.0."""
        if scale == 1.0:
            return image
        w, h = image.size
        return image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)

    def _prepare_dynamic(self, image: Image.Image, prompt: str, scale: float) -> PromptInputs:
        """Dynamic-resolution families: resize by ``scale``; the processor's own resizing then applies."""
        scale = self._check_scale(scale)
        img = self._resize_by(self._rgb(image), scale)
        text = self.chat_text(prompt)
        inputs = self.run_processor(img, text)
        thw = inputs["image_grid_thw"].reshape(-1, 3)
        if thw.shape[0] != 1:
            raise ValueError(f"expected one image grid, got image_grid_thw={thw.tolist()}")
        merge = int(getattr(self.processor.image_processor, "merge_size", 1))
        grid = (int(thw[0, 1]) // merge, int(thw[0, 2]) // merge)
        vis = self.visual_positions_of(inputs["input_ids"])
        if vis.numel() != grid[0] * grid[1]:
            raise ValueError(f"{vis.numel()} visual tokens do not fill the {grid[0]}x{grid[1]} grid")
        patch = int(getattr(self.processor.image_processor, "patch_size", 1))
        return PromptInputs(
            inputs=inputs,
            visual_positions=vis,
            grid=grid,
            prompt_span=self.find_prompt_span(text, prompt, inputs["input_ids"]),
            scale=scale,
            coverage=(1.0, 1.0),
            image=img,
            extra={"text": text, "model_image_hw": (int(thw[0, 1]) * patch, int(thw[0, 2]) * patch)},
        )

    def processed_image(self, image: Image.Image) -> Image.Image:
        """Fixed-size families: the image exactly as the processor feeds it to the model at scale 1.0 (after
        its own resize / centre-crop / padding), as uint8 RGB, by running the image processor with rescaling
        and normalisation switched off."""
        out = self.processor.image_processor(
            images=[self._rgb(image)],
            do_rescale=False,
            do_normalize=False,
            return_tensors=None,
            **self.processor_kwargs,
        )
        first = out["pixel_values"][0]
        arr = first.cpu().numpy() if torch.is_tensor(first) else np.asarray(first)
        if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3):
            arr = np.moveaxis(arr, 0, -1)
        if arr.dtype != np.uint8:
            arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = np.repeat(arr, 3, axis=-1)
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")

    def canvas_fill(self) -> tuple[int, int, int]:
        """The processor's mean colour as uint8 RGB (``round(mean * 255)``)."""
        mean = getattr(self.processor.image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        if isinstance(mean, (int, float)):
            mean = (mean,) * 3
        return tuple(int(round(float(m) * 255)) for m in mean)  # type: ignore[return-value]

    def _prepare_fixed(self, image: Image.Image, prompt: str, scale: float) -> PromptInputs:
        """Fixed-size families: the processed scale-1.0 image, resized by ``scale``, pasted top-left on a
        mean-coloured canvas of the model's input size (cropped top-left for scale > 1); the processor then
        only rescales / normalises the canvas (its resize / crop are switched off: the canvas already has the
        input size)."""
        scale = self._check_scale(scale)
        base = self.processed_image(image)
        if scale == 1.0:
            canvas = base
        else:
            w, h = base.size
            small = self._resize_by(base, scale)
            canvas = Image.new("RGB", (w, h), self.canvas_fill())
            canvas.paste(small.crop((0, 0, min(w, small.width), min(h, small.height))), (0, 0))
        text = self.chat_text(prompt)
        ip = self.processor.image_processor
        overrides: dict[str, Any] = {"do_resize": False}
        if hasattr(ip, "do_center_crop"):
            overrides["do_center_crop"] = False
        inputs = self.run_processor(canvas, text, **overrides)
        vis = self.visual_positions_of(inputs["input_ids"])
        side = math.isqrt(vis.numel())
        if side * side != vis.numel() or side == 0:
            raise ValueError(f"{vis.numel()} visual tokens do not form a square grid")
        return PromptInputs(
            inputs=inputs,
            visual_positions=vis,
            grid=(side, side),
            prompt_span=self.find_prompt_span(text, prompt, inputs["input_ids"]),
            scale=scale,
            coverage=(scale, scale),
            image=canvas,
            extra={"text": text, "base_image": base, "model_image_hw": (base.height, base.width)},
        )
